package train_test

import (
	"bufio"
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/train"
)

// readMetrics returns the records of a metrics file.
func readMetrics(t *testing.T, path string) []train.Metrics {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	var out []train.Metrics
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m train.Metrics
		require.NoError(t, json.Unmarshal(sc.Bytes(), &m))
		out = append(out, m)
	}
	require.NoError(t, sc.Err())
	return out
}

func newRunEngine(t *testing.T, be *binding.Backend) *train.Engine {
	t.Helper()
	m := newBigram(t, 8, be)
	e, err := train.NewEngine(m, train.Groups(m.table), be, 2, 16, train.DefaultAdamW())
	require.NoError(t, err)
	t.Cleanup(e.Close)
	return e
}

// TestRunRefusesExistingCheckpoint: a fresh run silently replaced an
// existing checkpoint (step 30 became step 5).
func TestRunRefusesExistingCheckpoint(t *testing.T) {
	be := cpu(t)
	dir := t.TempDir()
	ck := filepath.Join(dir, "ck.gguf")
	cfg := train.Config{Steps: 3, SaveEvery: 3, Checkpoint: ck, Optimizer: train.DefaultAdamW(),
		Schedule: train.LRSchedule{Kind: train.Constant, LR: 0.05}}
	_, err := train.Run(context.Background(), newRunEngine(t, be), markovSource(3), nil, cfg)
	require.NoError(t, err)
	before, err := os.ReadFile(ck)
	require.NoError(t, err)

	cfg.Steps = 1
	_, err = train.Run(context.Background(), newRunEngine(t, be), markovSource(3), nil, cfg)
	require.ErrorIs(t, err, train.ErrCheckpointExists)
	assert.Contains(t, err.Error(), ck)
	after, err := os.ReadFile(ck)
	require.NoError(t, err)
	assert.Equal(t, before, after, "the checkpoint is untouched")

	cfg.Overwrite = true
	_, err = train.Run(context.Background(), newRunEngine(t, be), markovSource(3), nil, cfg)
	require.NoError(t, err)
}

// TestRunResumeKeepsMetrics: after an interrupt and a resume the metrics
// file holds every step once and the plot is written; a run resumed after
// its last step (killed before its output was written) succeeds instead of
// failing with "plot: no training steps".
func TestRunResumeKeepsMetrics(t *testing.T) {
	be := cpu(t)
	dir := t.TempDir()
	val := markovSource(1).batches
	cfg := train.Config{Steps: 8, EvalEvery: 2, Optimizer: train.DefaultAdamW(),
		Schedule: train.LRSchedule{Kind: train.Constant, LR: 0.05}, Checkpoint: filepath.Join(dir, "ck.gguf"),
		MetricsPath: filepath.Join(dir, "m.jsonl"), PlotPath: filepath.Join(dir, "loss.png")}
	ctx, cancel := context.WithCancel(context.Background())
	a := cfg
	a.OnMetrics = func(m train.Metrics) {
		if m.Kind == "train" && m.Step == 3 {
			cancel()
		}
	}
	_, err := train.Run(ctx, newRunEngine(t, be), markovSource(4), val, a)
	require.ErrorIs(t, err, train.ErrInterrupted)

	b := cfg
	b.Resume, b.SaveEvery = true, 4
	res, err := train.Run(context.Background(), newRunEngine(t, be), markovSource(4), val, b)
	require.NoError(t, err)
	assert.Equal(t, 3, res.ResumedFrom)
	steps := map[[2]any]int{}
	var trainSteps []int
	for _, m := range readMetrics(t, cfg.MetricsPath) {
		steps[[2]any{m.Kind, m.Step}]++
		if m.Kind == "train" {
			trainSteps = append(trainSteps, m.Step)
		}
	}
	assert.Equal(t, []int{1, 2, 3, 4, 5, 6, 7, 8}, trainSteps)
	for k, n := range steps {
		assert.Equal(t, 1, n, "record %v appears once", k)
	}
	assert.Len(t, res.History, len(readMetrics(t, cfg.MetricsPath)), "the history covers the whole run")
	require.FileExists(t, cfg.PlotPath)

	// Killed after the final checkpoint, before the results: resume writes them.
	require.NoError(t, os.Remove(cfg.PlotPath))
	records := readMetrics(t, cfg.MetricsPath)
	res, err = train.Run(context.Background(), newRunEngine(t, be), markovSource(4), val, b)
	require.NoError(t, err)
	assert.Equal(t, 8, res.Steps)
	require.NotNil(t, res.EvalAfter)
	require.FileExists(t, cfg.PlotPath)
	after := readMetrics(t, cfg.MetricsPath)
	for i := range after { // the final evaluation is repeated (same values, new time)
		after[i].ElapsedSec, records[i].ElapsedSec = 0, 0
	}
	assert.Equal(t, records, after, "no record is added or lost")
}

// TestRunFailureKeepsMetrics: a run that fails before its first record
// truncated the previous run's metrics file.
func TestRunFailureKeepsMetrics(t *testing.T) {
	be := cpu(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "m.jsonl")
	old := []byte(`{"kind":"train","step":1,"epoch":0,"loss":2,"elapsed_sec":1}` + "\n")
	require.NoError(t, os.WriteFile(path, old, 0o644))
	stale := filepath.Join(dir, ".ck.gguf.tmp-12345")
	require.NoError(t, os.WriteFile(stale, []byte("half"), 0o644))
	noLoss := markovSource(1).batches[0]
	noLoss.Targets = make([]int32, len(noLoss.Targets))
	for i := range noLoss.Targets {
		noLoss.Targets[i] = -1
	}
	cfg := train.Config{Steps: 2, Optimizer: train.DefaultAdamW(), Schedule: train.LRSchedule{Kind: train.Constant, LR: 0.05},
		MetricsPath: path, Checkpoint: filepath.Join(dir, "ck.gguf")}
	_, err := train.Run(context.Background(), newRunEngine(t, be), markovSource(2), []train.Batch{noLoss}, cfg)
	require.ErrorIs(t, err, train.ErrNoLossTokens)
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, old, b)
	assert.NoFileExists(t, stale, "stale temporaries of our naming are removed")
}

// TestRunStopsOnDivergence: --lr 1e30 wrote ±1e30 weights and a NaN (here 1e18:
// the parameters pass 1.8e19, where their squares overflow, at step 3)
// held-out loss with success. The run fails with ErrDiverged, names the
// step, and the last checkpoint holds finite values from before.
func TestRunStopsOnDivergence(t *testing.T) {
	be := cpu(t)
	dir := t.TempDir()
	ck := filepath.Join(dir, "ck.gguf")
	val := markovSource(1).batches
	cfg := train.Config{Steps: 20, SaveEvery: 1, EvalEvery: 1, Checkpoint: ck, Optimizer: train.AdamW{Beta1: 0.9, Beta2: 0.999, Eps: 1e-8},
		Schedule: train.LRSchedule{Kind: train.Constant, LR: 1e18}, MetricsPath: filepath.Join(dir, "m.jsonl")}
	res, err := train.Run(context.Background(), newRunEngine(t, be), markovSource(2), val, cfg)
	require.ErrorIs(t, err, train.ErrDiverged)
	t.Logf("%v", err)
	assert.Regexp(t, `step \d+|evaluate`, err.Error())
	assert.Zero(t, res.EvalAfter, "no result from the diverged state")
	for _, m := range res.History {
		assert.False(t, math.IsNaN(m.Loss) || math.IsInf(m.Loss, 0), "a non-finite loss was recorded: %+v", m)
	}
	require.FileExists(t, ck, "the steps before the divergence were finite and saved")
	{
		assert.Contains(t, err.Error(), "last good checkpoint")
		f, err := binding.OpenGGUF(ck)
		require.NoError(t, err)
		defer f.Close()
		for _, ti := range f.Tensors() {
			v, err := f.ReadTensorFloats(ti.Name)
			require.NoError(t, err)
			for _, x := range v {
				require.False(t, math.IsNaN(float64(x)) || math.IsInf(float64(x), 0), "checkpoint tensor %s is not finite", ti.Name)
			}
		}
	}
}

// TestResumeRefusesChangedSettings: --resume silently accepted a changed
// learning rate, step count or seed; each breaks exact resume and is an
// error naming it unless it is declared in ResumeChanged.
func TestResumeRefusesChangedSettings(t *testing.T) {
	be := cpu(t)
	ck := filepath.Join(t.TempDir(), "ck.gguf")
	cfg := train.Config{Steps: 4, SaveEvery: 2, Checkpoint: ck, Optimizer: train.DefaultAdamW(),
		Schedule: train.LRSchedule{Kind: train.Cosine, LR: 0.05}, Settings: map[string]string{"seed": "1"}}
	ctx, cancel := context.WithCancel(context.Background())
	a := cfg
	a.OnMetrics = func(m train.Metrics) {
		if m.Step == 2 {
			cancel()
		}
	}
	_, err := train.Run(ctx, newRunEngine(t, be), markovSource(3), nil, a)
	require.ErrorIs(t, err, train.ErrInterrupted)
	for _, c := range []struct {
		name string
		edit func(*train.Config)
		want string
	}{
		{"lr", func(c *train.Config) { c.Schedule.LR = 0.01 }, `lr was "0.05", now "0.01"`},
		{"steps", func(c *train.Config) { c.Steps = 8 }, `steps was "4", now "8"`},
		{"seed", func(c *train.Config) { c.Settings = map[string]string{"seed": "2"} }, `seed was "1", now "2"`},
		{"optimizer", func(c *train.Config) { c.Optimizer.WeightDecay = 0.1 }, "weight-decay"},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := cfg
			b.Resume = true
			c.edit(&b)
			_, err := train.Run(context.Background(), newRunEngine(t, be), markovSource(3), nil, b)
			require.ErrorIs(t, err, train.ErrResumeMismatch)
			assert.Contains(t, err.Error(), c.want)
		})
	}
	b := cfg
	b.Resume, b.Steps, b.ResumeChanged = true, 6, []string{"steps"}
	res, err := train.Run(context.Background(), newRunEngine(t, be), markovSource(3), nil, b)
	require.NoError(t, err, "a declared change is accepted")
	assert.Equal(t, 6, res.Steps)
}
