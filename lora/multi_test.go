package lora_test

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/lora"
	"github.com/ggtune/ggtune/model"
)

// TestStackedAdaptersMatchLlama applies two adapters with separate scales
// in ggtune's graph and in libllama, and swaps adapters without reloading
// the base.
func TestStackedAdaptersMatchLlama(t *testing.T) {
	path, base := openBase(t)
	m, err := model.Load(path, model.Options{Threads: 2})
	require.NoError(t, err)
	defer m.Close()
	mk := func(targets []lora.Target, seed uint64) (*lora.Adapter, string) {
		cfg := lora.DefaultConfig()
		cfg.Targets = targets
		a, err := lora.New(cfg, base, m.Backend())
		require.NoError(t, err)
		randomize(t, a, seed)
		p := filepath.Join(t.TempDir(), "a.gguf")
		require.NoError(t, a.Save(p))
		return a, p
	}
	a1, p1 := mk([]lora.Target{lora.TargetQ, lora.TargetV}, 1)
	defer a1.Close()
	a2, p2 := mk([]lora.Target{lora.TargetUp, lora.TargetDown, lora.TargetO}, 2)
	defer a2.Close()

	lm, err := binding.LoadModel(path, binding.ModelParams{})
	require.NoError(t, err)
	defer lm.Close()
	l1, err := lm.LoadAdapter(p1)
	require.NoError(t, err)
	defer l1.Close()
	l2, err := lm.LoadAdapter(p2)
	require.NoError(t, err)
	defer l2.Close()
	toks := []binding.Token{1, 403, 17, 260, 5, 88, 301}
	// libllama at this pin reuses a context's graph after its adapters
	// change, so each configuration gets a fresh context.
	llama := func(adapters map[*binding.Adapter]float32) [][]float32 {
		lctx, err := binding.NewLlamaContext(lm, binding.ContextParams{NCtx: 64, Threads: 2, F32Cache: true})
		require.NoError(t, err)
		defer lctx.Close()
		for a, s := range adapters {
			require.NoError(t, lctx.SetAdapter(a, s))
		}
		require.NoError(t, lctx.Decode(toks, 0, true))
		out := make([][]float32, len(toks))
		for i := range toks {
			out[i], err = lctx.Logits(i)
			require.NoError(t, err)
		}
		return out
	}
	ours := func(hooks ...model.Hook) [][]float32 {
		flat, err := m.Logits(model.Shape{Batch: 1, Tokens: len(toks)}, toks, nil, hooks)
		require.NoError(t, err)
		nv := m.Config().NVocab
		out := make([][]float32, len(toks))
		for i := range out {
			out[i] = flat[i*nv : (i+1)*nv]
		}
		return out
	}
	only1 := llama(map[*binding.Adapter]float32{l1: 0.5})
	assert.Less(t, maxAbsDiff(only1, ours(a1.Hook(0.5))), 1e-4)
	both := llama(map[*binding.Adapter]float32{l1: 0.5, l2: 1.5})
	assert.Less(t, maxAbsDiff(both, ours(a1.Hook(0.5), a2.Hook(1.5))), 1e-4)
	only2 := llama(map[*binding.Adapter]float32{l2: 1.5})
	assert.Less(t, maxAbsDiff(only2, ours(a2.Hook(1.5))), 1e-4)
	assert.Greater(t, maxAbsDiff(both, only2), 1e-2, "removing an adapter changes the output")
}
