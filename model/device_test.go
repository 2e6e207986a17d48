package model_test

import (
	"math"
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
	worst := 0.0
	for i := range tokens {
		worst = math.Max(worst, maxAbsDiff(got[i*nv:(i+1)*nv], want[i]))
	}
	t.Logf("stories260K on %s: max abs diff over %d positions = %.3g", be.Name(), len(tokens), worst)
	require.Less(t, worst, 1e-4)
}
