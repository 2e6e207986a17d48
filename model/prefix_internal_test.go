package model

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/internal/fixture"
)

type constPrefix struct{ k, v []*binding.Tensor }

func (p *constPrefix) PrefixKV(_ *Builder, layer int) (k, v *binding.Tensor) {
	return p.k[layer], p.v[layer]
}

type constPromptHook struct{ t *binding.Tensor }

func (p *constPromptHook) Prompt(*Builder) *binding.Tensor { return p.t }

func absDiff(a, b []float32) float64 {
	d := 0.0
	for i := range a {
		d = math.Max(d, math.Abs(float64(a[i]-b[i])))
	}
	return d
}

func allocF32(t *testing.T, m *Model, shapes [][]int64) []*binding.Tensor {
	t.Helper()
	ctx, err := binding.NewContext(int64(len(shapes)+1)*binding.TensorOverhead()+1024, true)
	require.NoError(t, err)
	t.Cleanup(ctx.Close)
	var out []*binding.Tensor
	for _, sh := range shapes {
		out = append(out, ctx.NewTensor(binding.TypeF32, sh...))
	}
	require.NoError(t, ctx.Err())
	buf, err := m.Backend().AllocContext(ctx)
	require.NoError(t, err)
	t.Cleanup(buf.Close)
	return out
}

// TestPrefixKVFromRealTokens uses the keys and values that the model itself
// stores in its cache for the first P tokens as a prefix: the logits of the
// remaining tokens must then equal those of the whole sequence.
func TestPrefixKVFromRealTokens(t *testing.T) {
	m, err := Load(fixture.Path(t, "models/stories260K.gguf"), Options{Threads: 2})
	require.NoError(t, err)
	defer m.Close()
	cfg := m.Config()
	nv, P, T := cfg.NVocab, 6, 12
	r := rand.New(rand.NewPCG(5, 5))
	seq := make([]int32, P+T)
	for i := range seq {
		seq[i] = int32(r.IntN(nv))
	}
	seq[0] = 1
	full, err := m.Logits(Shape{Batch: 1, Tokens: P + T}, seq, nil, nil)
	require.NoError(t, err)

	s, err := m.NewSession(SessionOptions{NCtx: 64, F32Cache: true})
	require.NoError(t, err)
	_, err = s.Eval(seq[:P])
	require.NoError(t, err)
	nEK, nEV := cfg.NEmbdKV(), cfg.NEmbdVKV()
	var shapes [][]int64
	for il := 0; il < cfg.NLayer; il++ {
		shapes = append(shapes, []int64{int64(cfg.HeadDim), int64(cfg.NHeadKV), int64(P)}, []int64{int64(cfg.HeadDimV), int64(cfg.NHeadKV), int64(P)})
	}
	ts := allocF32(t, m, shapes)
	hook := &constPrefix{}
	for il := 0; il < cfg.NLayer; il++ {
		kc, err := s.kc[il].Floats()
		require.NoError(t, err)
		vc, err := s.vc[il].Floats()
		require.NoError(t, err)
		v := make([]float32, nEV*P)
		for p := 0; p < P; p++ {
			for d := 0; d < nEV; d++ {
				v[d+nEV*p] = vc[d*s.kvSize+p]
			}
		}
		require.NoError(t, ts[2*il].SetFloats(kc[:nEK*P]))
		require.NoError(t, ts[2*il+1].SetFloats(v))
		hook.k = append(hook.k, ts[2*il])
		hook.v = append(hook.v, ts[2*il+1])
	}
	s.Close()

	rest := seq[P:]
	got, err := m.Logits(Shape{Batch: 2, Tokens: T}, append(append([]int32(nil), rest...), rest...), nil, []Hook{hook})
	require.NoError(t, err)
	worst := 0.0
	for row := 0; row < 2; row++ {
		worst = math.Max(worst, absDiff(got[row*T*nv:(row+1)*T*nv], full[P*nv:]))
	}
	s2, err := m.NewSession(SessionOptions{NCtx: 64, F32Cache: true, Hooks: []Hook{hook}})
	require.NoError(t, err)
	defer s2.Close()
	last, err := s2.Eval(rest)
	require.NoError(t, err)
	worstS := absDiff(last, full[(P+T-1)*nv:])
	t.Logf("prefix from real keys/values: full graph %.3g, session %.3g", worst, worstS)
	require.Less(t, worst, 1e-4)
	require.Less(t, worstS, 1e-4)
}

// TestBackwardThroughHooks builds the backward pass of a batch of 2 on the
// GQA model with a trainable soft prompt and prefix, and checks gradients
// against central finite differences.
func TestBackwardThroughHooks(t *testing.T) {
	m, err := Load(fixture.Path(t, "models/stories260K.gguf"), Options{Threads: 2})
	require.NoError(t, err)
	defer m.Close()
	cfg := m.Config()
	nv, ne, B, T, P, V := cfg.NVocab, cfg.NEmbd, 2, 8, 3, 2
	ps := allocF32(t, m, [][]int64{{int64(ne), int64(V)}, {int64(cfg.HeadDim), int64(cfg.NHeadKV), int64(P)}, {int64(cfg.HeadDimV), int64(cfg.NHeadKV), int64(P)}})
	r := rand.New(rand.NewPCG(8, 8))
	for _, p := range ps {
		d := make([]float32, p.Elements())
		for i := range d {
			d[i] = float32(r.NormFloat64())
		}
		require.NoError(t, p.SetFloats(d))
		require.NoError(t, p.SetParam())
	}
	prefix := &constPrefix{}
	for il := 0; il < cfg.NLayer; il++ {
		prefix.k = append(prefix.k, ps[1])
		prefix.v = append(prefix.v, ps[2])
	}
	hooks := []Hook{&constPromptHook{ps[0]}, prefix}

	size := 8 * m.GraphSize()
	ctx, err := binding.NewGraphContext(size, size, true)
	require.NoError(t, err)
	defer ctx.Close()
	f, err := m.BuildForward(ctx, Shape{Batch: B, Tokens: T, Train: true}, hooks)
	require.NoError(t, err)
	labels := ctx.NewTensor(binding.TypeF32, int64(nv), int64(T*B))
	labels.SetInput()
	loss := ctx.CrossEntropyLoss(ctx.Reshape(f.Logits, int64(nv), int64(T*B)), labels)
	require.NoError(t, ctx.Err())
	require.NoError(t, loss.SetLoss())
	loss.SetOutput()
	g, err := ctx.NewGraph(size, true)
	require.NoError(t, err)
	require.NoError(t, g.BuildForward(loss))
	gctx, err := binding.NewGraphContext(size, size, false)
	require.NoError(t, err)
	defer gctx.Close()
	require.NoError(t, g.BuildBackward(gctx))
	alloc, err := m.Backend().NewAllocator()
	require.NoError(t, err)
	defer alloc.Close()
	require.NoError(t, alloc.Alloc(g))

	tokens := make([]int32, B*T)
	lab := make([]float32, nv*B*T)
	for i := range tokens {
		tokens[i] = int32(r.IntN(nv))
		lab[i*nv+r.IntN(nv)] = 1
	}
	segs := []int32{0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, -1, -1}
	run := func() float64 {
		require.NoError(t, f.SetBatch(tokens, segs))
		require.NoError(t, labels.SetFloats(lab))
		g.Reset()
		require.NoError(t, m.Backend().Compute(g))
		v, err := loss.Floats()
		require.NoError(t, err)
		return float64(v[0])
	}
	run()
	for pi, p := range ps {
		grad, err := g.Grad(p).Floats()
		require.NoError(t, err)
		data, err := p.Floats()
		require.NoError(t, err)
		for _, i := range []int{0, len(data) / 2, len(data) - 1} {
			const h = 1e-2
			orig := data[i]
			data[i] = orig + h
			require.NoError(t, p.SetFloats(data))
			lp := run()
			data[i] = orig - h
			require.NoError(t, p.SetFloats(data))
			lm := run()
			data[i] = orig
			require.NoError(t, p.SetFloats(data))
			fd := (lp - lm) / (2 * h)
			t.Logf("param %d[%d]: backward %.6g, finite difference %.6g", pi, i, grad[i], fd)
			require.InDelta(t, fd, float64(grad[i]), 2e-3+0.02*math.Abs(fd))
		}
	}
}
