package lora_test

import (
	"math"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/internal/fixture"
	"github.com/ggtune/ggtune/lora"
)

func openBase(t *testing.T) (string, *binding.GGUFFile) {
	t.Helper()
	path := fixture.Path(t, "models/stories260K.gguf")
	f, err := binding.OpenGGUF(path)
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	return path, f
}

func cpu(t *testing.T) *binding.Backend {
	t.Helper()
	b, err := binding.NewCPUBackend(2)
	require.NoError(t, err)
	t.Cleanup(b.Close)
	return b
}

// randomize gives B (and A) random values so the adapter changes outputs.
func randomize(t *testing.T, a *lora.Adapter, seed uint64) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 7))
	for _, w := range a.Weights() {
		for _, tt := range []*binding.Tensor{w.A, w.B} {
			v := make([]float32, tt.Elements())
			for i := range v {
				v[i] = float32(rng.NormFloat64() * 0.02)
			}
			require.NoError(t, tt.SetFloats(v))
		}
	}
}

// llamaLogits decodes tokens with libllama and returns every position's logits.
func llamaLogits(t *testing.T, m *binding.LlamaModel, ad *binding.Adapter, scale float32, tokens []binding.Token) [][]float32 {
	t.Helper()
	ctx, err := binding.NewLlamaContext(m, binding.ContextParams{NCtx: 64, Threads: 2})
	require.NoError(t, err)
	defer ctx.Close()
	if ad != nil {
		require.NoError(t, ctx.SetAdapter(ad, scale))
	}
	require.NoError(t, ctx.Decode(tokens, 0, true))
	out := make([][]float32, len(tokens))
	for i := range tokens {
		out[i], err = ctx.Logits(i)
		require.NoError(t, err)
	}
	return out
}

func maxAbsDiff(a, b [][]float32) float64 {
	var m float64
	for i := range a {
		for j := range a[i] {
			m = math.Max(m, math.Abs(float64(a[i][j]-b[i][j])))
		}
	}
	return m
}

func TestSaveLoadRoundTrip(t *testing.T) {
	_, base := openBase(t)
	cfg := lora.DefaultConfig()
	cfg.Rank, cfg.Alpha, cfg.RSLoRA, cfg.Seed = 4, 16, true, 3
	cfg.Layers = []int{1, 3}
	a, err := lora.New(cfg, base, cpu(t))
	require.NoError(t, err)
	defer a.Close()
	randomize(t, a, 1)
	a.Meta["steps"] = uint32(12)
	path := filepath.Join(t.TempDir(), "a.gguf")
	require.NoError(t, a.Save(path))

	b, err := lora.Load(path, base, cpu(t))
	require.NoError(t, err)
	defer b.Close()
	assert.Equal(t, a.Config().Rank, b.Config().Rank)
	assert.Equal(t, a.Config().RSLoRA, b.Config().RSLoRA)
	assert.InDelta(t, a.Scale(), b.Scale(), 1e-6)
	assert.Equal(t, []int{1, 3}, b.Config().Layers)
	assert.Equal(t, uint32(12), b.Meta["steps"])
	require.Len(t, b.Weights(), len(a.Weights()))
	for i, w := range a.Weights() {
		for j, tt := range []*binding.Tensor{w.A, w.B} {
			want, err := tt.Floats()
			require.NoError(t, err)
			got, err := []*binding.Tensor{b.Weights()[i].A, b.Weights()[i].B}[j].Floats()
			require.NoError(t, err)
			assert.Equal(t, want, got, tt.Name())
		}
	}
}

func TestUntrainedAdapterIsIdentity(t *testing.T) {
	path, base := openBase(t)
	a, err := lora.New(lora.DefaultConfig(), base, cpu(t))
	require.NoError(t, err)
	defer a.Close()
	out := filepath.Join(t.TempDir(), "zero.gguf")
	require.NoError(t, a.Save(out))
	m, err := binding.LoadModel(path, binding.ModelParams{})
	require.NoError(t, err)
	defer m.Close()
	ad, err := m.LoadAdapter(out)
	require.NoError(t, err)
	defer ad.Close()
	toks := []binding.Token{1, 300, 12, 99, 45}
	assert.Zero(t, maxAbsDiff(llamaLogits(t, m, nil, 0, toks), llamaLogits(t, m, ad, 1, toks)))
}

// TestMergeMatchesLlamaAdapter checks that a merged model gives the logits
// libllama computes with the adapter applied at run time.
func TestMergeMatchesLlamaAdapter(t *testing.T) {
	tests := []struct {
		name    string
		targets []lora.Target
		rslora  bool
		scale   float32
	}{
		{"all-linear", lora.AllLinear, false, 1},
		{"qv-rslora-half", []lora.Target{lora.TargetQ, lora.TargetV}, true, 0.5},
		{"embed", []lora.Target{lora.TargetEmbed}, false, 1},
	}
	path, base := openBase(t)
	toks := []binding.Token{1, 403, 17, 260, 5, 88, 301}
	m, err := binding.LoadModel(path, binding.ModelParams{})
	require.NoError(t, err)
	defer m.Close()
	baseLogits := llamaLogits(t, m, nil, 0, toks)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := lora.DefaultConfig()
			cfg.Targets, cfg.RSLoRA, cfg.Alpha = tc.targets, tc.rslora, 16
			a, err := lora.New(cfg, base, cpu(t))
			require.NoError(t, err)
			defer a.Close()
			randomize(t, a, 9)
			dir := t.TempDir()
			adPath := filepath.Join(dir, "a.gguf")
			require.NoError(t, a.Save(adPath))
			ad, err := m.LoadAdapter(adPath)
			require.NoError(t, err)
			defer ad.Close()
			withAdapter := llamaLogits(t, m, ad, tc.scale, toks)
			require.Greater(t, maxAbsDiff(withAdapter, baseLogits), 1e-2, "the adapter must change the output")

			merged := filepath.Join(dir, "merged.gguf")
			require.NoError(t, lora.Merge(path, merged, []lora.Scaled{{Adapter: a, Scale: tc.scale}}, lora.MergeOptions{}))
			mm, err := binding.LoadModel(merged, binding.ModelParams{})
			require.NoError(t, err)
			defer mm.Close()
			assert.Less(t, maxAbsDiff(llamaLogits(t, mm, nil, 0, toks), withAdapter), 1e-3)
		})
	}
}

func TestConfigErrors(t *testing.T) {
	_, base := openBase(t)
	tests := []struct {
		name string
		mod  func(*lora.Config)
	}{
		{"zero rank", func(c *lora.Config) { c.Rank = 0 }},
		{"negative alpha", func(c *lora.Config) { c.Alpha = -1 }},
		{"dropout 1", func(c *lora.Config) { c.Dropout = 1 }},
		{"bad layer", func(c *lora.Config) { c.Layers = []int{99} }},
		{"unknown target", func(c *lora.Config) { c.Targets = []lora.Target{"mlp"} }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := lora.DefaultConfig()
			tc.mod(&cfg)
			_, err := lora.New(cfg, base, cpu(t))
			require.ErrorIs(t, err, lora.ErrConfig)
		})
	}
	_, err := lora.ParseTargets("q,zz")
	require.ErrorIs(t, err, lora.ErrConfig)
	ts, err := lora.ParseTargets("q_proj, v_proj,all-linear")
	require.NoError(t, err)
	assert.Len(t, ts, 7)
}

func TestLoadRejectsNonAdapters(t *testing.T) {
	path, base := openBase(t)
	_, err := lora.Load(path, base, cpu(t))
	require.ErrorIs(t, err, lora.ErrFormat)
	_, err = lora.Load(filepath.Join(t.TempDir(), "missing.gguf"), base, cpu(t))
	require.Error(t, err)
}
