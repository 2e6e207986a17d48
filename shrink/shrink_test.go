package shrink_test

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/finetune"
	"github.com/ggtune/ggtune/internal/fixture"
	"github.com/ggtune/ggtune/internal/ggufpatch"
	"github.com/ggtune/ggtune/internal/randmodel"
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
// from the model itself, on its labels or distilling from the unshrunk
// model) ends with a held-out loss clearly below that of
// the same 3 blocks without healing and below naively dropping the last two
// blocks. The output loads in libllama with 3 blocks and the source file is
// unchanged.
func TestShrinkStoriesHeals(t *testing.T) {
	src := fixture.Path(t, "models/stories260K.gguf")
	before := fileSum(t, src)
	trainText, valText := sampled(t, src, 16000, 3000)
	dir := t.TempDir()
	kd := train.DefaultDistill()
	for _, tc := range []struct {
		imp     shrink.Importance
		distill *train.Distill
	}{{shrink.Influence, nil}, {shrink.LossIncrease, &kd}} {
		imp := tc.imp
		t.Run(string(imp), func(t *testing.T) {
			heal := shrink.TrainHealer{Job: finetune.Job{Method: "full", Data: trainText, Context: 64, Batch: 8, Pack: true, Threads: 1, Seed: 1,
				Train: train.Config{Steps: 40, Optimizer: train.DefaultAdamW(), Schedule: train.LRSchedule{Kind: train.Cosine, LR: 2e-3}}},
				Distill: tc.distill}
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

// inertModel writes a random F32 model whose block 1 is the identity
// (zero attention output and down projections) and whose FFN channels
// below dead have zero gate rows in every block (their activation
// silu(0)*up is exactly 0).
func inertModel(t *testing.T, path string, dead int) {
	t.Helper()
	raw := filepath.Join(t.TempDir(), "raw.gguf")
	const ne, nff, nl = 64, 96, 3
	require.NoError(t, randmodel.Write(raw, randmodel.Options{NEmbd: ne, NLayer: nl, NHead: 4, NFF: nff, Seed: 9}))
	f, err := binding.OpenGGUF(raw)
	require.NoError(t, err)
	defer f.Close()
	patches := map[string]ggufpatch.Patch{}
	zero := func(name string, n int) {
		patches[name] = ggufpatch.Patch{Type: binding.TypeF32, Values: func() ([]float32, error) { return make([]float32, n), nil }}
	}
	zero("blk.1.attn_output.weight", ne*ne)
	zero("blk.1.ffn_down.weight", ne*nff)
	for l := range nl {
		name := fmt.Sprintf("blk.%d.ffn_gate.weight", l)
		patches[name] = ggufpatch.Patch{Type: binding.TypeF32, Values: func() ([]float32, error) {
			v, err := f.ReadTensorFloats(name)
			clear(v[:dead*ne])
			return v, err
		}}
	}
	require.NoError(t, ggufpatch.Write(raw, path, patches, nil))
}

// TestImportanceFindsInertParts checks each importance measure against a
// known answer: in a model whose block 1 is the identity, Block Influence
// and the skip-loss increase of block 1 are 0 and it is removed first; FFN
// channels with zero activation are the ones pruned. Removing inert parts
// changes no logit, so the stage's held-out loss equals the source's and
// its KL to the source is 0 (without healing).
func TestImportanceFindsInertParts(t *testing.T) {
	text := fixture.Path(t, "text/tinyshakespeare.txt")
	dir := t.TempDir()
	b, err := os.ReadFile(text)
	require.NoError(t, err)
	data := filepath.Join(dir, "data.txt")
	require.NoError(t, os.WriteFile(data, b[:12000], 0o644))
	src := filepath.Join(dir, "inert.gguf")
	inertModel(t, src, 32)
	cases := []struct {
		name       string
		importance shrink.Importance
		toLayers   int
		ffnTo      int
		action     string
	}{
		{"influence", shrink.Influence, 2, 0, "remove block 1"},
		{"loss", shrink.LossIncrease, 2, 0, "remove block 1"},
		{"ffn", shrink.Influence, 0, 64, "ffn 96 -> 64"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rep, err := shrink.Run(context.Background(), shrink.Options{Model: src, Output: filepath.Join(dir, tc.name+".gguf"), Data: data, ValSplit: 0.2,
				ToLayers: tc.toLayers, FFNTo: tc.ffnTo, Importance: tc.importance, Context: 32, Batch: 4, Threads: 1, Seed: 1})
			require.NoError(t, err)
			require.Len(t, rep.Stages, 2)
			st := rep.Stages[1]
			assert.Equal(t, tc.action, st.Action)
			if tc.toLayers > 0 {
				require.Len(t, st.Importance, 3)
				t.Logf("%s importance %v", tc.importance, st.Importance)
				assert.InDelta(t, 0, st.Importance[1], 1e-5)
				assert.Greater(t, st.Importance[0], 1e-3)
				assert.Greater(t, st.Importance[2], 1e-3)
			}
			assert.InDelta(t, rep.Stages[0].Loss, st.Loss, 1e-4)
			assert.InDelta(t, 0, st.KL, 1e-5)
		})
	}
}

// cancelling cancels the run's context, then heals (as Ctrl-C during
// healing does).
type cancelling struct {
	cancel func()
	h      shrink.Healer
}

func (c cancelling) Heal(ctx context.Context, req shrink.HealRequest) error {
	c.cancel()
	return c.h.Heal(ctx, req)
}

// TestShrinkInterrupted checks that a run cancelled while healing returns
// the interruption, writes no output and leaves no scratch files.
func TestShrinkInterrupted(t *testing.T) {
	text := fixture.Path(t, "text/tinyshakespeare.txt")
	dir := t.TempDir()
	b, err := os.ReadFile(text)
	require.NoError(t, err)
	data := filepath.Join(dir, "data.txt")
	require.NoError(t, os.WriteFile(data, b[:12000], 0o644))
	src := filepath.Join(dir, "inert.gguf")
	inertModel(t, src, 0)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	heal := cancelling{cancel: cancel, h: shrink.TrainHealer{Job: finetune.Job{Method: "lora", Data: data, Context: 32, Batch: 4, Pack: true, Threads: 1,
		Train: train.Config{Steps: 50, Optimizer: train.DefaultAdamW(), Schedule: train.LRSchedule{Kind: train.Constant, LR: 1e-3}}}}}
	out := filepath.Join(dir, "out.gguf")
	_, err = shrink.Run(ctx, shrink.Options{Model: src, Output: out, Data: data, ValSplit: 0.2, ToLayers: 2, Heal: heal, Context: 32, Batch: 4, Threads: 1})
	require.ErrorIs(t, err, train.ErrInterrupted)
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	assert.ElementsMatch(t, []string{"data.txt", "inert.gguf"}, names)
}
