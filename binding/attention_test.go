package binding_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/internal/gradcheck"
)

// attnShape is one attention of the tests: H query heads over Hkv key
// heads, S queries over P prefix positions (visible to every query) plus
// the S causal ones, B sequences. packed splits each sequence into
// segments that do not see each other and ends it with padding rows (which
// see only the prefix and themselves), as model.Forward.SetBatch does.
type attnShape struct {
	name                   string
	hd, hdv, H, Hkv, S, P  int64
	B                      int64
	packed, fullyMaskedRow bool
}

// attnMask builds the [P+S, S, 1, B] mask of the shape.
func attnMask(s attnShape) []float32 {
	K := s.P + s.S
	ninf := float32(math.Inf(-1))
	m := make([]float32, K*s.S*s.B)
	for b := int64(0); b < s.B; b++ {
		seg := func(t int64) int64 {
			switch {
			case !s.packed:
				return 0
			case t >= s.S-3:
				return -1 // padding
			default:
				return (t + b*5) / 23
			}
		}
		for i := int64(0); i < s.S; i++ {
			row := m[(b*s.S+i)*K : (b*s.S+i+1)*K]
			for j := range row {
				row[j] = ninf
			}
			if s.fullyMaskedRow && b == 0 && i == 1 {
				continue
			}
			for j := int64(0); j < s.P; j++ {
				row[j] = 0
			}
			row[s.P+i] = 0
			if seg(i) < 0 {
				continue
			}
			for j := int64(0); j < i; j++ {
				if seg(j) == seg(i) {
					row[s.P+j] = 0
				}
			}
		}
	}
	return m
}

func (s attnShape) scale() float32 { return float32(1 / math.Sqrt(float64(s.hd))) }

func (s attnShape) build(ctx *binding.Context, x []*binding.Tensor, mask *binding.Tensor, fuse bool) *binding.Tensor {
	// queries and keys as the model has them: heads inside positions
	q := ctx.Permute(x[0], [4]int{0, 2, 1, 3})
	k := ctx.Permute(x[1], [4]int{0, 2, 1, 3})
	v := ctx.Permute(x[2], [4]int{0, 2, 1, 3})
	return ctx.Attention(q, k, v, mask, s.scale(), fuse)
}

func (s attnShape) params(rng *rand.Rand) []gradcheck.Param {
	K := s.P + s.S
	return []gradcheck.Param{
		gradcheck.Uniform(rng, "q", -1, 1, s.hd, s.H, s.S, s.B),
		gradcheck.Uniform(rng, "k", -1, 1, s.hd, s.Hkv, K, s.B),
		gradcheck.Uniform(rng, "v", -1, 1, s.hdv, s.Hkv, K, s.B),
	}
}

// TestAttentionGradCheck checks the fused kernels' gradients against
// finite differences of the plain soft_max attention (the forward-only
// graphs of the check are computed without an allocator and so stay
// plain; the backward graph is fused when it is built).
func TestAttentionGradCheck(t *testing.T) {
	cases := []attnShape{
		{name: "mha", hd: 8, hdv: 8, H: 2, Hkv: 2, S: 9, B: 1},
		{name: "gqa-prefix-packed-b2", hd: 6, hdv: 10, H: 4, Hkv: 2, S: 10, P: 3, B: 2, packed: true},
		{name: "mqa-hdv-smaller", hd: 16, hdv: 4, H: 3, Hkv: 1, S: 7, P: 2, B: 1},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(i)+7, 3))
			res, err := gradcheck.Check(gradcheck.Case{
				Params: tc.params(rng),
				Build: func(ctx *binding.Context, x []*binding.Tensor) *binding.Tensor {
					return tc.build(ctx, x, ctx.NewF32(attnMask(tc), tc.P+tc.S, tc.S, 1, tc.B), true)
				},
				Seed: uint64(i),
			})
			require.NoError(t, err)
			for _, r := range res {
				t.Logf("%v", r)
				assert.Greater(t, r.Norm, 1e-3, "%v: the gradient is trivially zero", r)
				assert.Less(t, r.RelErr, gradTol, "%v", r)
			}
		})
	}
}

// attnRun is one computed attention graph: its output and the gradients of
// q, k and v, and what the graph held.
type attnRun struct {
	out, gq, gk, gv []float32
	softmax, custom int   // SOFT_MAX(_BACK) and CUSTOM nodes
	buffer          int64 // the allocator's buffer
}

func runAttention(t *testing.T, s attnShape, data [][]float32, weights []float32, fuse, backward bool) attnRun {
	t.Helper()
	be, err := binding.NewCPUBackend(2)
	require.NoError(t, err)
	defer be.Close()
	// inputs in a backend buffer, every other tensor in the graph allocator's
	in, err := binding.NewContext(8*binding.TensorOverhead()+1024, true)
	require.NoError(t, err)
	defer in.Close()
	var x []*binding.Tensor
	for _, p := range s.params(rand.New(rand.NewPCG(1, 1))) {
		x = append(x, in.NewTensor(binding.TypeF32, p.Shape...))
	}
	mask := in.NewTensor(binding.TypeF32, s.P+s.S, s.S, 1, s.B)
	w := in.NewTensor(binding.TypeF32, s.hdv, s.S, s.H, s.B)
	require.NoError(t, in.Err())
	buf, err := be.AllocContext(in)
	require.NoError(t, err)
	defer buf.Close()
	for i := range x {
		require.NoError(t, x[i].SetFloats(data[i]))
		if backward {
			require.NoError(t, x[i].SetParam())
		}
	}
	require.NoError(t, mask.SetFloats(attnMask(s)))
	require.NoError(t, w.SetFloats(weights))

	const size = 1024
	ctx, err := binding.NewGraphContext(size, size, backward)
	require.NoError(t, err)
	defer ctx.Close()
	// a copy: the graph allocator may reuse the memory under an output
	// that is a view once the viewed tensor's last consumer has run
	out := ctx.Cont(s.build(ctx, x, mask, fuse))
	require.NotNil(t, out, "%v", ctx.Err())
	out.SetOutput()
	g, err := ctx.NewGraph(size, backward)
	require.NoError(t, err)
	require.NoError(t, g.BuildForward(out))
	if backward {
		loss := ctx.Sum(ctx.Mul(w, out))
		require.NoError(t, ctx.Err())
		require.NoError(t, loss.SetLoss())
		require.NoError(t, g.BuildForward(loss))
		require.NoError(t, g.BuildBackward(ctx))
	}
	alloc, err := be.NewAllocator()
	require.NoError(t, err)
	defer alloc.Close()
	require.NoError(t, alloc.Alloc(g))
	if backward {
		g.Reset()
	}
	require.NoError(t, be.Compute(g))
	var r attnRun
	for i := 0; i < g.NumNodes(); i++ {
		switch g.Node(i).Op() {
		case "SOFT_MAX", "SOFT_MAX_BACK":
			r.softmax++
		case "CUSTOM":
			r.custom++
		}
	}
	r.buffer = alloc.BufferSize()
	r.out, err = out.Floats()
	require.NoError(t, err)
	if backward {
		for i, dst := range []*[]float32{&r.gq, &r.gk, &r.gv} {
			*dst, err = g.Grad(x[i]).Floats()
			require.NoError(t, err)
		}
	}
	return r
}

// relDiff is max |a-b| / max |b|.
func relDiff(a, b []float32) float64 {
	d, m := 0.0, 0.0
	for i := range b {
		d = math.Max(d, math.Abs(float64(a[i]-b[i])))
		m = math.Max(m, math.Abs(float64(b[i])))
	}
	return d / math.Max(m, 1e-30)
}

// TestAttentionFusedMatchesPlain compares the fused kernels with the plain
// graph over several tiles of queries and keys (partial last tiles, head
// dimensions that are not multiples of the vector width), in value and in
// the gradients of q, k and v, and checks that the fused graph holds no
// softmax and needs less memory.
func TestAttentionFusedMatchesPlain(t *testing.T) {
	cases := []attnShape{
		{name: "gqa-prefix-packed-b2", hd: 16, hdv: 24, H: 4, Hkv: 2, S: 150, P: 7, B: 2, packed: true},
		{name: "mha-causal", hd: 64, hdv: 64, H: 2, Hkv: 2, S: 200, B: 1},
		{name: "mqa-odd-dims", hd: 10, hdv: 6, H: 3, Hkv: 1, S: 65, P: 1, B: 1, packed: true},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(i)+11, 5))
			var data [][]float32
			for _, p := range tc.params(rng) {
				data = append(data, p.Data)
			}
			weights := gradcheck.Uniform(rng, "w", -1, 1, tc.hdv*tc.S*tc.H*tc.B).Data
			plain := runAttention(t, tc, data, weights, false, true)
			fused := runAttention(t, tc, data, weights, true, true)
			fwd := runAttention(t, tc, data, weights, true, false)
			assert.Positive(t, plain.softmax)
			assert.Zero(t, fused.softmax, "the fused graph still holds the softmax")
			assert.Equal(t, 6, fused.custom, "forward, log-sum-exp, row sums, dQ, dK, dV")
			assert.Zero(t, fwd.softmax)
			t.Logf("buffer: plain %d KiB, fused %d KiB", plain.buffer>>10, fused.buffer>>10)
			assert.Less(t, fused.buffer, plain.buffer)
			for _, c := range []struct {
				name      string
				got, want []float32
			}{
				{"output", fused.out, plain.out}, {"forward-only output", fwd.out, plain.out},
				{"dq", fused.gq, plain.gq}, {"dk", fused.gk, plain.gk}, {"dv", fused.gv, plain.gv},
			} {
				d := relDiff(c.got, c.want)
				t.Logf("%s: relative difference %.3g", c.name, d)
				assert.Less(t, d, 1e-5, c.name)
			}
		})
	}
}

// TestAttentionFullyMaskedRow: a query that sees nothing (a mask row of
// -inf) gives NaN in the plain graph's softmax; fused it gives a zero
// output and no gradient, and the other rows are unaffected.
func TestAttentionFullyMaskedRow(t *testing.T) {
	s := attnShape{hd: 8, hdv: 8, H: 2, Hkv: 1, S: 12, P: 0, B: 1, fullyMaskedRow: true}
	rng := rand.New(rand.NewPCG(2, 2))
	var data [][]float32
	for _, p := range s.params(rng) {
		data = append(data, p.Data)
	}
	weights := gradcheck.Uniform(rng, "w", -1, 1, s.hdv*s.S*s.H*s.B).Data
	fused := runAttention(t, s, data, weights, true, true)
	for _, g := range [][]float32{fused.out, fused.gq, fused.gk, fused.gv} {
		for _, v := range g {
			require.False(t, math.IsNaN(float64(v)) || math.IsInf(float64(v), 0))
		}
	}
	// out is [hdv, S, H]: row 1 of each head is zero, and so is its dq
	for h := int64(0); h < s.H; h++ {
		row := (h*s.S + 1) * s.hdv
		assert.Equal(t, make([]float32, s.hdv), fused.out[row:row+s.hdv])
		// q is [hd, H, S, B]
		assert.Equal(t, make([]float32, s.hd), fused.gq[(s.H+h)*s.hd:(s.H+h+1)*s.hd])
	}
	plain := runAttention(t, s, data, weights, false, false)
	assert.True(t, math.IsNaN(float64(plain.out[s.hdv])), "the plain graph's fully masked row")
	for h := int64(0); h < s.H; h++ {
		for i := int64(0); i < s.S; i++ {
			if i == 1 {
				continue
			}
			r := (h*s.S + i) * s.hdv
			assert.InDeltaSlice(t, plain.out[r:r+s.hdv], fused.out[r:r+s.hdv], 1e-5)
		}
	}
}

// BenchmarkAttention times the forward and backward pass of one attention
// layer of the 86M shape (12 heads of 64, causal), fused and plain.
func BenchmarkAttention(b *testing.B) {
	for _, S := range []int64{1024, 4096} {
		for _, fuse := range []bool{true, false} {
			if !fuse && S > 1024 {
				continue
			}
			s := attnShape{hd: 64, hdv: 64, H: 12, Hkv: 12, S: S, B: 1}
			b.Run(fmt.Sprintf("S=%d/fused=%v", S, fuse), func(b *testing.B) {
				be, err := binding.NewCPUBackend(2)
				require.NoError(b, err)
				defer be.Close()
				in, err := binding.NewContext(8*binding.TensorOverhead()+1024, true)
				require.NoError(b, err)
				defer in.Close()
				var x []*binding.Tensor
				for _, p := range s.params(rand.New(rand.NewPCG(1, 1))) {
					x = append(x, in.NewTensor(binding.TypeF32, p.Shape...))
				}
				mask := in.NewTensor(binding.TypeF32, s.P+s.S, s.S, 1, s.B)
				buf, err := be.AllocContext(in)
				require.NoError(b, err)
				defer buf.Close()
				for i, p := range s.params(rand.New(rand.NewPCG(1, 1))) {
					require.NoError(b, x[i].SetFloats(p.Data))
					require.NoError(b, x[i].SetParam())
				}
				require.NoError(b, mask.SetFloats(attnMask(s)))
				ctx, err := binding.NewGraphContext(1024, 1024, true)
				require.NoError(b, err)
				defer ctx.Close()
				loss := ctx.Sum(s.build(ctx, x, mask, fuse))
				require.NoError(b, loss.SetLoss())
				g, err := ctx.NewGraph(1024, true)
				require.NoError(b, err)
				require.NoError(b, g.BuildForward(loss))
				require.NoError(b, g.BuildBackward(ctx))
				alloc, err := be.NewAllocator()
				require.NoError(b, err)
				defer alloc.Close()
				require.NoError(b, alloc.Alloc(g))
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					g.Reset()
					require.NoError(b, be.Compute(g))
				}
				// causal: half of the S² (q·k + p·v) products forward, 3.5 times that backward
				flops := 4.5 * 2 * float64(S*S) * float64(s.hd+s.hdv) * float64(s.H) / 2
				b.ReportMetric(flops*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
				b.ReportMetric(float64(alloc.BufferSize())/(1<<20), "buffer_MiB")
			})
		}
	}
}

// TestAttentionBadInput: shapes and types that do not fit are errors
// naming the operands, not ggml aborts.
func TestAttentionBadInput(t *testing.T) {
	cases := []struct {
		name          string
		q, k, v, mask [4]int64
		typ           binding.Type
	}{
		{"head dims differ", [4]int64{8, 4, 2, 1}, [4]int64{6, 5, 2, 1}, [4]int64{8, 5, 2, 1}, [4]int64{5, 4, 1, 1}, binding.TypeF32},
		{"heads not a multiple", [4]int64{8, 4, 3, 1}, [4]int64{8, 5, 2, 1}, [4]int64{8, 5, 2, 1}, [4]int64{5, 4, 1, 1}, binding.TypeF32},
		{"mask too short", [4]int64{8, 4, 2, 1}, [4]int64{8, 5, 2, 1}, [4]int64{8, 5, 2, 1}, [4]int64{4, 4, 1, 1}, binding.TypeF32},
		{"values of other positions", [4]int64{8, 4, 2, 1}, [4]int64{8, 5, 2, 1}, [4]int64{8, 6, 2, 1}, [4]int64{5, 4, 1, 1}, binding.TypeF32},
		{"batch differs", [4]int64{8, 4, 2, 2}, [4]int64{8, 5, 2, 1}, [4]int64{8, 5, 2, 1}, [4]int64{5, 4, 1, 2}, binding.TypeF32},
		{"f16 mask", [4]int64{8, 4, 2, 1}, [4]int64{8, 5, 2, 1}, [4]int64{8, 5, 2, 1}, [4]int64{5, 4, 1, 1}, binding.TypeF16},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, err := binding.NewGraphContext(64, 64, false)
			require.NoError(t, err)
			defer ctx.Close()
			q := ctx.NewTensor(binding.TypeF32, tc.q[:]...)
			k := ctx.NewTensor(binding.TypeF32, tc.k[:]...)
			v := ctx.NewTensor(binding.TypeF32, tc.v[:]...)
			m := ctx.NewTensor(tc.typ, tc.mask[:]...)
			require.NoError(t, ctx.Err())
			assert.Nil(t, ctx.Attention(q, k, v, m, 1, true))
			require.Error(t, ctx.Err())
			assert.Contains(t, ctx.Err().Error(), "attention")
		})
	}
}
