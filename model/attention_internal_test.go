package model

import (
	"math"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/internal/fixture"
	"github.com/ggtune/ggtune/internal/randmodel"
)

// loraQKV adds B·(A·x) to the q, k and v projections of every layer: the
// LoRA update, with parameters of its own.
type loraQKV struct{ a, b map[[2]int]*binding.Tensor }

func (h *loraQKV) Project(b *Builder, layer int, p Proj, x, y *binding.Tensor) *binding.Tensor {
	a, ok := h.a[[2]int{layer, int(p)}]
	if !ok {
		return y
	}
	return b.Ctx.Add(y, b.Ctx.MulMat(h.b[[2]int{layer, int(p)}], b.Ctx.MulMat(a, x)))
}

// attnGraphRun is one training graph's logits, parameter gradients and
// softmax node count.
type attnGraphRun struct {
	logits  []float32
	grads   [][]float32
	softmax int
}

func runTrainGraph(t *testing.T, m *Model, shape Shape, hooks []Hook, params []*binding.Tensor, tokens, segs []int32, lab []float32) attnGraphRun {
	t.Helper()
	nv := int64(m.Config().NVocab)
	n := int64(shape.Batch * shape.Tokens)
	size := 8 * m.GraphSize()
	ctx, err := binding.NewGraphContext(size, size, true)
	require.NoError(t, err)
	defer ctx.Close()
	f, err := m.BuildForward(ctx, shape, hooks)
	require.NoError(t, err)
	labels := ctx.NewTensor(binding.TypeF32, nv, n)
	labels.SetInput()
	logits := ctx.Cont(ctx.Reshape(f.Logits, nv, n))
	loss := ctx.CrossEntropyLoss(logits, labels)
	require.NoError(t, ctx.Err())
	require.NoError(t, loss.SetLoss())
	loss.SetOutput()
	logits.SetOutput()
	g, err := ctx.NewGraph(size, true)
	require.NoError(t, err)
	require.NoError(t, g.BuildForward(logits))
	require.NoError(t, g.BuildForward(loss))
	require.NoError(t, g.BuildBackward(ctx))
	alloc, err := m.Backend().NewAllocator()
	require.NoError(t, err)
	defer alloc.Close()
	require.NoError(t, alloc.Alloc(g))
	require.NoError(t, f.SetBatch(tokens, segs))
	require.NoError(t, labels.SetFloats(lab))
	g.Reset()
	require.NoError(t, m.Backend().Compute(g))
	var r attnGraphRun
	for i := 0; i < g.NumNodes(); i++ {
		if op := g.Node(i).Op(); op == "SOFT_MAX" || op == "SOFT_MAX_BACK" {
			r.softmax++
		}
	}
	r.logits, err = logits.Floats()
	require.NoError(t, err)
	for _, p := range params {
		gr, err := g.Grad(p).Floats()
		require.NoError(t, err)
		r.grads = append(r.grads, gr)
	}
	return r
}

func relDiff(a, b []float32) float64 {
	d, m := 0.0, 0.0
	for i := range b {
		d = math.Max(d, math.Abs(float64(a[i]-b[i])))
		m = math.Max(m, math.Abs(float64(b[i])))
	}
	return d / math.Max(m, 1e-30)
}

// TestFusedAttentionMatchesPlain compares the training graph with the
// fused attention kernels against the plain soft_max graph (the same
// model, hooks and batch): logits and the gradients of LoRA, prefix-tuning
// and prompt-tuning parameters, with GQA, packed segments with padding,
// prefix K/V, virtual tokens and several sequences, over several tiles.
func TestFusedAttentionMatchesPlain(t *testing.T) {
	qwen := filepath.Join(t.TempDir(), "qwen2-gqa.gguf")
	require.NoError(t, randmodel.Write(qwen, randmodel.Options{Arch: "qwen2", NEmbd: 256, NHead: 4, NHeadKV: 2, NLayer: 2, Seed: 3}))
	stories := fixture.Path(t, "models/stories260K.gguf")
	cases := []struct {
		name          string
		path          string
		batch, tokens int
		prefix, virt  int
		packed        bool
	}{
		{name: "stories-gqa-packed-b2", path: stories, batch: 2, tokens: 80, packed: true},
		{name: "stories-prefix", path: stories, batch: 1, tokens: 70, prefix: 5},
		{name: "stories-prompt-prefix-packed-b2", path: stories, batch: 2, tokens: 40, prefix: 3, virt: 4, packed: true},
		{name: "qwen2-hd64-prefix", path: qwen, batch: 1, tokens: 130, prefix: 2},
	}
	for ci, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Load(tc.path, Options{Threads: 2})
			require.NoError(t, err)
			defer m.Close()
			cfg := m.Config()
			r := rand.New(rand.NewPCG(uint64(ci), 17))
			const rank = 4
			var shapes [][]int64
			lora := &loraQKV{a: map[[2]int]*binding.Tensor{}, b: map[[2]int]*binding.Tensor{}}
			outs := map[Proj]int64{ProjQ: int64(cfg.NHead * cfg.HeadDim), ProjK: int64(cfg.NHeadKV * cfg.HeadDim), ProjV: int64(cfg.NHeadKV * cfg.HeadDimV)}
			for il := 0; il < cfg.NLayer; il++ {
				for _, p := range []Proj{ProjQ, ProjK, ProjV} {
					shapes = append(shapes, []int64{int64(cfg.NEmbd), rank}, []int64{rank, outs[p]})
				}
			}
			if tc.virt > 0 {
				shapes = append(shapes, []int64{int64(cfg.NEmbd), int64(tc.virt)})
			}
			if tc.prefix > 0 {
				shapes = append(shapes, []int64{int64(cfg.HeadDim), int64(cfg.NHeadKV), int64(tc.prefix)},
					[]int64{int64(cfg.HeadDimV), int64(cfg.NHeadKV), int64(tc.prefix)})
			}
			ps := allocF32(t, m, shapes)
			for _, p := range ps {
				d := make([]float32, p.Elements())
				for i := range d {
					d[i] = float32(r.NormFloat64()) * 0.1
				}
				require.NoError(t, p.SetFloats(d))
				require.NoError(t, p.SetParam())
			}
			k := 0
			for il := 0; il < cfg.NLayer; il++ {
				for _, p := range []Proj{ProjQ, ProjK, ProjV} {
					lora.a[[2]int{il, int(p)}], lora.b[[2]int{il, int(p)}] = ps[k], ps[k+1]
					k += 2
				}
			}
			hooks := []Hook{lora}
			if tc.virt > 0 {
				hooks = append(hooks, &constPromptHook{ps[k]})
				k++
			}
			if tc.prefix > 0 {
				prefix := &constPrefix{}
				for il := 0; il < cfg.NLayer; il++ {
					prefix.k = append(prefix.k, ps[k])
					prefix.v = append(prefix.v, ps[k+1])
				}
				hooks = append(hooks, prefix)
			}

			nv, n := cfg.NVocab, tc.batch*tc.tokens
			tokens := make([]int32, n)
			lab := make([]float32, nv*n)
			var segs []int32
			if tc.packed {
				segs = make([]int32, n)
			}
			for i := range tokens {
				tokens[i] = int32(r.IntN(nv))
				lab[i*nv+r.IntN(nv)] = 1
				if tc.packed {
					t := i % tc.tokens
					segs[i] = int32(t / 27)
					if t >= tc.tokens-5 {
						segs[i] = -1
					}
				}
			}
			shape := Shape{Batch: tc.batch, Tokens: tc.tokens, Train: true}
			m.SetPlainAttention(true)
			plain := runTrainGraph(t, m, shape, hooks, ps, tokens, segs, lab)
			m.SetPlainAttention(false)
			fused := runTrainGraph(t, m, shape, hooks, ps, tokens, segs, lab)
			assert.Positive(t, plain.softmax)
			assert.Zero(t, fused.softmax, "every layer's attention is fused")
			d := relDiff(fused.logits, plain.logits)
			t.Logf("logits: relative difference %.3g", d)
			assert.Less(t, d, 1e-5, "logits")
			worst := 0.0
			for i := range ps {
				d := relDiff(fused.grads[i], plain.grads[i])
				worst = math.Max(worst, d)
				assert.Less(t, d, 1e-5, "gradient of parameter %d %v", i, ps[i].Shape())
			}
			t.Logf("parameter gradients: largest relative difference %.3g over %d parameters", worst, len(ps))
		})
	}
}
