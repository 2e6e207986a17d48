package train_test

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/train"
)

// sliceSource cycles over fixed batches.
type sliceSource struct {
	batches []train.Batch
	pos     train.Position
}

func (s *sliceSource) Next() (train.Batch, error) {
	if s.pos.Index == len(s.batches) {
		s.pos = train.Position{Epoch: s.pos.Epoch + 1}
	}
	b := s.batches[s.pos.Index]
	s.pos.Index++
	return b, nil
}
func (s *sliceSource) Position() train.Position    { return s.pos }
func (s *sliceSource) Seek(p train.Position) error { s.pos = p; return nil }
func (s *sliceSource) BatchesPerEpoch() int        { return len(s.batches) }
func (s *sliceSource) Epoch() float64 {
	return float64(s.pos.Epoch) + float64(s.pos.Index)/float64(len(s.batches))
}

func markovSource(n int) *sliceSource {
	s := &sliceSource{}
	for i := 0; i < n; i++ {
		b, _ := markovBatch(2, 16, 8, uint64(100+i))
		s.batches = append(s.batches, b)
	}
	return s
}

func trainLosses(t *testing.T, res train.Result) []float64 {
	var out []float64
	for _, m := range res.History {
		if m.Kind == "train" {
			out = append(out, m.Loss)
		}
	}
	return out
}

func TestRunResumeGivesTheSameCurve(t *testing.T) {
	be := cpu(t)
	dir := t.TempDir()
	cfg := train.Config{Steps: 12, GradAccum: 2, Optimizer: train.DefaultAdamW(),
		Schedule: train.LRSchedule{Kind: train.Cosine, LR: 0.05, Warmup: 2}}

	m := newBigram(t, 8, be)
	e, err := train.NewEngine(m, train.Groups(m.table), be, 2, 16, cfg.Optimizer)
	require.NoError(t, err)
	defer e.Close()
	full, err := train.Run(context.Background(), e, markovSource(5), nil, cfg)
	require.NoError(t, err)
	want := trainLosses(t, full)
	require.Len(t, want, 12)
	assert.Less(t, full.LastLoss, full.FirstLoss)

	// Interrupt after 5 steps, then resume in a fresh engine.
	ck := filepath.Join(dir, "ck.gguf")
	ctx, cancel := context.WithCancel(context.Background())
	cfgA := cfg
	cfgA.Checkpoint = ck
	cfgA.OnMetrics = func(mm train.Metrics) {
		if mm.Step == 5 {
			cancel()
		}
	}
	m2 := newBigram(t, 8, be)
	e2, err := train.NewEngine(m2, train.Groups(m2.table), be, 2, 16, cfg.Optimizer)
	require.NoError(t, err)
	defer e2.Close()
	part, err := train.Run(ctx, e2, markovSource(5), nil, cfgA)
	require.ErrorIs(t, err, train.ErrInterrupted)
	assert.Equal(t, "interrupted", part.Stopped)
	require.FileExists(t, ck)

	m3 := newBigram(t, 8, be)
	e3, err := train.NewEngine(m3, train.Groups(m3.table), be, 2, 16, cfg.Optimizer)
	require.NoError(t, err)
	defer e3.Close()
	cfgB := cfg
	cfgB.Checkpoint, cfgB.Resume = ck, true
	rest, err := train.Run(context.Background(), e3, markovSource(5), nil, cfgB)
	require.NoError(t, err)
	assert.Equal(t, 5, rest.ResumedFrom)
	got := append(trainLosses(t, part), trainLosses(t, rest)...)
	require.Len(t, got, 12)
	for i := range want {
		assert.InDelta(t, want[i], got[i], 1e-6, "step %d", i+1)
	}
}

func TestRunWritesMetricsPlotAndEvaluates(t *testing.T) {
	be := cpu(t)
	dir := t.TempDir()
	m := newBigram(t, 8, be)
	e, err := train.NewEngine(m, train.Groups(m.table), be, 2, 16, train.DefaultAdamW())
	require.NoError(t, err)
	defer e.Close()
	val := markovSource(2).batches
	cfg := train.Config{Epochs: 4, Optimizer: train.DefaultAdamW(), EvalEvery: 5,
		Schedule:    train.LRSchedule{Kind: train.Linear, LR: 0.05},
		MetricsPath: filepath.Join(dir, "m.jsonl"), PlotPath: filepath.Join(dir, "loss.png"), Progress: os.Stderr}
	res, err := train.Run(context.Background(), e, markovSource(5), val, cfg)
	require.NoError(t, err)
	assert.Equal(t, 20, res.Steps)
	require.NotNil(t, res.EvalBefore)
	require.NotNil(t, res.EvalAfter)
	assert.Less(t, res.EvalAfter.Loss, res.EvalBefore.Loss)
	require.FileExists(t, cfg.PlotPath)
	f, err := os.Open(cfg.MetricsPath)
	require.NoError(t, err)
	defer f.Close()
	kinds := map[string]int{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var mm train.Metrics
		require.NoError(t, json.Unmarshal(sc.Bytes(), &mm))
		kinds[mm.Kind]++
	}
	assert.Equal(t, 20, kinds["train"])
	assert.Equal(t, 5, kinds["eval"]) // before, at 5, 10, 15, after
}
