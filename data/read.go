package data

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
)

// DefaultMaxLineBytes is the longest JSONL line accepted when
// [Options.MaxLineBytes] is zero.
const DefaultMaxLineBytes = 64 << 20

// DefaultMaxBytes is the largest data file read when [Options.MaxBytes] is
// zero.
const DefaultMaxBytes = 1 << 30

// ErrTooLarge reports a data file longer than [Options.MaxBytes].
var ErrTooLarge = errors.New("data file too large")

// maxSkipErrors is how many skipped-record errors [Stats.SkipErrors] keeps.
const maxSkipErrors = 10

// utf8BOM is stripped from the start of a file.
var utf8BOM = []byte{0xEF, 0xBB, 0xBF}

// Record is one parsed, untokenized example. Alpaca records are already
// rendered into Prompt/Completion when read.
type Record struct {
	// Kind is FormatPlain, FormatText, FormatCompletion or FormatChat.
	Kind Format
	// Text is the document (FormatPlain, FormatText).
	Text string
	// Prompt and Completion are the two halves of a FormatCompletion record.
	Prompt, Completion string
	// Messages is the conversation of a FormatChat record.
	Messages []ChatMessage
	// File and Line locate the record in its source, for error messages.
	File string
	Line int
}

// RecordSet is the parsed content of one data file (or records built in
// memory, for example a synthetic task).
type RecordSet struct {
	// Name identifies the source in error messages (usually the path).
	Name string
	// Format is the file's format as given or detected (FormatAlpaca for
	// Alpaca files even though their records are of kind FormatCompletion).
	Format Format
	// Records are the usable records in file order.
	Records []Record
	// Stats holds Records, Skipped and SkipErrors after reading.
	Stats Stats
}

// ReadFile parses the data file at path; see [Read].
func ReadFile(path string, opts Options) (*RecordSet, error) {
	// O_NONBLOCK: opening a FIFO without a writer returns at once (reading
	// it then sees end of file) instead of blocking.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("read data: %w", err)
	}
	defer f.Close()
	return Read(f, path, opts)
}

// Read parses a data file from r; name is used in error messages and for
// the extension hint. With opts.Format == FormatAuto the format is detected:
// a ".txt" name is plain text; content starting with '[' (a JSON array of
// objects) or '{' (JSONL, one object per line) is JSON when the name ends in
// ".json"/".jsonl" or the array / first line is valid JSON, and plain text
// otherwise; other content is plain text unless the name ends in
// ".json"/".jsonl". The record kind of JSON files is taken from the first
// object's fields: "messages" (chat), "instruction"/"output" (Alpaca),
// "prompt"/"completion" (completion), "text" (text); every later record must
// have the same kind. Blank JSONL lines are ignored. A malformed record is a
// [*RecordError] wrapping [ErrMalformed], or with opts.SkipBad is skipped and
// counted in Stats.Skipped (a JSON array that does not parse cannot be
// skipped past and always fails).
func Read(r io.Reader, name string, opts Options) (*RecordSet, error) {
	if _, err := ParseFormat(string(opts.Format)); err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	p := &parser{name: name, opts: opts, kind: opts.Format, rs: &RecordSet{Name: name, Format: opts.Format}}
	if p.kind == FormatAlpaca {
		p.rs.Format = FormatAlpaca
	}
	if len(opts.Replace) > 0 {
		p.repl = newReplacer(opts.Replace)
	}
	limit := opts.MaxBytes
	if limit <= 0 {
		limit = DefaultMaxBytes
	}
	br := bufio.NewReaderSize(&boundedReader{r: r, left: limit, limit: limit}, 1<<20)
	first, err := firstByte(br)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	ext := strings.ToLower(filepath.Ext(name))
	jsonExt := ext == ".json" || ext == ".jsonl"
	isJSON := opts.Format != FormatPlain
	if opts.Format == FormatAuto {
		isJSON = ext != ".txt" && (jsonExt || first == '[' || first == '{')
	}
	switch {
	case !isJSON:
		all, err := io.ReadAll(br)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", name, err)
		}
		err = p.readPlain(all)
		if err != nil {
			return nil, err
		}
	case opts.Format == FormatAuto && !jsonExt:
		all, err := io.ReadAll(br)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", name, err)
		}
		all = bytes.TrimPrefix(all, utf8BOM)
		if first == '[' && json.Valid(all) {
			err = p.readArray(all)
		} else if first == '{' && json.Valid(firstLine(all)) {
			err = p.readJSONL(bufio.NewReader(bytes.NewReader(all)))
		} else {
			err = p.readPlain(all)
		}
		if err != nil {
			return nil, err
		}
	case first == '[':
		all, err := io.ReadAll(br)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", name, err)
		}
		if err := p.readArray(all); err != nil {
			return nil, err
		}
	default:
		if err := p.readJSONL(br); err != nil {
			return nil, err
		}
	}
	p.rs.Stats.Records = len(p.rs.Records)
	if len(p.rs.Records) == 0 {
		return nil, fmt.Errorf("read %s: %w (%d malformed records skipped%s)", name, ErrNoExamples, p.rs.Stats.Skipped, firstSkip(p.rs.Stats))
	}
	return p.rs, nil
}

// firstByte returns the first byte that is not white space or a UTF-8 BOM
// without consuming anything, or 0 for an empty or blank prefix.
func firstByte(br *bufio.Reader) (byte, error) {
	skip := 0
	if b, _ := br.Peek(len(utf8BOM)); bytes.Equal(b, utf8BOM) {
		skip = len(utf8BOM)
	}
	for n := skip + 1; ; n++ {
		b, err := br.Peek(n)
		if len(b) < n {
			if err == io.EOF || errors.Is(err, bufio.ErrBufferFull) {
				return 0, nil
			}
			return 0, err
		}
		switch b[n-1] {
		case ' ', '\t', '\r', '\n':
			continue
		}
		return b[n-1], nil
	}
}

// firstLine returns the first non-blank line of data.
func firstLine(data []byte) []byte {
	data = bytes.TrimPrefix(data, utf8BOM)
	for len(data) > 0 {
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		if t := bytes.TrimSpace(line); len(t) > 0 {
			return t
		}
	}
	return nil
}

// newReplacer builds a deterministic replacer: longer keys first, then by
// key, so overlapping placeholders resolve the same way every run.
func newReplacer(m map[string]string) *strings.Replacer {
	keys := make([]string, 0, len(m))
	for k := range m {
		if k != "" {
			keys = append(keys, k)
		}
	}
	sort.Slice(keys, func(i, j int) bool {
		if len(keys[i]) != len(keys[j]) {
			return len(keys[i]) > len(keys[j])
		}
		return keys[i] < keys[j]
	})
	pairs := make([]string, 0, 2*len(keys))
	for _, k := range keys {
		pairs = append(pairs, k, m[k])
	}
	return strings.NewReplacer(pairs...)
}

// parser accumulates the records of one file.
type parser struct {
	name string
	opts Options
	kind Format // record kind of the file; FormatAuto until detected
	repl *strings.Replacer
	rs   *RecordSet
}

// bad reports a malformed record: it returns err, or with SkipBad counts it
// and returns nil.
func (p *parser) bad(err *RecordError) error {
	if !p.opts.SkipBad {
		return err
	}
	p.rs.Stats.Skipped++
	p.rs.Stats.drop(DropMalformed, err.File, err.Line)
	if len(p.rs.Stats.SkipErrors) < maxSkipErrors {
		p.rs.Stats.SkipErrors = append(p.rs.Stats.SkipErrors, err)
	}
	return nil
}

// replace applies the Replace option to s.
func (p *parser) replace(s string) string {
	if p.repl == nil {
		return s
	}
	return p.repl.Replace(s)
}

func (p *parser) readPlain(all []byte) error {
	all = bytes.TrimPrefix(all, utf8BOM)
	if len(bytes.TrimSpace(all)) == 0 {
		return fmt.Errorf("read %s: %w: the file is empty", p.name, ErrNoExamples)
	}
	p.rs.Format = FormatPlain
	p.rs.Records = append(p.rs.Records, Record{Kind: FormatPlain, Text: p.replace(string(all)), File: p.name, Line: 1})
	return nil
}

func (p *parser) readJSONL(br *bufio.Reader) error {
	maxLine := p.opts.MaxLineBytes
	if maxLine <= 0 {
		maxLine = DefaultMaxLineBytes
	}
	lr := &lineReader{r: br, max: maxLine}
	for {
		line, tooLong, err := lr.next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s:%d: %w", p.name, lr.line+1, err)
		}
		if tooLong {
			if err := p.bad(malformed(p.name, lr.line, "line longer than %d bytes (raise the maximum line size)", maxLine)); err != nil {
				return err
			}
			continue
		}
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		if err := p.value(line, lr.line); err != nil {
			return err
		}
	}
}

func (p *parser) readArray(all []byte) error {
	all = bytes.TrimPrefix(all, utf8BOM)
	dec := json.NewDecoder(bytes.NewReader(all))
	lc := &lineCounter{data: all}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('[') {
		return malformed(p.name, 1, "invalid JSON: want an array of objects")
	}
	for dec.More() {
		start := skipSep(all, int(dec.InputOffset()))
		line := lc.at(start)
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return malformed(p.name, line, "invalid JSON: %v", err)
		}
		if err := p.value(raw, line); err != nil {
			return err
		}
	}
	if _, err := dec.Token(); err != nil {
		return malformed(p.name, lc.at(int(dec.InputOffset())), "invalid JSON: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return malformed(p.name, lc.at(int(dec.InputOffset())), "invalid JSON: data after the top-level array")
	}
	return nil
}

// skipSep returns the offset of the first byte at or after off that is not
// white space or a comma.
func skipSep(data []byte, off int) int {
	for off < len(data) {
		switch data[off] {
		case ' ', '\t', '\r', '\n', ',':
			off++
			continue
		}
		break
	}
	return off
}

// lineCounter maps increasing byte offsets to 1-based line numbers.
type lineCounter struct {
	data []byte
	off  int
	line int
}

func (c *lineCounter) at(off int) int {
	off = min(off, len(c.data))
	if off < c.off {
		c.off, c.line = 0, 0
	}
	c.line += bytes.Count(c.data[c.off:off], []byte{'\n'})
	c.off = off
	return c.line + 1
}

// lineReader reads lines of any length, reporting those over max bytes
// without keeping them in memory.
type lineReader struct {
	r    *bufio.Reader
	max  int
	line int // number of the last line returned
	buf  []byte
}

// next returns the next line without its line ending. tooLong reports a
// line over the maximum (its content is then dropped); io.EOF ends the input.
func (lr *lineReader) next() (line []byte, tooLong bool, err error) {
	lr.buf = lr.buf[:0]
	got := false
	for {
		chunk, err := lr.r.ReadSlice('\n')
		got = got || len(chunk) > 0
		if !tooLong {
			if len(lr.buf)+len(chunk) > lr.max+2 {
				tooLong = true
				lr.buf = lr.buf[:0]
			} else {
				lr.buf = append(lr.buf, chunk...)
			}
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err == io.EOF && !got {
			return nil, false, io.EOF
		}
		if err != nil && err != io.EOF {
			return nil, false, err
		}
		break
	}
	lr.line++
	line = bytes.TrimSuffix(lr.buf, []byte{'\n'})
	line = bytes.TrimSuffix(line, []byte{'\r'})
	if lr.line == 1 {
		line = bytes.TrimPrefix(line, utf8BOM)
	}
	if len(line) > lr.max {
		tooLong = true
	}
	return line, tooLong, nil
}

// value parses one JSON value (a record) that starts at line.
func (p *parser) value(raw []byte, line int) error {
	rec, rerr := p.record(bytes.TrimSpace(raw), line)
	if rerr != nil {
		return p.bad(rerr)
	}
	p.rs.Records = append(p.rs.Records, rec)
	return nil
}

// record validates one JSON value against the file's record kind.
func (p *parser) record(raw []byte, line int) (Record, *RecordError) {
	bad := func(format string, args ...any) (Record, *RecordError) {
		return Record{}, malformed(p.name, line, format, args...)
	}
	if len(raw) == 0 {
		return bad("empty record")
	}
	if !json.Valid(raw) {
		var v any
		return bad("invalid JSON: %v", json.Unmarshal(raw, &v))
	}
	if raw[0] != '{' {
		return bad("want a JSON object, got %s", jsonKind(raw))
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil {
		return bad("invalid JSON: %v", err)
	}
	kind := p.kind
	if kind == FormatAuto {
		kind = detectKind(obj)
		if kind == FormatAuto {
			return bad(`cannot tell the format: the object has none of the fields "text", "prompt"/"completion", "instruction"/"output", "messages"`)
		}
		p.kind = kind
		p.rs.Format = kind
	}
	rec := Record{File: p.name, Line: line}
	var problem string
	switch kind {
	case FormatText:
		rec.Kind = FormatText
		rec.Text, problem = stringField(obj, "text", nonEmpty)
	case FormatCompletion:
		rec.Kind = FormatCompletion
		rec.Prompt, problem = stringField(obj, "prompt", present)
		if problem == "" {
			rec.Completion, problem = stringField(obj, "completion", nonEmpty)
		}
	case FormatAlpaca:
		rec.Kind = FormatCompletion
		rec.Prompt, rec.Completion, problem = p.alpaca(obj)
	case FormatChat:
		rec.Kind = FormatChat
		rec.Messages, problem = messagesField(obj)
	default:
		return bad("record kind %q cannot be read from JSON", kind)
	}
	if problem != "" {
		return bad("%s", problem)
	}
	rec.Text, rec.Prompt, rec.Completion = p.replace(rec.Text), p.replace(rec.Prompt), p.replace(rec.Completion)
	for i := range rec.Messages {
		rec.Messages[i].Content = p.replace(rec.Messages[i].Content)
	}
	return rec, nil
}

// alpaca renders an Alpaca record into prompt and completion. The
// replacement map is applied to the fields before rendering, so the
// template's own text is left alone.
func (p *parser) alpaca(obj map[string]json.RawMessage) (prompt, completion, problem string) {
	instruction, problem := stringField(obj, "instruction", nonEmpty)
	if problem != "" {
		return "", "", problem
	}
	input, problem := stringField(obj, "input", optional)
	if problem != "" {
		return "", "", problem
	}
	completion, problem = stringField(obj, "output", nonEmpty)
	if problem != "" {
		return "", "", problem
	}
	tmpl := p.opts.AlpacaPromptNoInput
	if tmpl == "" {
		tmpl = AlpacaPromptNoInput
	}
	if strings.TrimSpace(input) != "" {
		tmpl = p.opts.AlpacaPromptInput
		if tmpl == "" {
			tmpl = AlpacaPromptInput
		}
	}
	r := strings.NewReplacer("{instruction}", p.replace(instruction), "{input}", p.replace(input))
	return r.Replace(tmpl), completion, ""
}

// detectKind tells the record kind from an object's fields, or FormatAuto.
func detectKind(obj map[string]json.RawMessage) Format {
	has := func(k string) bool { _, ok := obj[k]; return ok }
	switch {
	case has("messages"):
		return FormatChat
	case has("instruction") || has("output"):
		return FormatAlpaca
	case has("prompt") || has("completion"):
		return FormatCompletion
	case has("text"):
		return FormatText
	}
	return FormatAuto
}

// need says how strictly a field is required.
type need int

const (
	optional need = iota // may be missing, null or empty
	present              // must be a string, may be empty
	nonEmpty             // must be a string with non-space content
)

// stringField extracts a string field; problem describes what is wrong.
func stringField(obj map[string]json.RawMessage, key string, n need) (s, problem string) {
	raw, ok := obj[key]
	if !ok || jsonKind(raw) == "null" {
		if n == optional {
			return "", ""
		}
		return "", fmt.Sprintf("missing field %q", key)
	}
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", fmt.Sprintf("field %q: want a string, got %s", key, jsonKind(raw))
	}
	if n == nonEmpty && strings.TrimSpace(s) == "" {
		return "", fmt.Sprintf("field %q is empty", key)
	}
	return s, ""
}

// messagesField extracts and checks a chat record's "messages".
func messagesField(obj map[string]json.RawMessage) ([]ChatMessage, string) {
	raw, ok := obj["messages"]
	if !ok || jsonKind(raw) == "null" {
		return nil, `missing field "messages"`
	}
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		return nil, fmt.Sprintf(`field "messages": want an array, got %s`, jsonKind(raw))
	}
	if len(items) == 0 {
		return nil, `field "messages" is empty`
	}
	msgs := make([]ChatMessage, len(items))
	for i, it := range items {
		var m map[string]json.RawMessage
		if err := json.Unmarshal(it, &m); err != nil || m == nil {
			return nil, fmt.Sprintf("messages[%d]: want an object, got %s", i, jsonKind(it))
		}
		role, problem := stringField(m, "role", nonEmpty)
		if problem == "" {
			msgs[i].Content, problem = stringField(m, "content", present)
		}
		if problem != "" {
			return nil, fmt.Sprintf("messages[%d]: %s", i, problem)
		}
		msgs[i].Role = role
	}
	if msgs[0].Role == RoleAssistant {
		return nil, "messages[0]: a conversation cannot start with an assistant turn"
	}
	return msgs, ""
}

// jsonKind names the JSON type of a valid value.
func jsonKind(raw []byte) string {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return "nothing"
	}
	switch raw[0] {
	case '{':
		return "object"
	case '[':
		return "array"
	case '"':
		return "string"
	case 't', 'f':
		return "boolean"
	case 'n':
		return "null"
	}
	return "number"
}

// boundedReader fails with ErrTooLarge once more than limit bytes are read.
type boundedReader struct {
	r           io.Reader
	left, limit int64
}

func (b *boundedReader) Read(p []byte) (int, error) {
	if b.left < 0 {
		return 0, fmt.Errorf("%w: more than %d bytes (raise the limit with --max-data-bytes)", ErrTooLarge, b.limit)
	}
	if int64(len(p)) > b.left+1 {
		p = p[:b.left+1]
	}
	n, err := b.r.Read(p)
	b.left -= int64(n)
	if b.left < 0 {
		return n, fmt.Errorf("%w: more than %d bytes (raise the limit with --max-data-bytes)", ErrTooLarge, b.limit)
	}
	return n, err
}

// firstSkip is ", the first: ERROR" for a read that skipped malformed
// records, or "".
func firstSkip(s Stats) string {
	if len(s.SkipErrors) == 0 {
		return ""
	}
	return ", the first: " + s.SkipErrors[0].Error()
}
