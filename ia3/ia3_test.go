package ia3_test

import (
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/ia3"
	"github.com/ggtune/ggtune/internal/fixture"
	"github.com/ggtune/ggtune/internal/methodtest"
	"github.com/ggtune/ggtune/method"
	"github.com/ggtune/ggtune/model"
)

// setup loads stories260K and a fresh IA3 adapter with every default site.
func setup(t *testing.T) (string, *model.Model, *method.Env, *ia3.Adapter) {
	t.Helper()
	path := fixture.Path(t, "models/stories260K.gguf")
	m, err := model.Load(path, model.Options{Threads: 2})
	require.NoError(t, err)
	t.Cleanup(m.Close)
	env, err := method.NewEnv(path, m, m.Backend())
	require.NoError(t, err)
	t.Cleanup(env.Close)
	a, err := ia3.New(ia3.DefaultConfig(), env.Config, env.Base, m.Backend())
	require.NoError(t, err)
	t.Cleanup(a.Close)
	return path, m, env, a
}

// randomize moves every vector away from 1.
func randomize(t *testing.T, a *ia3.Adapter) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, ts := range a.Tensors() {
		v := make([]float32, ts.Elements())
		for i := range v {
			v[i] = 0.5 + rng.Float32()
		}
		require.NoError(t, ts.SetFloats(v))
	}
}

func TestUntrainedIsIdentityAndRoundTrip(t *testing.T) {
	_, m, env, a := setup(t)
	base := methodtest.GraphLogits(t, m, nil, methodtest.Tokens)
	assert.Zero(t, methodtest.MaxAbsDiff(base, methodtest.GraphLogits(t, m, a.Hooks(1), methodtest.Tokens)), "vectors of 1 change nothing")

	randomize(t, a)
	want := methodtest.GraphLogits(t, m, a.Hooks(1), methodtest.Tokens)
	require.Greater(t, methodtest.MaxAbsDiff(base, want), 1e-2)
	file := filepath.Join(t.TempDir(), "ia3.gguf")
	require.NoError(t, a.Save(file))
	inst, meth, err := method.Open(file, env)
	require.NoError(t, err)
	defer inst.Close()
	assert.Equal(t, "ia3", meth.Name())
	assert.Zero(t, methodtest.MaxAbsDiff(want, methodtest.GraphLogits(t, m, inst.Hooks(1), methodtest.Tokens)), "identical logits after the round trip")
}

// TestMergedMatchesLibllama folds random vectors into the base and checks
// libllama's logits on the merged file against ggtune's graph with the
// adapter, at scale 1 and 0.5.
func TestMergedMatchesLibllama(t *testing.T) {
	path, m, _, a := setup(t)
	randomize(t, a)
	f32 := binding.TypeF32
	for _, scale := range []float32{1, 0.5} {
		merged := filepath.Join(t.TempDir(), "merged.gguf")
		require.NoError(t, method.Merge(path, merged, []method.Scaled{{Instance: a, Scale: scale, Name: "ia3"}}, method.MergeOptions{Type: &f32}))
		got := methodtest.LlamaLogits(t, merged, methodtest.Tokens)
		want := methodtest.GraphLogits(t, m, a.Hooks(scale), methodtest.Tokens)
		d := methodtest.MaxAbsDiff(got, want)
		t.Logf("RESULT ia3 scale %g: max |libllama(merged) - ggtune(adapter)| = %.2e", scale, d)
		assert.LessOrEqual(t, d, 1e-4)
		assert.Greater(t, methodtest.MaxAbsDiff(got, methodtest.LlamaLogits(t, path, methodtest.Tokens)), 1e-2, "the merge changes the model")
	}
}

func TestGradientsMatchFiniteDifferences(t *testing.T) {
	_, m, _, a := setup(t)
	randomize(t, a)
	groups, err := a.Groups()
	require.NoError(t, err)
	ts := groups[0].Params
	// One vector of each site in the first and last block.
	methodtest.GradCheck(t, m, a.Hooks(1), []*binding.Tensor{ts[0], ts[4], ts[5], ts[10], ts[14]})
}

func TestLoadRejectsBadFiles(t *testing.T) {
	_, m, env, _ := setup(t)
	other := filepath.Join(t.TempDir(), "bad.gguf")
	w, err := binding.NewGGUFWriter(1)
	require.NoError(t, err)
	for _, kv := range []binding.KV{{Key: "general.type", Value: "adapter"}, {Key: "general.architecture", Value: "llama"},
		{Key: "adapter.type", Value: "ia3"}, {Key: "ggtune.ia3.format_version", Value: uint32(1)}, {Key: "ggtune.ia3.targets", Value: []string{"k"}}} {
		require.NoError(t, w.Set(kv.Key, kv.Value))
	}
	require.NoError(t, w.AddFloats("blk.0.attn_k.ia3_l", binding.TypeF32, []int64{3}, []float32{1, 1, 1}))
	require.NoError(t, w.WriteFile(other))
	w.Close()
	_, err = ia3.Load(other, env.Config, env.Base, m.Backend())
	require.ErrorIs(t, err, ia3.ErrFormat)
	assert.Contains(t, err.Error(), "blk.0.attn_k.ia3_l")
}
