package train

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"time"

	"github.com/ggtune/ggtune/internal/outguard"
)

// Source yields training batches in a deterministic, resumable order.
type Source interface {
	// Next returns the next batch, starting a new epoch (reshuffled) when
	// the current one is exhausted.
	Next() (Batch, error)
	// Position returns where the next batch comes from.
	Position() Position
	// Seek continues from a position returned by Position.
	Seek(Position) error
	// BatchesPerEpoch returns the number of batches in one epoch.
	BatchesPerEpoch() int
	// Epoch returns the epochs completed so far, with a fraction.
	Epoch() float64
}

// Config configures Run.
type Config struct {
	Steps     int     // optimizer steps; 0 means Epochs over the data
	Epochs    float64 // used when Steps is 0
	GradAccum int     // micro batches per optimizer step (>= 1)
	Schedule  LRSchedule
	Optimizer AdamW

	EvalEvery  int // optimizer steps between evaluations (0: only at the end)
	EarlyStop  int // stop after this many evaluations without improvement (0: never)
	SaveEvery  int // optimizer steps between checkpoints (0: only on interrupt)
	Checkpoint string
	Resume     bool // continue from Checkpoint if it exists
	// Overwrite lets a fresh run (Resume false) replace an existing
	// Checkpoint; without it that is ErrCheckpointExists.
	Overwrite bool
	// Settings are the caller's settings that exact resume depends on (the
	// model, the data's fingerprint, the method's options), saved in the
	// checkpoint with the loop's own (steps, learning rate, optimizer ...).
	// A resumed run whose settings differ is ErrResumeMismatch, unless each
	// differing key is in ResumeChanged.
	Settings      map[string]string
	ResumeChanged []string
	MetricsPath   string // JSONL metrics, one object per step and evaluation
	PlotPath      string // loss-curve PNG written at the end

	// Progress receives a progress bar (on a terminal) or plain lines.
	Progress io.Writer
	// OnMetrics, if set, receives every record as it is produced.
	OnMetrics func(Metrics)
}

// Metrics is one record of training progress.
type Metrics struct {
	Kind         string  `json:"kind"` // "train" or "eval"
	Step         int     `json:"step"`
	Epoch        float64 `json:"epoch"`
	Loss         float64 `json:"loss"`
	LR           float64 `json:"lr,omitempty"`
	GradNorm     float64 `json:"grad_norm,omitempty"`
	TokensPerSec float64 `json:"tokens_per_sec,omitempty"`
	Perplexity   float64 `json:"perplexity,omitempty"`
	Accuracy     float64 `json:"accuracy,omitempty"`
	ElapsedSec   float64 `json:"elapsed_sec"`
	ETASec       float64 `json:"eta_sec,omitempty"`
}

// Result summarises a run.
type Result struct {
	Steps       int
	FirstLoss   float64 // training loss of the first step
	LastLoss    float64 // training loss of the last step
	EvalBefore  *Evaluation
	EvalAfter   *Evaluation
	Stopped     string // "", "early-stop" or "interrupted"
	History     []Metrics
	ResumedFrom int // step the run resumed from (0 for a fresh run)
}

// Evaluation aggregates evaluation batches.
type Evaluation struct {
	Loss       float64 `json:"loss"`
	Perplexity float64 `json:"perplexity"`
	Accuracy   float64 `json:"accuracy"`
	Tokens     int     `json:"tokens"`
	// Divergence is the mean divergence from the teacher per token, at the
	// distillation temperature (distillation engines only).
	Divergence float64 `json:"divergence,omitempty"`
}

// ErrInterrupted reports a run stopped by its context (a checkpoint was
// written if Config.Checkpoint is set).
var ErrInterrupted = errors.New("training interrupted")

// Evaluate runs the engine over batches and aggregates loss, perplexity
// and token accuracy.
func Evaluate(e *Engine, batches []Batch) (Evaluation, error) {
	var sum, div float64
	var tokens, correct int
	for _, b := range batches {
		r, err := e.Eval(b)
		if errors.Is(err, ErrNoLossTokens) {
			continue
		}
		if err != nil {
			return Evaluation{}, err
		}
		sum += r.LossSum
		div += r.DivSum
		tokens += r.Tokens
		correct += r.Correct
	}
	if tokens == 0 {
		return Evaluation{}, fmt.Errorf("evaluate: %w", ErrNoLossTokens)
	}
	loss := sum / float64(tokens)
	if !finite(loss) {
		return Evaluation{}, fmt.Errorf("evaluate: %w: loss is %v over %d tokens", ErrDiverged, loss, tokens)
	}
	ev := Evaluation{Loss: loss, Perplexity: math.Exp(loss), Accuracy: float64(correct) / float64(tokens), Tokens: tokens}
	if e.distill != nil {
		ev.Divergence = div / float64(tokens)
	}
	return ev, nil
}

// TotalSteps returns the number of optimizer steps cfg asks for.
func (cfg Config) TotalSteps(src Source) int {
	if cfg.Steps > 0 {
		return cfg.Steps
	}
	acc := max(cfg.GradAccum, 1)
	return max(1, int(math.Ceil(cfg.Epochs*float64(src.BatchesPerEpoch())/float64(acc))))
}

// Run trains with the engine on src for the configured number of steps,
// evaluating on val, writing metrics, checkpoints and the loss plot. When
// ctx is cancelled it saves a checkpoint (if configured) and returns
// ErrInterrupted. A non-finite loss, gradient norm, parameter or
// evaluation stops the run with an error wrapping ErrDiverged; no
// checkpoint is written from the diverged state, so the last good one is
// kept. A resumed run keeps the metrics records up to its checkpoint and
// appends to them, and a run resumed after its last step writes its
// results without training.
func Run(ctx context.Context, e *Engine, src Source, val []Batch, cfg Config) (Result, error) {
	cfg.GradAccum = max(cfg.GradAccum, 1)
	total := cfg.TotalSteps(src)
	cfg.Schedule.Total = total
	if err := cfg.Schedule.Validate(); err != nil {
		return Result{}, fmt.Errorf("train: %w", err)
	}
	var res Result
	ck := Checkpoint{Best: math.Inf(1)}
	for _, p := range []string{cfg.Checkpoint, cfg.MetricsPath, cfg.PlotPath} {
		if _, err := outguard.RemoveStale(p); err != nil {
			return res, fmt.Errorf("train: %w", err)
		}
	}
	if !cfg.Resume && !cfg.Overwrite && cfg.Checkpoint != "" {
		if _, err := os.Stat(cfg.Checkpoint); err == nil {
			return res, fmt.Errorf("train: %w: %s (resume it, or overwrite it to start over)", ErrCheckpointExists, cfg.Checkpoint)
		}
	}
	if cfg.Resume && cfg.Checkpoint != "" {
		if _, err := os.Stat(cfg.Checkpoint); err == nil {
			loaded, err := e.LoadCheckpoint(cfg.Checkpoint)
			if err != nil {
				return res, fmt.Errorf("train: resume: %w", err)
			}
			if err := checkSettings(loaded.Settings, cfg.settings(total), cfg.ResumeChanged); err != nil {
				return res, fmt.Errorf("train: resume %s: %w", cfg.Checkpoint, err)
			}
			if err := src.Seek(loaded.Position); err != nil {
				return res, fmt.Errorf("train: resume: %w", err)
			}
			ck = loaded
			res.ResumedFrom = loaded.Step
		}
	}
	metrics := &metricsFile{path: cfg.MetricsPath}
	defer metrics.close()
	if res.ResumedFrom > 0 && cfg.MetricsPath != "" {
		kept, err := readHistory(cfg.MetricsPath, res.ResumedFrom)
		if err != nil {
			return res, fmt.Errorf("train: resume: %w", err)
		}
		metrics.keep, res.History = kept, append(res.History, kept...)
	}
	emit := func(m Metrics) {
		res.History = append(res.History, m)
		metrics.write(m)
		if cfg.OnMetrics != nil {
			cfg.OnMetrics(m)
		}
	}
	prog := newProgress(cfg.Progress, total, ck.Step)
	defer prog.finish()
	start := time.Now()
	evaluate := func() (*Evaluation, error) {
		if len(val) == 0 {
			return nil, nil
		}
		ev, err := Evaluate(e, val)
		if err != nil {
			return nil, err
		}
		emit(Metrics{Kind: "eval", Step: e.StepCount(), Epoch: src.Epoch(), Loss: ev.Loss, Perplexity: ev.Perplexity,
			Accuracy: ev.Accuracy, ElapsedSec: time.Since(start).Seconds()})
		prog.eval(ev)
		return &ev, nil
	}
	savedStep := -1 // the step of the checkpoint this run wrote
	if res.ResumedFrom > 0 {
		savedStep = res.ResumedFrom
	}
	saveCk := func() error {
		if cfg.Checkpoint == "" {
			return nil
		}
		ck.Step, ck.Position, ck.Settings = e.StepCount(), src.Position(), cfg.settings(total)
		if err := e.SaveCheckpoint(cfg.Checkpoint, ck); err != nil {
			return err
		}
		savedStep = ck.Step
		return nil
	}
	// diverged adds where the last good checkpoint is to a divergence error.
	diverged := func(err error) error {
		if !errors.Is(err, ErrDiverged) {
			return fmt.Errorf("train: %w", err)
		}
		if savedStep >= 0 {
			return fmt.Errorf("train: %w; nothing was saved from the diverged state: the last good checkpoint %s (step %d) is kept", err, cfg.Checkpoint, savedStep)
		}
		return fmt.Errorf("train: %w; nothing was saved from the diverged state (lower the learning rate)", err)
	}
	startStep := e.StepCount()
	var err error
	if res.EvalBefore, err = evaluate(); err != nil {
		return res, diverged(err)
	}
	tokens := 0
	for e.StepCount() < total {
		if ctx.Err() != nil {
			res.Stopped = "interrupted"
			if err := saveCk(); err != nil {
				return res, fmt.Errorf("train: %w (while saving after interrupt: %v)", ErrInterrupted, err)
			}
			return res, fmt.Errorf("train: %w at step %d", ErrInterrupted, e.StepCount())
		}
		stepStart := time.Now()
		stepTokens := 0
		for k := 0; k < cfg.GradAccum; k++ {
			b, err := src.Next()
			if err != nil {
				return res, fmt.Errorf("train: data: %w", err)
			}
			_, err = e.Accumulate(b)
			if errors.Is(err, ErrNoLossTokens) {
				continue
			}
			if err != nil {
				return res, diverged(fmt.Errorf("step %d: %w", e.StepCount()+1, err))
			}
			stepTokens += b.B * b.T
		}
		if stepTokens == 0 {
			continue
		}
		lr := cfg.Schedule.At(e.StepCount())
		st, err := e.Step(lr)
		if err != nil {
			return res, diverged(err)
		}
		tokens += stepTokens
		loss, norm := st.Loss, st.GradNorm
		if res.FirstLoss == 0 {
			res.FirstLoss = loss
		}
		res.LastLoss = loss
		elapsed := time.Since(start).Seconds()
		done := e.StepCount() - res.ResumedFrom
		m := Metrics{Kind: "train", Step: e.StepCount(), Epoch: src.Epoch(), Loss: loss, LR: lr, GradNorm: norm,
			TokensPerSec: float64(stepTokens) / time.Since(stepStart).Seconds(), ElapsedSec: elapsed,
			ETASec: elapsed / float64(done) * float64(total-e.StepCount())}
		emit(m)
		if metrics.err != nil {
			return res, fmt.Errorf("train: %w", metrics.err)
		}
		prog.step(m)
		if cfg.SaveEvery > 0 && e.StepCount()%cfg.SaveEvery == 0 {
			if err := saveCk(); err != nil {
				return res, fmt.Errorf("train: %w", err)
			}
		}
		if cfg.EvalEvery > 0 && e.StepCount()%cfg.EvalEvery == 0 && e.StepCount() < total {
			ev, err := evaluate()
			if err != nil {
				return res, diverged(err)
			}
			if ev != nil && cfg.EarlyStop > 0 {
				if ev.Loss < ck.Best {
					ck.Best, ck.Stale = ev.Loss, 0
				} else if ck.Stale++; ck.Stale >= cfg.EarlyStop {
					res.Stopped = "early-stop"
					break
				}
			}
		}
	}
	res.Steps = e.StepCount()
	if e.StepCount() == startStep && res.EvalBefore != nil {
		res.EvalAfter = res.EvalBefore // resumed after the last step: nothing changed
	} else if res.EvalAfter, err = evaluate(); err != nil {
		return res, diverged(err)
	}
	if err := metrics.close(); err != nil {
		return res, fmt.Errorf("train: %w", err)
	}
	if cfg.Checkpoint != "" && cfg.SaveEvery > 0 {
		if err := saveCk(); err != nil {
			return res, fmt.Errorf("train: %w", err)
		}
	}
	if cfg.PlotPath != "" {
		if err := os.MkdirAll(filepath.Dir(cfg.PlotPath), 0o755); err != nil {
			return res, fmt.Errorf("train: plot: %w", err)
		}
		if err := PlotLoss(res.History, cfg.PlotPath); err != nil {
			return res, fmt.Errorf("train: %w", err)
		}
	}
	return res, nil
}
