// Package finetune runs a fine-tuning job end to end: it loads a GGUF model,
// builds the trainable state of any registered method (package method:
// LoRA, full, head-only, soft prompts, ...), reads and batches the data,
// trains with package train, and writes the method's result (an adapter
// GGUF or a full model GGUF). The CLI's `ggtune train` is a thin layer over
// Run.
package finetune

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/data"
	"github.com/ggtune/ggtune/method"
	_ "github.com/ggtune/ggtune/method/builtin" // the built-in methods
	"github.com/ggtune/ggtune/model"
	"github.com/ggtune/ggtune/train"
)

// ErrJob reports an invalid job description.
var ErrJob = errors.New("invalid job")

// Job describes one fine-tuning run.
type Job struct {
	// Method is a registered method's name (see package method): lora,
	// full, head, prompt, prefix, ptuning, ...
	Method string
	// Config is the method's configuration (nil: its defaults); it is
	// resolved against the base model.
	Config method.Config
	Model  string // base GGUF
	Data   string // training data file
	Val    string // validation data file (optional)
	// ValSplit holds out this fraction of Data for validation when Val is
	// empty (0: no validation).
	ValSplit float64
	Output   string // adapter, model or soft-prompt GGUF to write

	Context int  // tokens per sequence (T)
	Batch   int  // sequences per micro batch (B)
	Pack    bool // pack short examples into full rows
	Threads int
	// Device is the ggml device that trains ("" the CPU; see
	// model.Options.Device).
	Device string
	Seed   uint64
	// MaxValBatches bounds the validation batches per evaluation (0: all).
	MaxValBatches int

	DataOptions data.Options // Context and Templater are filled in
	// InitFrom continues training an existing adapter of the job's method
	// (a GGUF written by ggtune) instead of a fresh one; its file's
	// configuration replaces Config.
	InitFrom string
	// GradCheckpoint selects activation checkpointing (default: automatic).
	GradCheckpoint GradCheckpoint
	Train          train.Config
	// Distill, if set, trains the method by distillation from a teacher
	// model instead of on the labels alone.
	Distill *Distillation
}

// GradCheckpoint selects activation checkpointing: the backward pass keeps
// only each transformer block's input and recomputes the block's
// activations when it needs them, which trades about a third more compute
// for memory that no longer grows with the number of blocks.
type GradCheckpoint int

// The activation checkpointing modes.
const (
	// GradCheckpointAuto checkpoints micro batches of at least
	// AutoCheckpointTokens tokens.
	GradCheckpointAuto GradCheckpoint = iota
	GradCheckpointOn
	GradCheckpointOff
)

// AutoCheckpointTokens is the micro-batch size (batch × context, in tokens)
// from which GradCheckpointAuto turns checkpointing on.
const AutoCheckpointTokens = 2048

// String returns the mode's flag value: auto, on or off.
func (g GradCheckpoint) String() string {
	switch g {
	case GradCheckpointOn:
		return "on"
	case GradCheckpointOff:
		return "off"
	}
	return "auto"
}

// ParseGradCheckpoint parses auto, on or off (true and false too).
func ParseGradCheckpoint(s string) (GradCheckpoint, error) {
	switch strings.ToLower(s) {
	case "auto", "":
		return GradCheckpointAuto, nil
	case "on", "true", "1":
		return GradCheckpointOn, nil
	case "off", "false", "0":
		return GradCheckpointOff, nil
	}
	return 0, fmt.Errorf("%w: gradient checkpointing %q (want auto, on or off)", ErrJob, s)
}

// checkpointing reports whether the job's training graph recomputes
// activations.
func (j *Job) checkpointing() bool {
	switch j.GradCheckpoint {
	case GradCheckpointOn:
		return true
	case GradCheckpointOff:
		return false
	}
	return j.Batch*j.Context >= AutoCheckpointTokens
}

// Report is the outcome of a job.
type Report struct {
	Result     train.Result
	Output     string
	Params     int64 // trainable values
	Examples   int   // training examples
	ValBatches int
}

// templater renders chat messages with libllama's template engine.
func templater(tmpl string, msgs []data.ChatMessage, addAssistant bool) (string, error) {
	bm := make([]binding.ChatMessage, len(msgs))
	for i, m := range msgs {
		bm[i] = binding.ChatMessage(m)
	}
	return binding.ApplyChatTemplate(tmpl, bm, addAssistant)
}

func (j *Job) validate() error {
	switch {
	case j.Model == "":
		return fmt.Errorf("%w: no model", ErrJob)
	case j.Data == "":
		return fmt.Errorf("%w: no training data", ErrJob)
	case j.Output == "":
		return fmt.Errorf("%w: no output file", ErrJob)
	case j.Context < 2 || j.Batch < 1:
		return fmt.Errorf("%w: context %d and batch %d (want >= 2 and >= 1)", ErrJob, j.Context, j.Batch)
	case j.ValSplit < 0 || j.ValSplit >= 1:
		return fmt.Errorf("%w: validation split %v (want [0, 1))", ErrJob, j.ValSplit)
	}
	if _, err := method.Get(j.Method); err != nil {
		return fmt.Errorf("%w: %w", ErrJob, err)
	}
	if j.Distill != nil {
		return j.Distill.validate()
	}
	return nil
}

// Run executes the job. Cancelling ctx stops training after the current
// step and writes a checkpoint (train.ErrInterrupted is returned).
func Run(ctx context.Context, j Job) (*Report, error) {
	if err := j.validate(); err != nil {
		return nil, err
	}
	if j.Train.Checkpoint == "" {
		j.Train.Checkpoint = j.Output + ".ckpt"
	}
	if err := j.checkFiles(j.Train); err != nil {
		return nil, err
	}
	settings, err := j.settings()
	if err != nil {
		return nil, err
	}
	for k, v := range j.Train.Settings {
		settings[k] = v
	}
	j.Train.Settings = settings
	meth, _ := method.Get(j.Method)
	mcfg, trainable, err := j.resolve(meth)
	if err != nil {
		return nil, err
	}
	m, err := model.Load(j.Model, model.Options{Threads: j.Threads, Device: j.Device, Trainable: trainable})
	if err != nil {
		return nil, err
	}
	defer m.Close()
	tok, err := m.Tokenizer()
	if err != nil {
		return nil, err
	}
	opts := j.DataOptions
	opts.Context, opts.Templater = j.Context, templater
	ds, err := data.Load(j.Data, tokenizer{tok}, opts)
	if err != nil {
		return nil, err
	}
	logData(j.Train.Progress, ds)
	var val *data.Dataset
	switch {
	case j.Val != "":
		if val, err = data.Load(j.Val, tokenizer{tok}, opts); err != nil {
			return nil, err
		}
		logData(j.Train.Progress, val)
	case j.ValSplit > 0:
		if ds, val, err = ds.Split(j.ValSplit, j.Seed); err != nil {
			return nil, err
		}
	}
	dist, err := prepareDistill(&j, m, ds, val)
	if err != nil {
		return nil, err
	}
	defer dist.Close()
	inst, err := newInstance(j, meth, mcfg, m)
	if err != nil {
		return nil, err
	}
	defer inst.Close()
	groups, err := inst.Groups()
	if err != nil {
		return nil, err
	}

	src, err := newSource(ds, j, dist.attacher("train"))
	if err != nil {
		return nil, err
	}
	valBatches, err := batches(val, j, dist.attacher("val"))
	if err != nil {
		return nil, err
	}
	eng, err := train.NewEngine(GraphBuilder(m, inst.Hooks(1), j.Seed, WithGradCheckpoint(j.checkpointing())), groups, m.Backend(), j.Batch, j.Context, j.Train.Optimizer, dist.options()...)
	if err != nil {
		return nil, err
	}
	defer eng.Close()
	logPlacement(j.Train.Progress, m.Backend(), eng.Placement())
	dist.report(j.Train.Progress, m, eng)
	cfg := j.Train
	res, err := train.Run(ctx, eng, src, valBatches, cfg)
	rep := &Report{Result: res, Output: j.Output, Params: method.NumParams(groups), Examples: ds.Len(), ValBatches: len(valBatches)}
	if err != nil {
		return rep, err
	}
	rep.Output, err = saveResult(inst.Save, j.Output, cfg.Checkpoint)
	return rep, err
}

// logPlacement prints where the operations of the training graph run on a
// device other than the CPU: how many on the device, and which fell back
// to the CPU.
func logPlacement(w io.Writer, be *binding.Backend, p binding.Placement) {
	if w == nil || be.IsCPU() {
		return
	}
	fmt.Fprintln(w, placementSummary(be.Name(), p))
}

// placementSummary describes a device graph's placement in one line:
// "training graph on Vulkan0: 1158 ops in 3 splits; on the CPU: none".
func placementSummary(device string, p binding.Placement) string {
	count := func(ops map[string]int) int {
		n := 0
		for _, c := range ops {
			n += c
		}
		return n
	}
	var fell []string
	for be, ops := range p.Ops {
		if be == device {
			continue
		}
		for op, c := range ops {
			fell = append(fell, fmt.Sprintf("%s×%d", op, c))
		}
	}
	sort.Strings(fell)
	cpu := "none"
	if len(fell) > 0 {
		cpu = strings.Join(fell, ", ")
	}
	return fmt.Sprintf("training graph on %s: %d ops in %d splits; on the CPU: %s", device, count(p.Ops[device]), p.Splits, cpu)
}

// logData prints the data set's summary line (records, examples, drops by
// reason) to w, if any.
func logData(w io.Writer, ds *data.Dataset) {
	if w != nil {
		fmt.Fprintln(w, ds.Summary())
	}
}

// newSource makes the endless, shuffled training stream.
// attach, if set, completes every batch (the teacher's cached predictions).
func newSource(ds *data.Dataset, j Job, attach func(*data.Batch, *train.Batch) error) (*loaderSource, error) {
	cfg := data.LoaderConfig{Batch: j.Batch, Context: j.Context, Pack: j.Pack, Shuffle: true, Seed: j.Seed}
	l, err := data.NewLoader(ds, cfg)
	if err != nil {
		return nil, err
	}
	cfg.Epochs = 1
	one, err := data.NewLoader(ds, cfg)
	if err != nil {
		return nil, err
	}
	return &loaderSource{l: l, perEpoch: one.Steps(), examples: ds.Len(), attach: attach}, nil
}

// batches returns one pass over a validation set (nil for none), each
// batch completed by attach if set.
func batches(ds *data.Dataset, j Job, attach func(*data.Batch, *train.Batch) error) ([]train.Batch, error) {
	if ds == nil {
		return nil, nil
	}
	l, err := data.NewLoader(ds, data.LoaderConfig{Batch: j.Batch, Context: j.Context, Pack: j.Pack, Epochs: 1})
	if err != nil {
		return nil, err
	}
	var out []train.Batch
	for j.MaxValBatches <= 0 || len(out) < j.MaxValBatches {
		b, err := l.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		tb := toTrainBatch(b)
		if attach != nil {
			if err := attach(b, &tb); err != nil {
				return nil, err
			}
		}
		out = append(out, tb)
	}
	return out, nil
}

// resolve returns the job's method configuration, resolved against the
// base model, and the base weights the method trains (nil: none).
func (j *Job) resolve(meth method.Method) (method.Config, func(string) bool, error) {
	f, err := binding.OpenGGUF(j.Model)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	cfg := j.Config
	if cfg == nil {
		cfg = meth.NewConfig()
	}
	if err := cfg.Resolve(f); err != nil {
		return nil, nil, fmt.Errorf("%w: %s: %w", ErrJob, meth.Name(), err)
	}
	wt, ok := meth.(method.WeightTrainer)
	if !ok {
		return cfg, nil, nil
	}
	trainable, err := wt.Trainable(cfg, f)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrJob, err)
	}
	return cfg, trainable, nil
}

// newInstance creates the method's trainable state, fresh or from
// j.InitFrom (which must hold an adapter of the same method).
func newInstance(j Job, meth method.Method, cfg method.Config, m *model.Model) (method.Instance, error) {
	env, err := method.NewEnv(j.Model, m, m.Backend())
	if err != nil {
		return nil, err
	}
	defer env.Close()
	env.Seed = j.Seed
	env.Meta["base_model"] = baseName(j.Model)
	env.Meta["data"] = baseName(j.Data)
	if j.InitFrom == "" {
		return meth.New(env, cfg)
	}
	inst, from, err := method.Open(j.InitFrom, env)
	if err != nil {
		return nil, err
	}
	if from.Name() != meth.Name() {
		inst.Close()
		return nil, fmt.Errorf("%w: %s holds a %s adapter, the job trains %s", ErrJob, j.InitFrom, from.Name(), meth.Name())
	}
	return inst, nil
}

func baseName(path string) string {
	if i := strings.LastIndexAny(path, `/\`); i >= 0 {
		return path[i+1:]
	}
	return path
}
