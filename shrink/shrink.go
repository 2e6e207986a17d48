// Package shrink makes a smaller GGUF model from a larger one by
// progressive shrinking: it removes transformer blocks one at a time, each
// time the block that a measured importance ranks lowest, and heals the
// smaller model before the next removal; then, optionally, it narrows every
// FFN to the channels with the largest mean activation (Minitron's width
// criterion), in steps of at most a third, healed the same way.
//
// Importance of a block is ShortGPT's Block Influence ([Influence]: 1 − the
// mean cosine similarity of the block's input and output hidden states on
// calibration data) or the calibration loss increase when the block is
// skipped ([LossIncrease], through model.LayerSkipHook). Healing is a
// [Healer]: [TrainHealer] trains with any method of the registry (LoRA
// merged back, or full fine-tuning) on text; a distilling healer plugs into
// the same interface.
//
// Every stage is a plain GGUF written by [Write] (blocks renumbered,
// block_count and per-layer metadata arrays consistent, tensors streamed
// one at a time to a temporary file and renamed), which libllama loads. The
// base file is only read. [Run] measures each stage (blocks, parameters,
// file size, held-out loss before and after healing, mean KL to the
// original on the held-out tokens, libllama prompt-eval tokens/s) into a
// [Report], written as JSON, a table and a plot of loss against size.
package shrink

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"time"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/data"
	"github.com/ggtune/ggtune/finetune"
	"github.com/ggtune/ggtune/internal/outguard"
	"github.com/ggtune/ggtune/model"
	"github.com/ggtune/ggtune/train"
)

// ErrOptions reports invalid shrinking options.
var ErrOptions = errors.New("invalid shrink options")

// Importance names how a block's importance is measured.
type Importance string

// Block importance measures.
const (
	// Influence is ShortGPT's Block Influence: 1 − the mean over
	// calibration tokens of cos(block input, block output).
	Influence Importance = "influence"
	// LossIncrease is the calibration loss increase when the block is
	// skipped.
	LossIncrease Importance = "loss"
)

// Options configure [Run].
type Options struct {
	Model  string // the GGUF model to shrink (only read)
	Output string // the shrunk GGUF to write

	// Data is the calibration text (importance is measured on its first
	// CalibBatches batches); Val the held-out file for the reports. Without
	// Val, ValSplit holds out that fraction of Data's examples exactly as a
	// finetune.Job with the same ValSplit and Seed does, so that a
	// TrainHealer with those settings never trains on the held-out part.
	Data, Val string
	ValSplit  float64

	ToLayers   int        // blocks to keep (0: all)
	FFNTo      int        // FFN width to keep (0: unchanged)
	Importance Importance // Influence (default) or LossIncrease
	Heal       Healer     // nil: no healing

	Context, Batch int
	CalibBatches   int // calibration batches for importance (0: 8)
	EvalBatches    int // held-out batches for loss and KL (0: 8)
	DataOptions    data.Options
	Threads        int
	// Device is the ggml device that measures and heals ("" the CPU;
	// see model.Options.Device).
	Device string
	Seed   uint64
	// BenchTokens is the prompt length of the libllama prompt-eval speed
	// measured at each stage (0: not measured).
	BenchTokens int
	// Progress receives one line per measurement and stage (nil: none).
	Progress io.Writer
}

// Stage is one row of the report: the model after one step.
type Stage struct {
	Stage  int    `json:"stage"`
	Action string `json:"action"`
	// Importance of each block of the model before the step (indexed like
	// the previous stage's Blocks), for block removals.
	Importance []float64 `json:"importance,omitempty"`
	Blocks     []int     `json:"blocks"` // the source model's blocks kept
	NFF        int       `json:"n_ff"`
	Params     int64     `json:"params"`
	FileBytes  int64     `json:"file_bytes"`
	// LossBeforeHeal and KLBeforeHeal are measured right after the
	// removal; Loss and KL after healing (the same without a healer).
	LossBeforeHeal float64 `json:"loss_before_heal"`
	KLBeforeHeal   float64 `json:"kl_before_heal"`
	Loss           float64 `json:"loss"`
	KL             float64 `json:"kl"`
	PPTokS         float64 `json:"pp_tok_s,omitempty"`
	HealSeconds    float64 `json:"heal_seconds,omitempty"`
}

// Report is the outcome of [Run].
type Report struct {
	Model      string     `json:"model"`
	Output     string     `json:"output"`
	Importance Importance `json:"importance"`
	Healed     bool       `json:"healed"`
	HeldOut    int        `json:"held_out_tokens"`
	Stages     []Stage    `json:"stages"` // stage 0 is the source model
}

func (o *Options) check() error {
	switch {
	case o.Model == "" || o.Output == "" || o.Data == "":
		return fmt.Errorf("%w: a model, data and an output are required", ErrOptions)
	case o.Val != "" && o.ValSplit != 0:
		return fmt.Errorf("%w: a validation file and a validation split are exclusive", ErrOptions)
	case o.Val == "" && !(o.ValSplit > 0 && o.ValSplit < 1):
		return fmt.Errorf("%w: held-out data is required: a validation file or a split in (0, 1), got %v", ErrOptions, o.ValSplit)
	case o.ToLayers < 0 || o.FFNTo < 0 || o.CalibBatches < 0 || o.EvalBatches < 0 || o.BenchTokens < 0:
		return fmt.Errorf("%w: negative layer count, FFN width, batch count or bench length", ErrOptions)
	case o.Context < 2 || o.Batch < 1:
		return fmt.Errorf("%w: context %d and batch %d (want >= 2 and >= 1)", ErrOptions, o.Context, o.Batch)
	}
	switch o.Importance {
	case "":
		o.Importance = Influence
	case Influence, LossIncrease:
	default:
		return fmt.Errorf("%w: importance %q (want influence or loss)", ErrOptions, o.Importance)
	}
	if o.CalibBatches == 0 {
		o.CalibBatches = 8
	}
	if o.EvalBatches == 0 {
		o.EvalBatches = 8
	}
	return nil
}

// shrinker holds a run's state.
type shrinker struct {
	o           Options
	ref         *runner // the source model, for KL
	calib, held []train.Batch
	dir         string
	rep         *Report
}

// Run shrinks o.Model into o.Output stage by stage and reports each stage.
// Cancelling ctx stops it between (and, through the healer, within)
// stages; nothing is written to o.Output then.
func Run(ctx context.Context, o Options) (*Report, error) {
	if err := o.check(); err != nil {
		return nil, err
	}
	orig, err := model.Load(o.Model, model.Options{Threads: o.Threads, Device: o.Device})
	if err != nil {
		return nil, err
	}
	defer orig.Close()
	cfg := orig.Config()
	switch {
	case o.ToLayers > cfg.NLayer:
		return nil, fmt.Errorf("%w: keep %d blocks of %s, which has %d", ErrOptions, o.ToLayers, o.Model, cfg.NLayer)
	case o.FFNTo > cfg.NFF:
		return nil, fmt.Errorf("%w: FFN width %d for %s, whose width is %d", ErrOptions, o.FFNTo, o.Model, cfg.NFF)
	}
	s := &shrinker{o: o, rep: &Report{Model: o.Model, Output: o.Output, Importance: o.Importance, Healed: o.Heal != nil}}
	if err := s.readData(orig); err != nil {
		return nil, err
	}
	if s.ref, err = newRunner(orig, o.Batch, o.Context, nil); err != nil {
		return nil, err
	}
	defer s.ref.Close()
	if s.dir, err = workDir(o.Output, "shrink"); err != nil {
		return nil, fmt.Errorf("shrink: %w", err)
	}
	defer os.RemoveAll(s.dir)

	blocks := make([]int, cfg.NLayer)
	for i := range blocks {
		blocks[i] = i
	}
	st := Stage{Action: "source", Blocks: blocks, NFF: cfg.NFF}
	if err := s.measure(o.Model, &st, true); err != nil {
		return nil, err
	}
	st.LossBeforeHeal = st.Loss
	s.rep.Stages = append(s.rep.Stages, st)
	cur := o.Model
	target := o.ToLayers
	if target == 0 {
		target = cfg.NLayer
	}
	for n := 1; len(blocks) > target || (o.FFNTo > 0 && st.NFF > o.FFNTo); n++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		next, err := s.step(ctx, cur, n, &st)
		if err != nil {
			return nil, err
		}
		if cur != o.Model {
			os.Remove(cur)
		}
		cur, blocks = next, st.Blocks
	}
	src := make([]int32, len(blocks))
	for i, b := range blocks {
		src[i] = int32(b)
	}
	extra := []binding.KV{
		{Key: "ggtune.shrink.source", Value: filepath.Base(o.Model)},
		{Key: "ggtune.shrink.source_blocks", Value: src},
		{Key: "ggtune.shrink.importance", Value: string(o.Importance)},
	}
	if err := Write(cur, o.Output, Plan{}, extra); err != nil {
		return nil, err
	}
	return s.rep, nil
}

// readData reads the calibration and held-out batches.
func (s *shrinker) readData(m *model.Model) error {
	o := s.o
	eo := finetune.EvalOptions{Context: o.Context, Batch: o.Batch, Pack: true, DataOptions: o.DataOptions,
		MaxBatches: max(o.CalibBatches, o.EvalBatches)}
	var err error
	if o.Val != "" {
		eo.MaxBatches = o.CalibBatches
		if s.calib, _, err = finetune.ReadBatches(m, o.Data, eo, 0, 0); err != nil {
			return fmt.Errorf("shrink: --data: %w", err)
		}
		eo.MaxBatches = o.EvalBatches
		if s.held, _, err = finetune.ReadBatches(m, o.Val, eo, 0, 0); err != nil {
			return fmt.Errorf("shrink: --val: %w", err)
		}
	} else if s.calib, s.held, err = finetune.ReadBatches(m, o.Data, eo, o.ValSplit, o.Seed); err != nil {
		return fmt.Errorf("shrink: --data: %w", err)
	}
	s.calib = s.calib[:min(len(s.calib), o.CalibBatches)]
	s.held = s.held[:min(len(s.held), o.EvalBatches)]
	if len(s.calib) == 0 || len(s.held) == 0 {
		return fmt.Errorf("shrink: %w: %d calibration and %d held-out batches of %d x %d tokens (more data or a shorter context)",
			ErrOptions, len(s.calib), len(s.held), o.Batch, o.Context)
	}
	for _, b := range s.held {
		for _, t := range b.Targets {
			if t != data.IgnoreLabel {
				s.rep.HeldOut++
			}
		}
	}
	return nil
}

func (s *shrinker) logf(format string, args ...any) {
	if s.o.Progress != nil {
		fmt.Fprintf(s.o.Progress, "shrink: "+format+"\n", args...)
	}
}

// step makes stage n from the model file cur (whose stage is *st): it
// removes the least important block, or narrows the FFNs once the block
// count is reached, heals, measures and returns the new file.
func (s *shrinker) step(ctx context.Context, cur string, n int, st *Stage) (string, error) {
	m, err := model.Load(cur, model.Options{Threads: s.o.Threads, Device: s.o.Device})
	if err != nil {
		return "", err
	}
	next := Stage{Stage: n, Blocks: st.Blocks, NFF: st.NFF}
	var plan Plan
	if target := s.o.ToLayers; target > 0 && len(st.Blocks) > target {
		imp, err := s.blockImportance(m)
		if err != nil {
			m.Close()
			return "", err
		}
		drop := 0
		for i, v := range imp {
			if v < imp[drop] {
				drop = i
			}
		}
		next.Importance = imp
		next.Blocks = slices.Delete(slices.Clone(st.Blocks), drop, drop+1)
		next.Action = fmt.Sprintf("remove block %d", st.Blocks[drop])
		for i := range st.Blocks {
			if i != drop {
				plan.Keep = append(plan.Keep, i)
			}
		}
		s.logf("stage %d: %s importance %v: removing block %d (source block %d)", n, s.o.Importance, rounded(imp), drop, st.Blocks[drop])
	} else {
		mag, err := ffnMagnitude(m, s.calib)
		if err != nil {
			m.Close()
			return "", err
		}
		// At most a third of the channels at once (Minitron's advice).
		next.NFF = max(s.o.FFNTo, st.NFF-max(st.NFF/3, 1))
		plan.FFN = topChannels(mag, next.NFF)
		next.Action = fmt.Sprintf("ffn %d -> %d", st.NFF, next.NFF)
		s.logf("stage %d: keeping the %d of %d FFN channels with the largest mean activation", n, next.NFF, st.NFF)
	}
	m.Close()
	shrunk := filepath.Join(s.dir, fmt.Sprintf("stage-%d.gguf", n))
	if err := Write(cur, shrunk, plan, nil); err != nil {
		return "", err
	}
	if s.o.Heal == nil {
		if err := s.measure(shrunk, &next, true); err != nil {
			return "", err
		}
		next.LossBeforeHeal, next.KLBeforeHeal = next.Loss, next.KL
		*st = next
		s.rep.Stages = append(s.rep.Stages, next)
		return shrunk, nil
	}
	if err := s.measure(shrunk, &next, false); err != nil {
		return "", err
	}
	next.LossBeforeHeal, next.KLBeforeHeal = next.Loss, next.KL
	healed := filepath.Join(s.dir, fmt.Sprintf("stage-%d-healed.gguf", n))
	start := time.Now()
	if err := s.o.Heal.Heal(ctx, HealRequest{Original: s.o.Model, Model: shrunk, Output: healed, Dir: s.dir, Stage: n}); err != nil {
		return "", err
	}
	next.HealSeconds = time.Since(start).Seconds()
	os.Remove(shrunk)
	if err := s.measure(healed, &next, true); err != nil {
		return "", err
	}
	*st = next
	s.rep.Stages = append(s.rep.Stages, next)
	return healed, nil
}

// blockImportance measures every block of m by the run's criterion.
func (s *shrinker) blockImportance(m *model.Model) ([]float64, error) {
	if s.o.Importance == LossIncrease {
		return skipLoss(m, s.calib)
	}
	return blockInfluence(m, s.calib)
}

// topChannels returns, per block, the n channels of largest magnitude in
// increasing index order.
func topChannels(mag [][]float64, n int) [][]int {
	out := make([][]int, len(mag))
	for l, row := range mag {
		idx := make([]int, len(row))
		for i := range idx {
			idx[i] = i
		}
		sort.SliceStable(idx, func(a, b int) bool { return row[idx[a]] > row[idx[b]] })
		out[l] = slices.Sorted(slices.Values(idx[:n]))
	}
	return out
}

// measure fills st's size, held-out loss and KL to the source model from
// the file path, and (full) its libllama prompt-eval speed.
func (s *shrinker) measure(path string, st *Stage, full bool) error {
	f, err := binding.OpenGGUF(path)
	if err != nil {
		return err
	}
	st.Params = 0
	for _, ti := range f.Tensors() {
		st.Params += ti.Elements()
	}
	f.Close()
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("shrink: %w", err)
	}
	st.FileBytes = fi.Size()
	m, err := model.Load(path, model.Options{Threads: s.o.Threads, Device: s.o.Device})
	if err != nil {
		return err
	}
	defer m.Close()
	r, err := newRunner(m, s.o.Batch, s.o.Context, nil)
	if err != nil {
		return err
	}
	defer r.Close()
	ls, err := evaluate(r, s.ref, s.held)
	if err != nil {
		return fmt.Errorf("shrink: evaluate %s: %w", path, err)
	}
	st.Loss, st.KL = ls.loss(), ls.meanKL()
	if full && s.o.BenchTokens > 0 {
		if st.PPTokS, err = promptSpeed(path, s.o.BenchTokens, s.o.Threads, s.o.Seed); err != nil {
			return fmt.Errorf("shrink: prompt speed of %s: %w", path, err)
		}
	}
	s.logf("stage %d (%s): %d blocks, n_ff %d, %d params: held-out loss %.4f, KL to the source %.4f", st.Stage, orSource(st.Action), len(st.Blocks), st.NFF, st.Params, st.Loss, st.KL)
	return nil
}

func orSource(a string) string {
	if a == "" {
		return "source"
	}
	return a
}

// promptSpeed returns libllama's prompt-eval tokens/s on the model file:
// the best of 3 evaluations of n random tokens after a warm-up.
func promptSpeed(path string, n, threads int, seed uint64) (float64, error) {
	lm, err := binding.LoadModel(path, binding.ModelParams{})
	if err != nil {
		return 0, err
	}
	defer lm.Close()
	lc, err := binding.NewLlamaContext(lm, binding.ContextParams{NCtx: n, NBatch: n, Threads: threads})
	if err != nil {
		return 0, err
	}
	defer lc.Close()
	r := rand.New(rand.NewPCG(seed, 7))
	prompt := make([]binding.Token, n)
	for i := range prompt {
		prompt[i] = binding.Token(r.IntN(lm.NVocab()))
	}
	best := 0.0
	for i := range 4 {
		lc.ClearMemory()
		start := time.Now()
		if err := lc.Decode(prompt, 0, false); err != nil {
			return 0, err
		}
		if rate := float64(n) / time.Since(start).Seconds(); i > 0 && rate > best {
			best = rate
		}
	}
	return best, nil
}

func rounded(v []float64) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = math.Round(x*1e4) / 1e4
	}
	return out
}

// workDir creates the scratch directory ".OUT.KIND-*" beside out (see
// outguard.TempDir).
func workDir(out, kind string) (string, error) {
	d, err := outguard.TempDir(out, kind)
	if err != nil {
		return "", fmt.Errorf("shrink: %w", err)
	}
	return d, nil
}

// SampleDir creates the scratch directory beside out for text sampled by
// a data-free run (removing those a killed run left); the caller removes it.
func SampleDir(out string) (string, error) { return workDir(out, "samples") }
