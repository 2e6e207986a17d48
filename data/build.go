package data

import (
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"sort"
	"strings"
)

// splitStream is the PCG stream of [Dataset.Split]; loaders use the epoch
// number as the stream, so the split never shares a sequence with them.
const splitStream = 0x73706c6974 // "split"

// Example is one tokenized training sequence.
type Example struct {
	// Tokens is the sequence, at most the data set's context length.
	Tokens []int32
	// Target[i] reports whether Tokens[i] is a prediction target (carries
	// loss, predicted from Tokens[:i]). Target[0] is always false.
	Target []bool
	// File and Line locate the record the example came from.
	File string
	Line int
}

// Targets counts the example's target tokens.
func (e *Example) Targets() int {
	n := 0
	for _, t := range e.Target {
		if t {
			n++
		}
	}
	return n
}

// DropReason says why a record or example is not trained on.
type DropReason string

// The reasons, as printed in [Stats.DropSummary].
const (
	// DropMalformed is a malformed record skipped with Options.SkipBad.
	DropMalformed DropReason = "malformed, skipped (--skip-bad)"
	// DropUnknownRole is a chat record with a role other than system,
	// user, assistant and tool.
	DropUnknownRole DropReason = "unknown chat role"
	// DropNoAssistant is a chat record without an assistant turn (nothing
	// to train unless Options.TrainOnPrompt).
	DropNoAssistant DropReason = "no assistant turn"
	// DropTooLong is an example whose targets all lie past the context
	// length (a prompt longer than --ctx).
	DropTooLong DropReason = "prompt longer than the context (--ctx)"
	// DropNoTarget is an example without any target token (for example a
	// single-token text).
	DropNoTarget DropReason = "no target token"
)

// Stats counts what reading and tokenizing did.
type Stats struct {
	// Records is the number of usable records read.
	Records int
	// Skipped is the number of malformed records skipped (Options.SkipBad).
	Skipped int
	// SkipErrors holds the first ten skipped records' errors.
	SkipErrors []error
	// Examples is the number of examples kept.
	Examples int
	// Truncated is the number of examples cut to the context length.
	Truncated int
	// Dropped is the number of records and examples not kept for any
	// reason but DropMalformed (those are Skipped).
	Dropped int
	// Drops counts every record or example not kept by reason (malformed
	// skips included); nil when none was.
	Drops map[DropReason]int
	// FirstDrop locates the first drop of each reason (file:line).
	FirstDrop map[DropReason]string
	// Tokens is the total number of tokens in the kept examples.
	Tokens int
	// Targets is the total number of target tokens in the kept examples.
	Targets int
}

// drop counts one record or example not kept for reason, at file:line.
func (s *Stats) drop(reason DropReason, file string, line int) {
	if s.Drops == nil {
		s.Drops, s.FirstDrop = map[DropReason]int{}, map[DropReason]string{}
	}
	if s.Drops[reason] == 0 {
		s.FirstDrop[reason] = fmt.Sprintf("%s:%d", file, line)
	}
	s.Drops[reason]++
	if reason != DropMalformed {
		s.Dropped++
	}
}

// DropSummary describes the drops, e.g. "dropped 3: 2 unknown chat role
// (first at a.jsonl:4), 1 no assistant turn (first at a.jsonl:9)", or ""
// when nothing was dropped.
func (s Stats) DropSummary() string {
	if len(s.Drops) == 0 {
		return ""
	}
	reasons := make([]DropReason, 0, len(s.Drops))
	total := 0
	for r, n := range s.Drops {
		reasons = append(reasons, r)
		total += n
	}
	sort.Slice(reasons, func(i, j int) bool {
		if s.Drops[reasons[i]] != s.Drops[reasons[j]] {
			return s.Drops[reasons[i]] > s.Drops[reasons[j]]
		}
		return reasons[i] < reasons[j]
	})
	parts := make([]string, len(reasons))
	for i, r := range reasons {
		parts[i] = fmt.Sprintf("%d %s (first at %s)", s.Drops[r], r, s.FirstDrop[r])
	}
	return fmt.Sprintf("dropped %d: %s", total, strings.Join(parts, ", "))
}

// Summary is one line about the data set for logs: records, examples,
// tokens, truncations and drops.
func (d *Dataset) Summary() string {
	s := fmt.Sprintf("data %s: %d records -> %d examples, %d tokens (%d targets)", d.Name, d.Stats.Records, d.Stats.Examples, d.Stats.Tokens, d.Stats.Targets)
	if d.Stats.Truncated > 0 {
		s += fmt.Sprintf(", %d truncated to %d tokens", d.Stats.Truncated, d.Context)
	}
	if ds := d.Stats.DropSummary(); ds != "" {
		s += "; " + ds
	}
	return s
}

// Dataset is a tokenized data set ready for a [Loader].
type Dataset struct {
	// Name identifies the source (usually the file path).
	Name string
	// Format is the source's format.
	Format Format
	// Context is the length T examples were cut to.
	Context int
	// Pad is the token written at padding positions (EOS, or 0 if the
	// vocabulary has none); padding never carries loss.
	Pad int32
	// Examples are the examples in source order.
	Examples []Example
	// Stats describes reading and tokenizing.
	Stats Stats
}

// Len returns the number of examples.
func (d *Dataset) Len() int { return len(d.Examples) }

// Load reads the data file at path and tokenizes it: [ReadFile] then
// [Build].
func Load(path string, tok Tokenizer, opts Options) (*Dataset, error) {
	rs, err := ReadFile(path, opts)
	if err != nil {
		return nil, err
	}
	return Build(rs, tok, opts)
}

// Build tokenizes records into examples (see the package documentation for
// BOS/EOS, targets and windows). Examples longer than opts.Context are
// truncated to it, keeping their start; examples left without a target are
// dropped. Both are counted in the data set's Stats.
func Build(rs *RecordSet, tok Tokenizer, opts Options) (*Dataset, error) {
	if rs == nil || tok == nil {
		return nil, fmt.Errorf("build data: nil record set or tokenizer")
	}
	if opts.Context < 2 {
		return nil, fmt.Errorf("build %s: context length %d: want at least 2", rs.Name, opts.Context)
	}
	b := &builder{tok: tok, opts: opts, bos: tok.BOS(), eos: tok.EOS()}
	b.addBOS = tok.AddBOS() && b.bos >= 0
	ds := &Dataset{Name: rs.Name, Format: rs.Format, Context: opts.Context, Stats: rs.Stats}
	ds.Stats.Records = len(rs.Records)
	ds.Stats.Drops, ds.Stats.FirstDrop = maps.Clone(rs.Stats.Drops), maps.Clone(rs.Stats.FirstDrop)
	if b.eos >= 0 {
		ds.Pad = b.eos
	}
	for i := range rs.Records {
		rec := &rs.Records[i]
		var (
			exs []Example
			err error
		)
		switch rec.Kind {
		case FormatPlain:
			exs, err = b.plain(rec)
		case FormatText:
			exs, err = b.text(rec)
		case FormatCompletion:
			exs, err = b.completion(rec)
		case FormatChat:
			var reason DropReason
			exs, reason, err = b.chat(rec)
			if reason != "" {
				ds.Stats.drop(reason, rec.File, rec.Line)
				continue
			}
		default:
			err = fmt.Errorf("%w: record kind %q", ErrFormat, rec.Kind)
		}
		if err != nil {
			return nil, &RecordError{File: rec.File, Line: rec.Line, Err: err}
		}
		for _, ex := range exs {
			ds.add(ex)
		}
	}
	if len(ds.Examples) == 0 {
		return nil, fmt.Errorf("build %s: %w: nothing trainable in %d records; %s", rs.Name, ErrNoExamples, len(rs.Records), ds.Stats.DropSummary())
	}
	return ds, nil
}

// add truncates ex to the context, drops it if it has no target, and counts it.
func (d *Dataset) add(ex Example) {
	truncated := d.Stats.Truncated
	if len(ex.Tokens) > d.Context {
		ex.Tokens, ex.Target = ex.Tokens[:d.Context:d.Context], ex.Target[:d.Context:d.Context]
		d.Stats.Truncated++
	}
	n := ex.Targets()
	if n == 0 {
		reason := DropNoTarget
		if d.Stats.Truncated > truncated {
			reason = DropTooLong
		}
		d.Stats.drop(reason, ex.File, ex.Line)
		return
	}
	d.Examples = append(d.Examples, ex)
	d.Stats.Examples++
	d.Stats.Tokens += len(ex.Tokens)
	d.Stats.Targets += n
}

// Split divides the examples into a training and a validation set:
// round(valFraction * Len()) examples (at least one) chosen by a permutation
// from rand.NewPCG(seed, 0x73706c6974) go to validation, the rest to
// training, each keeping source order. The result depends only on the
// number of examples, valFraction and seed. Plain-text windows that overlap
// share tokens across the split. The subsets' Stats count only Examples,
// Tokens and Targets.
func (d *Dataset) Split(valFraction float64, seed uint64) (train, val *Dataset, err error) {
	n := len(d.Examples)
	if !(valFraction > 0 && valFraction < 1) {
		return nil, nil, fmt.Errorf("split %s: validation fraction %g: want 0 < f < 1", d.Name, valFraction)
	}
	k := max(int(math.Round(valFraction*float64(n))), 1)
	if k >= n {
		return nil, nil, fmt.Errorf("split %s: %d examples are too few to hold out a fraction %g", d.Name, n, valFraction)
	}
	isVal := make([]bool, n)
	for _, i := range rand.New(rand.NewPCG(seed, splitStream)).Perm(n)[:k] {
		isVal[i] = true
	}
	train, val = d.subset(d.Name+" (train)"), d.subset(d.Name+" (validation)")
	for i, ex := range d.Examples {
		if isVal[i] {
			val.add(ex)
		} else {
			train.add(ex)
		}
	}
	return train, val, nil
}

// subset returns an empty data set with d's settings.
func (d *Dataset) subset(name string) *Dataset {
	return &Dataset{Name: name, Format: d.Format, Context: d.Context, Pad: d.Pad}
}

// builder tokenizes records.
type builder struct {
	tok      Tokenizer
	opts     Options
	bos, eos int32
	addBOS   bool
	tmpl     string // resolved chat template; "" until the first chat record
}

// encode tokenizes s with the vocabulary's special-token convention and
// drops a BOS doubled by text that already starts with one.
func (b *builder) encode(s string, parseSpecial bool) ([]int32, error) {
	t, err := b.tok.Tokenize(s, true, parseSpecial)
	if err != nil {
		return nil, fmt.Errorf("tokenize: %w", err)
	}
	if b.addBOS && len(t) >= 2 && t[0] == b.bos && t[1] == b.bos {
		t = t[1:]
	}
	return t, nil
}

// boundary returns the number of leading tokens of full that prefix
// renders to: the common prefix of full and the tokens of prefix.
func (b *builder) boundary(full []int32, prefix string, parseSpecial bool) (int, error) {
	p, err := b.encode(prefix, parseSpecial)
	if err != nil {
		return 0, err
	}
	n := 0
	for n < len(p) && n < len(full) && p[n] == full[n] {
		n++
	}
	return n, nil
}

// targets returns target flags for n tokens, true from index from on
// (never at index 0).
func targets(n, from int) []bool {
	t := make([]bool, n)
	for i := max(from, 1); i < n; i++ {
		t[i] = true
	}
	return t
}

func (b *builder) plain(rec *Record) ([]Example, error) {
	stream, err := b.tok.Tokenize(rec.Text, false, b.opts.ParseSpecial)
	if err != nil {
		return nil, fmt.Errorf("tokenize: %w", err)
	}
	if b.tok.AddEOS() && b.eos >= 0 {
		stream = append(stream, b.eos)
	}
	nb := 0
	if b.addBOS {
		nb = 1
	}
	win := b.opts.Context - nb
	stride := b.opts.Stride
	if stride == 0 {
		stride = win
		if nb == 0 {
			stride = win - 1
		}
	}
	if stride < 1 || stride > win {
		return nil, fmt.Errorf("stride %d: want 1 to %d (the window's text tokens)", stride, win)
	}
	var exs []Example
	prevEnd := 0
	for s := 0; s < len(stream); s += stride {
		e := min(s+win, len(stream))
		toks := make([]int32, 0, nb+e-s)
		if nb == 1 {
			toks = append(toks, b.bos)
		}
		toks = append(toks, stream[s:e]...)
		from := s
		if b.opts.MaskOverlap {
			from = max(s, prevEnd)
		}
		exs = append(exs, Example{Tokens: toks, Target: targets(len(toks), nb+from-s), File: rec.File, Line: rec.Line})
		prevEnd = e
		if e == len(stream) {
			break
		}
	}
	return exs, nil
}

func (b *builder) text(rec *Record) ([]Example, error) {
	toks, err := b.encode(rec.Text, b.opts.ParseSpecial)
	if err != nil {
		return nil, err
	}
	return []Example{{Tokens: toks, Target: targets(len(toks), 1), File: rec.File, Line: rec.Line}}, nil
}

func (b *builder) completion(rec *Record) ([]Example, error) {
	toks, err := b.encode(rec.Prompt+rec.Completion, b.opts.ParseSpecial)
	if err != nil {
		return nil, err
	}
	if b.eos >= 0 && (len(toks) == 0 || toks[len(toks)-1] != b.eos) {
		toks = append(toks, b.eos)
	}
	from := 1
	if !b.opts.TrainOnPrompt {
		if from, err = b.boundary(toks, rec.Prompt, b.opts.ParseSpecial); err != nil {
			return nil, err
		}
	}
	return []Example{{Tokens: toks, Target: targets(len(toks), from), File: rec.File, Line: rec.Line}}, nil
}

// template resolves the chat template once.
func (b *builder) template() (string, error) {
	if b.tmpl != "" {
		return b.tmpl, nil
	}
	if b.opts.Templater == nil {
		return "", fmt.Errorf("%w: chat data needs Options.Templater", ErrTemplate)
	}
	b.tmpl = b.opts.ChatTemplate
	if b.tmpl == "" {
		b.tmpl = b.tok.ChatTemplate()
	}
	if b.tmpl == "" {
		return "", fmt.Errorf("%w: the model has no chat template; set one (for example \"chatml\")", ErrTemplate)
	}
	return b.tmpl, nil
}

// render applies the chat template to msgs.
func (b *builder) render(msgs []ChatMessage, addAssistant bool) (string, error) {
	tmpl, err := b.template()
	if err != nil {
		return "", err
	}
	s, err := b.opts.Templater(tmpl, msgs, addAssistant)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrTemplate, err)
	}
	return s, nil
}

// chat tokenizes a conversation, or returns why the record is dropped.
func (b *builder) chat(rec *Record) ([]Example, DropReason, error) {
	msgs := rec.Messages
	assistant := false
	for _, m := range msgs {
		switch m.Role {
		case RoleSystem, RoleUser, RoleTool:
		case RoleAssistant:
			assistant = true
		default:
			return nil, DropUnknownRole, nil
		}
	}
	if !assistant && !b.opts.TrainOnPrompt {
		return nil, DropNoAssistant, nil
	}
	exs, err := b.chatExample(rec)
	return exs, "", err
}

func (b *builder) chatExample(rec *Record) ([]Example, error) {
	msgs := rec.Messages
	full, err := b.render(msgs, false)
	if err != nil {
		return nil, err
	}
	toks, err := b.encode(full, true)
	if err != nil {
		return nil, err
	}
	if b.opts.TrainOnPrompt {
		return []Example{{Tokens: toks, Target: targets(len(toks), 1), File: rec.File, Line: rec.Line}}, nil
	}
	target := make([]bool, len(toks))
	for i, m := range msgs {
		if m.Role != RoleAssistant {
			continue
		}
		pre, err := b.render(msgs[:i], true)
		if err != nil {
			return nil, err
		}
		post := full
		if i < len(msgs)-1 {
			if post, err = b.render(msgs[:i+1], false); err != nil {
				return nil, err
			}
		}
		if len(pre) > len(post) || !strings.HasPrefix(full, pre) || !strings.HasPrefix(full, post) {
			return nil, fmt.Errorf("%w: %q does not render messages[%d] as a prefix of the conversation", ErrTemplate, b.tmpl, i)
		}
		lo, err := b.boundary(toks, pre, true)
		if err != nil {
			return nil, err
		}
		hi, err := b.boundary(toks, post, true)
		if err != nil {
			return nil, err
		}
		for j := max(lo, 1); j < hi; j++ {
			target[j] = true
		}
	}
	return []Example{{Tokens: toks, Target: target, File: rec.File, Line: rec.Line}}, nil
}
