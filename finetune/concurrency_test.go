package finetune_test

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"os"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/finetune"
	"github.com/ggtune/ggtune/internal/fixture"
	"github.com/ggtune/ggtune/lora"
	"github.com/ggtune/ggtune/model"
	"github.com/ggtune/ggtune/train"
)

// TestConcurrentSessionsAndEngines runs generation sessions and LoRA
// training engines of one loaded model on several goroutines at once (all
// computing on the model's single backend): greedy generation still
// reproduces libllama's ids (stories260K.greedy.json) and every engine's
// losses equal its sequential run's. Run it under `make race`.
func TestConcurrentSessionsAndEngines(t *testing.T) {
	path := fixture.Path(t, "models/stories260K.gguf")
	raw, err := os.ReadFile(fixture.Path(t, "models/stories260K.greedy.json"))
	require.NoError(t, err)
	var want struct {
		IDs []int32 `json:"generated_token_ids"`
	}
	require.NoError(t, json.Unmarshal(raw, &want))
	m, err := model.Load(path, model.Options{Threads: 2})
	require.NoError(t, err)
	defer m.Close()
	f, err := binding.OpenGGUF(path)
	require.NoError(t, err)
	defer f.Close()

	const steps, bsz, ctx = 3, 2, 32
	batch := func(seed uint64) train.Batch {
		r := rand.New(rand.NewPCG(seed, 1))
		b := train.Batch{B: bsz, T: ctx, Tokens: make([]int32, bsz*ctx), Targets: make([]int32, bsz*ctx)}
		for i := range b.Tokens {
			b.Tokens[i] = int32(3 + r.IntN(m.Config().NVocab-3))
		}
		for i := range b.Targets {
			b.Targets[i] = b.Tokens[(i+1)%len(b.Tokens)]
		}
		return b
	}
	trainLoRA := func(seed uint64) ([]float64, error) {
		cfg := lora.DefaultConfig()
		cfg.Seed = seed
		a, err := lora.New(cfg, f, m.Backend())
		if err != nil {
			return nil, err
		}
		defer a.Close()
		params, err := a.Params()
		if err != nil {
			return nil, err
		}
		e, err := train.NewEngine(finetune.GraphBuilder(m, []model.Hook{a.Hook(1)}, seed), train.Groups(params...), m.Backend(), bsz, ctx, train.DefaultAdamW())
		if err != nil {
			return nil, err
		}
		defer e.Close()
		var losses []float64
		for s := range steps {
			if _, err := e.Accumulate(batch(seed*100 + uint64(s))); err != nil {
				return nil, err
			}
			st, err := e.Step(1e-2)
			if err != nil {
				return nil, err
			}
			losses = append(losses, st.Loss)
		}
		return losses, nil
	}
	generate := func() ([]int32, error) {
		s, err := m.NewSession(model.SessionOptions{NCtx: 256})
		if err != nil {
			return nil, err
		}
		defer s.Close()
		res, err := s.Generate(context.Background(), []int32{1}, model.GenerateParams{MaxTokens: 64, IgnoreEOS: true}, nil)
		if err != nil {
			return nil, err
		}
		return res.IDs, nil
	}

	seeds := []uint64{1, 2}
	sequential := map[uint64][]float64{}
	for _, s := range seeds {
		l, err := trainLoRA(s)
		require.NoError(t, err)
		sequential[s] = l
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	concurrent := map[uint64][]float64{}
	var generated [][]int32
	var errs []error
	for _, s := range seeds {
		wg.Add(2)
		go func() {
			defer wg.Done()
			l, err := trainLoRA(s)
			mu.Lock()
			defer mu.Unlock()
			concurrent[s], errs = l, append(errs, err)
		}()
		go func() {
			defer wg.Done()
			ids, err := generate()
			mu.Lock()
			defer mu.Unlock()
			generated, errs = append(generated, ids), append(errs, err)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	for _, s := range seeds {
		assert.Equal(t, sequential[s], concurrent[s], "engine %d: losses equal the sequential run's", s)
	}
	for _, ids := range generated {
		assert.Equal(t, want.IDs[:64], ids, "greedy generation equals libllama's")
	}
	t.Logf("%d engines and %d sessions on one backend: losses %v", len(seeds), len(generated), concurrent)
}
