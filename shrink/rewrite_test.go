package shrink_test

import (
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/internal/fixture"
	"github.com/ggtune/ggtune/internal/randmodel"
	"github.com/ggtune/ggtune/model"
	"github.com/ggtune/ggtune/shrink"
)

// oracle is the source model's graph with what a plan removes taken out by
// hooks: skipped blocks (model.LayerSkipHook) and FFN channels multiplied
// by zero at the down projection's input (model.ScaleHook).
type oracle struct {
	skip map[int]bool
	mask map[int]*binding.Tensor
}

func (o *oracle) SkipLayer(layer int) bool { return o.skip[layer] }

func (o *oracle) Scale(b *model.Builder, layer int, site model.ScaleSite, x *binding.Tensor) *binding.Tensor {
	if t, ok := o.mask[layer]; ok && site == model.ScaleFFN {
		return b.Ctx.Mul(x, t)
	}
	return x
}

// newOracle builds the hook for plan on m (a model of nl blocks).
func newOracle(t *testing.T, m *model.Model, plan shrink.Plan) *oracle {
	t.Helper()
	cfg := m.Config()
	o := &oracle{skip: map[int]bool{}, mask: map[int]*binding.Tensor{}}
	for l := range cfg.NLayer {
		o.skip[l] = plan.Keep != nil && !slices.Contains(plan.Keep, l)
	}
	if plan.FFN == nil {
		return o
	}
	ctx, err := binding.NewContext(int64(len(plan.FFN)+1)*binding.TensorOverhead()+1024, true)
	require.NoError(t, err)
	t.Cleanup(ctx.Close)
	ts := make([]*binding.Tensor, len(plan.FFN))
	for i := range plan.FFN {
		ts[i] = ctx.NewTensor(binding.TypeF32, int64(cfg.NFF))
	}
	buf, err := m.Backend().AllocContext(ctx)
	require.NoError(t, err)
	t.Cleanup(buf.Close)
	for i, ch := range plan.FFN {
		v := make([]float32, cfg.NFF)
		for _, c := range ch {
			v[c] = 1
		}
		require.NoError(t, ts[i].SetFloats(v))
		layer := i
		if plan.Keep != nil {
			layer = plan.Keep[i]
		}
		o.mask[layer] = ts[i]
	}
	return o
}

// randomChannels picks n of nff channels per block, in increasing order.
func randomChannels(blocks, nff, n int, seed uint64) [][]int {
	r := rand.New(rand.NewPCG(seed, 1))
	out := make([][]int, blocks)
	for i := range out {
		out[i] = slices.Sorted(slices.Values(r.Perm(nff)[:n]))
	}
	return out
}

// TestWriteMatchesLibllama checks the rewritten GGUF against an oracle:
// libllama's logits on the smaller file must equal ggtune's graph on the
// source with the removed blocks skipped and the removed FFN channels
// zeroed. It also checks metadata (block_count, feed_forward_length and
// per-layer arrays), tensor types and names, and that the source is
// unchanged.
func TestWriteMatchesLibllama(t *testing.T) {
	stories := fixture.Path(t, "models/stories260K.gguf")
	dir := t.TempDir()
	// A copy of stories260K whose per-layer values are stored as arrays.
	arrays := filepath.Join(dir, "arrays.gguf")
	require.NoError(t, shrink.Write(stories, arrays, shrink.Plan{}, []binding.KV{
		{Key: "llama.feed_forward_length", Value: []uint32{172, 172, 172, 172, 172}},
		{Key: "llama.attention.head_count_kv", Value: []uint32{4, 4, 4, 4, 4}},
	}))
	q8 := filepath.Join(dir, "q8.gguf")
	require.NoError(t, randmodel.Write(q8, randmodel.Options{NEmbd: 64, NLayer: 3, NHead: 4, NFF: 256, Type: binding.TypeQ8_0, Seed: 5}))

	cases := []struct {
		name     string
		src      string
		plan     shrink.Plan
		downType binding.Type // expected type of blk.0.ffn_down.weight
		tol      float64
	}{
		{"drop block 2", stories, shrink.Plan{Keep: []int{0, 1, 3, 4}}, binding.TypeF32, 1e-4},
		{"keep 1 and 3", stories, shrink.Plan{Keep: []int{1, 3}}, binding.TypeF32, 1e-4},
		{"ffn 100 of 172", stories, shrink.Plan{FFN: randomChannels(5, 172, 100, 1)}, binding.TypeF32, 1e-4},
		{"arrays, blocks and ffn", arrays, shrink.Plan{Keep: []int{0, 2, 4}, FFN: randomChannels(3, 172, 64, 2)}, binding.TypeF32, 1e-4},
		{"q8_0 blocks", q8, shrink.Plan{Keep: []int{0, 2}}, binding.TypeQ8_0, 1e-4},
		// Q8_0 down projections are re-quantized in new blocks of 32 (or stored as F16).
		{"q8_0 ffn 128", q8, shrink.Plan{FFN: randomChannels(3, 256, 128, 3)}, binding.TypeQ8_0, 0.05},
		{"q8_0 ffn 100", q8, shrink.Plan{FFN: randomChannels(3, 256, 100, 4)}, binding.TypeF16, 0.05},
	}
	toks := []int32{1, 403, 17, 260, 5, 88, 301, 44}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := fileSum(t, tc.src)
			out := filepath.Join(dir, "out.gguf")
			require.NoError(t, shrink.Write(tc.src, out, tc.plan, nil))
			assert.Equal(t, before, fileSum(t, tc.src))

			m, err := model.Load(tc.src, model.Options{Threads: 1})
			require.NoError(t, err)
			defer m.Close()
			cfg := m.Config()
			keep := tc.plan.Keep
			if keep == nil {
				keep = []int{}
				for l := range cfg.NLayer {
					keep = append(keep, l)
				}
			}
			nff := cfg.NFF
			if tc.plan.FFN != nil {
				nff = len(tc.plan.FFN[0])
			}
			f, err := binding.OpenGGUF(out)
			require.NoError(t, err)
			defer f.Close()
			oc, err := model.ReadConfig(f)
			require.NoError(t, err)
			assert.Equal(t, len(keep), oc.NLayer)
			assert.Equal(t, nff, oc.NFF)
			for _, k := range []string{"llama.feed_forward_length", "llama.attention.head_count_kv"} {
				if v, _ := f.Get(k); i == 3 {
					assert.Len(t, v, len(keep), k)
				}
			}
			down, ok := f.TensorInfo("blk.0.ffn_down.weight")
			require.True(t, ok)
			assert.Equal(t, tc.downType, down.Type)
			assert.Equal(t, []int64{int64(nff), int64(cfg.NEmbd)}, down.Shape)
			_, ok = f.TensorInfo("blk." + itoa(len(keep)) + ".attn_q.weight")
			assert.False(t, ok, "a block beyond the new count is left")

			want, err := m.Logits(model.Shape{Batch: 1, Tokens: len(toks)}, toks, nil, []model.Hook{newOracle(t, m, tc.plan)})
			require.NoError(t, err)
			lm, err := binding.LoadModel(out, binding.ModelParams{})
			require.NoError(t, err)
			defer lm.Close()
			require.Equal(t, len(keep), lm.NLayer())
			lc, err := binding.NewLlamaContext(lm, binding.ContextParams{NCtx: 64, Threads: 1, F32Cache: true})
			require.NoError(t, err)
			defer lc.Close()
			require.NoError(t, lc.Decode(toks, 0, true))
			nv := cfg.NVocab
			maxDiff, maxAbs := 0.0, 0.0
			for p := range toks {
				got, err := lc.Logits(p)
				require.NoError(t, err)
				for v := range nv {
					maxDiff = math.Max(maxDiff, math.Abs(float64(got[v]-want[p*nv+v])))
					maxAbs = math.Max(maxAbs, math.Abs(float64(want[p*nv+v])))
				}
			}
			t.Logf("max |libllama - oracle| = %.3g (logits up to %.3g)", maxDiff, maxAbs)
			assert.Less(t, maxDiff, tc.tol*math.Max(1, maxAbs))
		})
	}
}

func itoa(n int) string { return string(rune('0' + n)) }

// TestWriteRefusesBadPlans checks that a plan that does not fit the model
// is an ErrPlan error and writes nothing.
func TestWriteRefusesBadPlans(t *testing.T) {
	src := fixture.Path(t, "models/stories260K.gguf")
	cases := []struct {
		name string
		plan shrink.Plan
	}{
		{"no block", shrink.Plan{Keep: []int{}}},
		{"out of range", shrink.Plan{Keep: []int{0, 5}}},
		{"duplicate", shrink.Plan{Keep: []int{1, 1}}},
		{"unordered", shrink.Plan{Keep: []int{2, 1}}},
		{"ffn blocks", shrink.Plan{Keep: []int{0, 1}, FFN: randomChannels(5, 172, 10, 1)}},
		{"ffn widths differ", shrink.Plan{FFN: append(randomChannels(4, 172, 10, 1), []int{1, 2})}},
		{"ffn channel", shrink.Plan{FFN: [][]int{{172}, {1}, {1}, {1}, {1}}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out.gguf")
			err := shrink.Write(src, out, tc.plan, nil)
			require.ErrorIs(t, err, shrink.ErrPlan)
			_, serr := os.Stat(out)
			assert.True(t, os.IsNotExist(serr))
		})
	}
}
