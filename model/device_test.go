package model_test

import (
	"context"
	"encoding/json"
	"os"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/internal/devicetest"
	"github.com/ggtune/ggtune/internal/fixture"
	"github.com/ggtune/ggtune/model"
)

// TestDeviceLogitsParity computes ggtune's graph of stories260K on the test
// device (see internal/devicetest), for packed segments in a batch of two,
// against libllama on the CPU.
func TestDeviceLogitsParity(t *testing.T) {
	be := devicetest.Backend(t, 2)
	path := fixture.Path(t, "models/stories260K.gguf")
	m, err := model.Load(path, model.Options{Backend: be})
	require.NoError(t, err)
	defer m.Close()
	nv := m.Config().NVocab
	tokens := randomTokens(48, nv, 2)
	tokens[0] = 1
	want := oracleLogits(t, path, tokens, true)
	got, err := m.Logits(model.Shape{Batch: 1, Tokens: len(tokens)}, tokens, nil, nil)
	require.NoError(t, err)
	worst := worstLogitDiff(got, want, nv)
	t.Logf("stories260K on %s: max abs diff over %d positions = %.3g", be.Name(), len(tokens), worst)
	require.Less(t, worst, 1e-4)
}

// TestDeviceGreedy generates with a KV-cache session on the test device:
// the 255 greedy tokens of stories260K must be upstream's.
func TestDeviceGreedy(t *testing.T) {
	be := devicetest.Backend(t, 2)
	m, err := model.Load(fixture.Path(t, "models/stories260K.gguf"), model.Options{Backend: be})
	require.NoError(t, err)
	defer m.Close()
	raw, err := os.ReadFile(fixture.Path(t, "models/stories260K.greedy.json"))
	require.NoError(t, err)
	var want struct {
		IDs []int32 `json:"generated_token_ids"`
	}
	require.NoError(t, json.Unmarshal(raw, &want))
	s, err := m.NewSession(model.SessionOptions{NCtx: 256, F32Cache: true})
	require.NoError(t, err)
	defer s.Close()
	res, err := s.Generate(context.Background(), []int32{1}, model.GenerateParams{MaxTokens: 255, IgnoreEOS: true}, nil)
	require.NoError(t, err)
	require.Equal(t, want.IDs, res.IDs)
}
