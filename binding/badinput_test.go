package binding_test

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/internal/fixture"
)

// openBoth opens path with OpenGGUF and libllama, closing whatever opens,
// and returns both errors.
func openBoth(path string) (ggufErr, llamaErr error) {
	f, ggufErr := binding.OpenGGUF(path)
	if ggufErr == nil {
		f.Close()
	}
	m, llamaErr := binding.LoadModel(path, binding.ModelParams{})
	if llamaErr == nil {
		m.Close()
	}
	return ggufErr, llamaErr
}

func TestBadFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, b, 0o644))
		return p
	}
	cases := map[string]string{
		"missing":   filepath.Join(dir, "does-not-exist.gguf"),
		"empty":     write("empty.gguf", nil),
		"text":      write("text.gguf", []byte("this is not a GGUF file, just some text\n")),
		"magic":     write("magic.gguf", []byte("GGUF")),
		"ggml":      write("ggml.bin", append([]byte("lmgg"), make([]byte, 64)...)),
		"directory": dir,
	}
	for name, path := range cases {
		t.Run(name, func(t *testing.T) {
			gerr, lerr := openBoth(path)
			assert.Error(t, gerr)
			assert.Error(t, lerr)
			if name != "missing" && name != "directory" {
				assert.ErrorIs(t, gerr, binding.ErrInvalidGGUF)
				assert.ErrorIs(t, lerr, binding.ErrInvalidGGUF)
			}
			assert.Contains(t, gerr.Error(), path, "errors name the file")
			_, verr := binding.LoadModel(path, binding.ModelParams{VocabOnly: true})
			assert.Error(t, verr)
		})
	}
}

// ggufBuilder writes raw GGUF structures, valid or not.
type ggufBuilder struct{ bytes.Buffer }

func (b *ggufBuilder) u32(v uint32) *ggufBuilder {
	_ = binary.Write(&b.Buffer, binary.LittleEndian, v)
	return b
}

func (b *ggufBuilder) u64(v uint64) *ggufBuilder {
	_ = binary.Write(&b.Buffer, binary.LittleEndian, v)
	return b
}

func (b *ggufBuilder) str(s string) *ggufBuilder {
	b.u64(uint64(len(s)))
	b.WriteString(s)
	return b
}

func (b *ggufBuilder) header(version uint32, nTensors, nKV uint64) *ggufBuilder {
	b.WriteString("GGUF")
	return b.u32(version).u64(nTensors).u64(nKV)
}

// tensorInfo appends a tensor directory entry.
func (b *ggufBuilder) tensorInfo(name string, typ uint32, offset uint64, ne ...uint64) *ggufBuilder {
	b.str(name).u32(uint32(len(ne)))
	for _, d := range ne {
		b.u64(d)
	}
	return b.u32(typ).u64(offset)
}

func (b *ggufBuilder) padTo(align int) *ggufBuilder {
	for b.Len()%align != 0 {
		b.WriteByte(0)
	}
	return b
}

// TestCraftedGGUF feeds hand-made headers that would make ggml's reader
// divide by zero, allocate a corrupt count or abort on a type assertion.
func TestCraftedGGUF(t *testing.T) {
	const u32, str, arr = 4, 8, 9
	valid := func() *ggufBuilder {
		b := &ggufBuilder{}
		b.header(3, 1, 1)
		b.str("general.architecture").u32(str).str("llama")
		b.tensorInfo("w", 0, 0, 4, 2)
		b.padTo(32)
		b.Write(make([]byte, 32))
		return b
	}
	cases := []struct {
		name  string
		build func() []byte
	}{
		{"version 1", func() []byte { b := &ggufBuilder{}; return b.header(1, 0, 0).Bytes() }},
		{"version 4", func() []byte { b := &ggufBuilder{}; return b.header(4, 0, 0).Bytes() }},
		{"big-endian version", func() []byte { b := &ggufBuilder{}; return b.header(3<<24, 0, 0).Bytes() }},
		{"huge tensor count", func() []byte { b := &ggufBuilder{}; return b.header(3, 1<<62, 0).Bytes() }},
		{"negative kv count", func() []byte { b := &ggufBuilder{}; return b.header(3, 0, 1<<63).Bytes() }},
		{"huge key length", func() []byte {
			b := &ggufBuilder{}
			return b.header(3, 0, 1).u64(1 << 40).Bytes()
		}},
		{"huge string array", func() []byte {
			b := &ggufBuilder{}
			b.header(3, 0, 1).str("a").u32(arr).u32(str).u64(1 << 33)
			return append(b.Bytes(), make([]byte, 64)...)
		}},
		{"huge u8 array", func() []byte {
			b := &ggufBuilder{}
			return b.header(3, 0, 1).str("a").u32(arr).u32(0).u64(1 << 34).Bytes()
		}},
		{"nested array", func() []byte {
			b := &ggufBuilder{}
			return b.header(3, 0, 1).str("a").u32(arr).u32(arr).u64(0).Bytes()
		}},
		{"invalid value type", func() []byte {
			b := &ggufBuilder{}
			return b.header(3, 0, 1).str("a").u32(77).u32(0).Bytes()
		}},
		{"duplicate key", func() []byte {
			b := &ggufBuilder{}
			return b.header(3, 0, 2).str("a").u32(u32).u32(1).str("a").u32(u32).u32(2).Bytes()
		}},
		{"alignment of wrong type", func() []byte {
			b := &ggufBuilder{}
			return b.header(3, 0, 1).str("general.alignment").u32(str).str("32").Bytes()
		}},
		{"alignment array", func() []byte {
			b := &ggufBuilder{}
			return b.header(3, 0, 1).str("general.alignment").u32(arr).u32(u32).u64(1).u32(32).Bytes()
		}},
		{"alignment not a power of two", func() []byte {
			b := &ggufBuilder{}
			return b.header(3, 0, 1).str("general.alignment").u32(u32).u32(48).Bytes()
		}},
		{"zero dimension", func() []byte {
			b := &ggufBuilder{}
			b.header(3, 1, 0).tensorInfo("w", 0, 0, 4, 0)
			return append(b.padTo(32).Bytes(), make([]byte, 64)...)
		}},
		{"five dimensions", func() []byte {
			b := &ggufBuilder{}
			b.header(3, 1, 0).tensorInfo("w", 0, 0, 1, 1, 1, 1, 1)
			return append(b.padTo(32).Bytes(), make([]byte, 64)...)
		}},
		{"element count overflow", func() []byte {
			b := &ggufBuilder{}
			b.header(3, 1, 0).tensorInfo("w", 0, 0, 1<<32, 1<<32)
			return append(b.padTo(32).Bytes(), make([]byte, 64)...)
		}},
		{"invalid tensor type", func() []byte {
			b := &ggufBuilder{}
			b.header(3, 1, 0).tensorInfo("w", 4, 0, 32) // q4_2, removed from ggml
			return append(b.padTo(32).Bytes(), make([]byte, 64)...)
		}},
		{"row not whole blocks", func() []byte {
			b := &ggufBuilder{}
			b.header(3, 1, 0).tensorInfo("w", uint32(binding.TypeQ8_0), 0, 31)
			return append(b.padTo(32).Bytes(), make([]byte, 64)...)
		}},
		{"long tensor name", func() []byte {
			b := &ggufBuilder{}
			b.header(3, 1, 0).tensorInfo(string(bytes.Repeat([]byte("n"), 64)), 0, 0, 4)
			return append(b.padTo(32).Bytes(), make([]byte, 64)...)
		}},
		{"duplicate tensor", func() []byte {
			b := &ggufBuilder{}
			b.header(3, 2, 0).tensorInfo("w", 0, 0, 8).tensorInfo("w", 0, 32, 8)
			return append(b.padTo(32).Bytes(), make([]byte, 64)...)
		}},
		{"wrong offset", func() []byte {
			b := &ggufBuilder{}
			b.header(3, 1, 0).tensorInfo("w", 0, 32, 8)
			return append(b.padTo(32).Bytes(), make([]byte, 64)...)
		}},
		{"data past the end", func() []byte {
			b := valid()
			return b.Bytes()[:b.Len()-1]
		}},
	}
	dir := t.TempDir()
	ok := filepath.Join(dir, "valid.gguf")
	require.NoError(t, os.WriteFile(ok, valid().Bytes(), 0o644))
	f, err := binding.OpenGGUF(ok)
	require.NoError(t, err, "the unmodified builder output is valid")
	f.Close()
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, "crafted"+string(rune('a'+i))+".gguf")
			require.NoError(t, os.WriteFile(path, tc.build(), 0o644))
			gerr, lerr := openBoth(path)
			assert.ErrorIs(t, gerr, binding.ErrInvalidGGUF)
			assert.ErrorIs(t, lerr, binding.ErrInvalidGGUF)
		})
	}
}

// dataStart returns the offset of the tensor data section of a GGUF file.
func dataStart(t *testing.T, path string) int64 {
	f, err := binding.OpenGGUF(path)
	require.NoError(t, err)
	defer f.Close()
	return f.DataOffset()
}

func TestTruncatedGGUF(t *testing.T) {
	src := fixture.Path(t, "models/stories260K.gguf")
	orig, err := os.ReadFile(src)
	require.NoError(t, err)
	data := dataStart(t, src)
	// The end of the last tensor's data: cutting anywhere before it must fail.
	f, err := binding.OpenGGUF(src)
	require.NoError(t, err)
	last := f.Tensors()[len(f.Tensors())-1]
	end := data + last.Offset + last.Size
	f.Close()

	var points []int64
	for p := int64(0); p < data; p += 5 { // every 5 bytes of header, metadata and directory
		points = append(points, p)
	}
	for i := int64(0); i < 100; i++ { // a spread over the tensor data
		points = append(points, data+i*(end-data)/100)
	}
	points = append(points, end-1)

	path := filepath.Join(t.TempDir(), "truncated.gguf")
	require.NoError(t, os.WriteFile(path, orig, 0o644))
	// Truncate the same file ever shorter.
	for i := len(points) - 1; i >= 0; i-- {
		require.NoError(t, os.Truncate(path, points[i]))
		gerr, lerr := openBoth(path)
		if !assert.Error(t, gerr, "OpenGGUF of %d bytes", points[i]) || !assert.Error(t, lerr, "LoadModel of %d bytes", points[i]) {
			return
		}
	}
	t.Logf("%d truncation points (%d in the metadata region) gave errors", len(points), data/5+1)
}

// TestBitFlippedGGUF flips single bits of stories260K at deterministic
// positions. Corruption inside metadata values or tensor data can still be
// a valid file, so what is required is no crash; flips in the fixed header
// fields must be errors.
func TestBitFlippedGGUF(t *testing.T) {
	src := fixture.Path(t, "models/stories260K.gguf")
	orig, err := os.ReadFile(src)
	require.NoError(t, err)
	data := dataStart(t, src)
	path := filepath.Join(t.TempDir(), "flipped.gguf")
	require.NoError(t, os.WriteFile(path, orig, 0o644))
	fh, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	defer fh.Close()

	rng := rand.New(rand.NewPCG(2024, 6))
	type flip struct {
		pos int64
		bit uint
	}
	var flips []flip
	for pos := int64(0); pos < 8; pos++ { // magic and version: always fatal
		flips = append(flips, flip{pos, uint(rng.IntN(8))})
	}
	for i := 0; i < 250; i++ {
		flips = append(flips, flip{rng.Int64N(data), uint(rng.IntN(8))})
	}
	for i := 0; i < 50; i++ {
		flips = append(flips, flip{data + rng.Int64N(int64(len(orig))-data), uint(rng.IntN(8))})
	}
	loaded := 0
	for i, fl := range flips {
		b := []byte{orig[fl.pos] ^ 1<<fl.bit}
		_, err := fh.WriteAt(b, fl.pos)
		require.NoError(t, err)
		gerr, lerr := openBoth(path)
		if fl.pos < 8 {
			assert.Error(t, gerr, "flip at %d", fl.pos)
			assert.Error(t, lerr, "flip at %d", fl.pos)
		}
		if lerr == nil {
			loaded++
		}
		_, err = fh.WriteAt(orig[fl.pos:fl.pos+1], fl.pos)
		require.NoError(t, err)
		_ = i
	}
	t.Logf("%d bit flips: %d still loaded (flips in values or data), none crashed", len(flips), loaded)
}

// TestCorruptHparams rewrites stories260K with hyperparameters set to
// values libllama cannot use. Loading and decoding must return errors or
// work, never abort.
func TestCorruptHparams(t *testing.T) {
	src := fixture.Path(t, "models/stories260K.gguf")
	f, err := binding.OpenGGUF(src)
	require.NoError(t, err)
	defer f.Close()
	type edit struct {
		key   string
		value any
	}
	var edits []edit
	for _, kv := range f.KVs() {
		if _, ok := kv.Value.(uint32); ok {
			for _, v := range []uint32{0, 3, 513, 1 << 31} {
				edits = append(edits, edit{kv.Key, v})
			}
		}
	}
	edits = append(edits,
		edit{"llama.attention.layer_norm_rms_epsilon", float32(-1)},
		edit{"llama.rope.scaling.type", "bogus"},
		edit{"llama.expert_count", uint32(1000)},
		edit{"llama.expert_used_count", uint32(2)},
		edit{"llama.block_count", "five"},
		edit{"tokenizer.ggml.tokens", []string{"a", "a"}},
		edit{"tokenizer.ggml.scores", []float32{1}},
		edit{"tokenizer.ggml.scores", []string{"x"}},
		edit{"tokenizer.ggml.token_type", []float32{1}},
		edit{"tokenizer.ggml.model", "gpt2"},
		edit{"tokenizer.ggml.model", "bogus"},
		edit{"general.architecture", "bogus"},
		edit{"general.architecture", uint32(1)},
	)
	require.Greater(t, len(edits), 40)
	dir := t.TempDir()
	loaded := 0
	for i, e := range edits {
		w, err := binding.NewGGUFWriter(len(f.Tensors()))
		require.NoError(t, err)
		found := false
		for _, kv := range f.KVs() {
			v := kv.Value
			if kv.Key == e.key {
				v, found = e.value, true
			}
			require.NoError(t, w.Set(kv.Key, v))
		}
		if !found {
			require.NoError(t, w.Set(e.key, e.value))
		}
		for _, ti := range f.Tensors() {
			b, err := f.ReadTensor(ti.Name)
			require.NoError(t, err)
			require.NoError(t, w.AddTensor(ti.Name, ti.Type, ti.Shape, b))
		}
		path := filepath.Join(dir, "edit.gguf")
		require.NoError(t, w.WriteFile(path))
		w.Close()
		m, err := binding.LoadModel(path, binding.ModelParams{})
		if err != nil {
			continue
		}
		loaded++
		ctx, err := binding.NewLlamaContext(m, binding.ContextParams{NCtx: 16, Threads: 1})
		if err == nil {
			_ = ctx.Decode([]binding.Token{1, 2, 3}, 0, true)
			ctx.Close()
		}
		m.Close()
		_ = i
	}
	t.Logf("%d edits, %d still loaded, none crashed", len(edits), loaded)
}

// opEnv holds well-formed operands for the bad-call table.
type opEnv struct {
	m43, m34, m53, v4, q, i32, pos3, mask43 *binding.Tensor
}

func newOpEnv(ctx *binding.Context) opEnv {
	return opEnv{
		m43:    ctx.NewTensor(binding.TypeF32, 4, 3),
		m34:    ctx.NewTensor(binding.TypeF32, 3, 4),
		m53:    ctx.NewTensor(binding.TypeF32, 5, 3),
		v4:     ctx.NewTensor(binding.TypeF32, 4),
		q:      ctx.NewTensor(binding.TypeQ8_0, 32, 3),
		i32:    ctx.NewTensor(binding.TypeI32, 3),
		pos3:   ctx.NewTensor(binding.TypeI32, 3),
		mask43: ctx.NewTensor(binding.TypeF32, 4, 3),
	}
}

func TestOpShapeErrors(t *testing.T) {
	rope := binding.RoPEParams{Dims: 4, FreqBase: 10000, FreqScale: 1, AttnFactor: 1}
	cases := []struct {
		name string
		want error
		op   func(c *binding.Context, e opEnv) *binding.Tensor
	}{
		{"mul_mat mismatched", binding.ErrShape, func(c *binding.Context, e opEnv) *binding.Tensor { return c.MulMat(e.m43, e.m53) }},
		{"mul_mat transposed weight", binding.ErrShape, func(c *binding.Context, e opEnv) *binding.Tensor {
			return c.MulMat(c.Transpose(e.m34), e.m43)
		}},
		{"mul_mat transposed input", binding.ErrShape, func(c *binding.Context, e opEnv) *binding.Tensor {
			return c.MulMat(e.m34, c.Transpose(e.m43))
		}},
		{"mul_mat i32 input", binding.ErrType, func(c *binding.Context, e opEnv) *binding.Tensor {
			return c.MulMat(c.NewTensor(binding.TypeF32, 3), e.i32)
		}},
		{"add not broadcastable", binding.ErrShape, func(c *binding.Context, e opEnv) *binding.Tensor { return c.Add(e.m43, e.m34) }},
		{"add transposed", binding.ErrShape, func(c *binding.Context, e opEnv) *binding.Tensor { return c.Add(c.Transpose(e.m34), e.m43) }},
		{"mul i32", binding.ErrType, func(c *binding.Context, e opEnv) *binding.Tensor { return c.Mul(e.i32, e.i32) }},
		{"add1 vector", binding.ErrShape, func(c *binding.Context, e opEnv) *binding.Tensor { return c.Add1(e.m43, e.v4) }},
		{"scale transposed", binding.ErrShape, func(c *binding.Context, e opEnv) *binding.Tensor { return c.Scale(c.Transpose(e.m43), 2) }},
		{"exp transposed", binding.ErrShape, func(c *binding.Context, e opEnv) *binding.Tensor { return c.Exp(c.Transpose(e.m43)) }},
		{"rms_norm negative eps", binding.ErrShape, func(c *binding.Context, e opEnv) *binding.Tensor { return c.RMSNorm(e.m43, -1) }},
		{"reshape wrong count", binding.ErrShape, func(c *binding.Context, e opEnv) *binding.Tensor { return c.Reshape(e.m43, 5, 2) }},
		{"reshape transposed", binding.ErrShape, func(c *binding.Context, e opEnv) *binding.Tensor { return c.Reshape(c.Transpose(e.m43), 12) }},
		{"reshape five dims", binding.ErrShape, func(c *binding.Context, e opEnv) *binding.Tensor { return c.Reshape(e.m43, 1, 1, 1, 2, 6) }},
		{"reshape partial q8_0 row", binding.ErrShape, func(c *binding.Context, e opEnv) *binding.Tensor { return c.Reshape(e.q, 16, 6) }},
		{"view out of range", binding.ErrShape, func(c *binding.Context, e opEnv) *binding.Tensor {
			return c.View(e.m43, []int64{4, 3}, []int64{16}, 4)
		}},
		{"view negative offset", binding.ErrShape, func(c *binding.Context, e opEnv) *binding.Tensor {
			return c.View(e.m43, []int64{2}, nil, -4)
		}},
		{"view strides count", binding.ErrShape, func(c *binding.Context, e opEnv) *binding.Tensor {
			return c.View(e.m43, []int64{2, 2}, nil, 0)
		}},
		{"get_rows f32 ids", binding.ErrType, func(c *binding.Context, e opEnv) *binding.Tensor { return c.GetRows(e.m43, e.v4) }},
		{"get_rows 3d ids", binding.ErrShape, func(c *binding.Context, e opEnv) *binding.Tensor {
			return c.GetRows(e.m43, c.NewTensor(binding.TypeI32, 2, 2, 2))
		}},
		{"rope wrong positions", binding.ErrShape, func(c *binding.Context, e opEnv) *binding.Tensor {
			return c.RoPE(c.NewTensor(binding.TypeF32, 4, 2, 5), e.pos3, nil, rope)
		}},
		{"rope f32 positions", binding.ErrShape, func(c *binding.Context, e opEnv) *binding.Tensor {
			return c.RoPE(c.NewTensor(binding.TypeF32, 4, 2, 4), e.v4, nil, rope)
		}},
		{"rope odd dims", binding.ErrShape, func(c *binding.Context, e opEnv) *binding.Tensor {
			r := rope
			r.Dims = 3
			return c.RoPE(c.NewTensor(binding.TypeF32, 4, 2, 3), e.pos3, nil, r)
		}},
		{"rope dims beyond head", binding.ErrShape, func(c *binding.Context, e opEnv) *binding.Tensor {
			r := rope
			r.Dims = 8
			return c.RoPE(c.NewTensor(binding.TypeF32, 4, 2, 3), e.pos3, nil, r)
		}},
		{"rope unknown mode", binding.ErrShape, func(c *binding.Context, e opEnv) *binding.Tensor {
			r := rope
			r.Mode = 99
			return c.RoPE(c.NewTensor(binding.TypeF32, 4, 2, 3), e.pos3, nil, r)
		}},
		{"soft_max mask too narrow", binding.ErrShape, func(c *binding.Context, e opEnv) *binding.Tensor {
			return c.SoftMax(e.m43, c.NewTensor(binding.TypeF32, 3, 3), 1)
		}},
		{"soft_max mask too short", binding.ErrShape, func(c *binding.Context, e opEnv) *binding.Tensor {
			return c.SoftMax(e.m43, c.NewTensor(binding.TypeF32, 4, 2), 1)
		}},
		{"soft_max i32 mask", binding.ErrType, func(c *binding.Context, e opEnv) *binding.Tensor {
			return c.SoftMax(c.NewTensor(binding.TypeF32, 3, 3), c.NewTensor(binding.TypeI32, 3, 3), 1)
		}},
		{"soft_max transposed", binding.ErrShape, func(c *binding.Context, e opEnv) *binding.Tensor {
			return c.SoftMax(c.Transpose(e.m43), nil, 1)
		}},
		{"diag_mask transposed", binding.ErrShape, func(c *binding.Context, e opEnv) *binding.Tensor {
			return c.DiagMaskInf(c.Transpose(e.m43), 0)
		}},
		{"swiglu shapes", binding.ErrShape, func(c *binding.Context, e opEnv) *binding.Tensor { return c.SwiGLU(e.m43, e.m34) }},
		{"cross_entropy shapes", binding.ErrShape, func(c *binding.Context, e opEnv) *binding.Tensor {
			return c.CrossEntropyLoss(e.m43, e.m34)
		}},
		{"permute repeated axis", binding.ErrShape, func(c *binding.Context, e opEnv) *binding.Tensor {
			return c.Permute(e.m43, [4]int{0, 0, 1, 2})
		}},
		{"cpy element count", binding.ErrShape, func(c *binding.Context, e opEnv) *binding.Tensor { return c.Cpy(e.m43, e.m53) }},
		{"concat mismatched", binding.ErrShape, func(c *binding.Context, e opEnv) *binding.Tensor { return c.Concat(e.m43, e.m53, 1) }},
		{"acc past the end", binding.ErrShape, func(c *binding.Context, e opEnv) *binding.Tensor {
			return c.Acc(e.m43, c.NewTensor(binding.TypeF32, 2, 2), 16, 48, 48, 40)
		}},
		{"set bigger source", binding.ErrShape, func(c *binding.Context, e opEnv) *binding.Tensor {
			return c.Set(e.v4, e.m43, 16, 48, 48, 0)
		}},
		{"repeat not a divisor", binding.ErrShape, func(c *binding.Context, e opEnv) *binding.Tensor { return c.Repeat(e.m43, e.m53) }},
		{"out_prod mismatched", binding.ErrShape, func(c *binding.Context, e opEnv) *binding.Tensor { return c.OutProd(e.m43, e.m34) }},
		{"out_prod f16", binding.ErrType, func(c *binding.Context, e opEnv) *binding.Tensor {
			return c.OutProd(c.NewTensor(binding.TypeF16, 4, 3), e.m53)
		}},
		{"cast to i32", binding.ErrType, func(c *binding.Context, e opEnv) *binding.Tensor { return c.Cast(e.m43, binding.TypeI32) }},
		{"cast to q8_0 partial block", binding.ErrShape, func(c *binding.Context, e opEnv) *binding.Tensor {
			return c.Cast(e.m43, binding.TypeQ8_0)
		}},
		{"new tensor five dims", binding.ErrShape, func(c *binding.Context, e opEnv) *binding.Tensor {
			return c.NewTensor(binding.TypeF32, 1, 1, 1, 1, 1)
		}},
		{"new tensor zero dim", binding.ErrShape, func(c *binding.Context, e opEnv) *binding.Tensor { return c.NewTensor(binding.TypeF32, 4, 0) }},
		{"new tensor bad type", binding.ErrType, func(c *binding.Context, e opEnv) *binding.Tensor { return c.NewTensor(binding.Type(4), 32) }},
		{"new q8_0 partial block", binding.ErrShape, func(c *binding.Context, e opEnv) *binding.Tensor {
			return c.NewTensor(binding.TypeQ8_0, 31)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, err := binding.NewContext(1<<20, true)
			require.NoError(t, err)
			defer ctx.Close()
			e := newOpEnv(ctx)
			require.NoError(t, ctx.Err())
			got := tc.op(ctx, e)
			assert.Nil(t, got)
			require.Error(t, ctx.Err())
			assert.ErrorIs(t, ctx.Err(), tc.want)
			// The error is sticky: later operations return nil and the
			// graph build reports the first error.
			assert.Nil(t, ctx.Add(e.m43, e.m43))
			g, err := ctx.NewGraph(64, false)
			require.NoError(t, err)
			assert.ErrorIs(t, g.BuildForward(ctx.Add(e.m43, e.m43)), tc.want)
		})
	}
}

func TestClosedAndNil(t *testing.T) {
	ctx, err := binding.NewContext(1<<20, true)
	require.NoError(t, err)
	a := ctx.NewTensor(binding.TypeF32, 4)
	assert.Nil(t, ctx.Add(a, nil))
	assert.Error(t, ctx.Err())
	ctx.Close()
	ctx.Close()
	ctx2, err := binding.NewContext(1<<20, true)
	require.NoError(t, err)
	defer ctx2.Close()
	assert.Nil(t, ctx2.Add(a, a), "operands of a closed context")
	assert.ErrorIs(t, ctx2.Err(), binding.ErrClosed)
	_, err = a.Floats()
	assert.ErrorIs(t, err, binding.ErrClosed)
}

// TestNoBackward checks that graphs ggml cannot differentiate give
// ErrNoBackward from BuildBackward instead of aborting.
func TestNoBackward(t *testing.T) {
	cases := []struct {
		name  string
		build func(c *binding.Context, x, y *binding.Tensor) *binding.Tensor
	}{
		{"tanh", func(c *binding.Context, x, _ *binding.Tensor) *binding.Tensor { return c.Tanh(x) }},
		{"gelu", func(c *binding.Context, x, _ *binding.Tensor) *binding.Tensor { return c.GELU(x) }},
		{"sigmoid", func(c *binding.Context, x, _ *binding.Tensor) *binding.Tensor { return c.Sigmoid(x) }},
		{"norm", func(c *binding.Context, x, _ *binding.Tensor) *binding.Tensor { return c.Norm(x, 1e-5) }},
		{"clamp", func(c *binding.Context, x, _ *binding.Tensor) *binding.Tensor { return c.Clamp(x, -1, 1) }},
		{"concat", func(c *binding.Context, x, y *binding.Tensor) *binding.Tensor { return c.Concat(x, y, 1) }},
		{"out_prod", func(c *binding.Context, x, y *binding.Tensor) *binding.Tensor { return c.OutProd(x, y) }},
		{"sub broadcast operand", func(c *binding.Context, x, y *binding.Tensor) *binding.Tensor {
			return c.Sub(x, c.View(y, []int64{4, 1}, []int64{16}, 0))
		}},
		{"div broadcast operand", func(c *binding.Context, x, y *binding.Tensor) *binding.Tensor {
			return c.Div(x, c.View(y, []int64{4, 1}, []int64{16}, 0))
		}},
		{"cross_entropy labels", func(c *binding.Context, x, y *binding.Tensor) *binding.Tensor {
			return c.CrossEntropyLoss(x, y)
		}},
		{"soft_max mask", func(c *binding.Context, x, y *binding.Tensor) *binding.Tensor { return c.SoftMax(x, y, 1) }},
		{"get_rows 3d", func(c *binding.Context, x, _ *binding.Tensor) *binding.Tensor {
			ids := c.NewTensor(binding.TypeI32, 1, 3)
			return c.GetRows(c.Reshape(x, 4, 1, 3), ids)
		}},
		{"mul_mat broadcast dim 3", func(c *binding.Context, x, y *binding.Tensor) *binding.Tensor {
			a := c.Reshape(x, 4, 1, 1, 3)
			b := c.Repeat(c.Reshape(y, 4, 1, 1, 3), c.NewTensor(binding.TypeF32, 4, 1, 2, 3))
			return c.MulMat(c.Reshape(c.Cont(c.View(a, []int64{4, 1}, []int64{16}, 0)), 4, 1, 1, 1), b)
		}},
		{"mul_mat f16 weight", func(c *binding.Context, x, y *binding.Tensor) *binding.Tensor {
			return c.MulMat(c.Cast(c.NewTensor(binding.TypeF32, 4, 3), binding.TypeF16), y)
		}},
		{"transposed gradient into mul", func(c *binding.Context, x, y *binding.Tensor) *binding.Tensor {
			return c.Mul(c.NewTensor(binding.TypeF32, 3, 4), c.Transpose(c.Mul(x, y)))
		}},
		{"non-contiguous gradient into scale", func(c *binding.Context, x, _ *binding.Tensor) *binding.Tensor {
			return c.Mul(c.NewTensor(binding.TypeF32, 3, 4), c.Transpose(c.Scale(x, 2)))
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, err := binding.NewContext(4<<20, true)
			require.NoError(t, err)
			defer ctx.Close()
			x := ctx.NewTensor(binding.TypeF32, 4, 3)
			y := ctx.NewTensor(binding.TypeF32, 4, 3)
			require.NoError(t, x.SetParam())
			require.NoError(t, y.SetParam())
			out := tc.build(ctx, x, y)
			require.NoError(t, ctx.Err())
			loss := ctx.Sum(out)
			require.NoError(t, loss.SetLoss())
			g, err := ctx.NewGraph(512, true)
			require.NoError(t, err)
			require.NoError(t, g.BuildForward(loss))
			err = g.BuildBackward(ctx)
			assert.ErrorIs(t, err, binding.ErrNoBackward)
			t.Log(err)
		})
	}

	t.Run("no gradients", func(t *testing.T) {
		ctx, err := binding.NewContext(1<<20, true)
		require.NoError(t, err)
		defer ctx.Close()
		x := ctx.NewTensor(binding.TypeF32, 4)
		require.NoError(t, x.SetParam())
		loss := ctx.Sum(ctx.Sqr(x))
		require.NoError(t, loss.SetLoss())
		g, err := ctx.NewGraph(64, false)
		require.NoError(t, err)
		require.NoError(t, g.BuildForward(loss))
		assert.ErrorIs(t, g.BuildBackward(ctx), binding.ErrNoBackward)
	})
	t.Run("no loss or parameter", func(t *testing.T) {
		ctx, err := binding.NewContext(1<<20, true)
		require.NoError(t, err)
		defer ctx.Close()
		x := ctx.NewTensor(binding.TypeF32, 4)
		s := ctx.Sum(ctx.Sqr(x))
		g, err := ctx.NewGraph(64, true)
		require.NoError(t, err)
		require.NoError(t, g.BuildForward(s))
		assert.ErrorIs(t, g.BuildBackward(ctx), binding.ErrNoBackward, "no parameter")
		require.NoError(t, x.SetParam())
		g2, err := ctx.NewGraph(64, true)
		require.NoError(t, err)
		require.NoError(t, g2.BuildForward(ctx.Sum(ctx.Sqr(x))))
		assert.ErrorIs(t, g2.BuildBackward(ctx), binding.ErrNoBackward, "no loss")
	})
	t.Run("bad flags", func(t *testing.T) {
		ctx, err := binding.NewContext(1<<20, true)
		require.NoError(t, err)
		defer ctx.Close()
		assert.ErrorIs(t, ctx.NewTensor(binding.TypeF16, 4).SetParam(), binding.ErrType)
		x := ctx.NewTensor(binding.TypeF32, 4)
		assert.Error(t, ctx.Sqr(x).SetParam(), "not a leaf")
		assert.ErrorIs(t, x.SetLoss(), binding.ErrShape, "not a scalar")
	})
}

func TestOutOfMemory(t *testing.T) {
	_, err := binding.NewContext(0, false)
	assert.ErrorIs(t, err, binding.ErrOutOfMemory)
	_, err = binding.NewContext(-5, true)
	assert.ErrorIs(t, err, binding.ErrOutOfMemory)
	_, err = binding.NewContext(1<<49, false) // 512 TiB
	assert.ErrorIs(t, err, binding.ErrOutOfMemory)

	ctx, err := binding.NewContext(4096, false)
	require.NoError(t, err)
	defer ctx.Close()
	assert.Nil(t, ctx.NewTensor(binding.TypeF32, 1024, 1024))
	assert.ErrorIs(t, ctx.Err(), binding.ErrOutOfMemory)
	_, err = ctx.NewGraph(1<<16, true)
	assert.ErrorIs(t, err, binding.ErrOutOfMemory)

	meta, err := binding.NewGraphContext(8, 16, true)
	require.NoError(t, err)
	defer meta.Close()
	var last *binding.Tensor
	for i := 0; i < 64 && meta.Err() == nil; i++ {
		last = meta.NewTensor(binding.TypeF32, 4)
	}
	assert.ErrorIs(t, meta.Err(), binding.ErrOutOfMemory, "metadata context full")
	_ = last

	// A graph too small for its tensors, and for the backward pass.
	big, err := binding.NewContext(8<<20, true)
	require.NoError(t, err)
	defer big.Close()
	x := big.NewTensor(binding.TypeF32, 4)
	require.NoError(t, x.SetParam())
	y := x
	for i := 0; i < 20; i++ {
		y = big.Sqr(y)
	}
	loss := big.Sum(y)
	require.NoError(t, loss.SetLoss())
	g, err := big.NewGraph(8, true)
	require.NoError(t, err)
	assert.ErrorIs(t, g.BuildForward(loss), binding.ErrOutOfMemory)
	g2, err := big.NewGraph(30, true)
	require.NoError(t, err)
	require.NoError(t, g2.BuildForward(loss))
	assert.ErrorIs(t, g2.BuildBackward(big), binding.ErrOutOfMemory)

	// A scheduler created for graphs smaller than the one it is given.
	be, err := binding.NewCPUBackend(1)
	require.NoError(t, err)
	defer be.Close()
	s, err := binding.NewSched([]*binding.Backend{be}, 4)
	require.NoError(t, err)
	defer s.Close()
	g3, err := big.NewGraph(64, false)
	require.NoError(t, err)
	require.NoError(t, g3.BuildForward(loss))
	assert.ErrorIs(t, s.Alloc(g3), binding.ErrOutOfMemory)
	assert.ErrorIs(t, s.Reserve(g3), binding.ErrOutOfMemory)
}

// TestAllocatorClose checks that tensors placed by a graph allocator are
// detached when it is closed: reading them is an error, not a read of
// freed memory, and they can be allocated again.
func TestAllocatorClose(t *testing.T) {
	be, err := binding.NewCPUBackend(1)
	require.NoError(t, err)
	defer be.Close()
	ctx, err := binding.NewGraphContext(8, 16, false)
	require.NoError(t, err)
	defer ctx.Close()
	x := ctx.NewTensor(binding.TypeF32, 8)
	x.SetInput()
	out := ctx.Scale(ctx.Sqr(x), 2)
	g, err := ctx.NewGraph(16, false)
	require.NoError(t, err)
	require.NoError(t, g.BuildForward(out))
	alloc, err := be.NewAllocator()
	require.NoError(t, err)
	require.NoError(t, alloc.Alloc(g))
	require.NoError(t, x.SetFloats([]float32{1, 2, 3, 4, 5, 6, 7, 8}))
	require.NoError(t, be.Compute(g))
	v, err := out.Floats()
	require.NoError(t, err)
	assert.Equal(t, []float32{2, 8, 18, 32, 50, 72, 98, 128}, v)
	alloc.Close()
	_, err = out.Floats()
	assert.ErrorIs(t, err, binding.ErrNotAllocated)
	assert.ErrorIs(t, be.Compute(g), binding.ErrNotAllocated)

	alloc2, err := be.NewAllocator()
	require.NoError(t, err)
	defer alloc2.Close()
	require.NoError(t, alloc2.Alloc(g))
	require.NoError(t, x.SetFloats([]float32{1, 1, 1, 1, 1, 1, 1, 1}))
	require.NoError(t, be.Compute(g))
	v, err = out.Floats()
	require.NoError(t, err)
	assert.Equal(t, []float32{2, 2, 2, 2, 2, 2, 2, 2}, v)
}

// TestCorruptTensors rewrites stories260K with a tensor missing or of the
// wrong shape: libllama must refuse the file with an error.
func TestCorruptTensors(t *testing.T) {
	src := fixture.Path(t, "models/stories260K.gguf")
	f, err := binding.OpenGGUF(src)
	require.NoError(t, err)
	defer f.Close()
	var matrix string
	for _, ti := range f.Tensors() {
		if len(ti.Shape) == 2 && ti.Shape[0] != ti.Shape[1] && ti.Type == binding.TypeF32 {
			matrix = ti.Name
			break
		}
	}
	require.NotEmpty(t, matrix)
	edits := map[string]func(ti binding.GGUFTensorInfo, b []byte) (binding.GGUFTensorInfo, []byte, bool){
		"missing": func(ti binding.GGUFTensorInfo, b []byte) (binding.GGUFTensorInfo, []byte, bool) {
			return ti, b, ti.Name != matrix
		},
		"transposed shape": func(ti binding.GGUFTensorInfo, b []byte) (binding.GGUFTensorInfo, []byte, bool) {
			if ti.Name == matrix {
				ti.Shape = []int64{ti.Shape[1], ti.Shape[0]}
			}
			return ti, b, true
		},
		"one row short": func(ti binding.GGUFTensorInfo, b []byte) (binding.GGUFTensorInfo, []byte, bool) {
			if ti.Name == matrix {
				ti.Shape = []int64{ti.Shape[0], ti.Shape[1] - 1}
				b = b[:ti.Shape[0]*ti.Shape[1]*4]
			}
			return ti, b, true
		},
	}
	dir := t.TempDir()
	for name, edit := range edits {
		t.Run(name, func(t *testing.T) {
			w, err := binding.NewGGUFWriter(len(f.Tensors()) + 1)
			require.NoError(t, err)
			defer w.Close()
			for _, kv := range f.KVs() {
				require.NoError(t, w.Set(kv.Key, kv.Value))
			}
			for _, ti := range f.Tensors() {
				b, err := f.ReadTensor(ti.Name)
				require.NoError(t, err)
				ti, b, keep := edit(ti, b)
				if keep {
					require.NoError(t, w.AddTensor(ti.Name, ti.Type, ti.Shape, b))
				}
			}
			path := filepath.Join(dir, "edit.gguf")
			require.NoError(t, w.WriteFile(path))
			g, err := binding.OpenGGUF(path)
			require.NoError(t, err, "still a valid GGUF file")
			g.Close()
			_, err = binding.LoadModel(path, binding.ModelParams{})
			assert.ErrorIs(t, err, binding.ErrLlama)
		})
	}
}
