package model_test

import (
	"context"
	"encoding/json"
	"math"
	"os"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/internal/fixture"
	"github.com/ggtune/ggtune/model"
)

func loadStories(t *testing.T) (*model.Model, string) {
	t.Helper()
	path := fixture.Path(t, "models/stories260K.gguf")
	m, err := model.Load(path, model.Options{Threads: 2})
	require.NoError(t, err)
	t.Cleanup(m.Close)
	return m, path
}

func TestStoriesGreedy(t *testing.T) {
	m, _ := loadStories(t)
	raw, err := os.ReadFile(fixture.Path(t, "models/stories260K.greedy.json"))
	require.NoError(t, err)
	var want struct {
		IDs []int32 `json:"generated_token_ids"`
	}
	require.NoError(t, json.Unmarshal(raw, &want))
	require.Len(t, want.IDs, 255)
	for _, f32 := range []bool{false, true} {
		s, err := m.NewSession(model.SessionOptions{NCtx: 256, F32Cache: f32})
		require.NoError(t, err)
		res, err := s.Generate(context.Background(), []int32{1}, model.GenerateParams{MaxTokens: 255, IgnoreEOS: true}, nil)
		s.Close()
		require.NoError(t, err)
		require.Equal(t, want.IDs, res.IDs, "f32 cache %v", f32)
	}
}

// TestKVCacheMatchesFullForward checks at every step of a greedy generation
// that the session's logits equal the full-sequence graph's logits at that
// position.
func TestKVCacheMatchesFullForward(t *testing.T) {
	m, _ := loadStories(t)
	nv := m.Config().NVocab
	s, err := m.NewSession(model.SessionOptions{NCtx: 128, F32Cache: true, NBatch: 7})
	require.NoError(t, err)
	defer s.Close()
	prompt := []int32{1, 403, 407, 261, 378}
	seq := append([]int32(nil), prompt...)
	var steps [][]float32
	logits, err := s.Eval(prompt)
	require.NoError(t, err)
	steps = append(steps, logits)
	for i := 0; i < 40; i++ {
		id := int32(0)
		for j, v := range logits {
			if v > logits[id] {
				id = int32(j)
			}
		}
		seq = append(seq, id)
		logits, err = s.Eval([]int32{id})
		require.NoError(t, err)
		steps = append(steps, logits)
	}
	full, err := m.Logits(model.Shape{Batch: 1, Tokens: len(seq)}, seq, nil, nil)
	require.NoError(t, err)
	worst := 0.0
	for i, l := range steps {
		p := len(prompt) - 1 + i
		worst = math.Max(worst, maxAbsDiff(l, full[p*nv:(p+1)*nv]))
	}
	t.Logf("KV cache vs full forward: max abs diff %.3g over %d steps", worst, len(steps))
	require.Less(t, worst, 1e-4)
}
