package binding_test

import (
	"math"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/internal/fixture"
)

// allValueKVs has one key per GGUF value type, one array per element type
// and an empty array per element type, with edge values.
func allValueKVs() []binding.KV {
	return []binding.KV{
		{Key: "t.u8", Value: uint8(math.MaxUint8)},
		{Key: "t.i8", Value: int8(math.MinInt8)},
		{Key: "t.u16", Value: uint16(math.MaxUint16)},
		{Key: "t.i16", Value: int16(math.MinInt16)},
		{Key: "t.u32", Value: uint32(math.MaxUint32)},
		{Key: "t.i32", Value: int32(math.MinInt32)},
		{Key: "t.u64", Value: uint64(math.MaxUint64)},
		{Key: "t.i64", Value: int64(math.MinInt64)},
		{Key: "t.f32", Value: float32(-math.MaxFloat32)},
		{Key: "t.f64", Value: math.SmallestNonzeroFloat64},
		{Key: "t.bool", Value: true},
		{Key: "t.bool.false", Value: false},
		{Key: "t.string", Value: "héllo, wörld ✓ \t\n"},
		{Key: "t.string.empty", Value: ""},
		{Key: "a.u8", Value: []uint8{0, 1, 255}},
		{Key: "a.i8", Value: []int8{-128, 0, 127}},
		{Key: "a.u16", Value: []uint16{0, 65535}},
		{Key: "a.i16", Value: []int16{-32768, 32767}},
		{Key: "a.u32", Value: []uint32{0, 1, math.MaxUint32}},
		{Key: "a.i32", Value: []int32{math.MinInt32, -1, math.MaxInt32}},
		{Key: "a.u64", Value: []uint64{math.MaxUint64, 0}},
		{Key: "a.i64", Value: []int64{math.MinInt64, math.MaxInt64}},
		{Key: "a.f32", Value: []float32{1.5, float32(math.Inf(-1)), math.SmallestNonzeroFloat32}},
		{Key: "a.f64", Value: []float64{math.Pi, math.Inf(1), -0.25}},
		{Key: "a.bool", Value: []bool{true, false, true}},
		{Key: "a.string", Value: []string{"a", "", "ünïcode", "<s>"}},
		{Key: "e.u8", Value: []uint8{}},
		{Key: "e.i8", Value: []int8{}},
		{Key: "e.u16", Value: []uint16{}},
		{Key: "e.i16", Value: []int16{}},
		{Key: "e.u32", Value: []uint32{}},
		{Key: "e.i32", Value: []int32{}},
		{Key: "e.u64", Value: []uint64{}},
		{Key: "e.i64", Value: []int64{}},
		{Key: "e.f32", Value: []float32{}},
		{Key: "e.f64", Value: []float64{}},
		{Key: "e.bool", Value: []bool{}},
		{Key: "e.string", Value: []string{}},
	}
}

type testTensor struct {
	name  string
	typ   binding.Type
	shape []int64
	tol   float64 // max abs error of the stored values against the input
}

func allTypeTensors() []testTensor {
	return []testTensor{
		{"f32.1d", binding.TypeF32, []int64{7}, 0},
		{"f32.4d", binding.TypeF32, []int64{3, 2, 2, 2}, 0},
		{"f16", binding.TypeF16, []int64{5, 3}, 1e-3},
		{"bf16", binding.TypeBF16, []int64{4, 3, 2}, 1e-2},
		{"q8_0", binding.TypeQ8_0, []int64{64, 3}, 1.0 / 127},
		{"q4_0", binding.TypeQ4_0, []int64{32, 4}, 1.0 / 7},
		{"q4_k", binding.TypeQ4_K, []int64{256, 2}, 1.0 / 7},
	}
}

func randomFloats(seed uint64, n int64) []float32 {
	rng := rand.New(rand.NewPCG(seed, 99))
	out := make([]float32, n)
	for i := range out {
		out[i] = rng.Float32()*2 - 1
	}
	return out
}

func elementCount(shape []int64) int64 {
	n := int64(1)
	for _, d := range shape {
		n *= d
	}
	return n
}

// writeAllTypes writes every value type and tensor type to path and returns
// the raw data written per tensor.
func writeAllTypes(t *testing.T, path string, alignment uint32) map[string][]byte {
	t.Helper()
	w, err := binding.NewGGUFWriter(16)
	require.NoError(t, err)
	defer w.Close()
	if alignment != 0 {
		require.NoError(t, w.Set("general.alignment", alignment))
	}
	for _, kv := range allValueKVs() {
		require.NoError(t, w.Set(kv.Key, kv.Value), kv.Key)
	}
	raw := map[string][]byte{}
	for i, tt := range allTypeTensors() {
		vals := randomFloats(uint64(i), elementCount(tt.shape))
		b, err := binding.EncodeFloats(tt.typ, vals, tt.shape[0])
		require.NoError(t, err)
		require.NoError(t, w.AddTensor(tt.name, tt.typ, tt.shape, b))
		raw[tt.name] = b
	}
	require.NoError(t, w.WriteFile(path))
	return raw
}

func TestGGUFRoundTrip(t *testing.T) {
	for _, alignment := range []uint32{0, 64, 256} {
		t.Run(map[uint32]string{0: "default alignment", 64: "alignment 64", 256: "alignment 256"}[alignment], func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "all.gguf")
			raw := writeAllTypes(t, path, alignment)

			f, err := binding.OpenGGUF(path)
			require.NoError(t, err)
			defer f.Close()
			assert.Equal(t, uint32(3), f.Version())

			want := allValueKVs()
			wantAlign := int64(32)
			if alignment != 0 {
				want = append([]binding.KV{{Key: "general.alignment", Value: alignment}}, want...)
				wantAlign = int64(alignment)
			}
			assert.Equal(t, want, f.KVs(), "metadata in order, with types")
			assert.Equal(t, wantAlign, f.Alignment())
			assert.Zero(t, f.DataOffset()%wantAlign, "data section alignment")

			got := f.Tensors()
			require.Len(t, got, len(allTypeTensors()))
			for i, tt := range allTypeTensors() {
				ti := got[i]
				assert.Equal(t, tt.name, ti.Name)
				assert.Equal(t, tt.typ, ti.Type, tt.name)
				assert.Equal(t, tt.shape, ti.Shape, tt.name)
				assert.Equal(t, int64(len(raw[tt.name])), ti.Size, tt.name)
				assert.Zero(t, ti.Offset%wantAlign, "%s offset %d", tt.name, ti.Offset)
				b, err := f.ReadTensor(tt.name)
				require.NoError(t, err)
				assert.Equal(t, raw[tt.name], b, "%s data bytes", tt.name)

				vals, err := f.ReadTensorFloats(tt.name)
				require.NoError(t, err)
				in := randomFloats(uint64(i), elementCount(tt.shape))
				require.Len(t, vals, len(in))
				for j := range in {
					if !assert.InDelta(t, in[j], vals[j], tt.tol+1e-7, "%s[%d]", tt.name, j) {
						break
					}
				}
				// every row but the first, read alone
				n := int64(len(vals)) / tt.shape[0]
				rows, err := f.ReadTensorRows(tt.name, 1, n-1)
				require.NoError(t, err)
				assert.Equal(t, vals[tt.shape[0]:], rows, "%s rows 1 to %d", tt.name, n)
				_, err = f.ReadTensorRows(tt.name, 1, n)
				assert.ErrorIs(t, err, binding.ErrShape, "%s: one row past the end", tt.name)
			}
		})
	}
}

func TestGGUFIntTypes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ints.gguf")
	w, err := binding.NewGGUFWriter(1)
	require.NoError(t, err)
	defer w.Close()
	require.NoError(t, w.Set("int", -5))
	require.NoError(t, w.Set("uint", uint(5)))
	require.NoError(t, w.Set("int", -6)) // replaces
	require.NoError(t, w.WriteFile(path))
	f, err := binding.OpenGGUF(path)
	require.NoError(t, err)
	defer f.Close()
	assert.Equal(t, []binding.KV{{Key: "uint", Value: uint64(5)}, {Key: "int", Value: int64(-6)}}, f.KVs())
	u, ok := f.Uint("uint")
	assert.True(t, ok)
	assert.Equal(t, uint64(5), u)
	_, ok = f.Uint("int")
	assert.False(t, ok, "negative values are not unsigned")
}

func TestGGUFWriterRejects(t *testing.T) {
	w, err := binding.NewGGUFWriter(2)
	require.NoError(t, err)
	defer w.Close()
	assert.Error(t, w.Set("general.alignment", uint32(48)), "not a power of two")
	assert.Error(t, w.Set("general.alignment", 64), "not u32")
	assert.Error(t, w.Set("x", struct{}{}))
	assert.Error(t, w.Set("", 1))
	assert.Error(t, w.Set("s", "nul\x00byte"))
	assert.Error(t, w.AddTensor("t", binding.TypeF32, []int64{2}, make([]byte, 4)), "wrong byte count")
	assert.Error(t, w.AddTensor("q", binding.TypeQ8_0, []int64{31}, make([]byte, 34)), "not whole blocks")
	require.NoError(t, w.AddTensor("t", binding.TypeF32, []int64{2}, make([]byte, 8)))
	assert.Error(t, w.AddTensor("t", binding.TypeF32, []int64{2}, make([]byte, 8)), "duplicate")
	w.Close()
	w.Close()
	assert.ErrorIs(t, w.Set("k", 1), binding.ErrClosed)
	assert.ErrorIs(t, w.WriteFile(filepath.Join(t.TempDir(), "x.gguf")), binding.ErrClosed)
}

// rewriteGGUF copies every metadata entry and tensor of src through
// GGUFWriter into dst.
func rewriteGGUF(t *testing.T, src, dst string) {
	t.Helper()
	f, err := binding.OpenGGUF(src)
	require.NoError(t, err)
	defer f.Close()
	w, err := binding.NewGGUFWriter(len(f.Tensors()))
	require.NoError(t, err)
	defer w.Close()
	for _, kv := range f.KVs() {
		require.NoError(t, w.Set(kv.Key, kv.Value), kv.Key)
	}
	for _, ti := range f.Tensors() {
		b, err := f.ReadTensor(ti.Name)
		require.NoError(t, err)
		require.NoError(t, w.AddTensor(ti.Name, ti.Type, ti.Shape, b), ti.Name)
	}
	require.NoError(t, w.WriteFile(dst))
}

func TestGGUFRewriteStories260K(t *testing.T) {
	ref := loadGreedy(t)
	src := fixture.Path(t, "models/stories260K.gguf")
	dst := filepath.Join(t.TempDir(), "stories260K.rewritten.gguf")
	rewriteGGUF(t, src, dst)

	// The copy has the same metadata and tensors.
	a, err := binding.OpenGGUF(src)
	require.NoError(t, err)
	defer a.Close()
	b, err := binding.OpenGGUF(dst)
	require.NoError(t, err)
	defer b.Close()
	assert.Equal(t, a.KVs(), b.KVs())
	assert.Equal(t, len(a.Tensors()), len(b.Tensors()))
	for i, ta := range a.Tensors() {
		tb := b.Tensors()[i]
		assert.Equal(t, ta.Name, tb.Name)
		assert.Equal(t, ta.Type, tb.Type)
		assert.Equal(t, ta.Shape, tb.Shape)
		da, err := a.ReadTensor(ta.Name)
		require.NoError(t, err)
		db, err := b.ReadTensor(tb.Name)
		require.NoError(t, err)
		assert.Equal(t, da, db, ta.Name)
	}

	// libllama loads our file and generates the reference text.
	m, err := binding.LoadModel(dst, binding.ModelParams{})
	require.NoError(t, err)
	defer m.Close()
	ctx, err := binding.NewLlamaContext(m, binding.ContextParams{NCtx: 256, Threads: 1})
	require.NoError(t, err)
	defer ctx.Close()
	s := binding.NewSampler(binding.SamplerParams{})
	defer s.Close()
	tok := m.BOS()
	var got []binding.Token
	for pos := 0; pos < len(ref.IDs); pos++ {
		require.NoError(t, ctx.Decode([]binding.Token{tok}, pos, false))
		tok = s.Sample(ctx, -1)
		got = append(got, tok)
	}
	assert.Equal(t, ref.IDs, got)
}

// TestGGUFAlignmentLoadsInLlama writes stories260K with a non-default
// alignment; libllama must honour it.
func TestGGUFAlignmentLoadsInLlama(t *testing.T) {
	src := fixture.Path(t, "models/stories260K.gguf")
	f, err := binding.OpenGGUF(src)
	require.NoError(t, err)
	defer f.Close()
	w, err := binding.NewGGUFWriter(len(f.Tensors()))
	require.NoError(t, err)
	defer w.Close()
	require.NoError(t, w.Set("general.alignment", uint32(128)))
	for _, kv := range f.KVs() {
		if kv.Key != "general.alignment" {
			require.NoError(t, w.Set(kv.Key, kv.Value))
		}
	}
	for _, ti := range f.Tensors() {
		b, err := f.ReadTensor(ti.Name)
		require.NoError(t, err)
		require.NoError(t, w.AddTensor(ti.Name, ti.Type, ti.Shape, b))
	}
	dst := filepath.Join(t.TempDir(), "aligned.gguf")
	require.NoError(t, w.WriteFile(dst))
	g, err := binding.OpenGGUF(dst)
	require.NoError(t, err)
	defer g.Close()
	assert.Equal(t, int64(128), g.Alignment())
	for _, ti := range g.Tensors() {
		assert.Zero(t, (g.DataOffset()+ti.Offset)%128, ti.Name)
	}

	m, err := binding.LoadModel(dst, binding.ModelParams{})
	require.NoError(t, err)
	defer m.Close()
	ctx, err := binding.NewLlamaContext(m, binding.ContextParams{NCtx: 32, Threads: 1})
	require.NoError(t, err)
	defer ctx.Close()
	s := binding.NewSampler(binding.SamplerParams{})
	defer s.Close()
	ref := loadGreedy(t)
	tok := m.BOS()
	for pos := 0; pos < 16; pos++ {
		require.NoError(t, ctx.Decode([]binding.Token{tok}, pos, false))
		tok = s.Sample(ctx, -1)
		require.Equal(t, ref.IDs[pos], tok, "token %d", pos)
	}
}
