package binding

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"os"
	"slices"
	"strings"
)

// GGUF value types (gguf.h).
const (
	kvU8 = iota
	kvI8
	kvU16
	kvI16
	kvU32
	kvI32
	kvF32
	kvBool
	kvString
	kvArray
	kvU64
	kvI64
	kvF64
	kvTypeCount
)

var ggufTypeSize = [kvTypeCount]int64{
	kvU8: 1, kvI8: 1, kvU16: 2, kvI16: 2, kvU32: 4, kvI32: 4, kvF32: 4,
	kvBool: 1, kvU64: 8, kvI64: 8, kvF64: 8,
}

const (
	ggufDefaultAlignment = 32
	ggufMaxName          = 64 // GGML_MAX_NAME, including the terminating NUL
	ggufMaxVersion       = 3
)

// ggufScanner reads a GGUF file sequentially, tracking its position, and
// never allocates more than the bytes the file still holds.
type ggufScanner struct {
	r    *bufio.Reader
	pos  int64
	size int64
	buf  [8]byte
}

var errTruncated = errors.New("unexpected end of file")

func (s *ggufScanner) left() int64 { return s.size - s.pos }

func (s *ggufScanner) read(n int) ([]byte, error) {
	if int64(n) > s.left() {
		return nil, errTruncated
	}
	if _, err := io.ReadFull(s.r, s.buf[:n]); err != nil {
		return nil, errTruncated
	}
	s.pos += int64(n)
	return s.buf[:n], nil
}

func (s *ggufScanner) u32() (uint32, error) {
	b, err := s.read(4)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(b), nil
}

func (s *ggufScanner) u64() (uint64, error) {
	b, err := s.read(8)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(b), nil
}

func (s *ggufScanner) skip(n int64) error {
	if n < 0 || n > s.left() {
		return errTruncated
	}
	if _, err := s.r.Discard(int(n)); err != nil {
		return errTruncated
	}
	s.pos += n
	return nil
}

// str reads a string; keep returns its bytes, otherwise they are skipped.
func (s *ggufScanner) str(keep bool) (string, error) {
	n, err := s.u64()
	if err != nil {
		return "", err
	}
	if n > uint64(s.left()) {
		return "", fmt.Errorf("string of %d bytes exceeds the file", n)
	}
	if !keep {
		return "", s.skip(int64(n))
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(s.r, b); err != nil {
		return "", errTruncated
	}
	s.pos += int64(n)
	return string(b), nil
}

// validateGGUF parses the header, metadata and tensor directory of a GGUF
// file in Go and checks everything that gguf_init_from_file or libllama's
// loader would otherwise handle with an abort, a division by zero or an
// allocation as large as a corrupt count: magic and version, counts bounded
// by the file size, value types, string and array lengths, the alignment
// key, tensor names, dimensions, types, offsets and data ranges.
func validateGGUF(path string) error {
	// Stat before opening: opening a FIFO without a writer blocks forever.
	before, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !before.Mode().IsRegular() {
		return fmt.Errorf("%w: %s is not a regular file (%v)", ErrNotRegular, path, before.Mode().Type())
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%w: %s is not a regular file", ErrInvalidGGUF, path)
	}
	if !os.SameFile(st, before) {
		return fmt.Errorf("%s changed while it was opened", path)
	}
	s := &ggufScanner{r: bufio.NewReaderSize(f, 1<<16), size: st.Size()}
	if err := s.validate(); err != nil {
		if errors.Is(err, errTruncated) {
			return fmt.Errorf("%w: truncated at byte %d of %d", ErrInvalidGGUF, s.pos, s.size)
		}
		return fmt.Errorf("%w: %w (at byte %d)", ErrInvalidGGUF, err, s.pos)
	}
	return nil
}

func (s *ggufScanner) validate() error {
	magic, err := s.read(4)
	if err != nil {
		return errTruncated
	}
	if string(magic) != "GGUF" {
		return fmt.Errorf("bad magic %q (not a GGUF file)", magic)
	}
	version, err := s.u32()
	if err != nil {
		return err
	}
	if version < 2 || version > ggufMaxVersion {
		return fmt.Errorf("unsupported GGUF version %d", version)
	}
	nt, err := s.u64()
	if err != nil {
		return err
	}
	nkv, err := s.u64()
	if err != nil {
		return err
	}
	// The smallest key-value pair takes 13 bytes, the smallest tensor entry 24.
	if nkv > uint64(s.left())/13 || nt > uint64(s.left())/24 {
		return fmt.Errorf("%d tensors and %d metadata entries cannot fit in the file", nt, nkv)
	}
	alignment := int64(ggufDefaultAlignment)
	keys := make(map[string]bool, nkv)
	kinds := make(map[string]kvInfo, nkv)
	var tokens []string
	for i := uint64(0); i < nkv; i++ {
		key, err := s.str(true)
		if err != nil {
			return fmt.Errorf("metadata key %d: %w", i, err)
		}
		if keys[key] {
			return fmt.Errorf("duplicate metadata key %q", key)
		}
		keys[key] = true
		typ, err := s.u32()
		if err != nil {
			return err
		}
		if key == "general.alignment" {
			if typ != kvU32 {
				return fmt.Errorf("general.alignment has type %d, want u32", typ)
			}
			a, err := s.u32()
			if err != nil {
				return err
			}
			if a == 0 || a&(a-1) != 0 {
				return fmt.Errorf("general.alignment %d is not a power of two", a)
			}
			alignment = int64(a)
			continue
		}
		info, strs, err := s.value(typ, key == "tokenizer.ggml.tokens" || key == "tokenizer.ggml.model" || key == "general.architecture" || strings.HasSuffix(key, ".rope.scaling.type"))
		if err != nil {
			return fmt.Errorf("metadata key %q: %w", key, err)
		}
		kinds[key] = info
		if strs != nil {
			tokens = strs
		}
	}
	if err := checkLlamaKeys(kinds, tokens); err != nil {
		return err
	}
	var dataSize int64
	type entry struct {
		name   string
		offset uint64
		bytes  int64
	}
	entries := make([]entry, 0, nt)
	names := make(map[string]bool, nt)
	for i := uint64(0); i < nt; i++ {
		name, err := s.str(true)
		if err != nil {
			return fmt.Errorf("tensor %d name: %w", i, err)
		}
		if len(name) >= ggufMaxName {
			return fmt.Errorf("tensor %d name of %d bytes is too long", i, len(name))
		}
		if names[name] {
			return fmt.Errorf("duplicate tensor %q", name)
		}
		names[name] = true
		nd, err := s.u32()
		if err != nil {
			return err
		}
		if nd < 1 || nd > 4 {
			return fmt.Errorf("tensor %q has %d dimensions", name, nd)
		}
		ne := [4]int64{1, 1, 1, 1}
		n := int64(1)
		for d := uint32(0); d < nd; d++ {
			v, err := s.u64()
			if err != nil {
				return err
			}
			if v == 0 || v > math.MaxInt64 {
				return fmt.Errorf("tensor %q has dimension %d of size %d", name, d, int64(v))
			}
			hi, lo := bits.Mul64(uint64(n), v)
			if hi != 0 || lo > math.MaxInt64 {
				return fmt.Errorf("tensor %q has too many elements", name)
			}
			ne[d], n = int64(v), int64(lo)
		}
		tv, err := s.u32()
		if err != nil {
			return err
		}
		typ := Type(int32(tv))
		if !typ.Valid() {
			return fmt.Errorf("tensor %q has invalid type %d", name, int32(tv))
		}
		if ne[0]%typ.BlockSize() != 0 {
			return fmt.Errorf("tensor %q: row of %d elements is not a multiple of the %v block size %d", name, ne[0], typ, typ.BlockSize())
		}
		off, err := s.u64()
		if err != nil {
			return err
		}
		// n/blck*size, guarded against overflow (the file bounds it anyway).
		hi, nbytes := bits.Mul64(uint64(n/typ.BlockSize()), uint64(typ.BlockBytes()))
		if hi != 0 || nbytes > uint64(s.size) {
			return fmt.Errorf("tensor %q of %v %v is larger than the file", name, typ, ne)
		}
		entries = append(entries, entry{name: name, offset: off, bytes: int64(nbytes)})
	}
	dataOffset := (s.pos + alignment - 1) / alignment * alignment
	for _, e := range entries {
		if e.offset != uint64(dataSize) {
			return fmt.Errorf("tensor %q has data offset %d, expected %d", e.name, e.offset, dataSize)
		}
		if dataOffset+dataSize+e.bytes > s.size {
			return fmt.Errorf("tensor %q data (bytes %d..%d) ends past the end of the file (%d bytes)",
				e.name, dataOffset+dataSize, dataOffset+dataSize+e.bytes, s.size)
		}
		dataSize += (e.bytes + alignment - 1) / alignment * alignment
	}
	return nil
}

// kvInfo describes a metadata value: its type and, for arrays, the element
// type and count.
type kvInfo struct {
	typ, elem uint32
	n         uint64
	first4    [4]byte // the first bytes of a byte array
	num       int64   // the value of an integer scalar
	f         float64 // the value of a float scalar
	str       string  // the value of a string scalar that was kept
}

// value skips one metadata value of type typ, checking it. With keep, the
// strings of a string array are returned.
func (s *ggufScanner) value(typ uint32, keep bool) (kvInfo, []string, error) {
	info := kvInfo{typ: typ}
	switch {
	case typ == kvString:
		v, err := s.str(keep)
		info.str = v
		return info, nil, err
	case typ == kvArray:
		et, err := s.u32()
		if err != nil {
			return info, nil, err
		}
		n, err := s.u64()
		if err != nil {
			return info, nil, err
		}
		info.elem, info.n = et, n
		switch {
		case et == kvString:
			if n > uint64(s.left())/8 {
				return info, nil, fmt.Errorf("array of %d strings exceeds the file", n)
			}
			var out []string
			if keep {
				out = make([]string, 0, n)
			}
			for j := uint64(0); j < n; j++ {
				v, err := s.str(keep)
				if err != nil {
					return info, nil, err
				}
				if keep {
					out = append(out, v)
				}
			}
			return info, out, nil
		case et < kvTypeCount && et != kvArray:
			size := ggufTypeSize[et]
			if n > uint64(s.left())/uint64(size) {
				return info, nil, fmt.Errorf("array of %d values exceeds the file", n)
			}
			total := int64(n) * size
			if total >= 4 {
				b, err := s.read(4)
				if err != nil {
					return info, nil, err
				}
				copy(info.first4[:], b)
				total -= 4
			}
			return info, nil, s.skip(total)
		default:
			return info, nil, fmt.Errorf("invalid array element type %d", et)
		}
	case typ < kvTypeCount:
		b, err := s.read(int(ggufTypeSize[typ]))
		if err != nil {
			return info, nil, err
		}
		switch typ {
		case kvU8:
			info.num = int64(b[0])
		case kvI8:
			info.num = int64(int8(b[0]))
		case kvU16:
			info.num = int64(binary.LittleEndian.Uint16(b))
		case kvI16:
			info.num = int64(int16(binary.LittleEndian.Uint16(b)))
		case kvU32:
			info.num = int64(binary.LittleEndian.Uint32(b))
		case kvI32:
			info.num = int64(int32(binary.LittleEndian.Uint32(b)))
		case kvU64, kvI64:
			info.num = int64(binary.LittleEndian.Uint64(b)) // huge u64 values become negative
		case kvF32:
			info.f = float64(math.Float32frombits(binary.LittleEndian.Uint32(b)))
		case kvF64:
			info.f = math.Float64frombits(binary.LittleEndian.Uint64(b))
		}
		return info, nil, nil
	}
	return info, nil, fmt.Errorf("invalid value type %d", typ)
}

// checkLlamaKeys checks the metadata that libllama reads with ggml's gguf
// accessors directly (which assert on a wrong type, or index arrays without
// checking their length) instead of through its checked key readers.
func checkLlamaKeys(kinds map[string]kvInfo, tokens []string) error {
	isArray := func(key string, elems ...uint32) error {
		info, ok := kinds[key]
		if !ok {
			return nil
		}
		if info.typ == kvArray {
			for _, e := range elems {
				if info.elem == e {
					return nil
				}
			}
		}
		return fmt.Errorf("metadata key %q has type %d/%d, want an array of type %v", key, info.typ, info.elem, elems)
	}
	for key, elems := range map[string][]uint32{
		"tokenizer.ggml.tokens":               {kvString},
		"tokenizer.ggml.merges":               {kvString},
		"tokenizer.ggml.scores":               {kvF32},
		"tokenizer.ggml.token_type":           {kvI32, kvU32},
		"tokenizer.ggml.precompiled_charsmap": {kvU8, kvI8},
		"adapter.alora.invocation_tokens":     {kvU32},
	} {
		if err := isArray(key, elems...); err != nil {
			return err
		}
	}
	for key, typ := range map[string]uint32{
		"general.type":         kvString,
		"general.architecture": kvString,
		"adapter.type":         kvString,
		"adapter.lora.alpha":   kvF32,
	} {
		if info, ok := kinds[key]; ok && info.typ != typ {
			return fmt.Errorf("metadata key %q has type %d, want %d", key, info.typ, typ)
		}
	}
	if err := checkHparams(kinds); err != nil {
		return err
	}
	if err := checkTokenizerKeys(kinds); err != nil {
		return err
	}
	n := uint64(len(tokens))
	if n > math.MaxInt32 {
		return fmt.Errorf("%d tokens", n)
	}
	for _, key := range []string{"tokenizer.ggml.scores", "tokenizer.ggml.token_type"} {
		if info, ok := kinds[key]; ok && info.n < n {
			return fmt.Errorf("metadata key %q has %d values for %d tokens", key, info.n, n)
		}
	}
	if info, ok := kinds["tokenizer.ggml.precompiled_charsmap"]; ok {
		if info.n < 4 || uint64(binary.LittleEndian.Uint32(info.first4[:]))+4 >= info.n {
			return fmt.Errorf("tokenizer.ggml.precompiled_charsmap of %d bytes is malformed", info.n)
		}
	}
	seen := make(map[string]int, len(tokens))
	for i, tok := range tokens {
		if tok == "" {
			tok = fmt.Sprintf("[EMPTY_%d]", i)
		}
		if j, dup := seen[tok]; dup {
			return fmt.Errorf("tokens %d and %d are both %q", j, i, tok)
		}
		seen[tok] = i
	}
	return nil
}

// tokenizerModels are the tokenizer.ggml.model values libllama knows.
var tokenizerModels = []string{"no_vocab", "none", "llama", "bert", "gpt2", "t5", "rwkv", "plamo2"}

// checkTokenizerKeys checks the tokenizer.ggml.* scalars libllama's
// vocabulary loader reads: a wrong type or an unknown tokenizer model there
// is an exception that only says "libllama failed", so the key is named
// here instead. Token ids are u32, flags bool, names strings; a gpt2
// tokenizer needs its merges and every tokenizer but no_vocab its tokens.
func checkTokenizerKeys(kinds map[string]kvInfo) error {
	names := map[uint32]string{kvU8: "u8", kvI8: "i8", kvU16: "u16", kvI16: "i16", kvU32: "u32", kvI32: "i32", kvF32: "f32",
		kvBool: "bool", kvString: "string", kvArray: "array", kvU64: "u64", kvI64: "i64", kvF64: "f64"}
	want := func(key string, typ uint32) error {
		if info, ok := kinds[key]; ok && info.typ != typ {
			return fmt.Errorf("metadata key %s has type %s, want %s (libllama cannot read it)", key, names[info.typ], names[typ])
		}
		return nil
	}
	for _, key := range []string{"model", "pre"} {
		if err := want("tokenizer.ggml."+key, kvString); err != nil {
			return err
		}
	}
	for _, key := range []string{"add_bos_token", "add_eos_token", "add_sep_token", "add_space_prefix", "remove_extra_whitespaces"} {
		if err := want("tokenizer.ggml."+key, kvBool); err != nil {
			return err
		}
	}
	for _, key := range []string{"bos", "eos", "eot", "eom", "unknown", "seperator", "padding", "cls", "mask", "prefix", "suffix", "middle",
		"fim_pre", "fim_suf", "fim_mid", "fim_pad", "fim_rep", "fim_sep"} {
		if err := want("tokenizer.ggml."+key+"_token_id", kvU32); err != nil {
			return err
		}
	}
	if err := want("tokenizer.ggml.token_type_count", kvU32); err != nil {
		return err
	}
	info, ok := kinds["tokenizer.ggml.model"]
	if !ok {
		return nil
	}
	if !slices.Contains(tokenizerModels, info.str) {
		return fmt.Errorf("metadata key tokenizer.ggml.model is %q, want one of %s", info.str, strings.Join(tokenizerModels, ", "))
	}
	if _, ok := kinds["tokenizer.ggml.tokens"]; !ok && info.str != "no_vocab" && info.str != "none" {
		return fmt.Errorf("tokenizer.ggml.model %q without tokenizer.ggml.tokens", info.str)
	}
	if _, ok := kinds["tokenizer.ggml.merges"]; !ok && info.str == "gpt2" {
		return fmt.Errorf("tokenizer.ggml.model \"gpt2\" without tokenizer.ggml.merges")
	}
	return nil
}

// Limits of libllama (llama-hparams.h).
const (
	llamaMaxLayers  = 512
	llamaMaxExperts = 512
)

// checkHparams checks the architecture hyperparameters on which libllama's
// model loader asserts (or indexes per-layer arrays) instead of returning
// an error. Only values with an integer type are checked: libllama rejects
// other types itself.
func checkHparams(kinds map[string]kvInfo) error {
	arch := kinds["general.architecture"].str
	if arch == "" {
		return nil
	}
	num := func(key string) (int64, bool) {
		info, ok := kinds[arch+"."+key]
		if !ok || info.typ == kvString || info.typ == kvArray || info.typ == kvF32 || info.typ == kvF64 || info.typ == kvBool {
			return 0, false
		}
		return info.num, true
	}
	if n, ok := num("block_count"); ok && (n < 1 || n > llamaMaxLayers) {
		return fmt.Errorf("%s.block_count %d is outside 1..%d", arch, n, llamaMaxLayers)
	}
	experts, _ := num("expert_count")
	used, _ := num("expert_used_count")
	groups, _ := num("expert_group_count")
	groupUsed, _ := num("expert_group_used_count")
	switch {
	case experts < 0 || experts > llamaMaxExperts:
		return fmt.Errorf("%s.expert_count %d is outside 0..%d", arch, experts, llamaMaxExperts)
	case used < 0 || used > experts:
		return fmt.Errorf("%s.expert_used_count %d exceeds expert_count %d", arch, used, experts)
	case experts == 0 && (used != 0 || groups != 0):
		return fmt.Errorf("%s: expert counts without experts", arch)
	case experts > 0 && (used == 0 || groups < 0 || groups >= experts):
		return fmt.Errorf("%s: %d experts with %d used in %d groups", arch, experts, used, groups)
	case groups > 1 && (experts%groups != 0 || groupUsed <= 0 || groupUsed >= groups):
		return fmt.Errorf("%s: %d experts in %d groups with %d used", arch, experts, groups, groupUsed)
	}
	for _, key := range []string{"attention.layer_norm_rms_epsilon", "attention.layer_norm_epsilon"} {
		if info, ok := kinds[arch+"."+key]; ok && info.typ == kvF32 && !(info.f >= 0) {
			return fmt.Errorf("%s.%s %v is negative", arch, key, info.f)
		}
	}
	if info, ok := kinds[arch+".rope.scaling.type"]; ok && info.typ == kvString {
		switch info.str {
		case "none", "linear", "yarn", "longrope":
		default:
			return fmt.Errorf("%s.rope.scaling.type %q is not none, linear, yarn or longrope", arch, info.str)
		}
	}
	return nil
}

// CheckVocab returns an error wrapping [ErrVocabMismatch] unless the token
// list (tokenizer.ggml.tokens, if present) has one entry per row of
// token_embd.weight and of output.weight: libllama indexes its token list
// with ids the graph produces. OpenGGUF does not check it (the container is
// valid); model loaders do.
func (f *GGUFFile) CheckVocab() error {
	v, ok := f.Get("tokenizer.ggml.tokens")
	if !ok {
		return nil
	}
	tokens, _ := v.([]string)
	for _, name := range []string{"token_embd.weight", "output.weight"} {
		if ti, ok := f.TensorInfo(name); ok && len(ti.Shape) == 2 && ti.Shape[1] != int64(len(tokens)) {
			return fmt.Errorf("%w: tokenizer.ggml.tokens has %d tokens but tensor %s has %d rows (one per token)",
				ErrVocabMismatch, len(tokens), name, ti.Shape[1])
		}
	}
	return nil
}
