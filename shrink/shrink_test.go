package shrink_test

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/finetune"
	"github.com/ggtune/ggtune/internal/fixture"
	"github.com/ggtune/ggtune/model"
	"github.com/ggtune/ggtune/shrink"
	"github.com/ggtune/ggtune/train"
)

func fileSum(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return sha256.Sum256(b)
}

// sampled writes training and held-out text sampled from the model at src
// (data-free shrinking) and returns their paths.
func sampled(t *testing.T, src string, trainTokens, valTokens int) (string, string) {
	t.Helper()
	dir := t.TempDir()
	m, err := model.Load(src, model.Options{Threads: 1})
	require.NoError(t, err)
	defer m.Close()
	trainPath, valPath := filepath.Join(dir, "train.txt"), filepath.Join(dir, "val.txt")
	require.NoError(t, shrink.SampleText(context.Background(), m, trainPath, trainTokens, 1))
	require.NoError(t, shrink.SampleText(context.Background(), m, valPath, valTokens, 1_000_000))
	return trainPath, valPath
}

// heldOut evaluates a model file with finetune.Evaluate (the oracle of the
// report's loss) on the held-out text.
func heldOut(t *testing.T, path, val string) float64 {
	t.Helper()
	m, err := model.Load(path, model.Options{Threads: 1})
	require.NoError(t, err)
	defer m.Close()
	ev, err := finetune.Evaluate(m, nil, val, finetune.EvalOptions{Context: 64, Batch: 8, Pack: true, MaxBatches: 8})
	require.NoError(t, err)
	return ev.Loss
}

// TestShrinkStoriesHeals is the proof of progressive shrinking: stories260K
// (5 blocks) shrunk to 3 with healing (full fine-tuning on text sampled
// from the model itself) ends with a held-out loss clearly below that of
// the same 3 blocks without healing and below naively dropping the last two
// blocks. The output loads in libllama with 3 blocks and the source file is
// unchanged.
func TestShrinkStoriesHeals(t *testing.T) {
	src := fixture.Path(t, "models/stories260K.gguf")
	before := fileSum(t, src)
	trainText, valText := sampled(t, src, 16000, 3000)
	dir := t.TempDir()
	for _, imp := range []shrink.Importance{shrink.Influence, shrink.LossIncrease} {
		t.Run(string(imp), func(t *testing.T) {
			heal := shrink.TrainHealer{Job: finetune.Job{Method: "full", Data: trainText, Context: 64, Batch: 8, Pack: true, Threads: 1, Seed: 1,
				Train: train.Config{Steps: 40, Optimizer: train.DefaultAdamW(), Schedule: train.LRSchedule{Kind: train.Cosine, LR: 2e-3}}}}
			out := filepath.Join(dir, string(imp)+".gguf")
			rep, err := shrink.Run(context.Background(), shrink.Options{Model: src, Output: out, Data: trainText, Val: valText,
				ToLayers: 3, Importance: imp, Heal: heal, Context: 64, Batch: 8, Threads: 1, Seed: 1, BenchTokens: 64})
			require.NoError(t, err)
			require.Len(t, rep.Stages, 3)
			last := rep.Stages[2]
			require.Len(t, last.Blocks, 3)

			same := filepath.Join(dir, string(imp)+"-unhealed.gguf")
			require.NoError(t, shrink.Write(src, same, shrink.Plan{Keep: last.Blocks}, nil))
			naive := filepath.Join(dir, "naive.gguf")
			require.NoError(t, shrink.Write(src, naive, shrink.Plan{Keep: []int{0, 1, 2}}, nil))
			lossSrc, lossHealed := heldOut(t, src, valText), heldOut(t, out, valText)
			lossSame, lossNaive := heldOut(t, same, valText), heldOut(t, naive, valText)
			var table []byte
			{
				w := &bytesWriter{}
				require.NoError(t, rep.WriteTable(w))
				table = w.b
			}
			t.Logf("%s: kept source blocks %v\n%s", imp, last.Blocks, table)
			t.Logf("held-out loss: source %.4f, healed 3 blocks %.4f, same blocks unhealed %.4f, naive first 3 blocks %.4f", lossSrc, lossHealed, lossSame, lossNaive)
			assert.InDelta(t, lossSrc, rep.Stages[0].Loss, 1e-3, "report loss of the source vs finetune.Evaluate")
			assert.InDelta(t, lossHealed, last.Loss, 1e-3, "report loss of the result vs finetune.Evaluate")
			assert.Less(t, lossHealed, lossSame-0.1, "healing must clearly help")
			assert.Less(t, lossHealed, lossNaive-0.1, "measured removal + healing must beat dropping the last blocks")
			assert.Less(t, last.KL, rep.Stages[2].KLBeforeHeal, "healing brings the model closer to the source")
			assert.Greater(t, last.PPTokS, 0.0)

			lm, err := binding.LoadModel(out, binding.ModelParams{})
			require.NoError(t, err)
			assert.Equal(t, 3, lm.NLayer())
			lm.Close()
			f, err := binding.OpenGGUF(out)
			require.NoError(t, err)
			defer f.Close()
			v, _ := f.Get("ggtune.shrink.source_blocks")
			want := make([]int32, 3)
			for i, b := range last.Blocks {
				want[i] = int32(b)
			}
			assert.Equal(t, want, v)

			js := filepath.Join(dir, string(imp)+".json")
			require.NoError(t, rep.WriteJSON(js))
			var back shrink.Report
			b, err := os.ReadFile(js)
			require.NoError(t, err)
			require.NoError(t, json.Unmarshal(b, &back))
			assert.Equal(t, rep.Stages, back.Stages)
			png := filepath.Join(dir, string(imp)+".png")
			require.NoError(t, rep.Plot(png))
			st, err := os.Stat(png)
			require.NoError(t, err)
			assert.Greater(t, st.Size(), int64(1000))
		})
	}
	assert.Equal(t, before, fileSum(t, src), "the source model was modified")
}

type bytesWriter struct{ b []byte }

func (w *bytesWriter) Write(p []byte) (int, error) { w.b = append(w.b, p...); return len(p), nil }
