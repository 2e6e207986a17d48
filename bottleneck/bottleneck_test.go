package bottleneck_test

import (
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/bottleneck"
	"github.com/ggtune/ggtune/internal/fixture"
	"github.com/ggtune/ggtune/internal/methodtest"
	"github.com/ggtune/ggtune/method"
	"github.com/ggtune/ggtune/model"
)

func setup(t *testing.T, cfg bottleneck.Config) (*model.Model, *method.Env, *bottleneck.Adapter) {
	t.Helper()
	path := fixture.Path(t, "models/stories260K.gguf")
	m, err := model.Load(path, model.Options{Threads: 2})
	require.NoError(t, err)
	t.Cleanup(m.Close)
	env, err := method.NewEnv(path, m, m.Backend())
	require.NoError(t, err)
	t.Cleanup(env.Close)
	a, err := bottleneck.New(cfg, env.Config, m.Backend())
	require.NoError(t, err)
	t.Cleanup(a.Close)
	return m, env, a
}

// randomize gives every tensor small random values.
func randomize(t *testing.T, a *bottleneck.Adapter) {
	rng := rand.New(rand.NewPCG(7, 8))
	for _, ts := range a.Tensors() {
		v := make([]float32, ts.Elements())
		for i := range v {
			v[i] = float32(rng.NormFloat64() * 0.3)
		}
		require.NoError(t, ts.SetFloats(v))
	}
}

func TestPlacementsIdentityAndRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		cfg     bottleneck.Config
		tensors int
		values  int64
	}{
		// stories260K: n_embd 64, 5 blocks; 64/16 = 4.
		{bottleneck.Config{Placement: bottleneck.Houlsby, Reduction: 16}, 2 * 5 * 4, 2 * 5 * (64*4 + 4 + 4*64 + 64)},
		{bottleneck.Config{Placement: bottleneck.Pfeiffer, Reduction: 16}, 5 * 4, 5 * (64*4 + 4 + 4*64 + 64)},
		{bottleneck.Config{Placement: bottleneck.Pfeiffer, Bottleneck: 8}, 5 * 4, 5 * (64*8 + 8 + 8*64 + 64)},
	} {
		t.Run(tc.cfg.Placement, func(t *testing.T) {
			m, env, a := setup(t, tc.cfg)
			groups, err := a.Groups()
			require.NoError(t, err)
			assert.Len(t, a.Tensors(), tc.tensors)
			assert.Equal(t, tc.values, method.NumParams(groups))
			toks := methodtest.Tokens
			base := methodtest.GraphLogits(t, m, nil, toks)
			assert.Zero(t, methodtest.MaxAbsDiff(base, methodtest.GraphLogits(t, m, a.Hooks(1), toks)), "W_up = 0: the identity")

			randomize(t, a)
			want := methodtest.GraphLogits(t, m, a.Hooks(1), toks)
			require.Greater(t, methodtest.MaxAbsDiff(base, want), 1e-2)
			file := filepath.Join(t.TempDir(), "bn.gguf")
			require.NoError(t, a.Save(file))
			inst, meth, err := method.Open(file, env)
			require.NoError(t, err)
			defer inst.Close()
			assert.Equal(t, "bottleneck", meth.Name())
			assert.Zero(t, methodtest.MaxAbsDiff(want, methodtest.GraphLogits(t, m, inst.Hooks(1), toks)), "identical logits after the round trip")
			assert.Zero(t, methodtest.MaxAbsDiff(base, methodtest.GraphLogits(t, m, inst.Hooks(0), toks)), "scale 0 is the base")

			err = method.Merge(env.BasePath, filepath.Join(t.TempDir(), "m.gguf"), []method.Scaled{{Instance: inst, Scale: 1, Name: file}}, method.MergeOptions{})
			require.ErrorIs(t, err, method.ErrUnsupported, "non-linear adapters do not merge")
		})
	}
}

func TestGradientsMatchFiniteDifferences(t *testing.T) {
	for _, p := range []string{bottleneck.Houlsby, bottleneck.Pfeiffer} {
		t.Run(p, func(t *testing.T) {
			m, _, a := setup(t, bottleneck.Config{Placement: p, Reduction: 16})
			randomize(t, a)
			ts := a.Tensors()
			methodtest.GradCheck(t, m, a.Hooks(1), []*binding.Tensor{ts[0], ts[1], ts[2], ts[3], ts[len(ts)-2]})
		})
	}
}

func TestConfigErrors(t *testing.T) {
	for _, c := range []bottleneck.Config{{Placement: "parallel", Reduction: 16}, {Placement: "houlsby"}, {Placement: "houlsby", Bottleneck: -1}} {
		require.ErrorIs(t, c.Resolve(nil), bottleneck.ErrConfig, "%+v", c)
	}
}
