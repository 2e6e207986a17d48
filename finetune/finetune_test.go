package finetune_test

import (
	"context"
	"crypto/sha256"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/finetune"
	"github.com/ggtune/ggtune/internal/fixture"
	"github.com/ggtune/ggtune/lora"
	"github.com/ggtune/ggtune/method"
	"github.com/ggtune/ggtune/model"
	"github.com/ggtune/ggtune/prompttune"
	"github.com/ggtune/ggtune/train"
)

func fileHash(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return sha256.Sum256(b)
}

// shakespeare writes a training and a held-out slice of tinyshakespeare.
func shakespeare(t *testing.T) (trainPath, valPath string) {
	t.Helper()
	b, err := os.ReadFile(fixture.Path(t, "text/tinyshakespeare.txt"))
	require.NoError(t, err)
	dir := t.TempDir()
	trainPath, valPath = filepath.Join(dir, "train.txt"), filepath.Join(dir, "val.txt")
	require.NoError(t, os.WriteFile(trainPath, b[:200000], 0o644))
	require.NoError(t, os.WriteFile(valPath, b[len(b)-20000:], 0o644))
	return trainPath, valPath
}

// softPrompt returns the named soft-prompt method's default config with n
// virtual tokens initialised from the vocabulary.
func softPrompt(t *testing.T, name string, n int) *prompttune.Config {
	m, err := method.Get(name)
	require.NoError(t, err)
	c := m.NewConfig().(*prompttune.Config)
	c.NumVirtual, c.Init = n, prompttune.InitVocab
	return c
}

func baseJob(t *testing.T, method string) finetune.Job {
	trainPath, valPath := shakespeare(t)
	return finetune.Job{
		Method: method, Model: fixture.Path(t, "models/stories260K.gguf"), Data: trainPath, Val: valPath,
		Output: filepath.Join(t.TempDir(), "out.gguf"), Context: 64, Batch: 4, Pack: true, Threads: 2, Seed: 1,
		MaxValBatches: 8,
		Train: train.Config{Steps: 60, Optimizer: train.DefaultAdamW(),
			Schedule: train.LRSchedule{Kind: train.Cosine, LR: 3e-3, Warmup: 5}},
	}
}

func TestLoRALowersShakespeareLoss(t *testing.T) {
	j := baseJob(t, "lora")
	before := fileHash(t, j.Model)
	rep, err := finetune.Run(context.Background(), j)
	require.NoError(t, err)
	ev0, ev1 := rep.Result.EvalBefore, rep.Result.EvalAfter
	t.Logf("held-out loss %.3f -> %.3f (%d trainable values)", ev0.Loss, ev1.Loss, rep.Params)
	assert.Less(t, ev1.Loss, ev0.Loss-0.3, "a clear drop")
	assert.Equal(t, before, fileHash(t, j.Model), "the base file is unchanged")

	// libllama loads the adapter and agrees with our graph.
	m, err := model.Load(j.Model, model.Options{Threads: 2})
	require.NoError(t, err)
	defer m.Close()
	maxDiff := llamaAdapterDiff(t, m, j.Output)
	t.Logf("max |logits(ggtune) - logits(libllama)| with the adapter: %.2e", maxDiff)
	assert.LessOrEqual(t, maxDiff, 1e-3)
}

// TestContinueTraining starts a second run from the first run's adapter
// and soft prompt: its first evaluation equals the first run's last.
func TestContinueTraining(t *testing.T) {
	for _, name := range []string{"lora", "prompt"} {
		t.Run(name, func(t *testing.T) {
			j := baseJob(t, name)
			j.Train.Steps = 10
			if name == "prompt" {
				j.Config = softPrompt(t, name, 8)
				j.Train.Schedule.LR = 3e-2
			}
			first, err := finetune.Run(context.Background(), j)
			require.NoError(t, err)
			k := j
			k.InitFrom = j.Output
			k.Output = filepath.Join(t.TempDir(), "second.gguf")
			second, err := finetune.Run(context.Background(), k)
			require.NoError(t, err)
			assert.InDelta(t, first.Result.EvalAfter.Loss, second.Result.EvalBefore.Loss, 1e-5)
			assert.Less(t, second.Result.EvalAfter.Loss, second.Result.EvalBefore.Loss)
		})
	}
}

// TestWikiSQL trains LoRA on the WikiSQL JSONL (text records) as a format
// test and reports the validation loss.
func TestWikiSQL(t *testing.T) {
	j := finetune.Job{Method: "lora", Model: fixture.Path(t, "models/stories260K.gguf"),
		Data: fixture.Path(t, "text/wikisql-train.jsonl"), Val: fixture.Path(t, "text/wikisql-valid.jsonl"),
		Output: filepath.Join(t.TempDir(), "wikisql.gguf"), Context: 128, Batch: 4, Pack: true, Threads: 2, Seed: 1,
		MaxValBatches: 10,
		Train:         train.Config{Steps: 40, Optimizer: train.DefaultAdamW(), Schedule: train.LRSchedule{Kind: train.Cosine, LR: 3e-3, Warmup: 4}}}
	rep, err := finetune.Run(context.Background(), j)
	require.NoError(t, err)
	t.Logf("RESULT wikisql validation loss %.3f -> %.3f (perplexity %.1f -> %.1f, %d training examples)",
		rep.Result.EvalBefore.Loss, rep.Result.EvalAfter.Loss, rep.Result.EvalBefore.Perplexity, rep.Result.EvalAfter.Perplexity, rep.Examples)
	assert.Less(t, rep.Result.EvalAfter.Loss, rep.Result.EvalBefore.Loss-0.5)
}

// TestResumeWithDropout interrupts a LoRA run with dropout and resumes it
// from the checkpoint: the loss curve equals the uninterrupted run's.
func TestResumeWithDropout(t *testing.T) {
	j := baseJob(t, "lora")
	cfg := lora.DefaultConfig()
	cfg.Dropout = 0.1
	j.Config = &cfg
	j.Train.Steps = 6
	j.Train.GradAccum = 2
	j.Val, j.ValSplit = "", 0
	want, got := interruptAndResume(t, j, "")
	require.Len(t, got, len(want))
	for i := range want {
		assert.InDelta(t, want[i], got[i], 1e-6, "step %d", i+1)
	}
}

// llamaAdapterDiff loads the LoRA adapter in libllama on the CPU and in
// ggtune's graph of m (on m's backend) and returns the largest difference
// of their logits over a few tokens.
func llamaAdapterDiff(t *testing.T, m *model.Model, adapter string) float64 {
	t.Helper()
	lm, err := binding.LoadModel(m.Path(), binding.ModelParams{})
	require.NoError(t, err)
	defer lm.Close()
	ad, err := lm.LoadAdapter(adapter)
	require.NoError(t, err)
	defer ad.Close()
	lctx, err := binding.NewLlamaContext(lm, binding.ContextParams{NCtx: 64, Threads: 2, F32Cache: true})
	require.NoError(t, err)
	defer lctx.Close()
	require.NoError(t, lctx.SetAdapter(ad, 1))
	toks := []int32{1, 403, 17, 260, 5, 88, 301, 44, 2, 99}
	require.NoError(t, lctx.Decode(toks, 0, true))

	f, err := binding.OpenGGUF(m.Path())
	require.NoError(t, err)
	defer f.Close()
	a, err := lora.Load(adapter, f, m.Backend())
	require.NoError(t, err)
	defer a.Close()
	ours, err := m.Logits(model.Shape{Batch: 1, Tokens: len(toks)}, toks, nil, []model.Hook{a.Hook(1)})
	require.NoError(t, err)
	nv := m.Config().NVocab
	var maxDiff float64
	for i := range toks {
		want, err := lctx.Logits(i)
		require.NoError(t, err)
		for k := 0; k < nv; k++ {
			maxDiff = math.Max(maxDiff, math.Abs(float64(want[k]-ours[i*nv+k])))
		}
	}
	return maxDiff
}

// interruptAndResume runs j uninterrupted, then again interrupted after its
// third step and resumed from the checkpoint on device ("" the CPU), and
// returns the losses of every step of both.
func interruptAndResume(t *testing.T, j finetune.Job, device string) (want, got []float64) {
	t.Helper()
	full, err := finetune.Run(context.Background(), j)
	require.NoError(t, err)
	k := j
	k.Output = filepath.Join(t.TempDir(), "resumed.gguf")
	ctx, cancel := context.WithCancel(context.Background())
	k.Train.OnMetrics = func(m train.Metrics) {
		if m.Step == 3 {
			cancel()
		}
	}
	part, err := finetune.Run(ctx, k)
	require.ErrorIs(t, err, train.ErrInterrupted)
	k.Train.OnMetrics, k.Train.Resume, k.Device = nil, true, device
	rest, err := finetune.Run(context.Background(), k)
	require.NoError(t, err)
	for _, m := range full.Result.History {
		want = append(want, m.Loss)
	}
	for _, m := range append(part.Result.History, rest.Result.History...) {
		got = append(got, m.Loss)
	}
	require.Len(t, got, len(want))
	return want, got
}
