package lora_test

import (
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/internal/fixture"
	"github.com/ggtune/ggtune/internal/methodtest"
	"github.com/ggtune/ggtune/lora"
	"github.com/ggtune/ggtune/method"
	"github.com/ggtune/ggtune/model"
)

// newDoRA loads stories260K and makes a DoRA adapter on it.
func newDoRA(t *testing.T, targets []lora.Target) (string, *model.Model, *binding.GGUFFile, *lora.Adapter) {
	t.Helper()
	path := fixture.Path(t, "models/stories260K.gguf")
	m, err := model.Load(path, model.Options{Threads: 2})
	require.NoError(t, err)
	t.Cleanup(m.Close)
	f, err := binding.OpenGGUF(path)
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	cfg := lora.DefaultConfig()
	cfg.DoRA, cfg.Targets, cfg.Alpha = true, targets, 16
	a, err := lora.New(cfg, f, m.Backend())
	require.NoError(t, err)
	t.Cleanup(a.Close)
	return path, m, f, a
}

// randomizeDoRA gives A, B and the magnitudes random values.
func randomizeDoRA(t *testing.T, a *lora.Adapter) {
	randomize(t, a, 9)
	rng := rand.New(rand.NewPCG(1, 2))
	for _, w := range a.Weights() {
		m, err := w.M.Floats()
		require.NoError(t, err)
		for i := range m {
			m[i] *= 0.7 + 0.6*rng.Float32()
		}
		require.NoError(t, w.M.SetFloats(m))
	}
}

func TestDoRAIdentityRoundTripAndMerge(t *testing.T) {
	path, m, f, a := newDoRA(t, lora.AllLinear)
	toks := methodtest.Tokens
	base := methodtest.GraphLogits(t, m, nil, toks)
	assert.LessOrEqual(t, methodtest.MaxAbsDiff(base, methodtest.GraphLogits(t, m, []model.Hook{a.Hook(1)}, toks)), 1e-5,
		"an untrained DoRA adapter (B = 0, m = ‖W‖) changes nothing")

	randomizeDoRA(t, a)
	want := methodtest.GraphLogits(t, m, []model.Hook{a.Hook(1)}, toks)
	require.Greater(t, methodtest.MaxAbsDiff(base, want), 1e-2)

	dir := t.TempDir()
	file := filepath.Join(dir, "dora.gguf")
	require.NoError(t, a.Save(file))
	typ, err := method.AdapterType(file)
	require.NoError(t, err)
	assert.Equal(t, "dora", typ, "llama.cpp must not load a DoRA file as plain LoRA")
	b, err := lora.Load(file, f, m.Backend())
	require.NoError(t, err)
	defer b.Close()
	assert.Zero(t, methodtest.MaxAbsDiff(want, methodtest.GraphLogits(t, m, []model.Hook{b.Hook(1)}, toks)), "identical logits after the round trip")

	f32 := binding.TypeF32
	for _, scale := range []float32{1, 0.5} {
		merged := filepath.Join(dir, "merged.gguf")
		require.NoError(t, lora.Merge(path, merged, []lora.Scaled{{Adapter: b, Scale: scale}}, lora.MergeOptions{Type: &f32}))
		d := methodtest.MaxAbsDiff(methodtest.LlamaLogits(t, merged, toks), methodtest.GraphLogits(t, m, []model.Hook{b.Hook(scale)}, toks))
		t.Logf("RESULT dora scale %g: max |libllama(merged) - ggtune(adapter)| = %.2e", scale, d)
		assert.LessOrEqual(t, d, 1e-4)
	}
}

// TestDoRAGradients checks A, B and m against finite differences with the
// norms held fixed (DoRA does not differentiate through them).
func TestDoRAGradients(t *testing.T) {
	_, m, _, a := newDoRA(t, []lora.Target{lora.TargetQ, lora.TargetDown})
	randomizeDoRA(t, a)
	a.FreezeNorms()
	var params []*binding.Tensor
	for _, w := range a.Weights() {
		params = append(params, w.A, w.B, w.M)
	}
	methodtest.GradCheck(t, m, []model.Hook{a.Hook(1)}, []*binding.Tensor{params[0], params[1], params[2], params[len(params)-3], params[len(params)-1]})
}

func TestLoRAPlusAndDoRAGroups(t *testing.T) {
	for _, tc := range []struct {
		name  string
		dora  bool
		ratio float64
		want  []string
	}{
		{"lora", false, 0, []string{"lora_a", "lora_b"}},
		{"lora+", false, 16, []string{"lora_a", "lora_b"}},
		{"dora", true, 0, []string{"lora_a", "lora_b", "dora_m"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := fixture.Path(t, "models/stories260K.gguf")
			m, err := model.Load(path, model.Options{Threads: 2})
			require.NoError(t, err)
			defer m.Close()
			env, err := method.NewEnv(path, m, m.Backend())
			require.NoError(t, err)
			defer env.Close()
			meth, err := method.Get("lora")
			require.NoError(t, err)
			cfg := meth.NewConfig().(*lora.Config)
			cfg.DoRA, cfg.PlusRatio = tc.dora, tc.ratio
			inst, err := meth.New(env, cfg)
			require.NoError(t, err)
			defer inst.Close()
			groups, err := inst.Groups()
			require.NoError(t, err)
			var names []string
			for _, g := range groups {
				names = append(names, g.Name)
				assert.Len(t, g.Params, 35, "%s: one tensor per adapted matrix", g.Name)
			}
			assert.Equal(t, tc.want, names)
			assert.Equal(t, tc.ratio, groups[1].LRScale, "B's learning-rate factor")
			if tc.dora {
				require.NotNil(t, groups[2].WeightDecay)
				assert.Zero(t, *groups[2].WeightDecay, "no decay on the magnitudes")
			}
		})
	}
}
