package lntune_test

import (
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/internal/fixture"
	"github.com/ggtune/ggtune/internal/methodtest"
	"github.com/ggtune/ggtune/lntune"
	"github.com/ggtune/ggtune/method"
	"github.com/ggtune/ggtune/model"
)

func setup(t *testing.T) (string, *model.Model, *method.Env, *lntune.Adapter) {
	t.Helper()
	path := fixture.Path(t, "models/stories260K.gguf")
	m, err := model.Load(path, model.Options{Threads: 2})
	require.NoError(t, err)
	t.Cleanup(m.Close)
	env, err := method.NewEnv(path, m, m.Backend())
	require.NoError(t, err)
	t.Cleanup(env.Close)
	a, err := lntune.New(env.Base, m.Backend())
	require.NoError(t, err)
	t.Cleanup(a.Close)
	return path, m, env, a
}

// perturb scales every norm weight by a random factor in [0.5, 1.5).
func perturb(t *testing.T, a *lntune.Adapter) {
	rng := rand.New(rand.NewPCG(5, 6))
	for _, ts := range a.Tensors() {
		v, err := ts.Floats()
		require.NoError(t, err)
		for i := range v {
			v[i] *= 0.5 + rng.Float32()
		}
		require.NoError(t, ts.SetFloats(v))
	}
}

func TestIdentityRoundTripAndMerge(t *testing.T) {
	path, m, env, a := setup(t)
	assert.Len(t, a.Tensors(), 11, "attn_norm and ffn_norm of 5 blocks and output_norm")
	toks := methodtest.Tokens
	base := methodtest.GraphLogits(t, m, nil, toks)
	assert.Zero(t, methodtest.MaxAbsDiff(base, methodtest.GraphLogits(t, m, a.Hooks(1), toks)), "an untrained adapter changes nothing")

	perturb(t, a)
	want := methodtest.GraphLogits(t, m, a.Hooks(1), toks)
	require.Greater(t, methodtest.MaxAbsDiff(base, want), 1e-2)
	dir := t.TempDir()
	file := filepath.Join(dir, "ln.gguf")
	require.NoError(t, a.Save(file))
	inst, meth, err := method.Open(file, env)
	require.NoError(t, err)
	defer inst.Close()
	assert.Equal(t, "lntune", meth.Name())
	assert.Zero(t, methodtest.MaxAbsDiff(want, methodtest.GraphLogits(t, m, inst.Hooks(1), toks)), "identical logits after the round trip")

	for _, scale := range []float32{1, 0.5} {
		merged := filepath.Join(dir, "merged.gguf")
		require.NoError(t, method.Merge(path, merged, []method.Scaled{{Instance: inst, Scale: scale, Name: "ln"}}, method.MergeOptions{}))
		d := methodtest.MaxAbsDiff(methodtest.LlamaLogits(t, merged, toks), methodtest.GraphLogits(t, m, inst.Hooks(scale), toks))
		t.Logf("RESULT lntune scale %g: max |libllama(merged) - ggtune(adapter)| = %.2e", scale, d)
		assert.LessOrEqual(t, d, 1e-4)
	}
}

func TestGradientsMatchFiniteDifferences(t *testing.T) {
	_, m, _, a := setup(t)
	perturb(t, a)
	ts := a.Tensors()
	methodtest.GradCheck(t, m, a.Hooks(1), []*binding.Tensor{ts[0], ts[1], ts[len(ts)-1]})
}

func TestLoadRejectsForeignTensors(t *testing.T) {
	_, m, env, _ := setup(t)
	bad := filepath.Join(t.TempDir(), "bad.gguf")
	w, err := binding.NewGGUFWriter(1)
	require.NoError(t, err)
	for _, kv := range []binding.KV{{Key: "general.type", Value: "adapter"}, {Key: "general.architecture", Value: "llama"},
		{Key: "adapter.type", Value: lntune.AdapterType}, {Key: "ggtune.lntune.format_version", Value: uint32(1)}} {
		require.NoError(t, w.Set(kv.Key, kv.Value))
	}
	require.NoError(t, w.AddFloats("blk.0.attn_q.weight", binding.TypeF32, []int64{2}, []float32{1, 1}))
	require.NoError(t, w.WriteFile(bad))
	w.Close()
	_, err = lntune.Load(bad, env.Base, m.Backend())
	require.ErrorIs(t, err, lntune.ErrFormat)
	assert.Contains(t, err.Error(), "blk.0.attn_q.weight")
}
