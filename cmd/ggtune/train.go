package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/data"
	"github.com/ggtune/ggtune/finetune"
	"github.com/ggtune/ggtune/method"
	_ "github.com/ggtune/ggtune/method/builtin" // the built-in methods
	"github.com/ggtune/ggtune/train"
)

func init() { register(newTrainCmd) }

// errUsage reports invalid or missing command-line arguments.
var errUsage = errors.New("invalid arguments")

// newTrainCmd builds `ggtune train`, the parent of one subcommand per
// fine-tuning method.
func newTrainCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "train METHOD -m MODEL --data FILE -o OUT.gguf [flags]",
		Short: "Fine-tune a model: " + strings.Join(method.Names(), ", "),
		Long: "Fine-tune a GGUF model on a data file with one of the methods below and write the result\n" +
			"to -o: an adapter (a LoRA adapter loads in llama.cpp and Ollama), a full model, or a soft prompt.\n" +
			"Data: plain text, JSONL/JSON with text, prompt/completion, Alpaca or chat records\n" +
			"(detected, or --format). Progress goes to stderr; metrics to OUT.metrics.jsonl and a loss\n" +
			"plot to OUT.loss.png. Ctrl-C stops after the current step and writes OUT.gguf.ckpt;\n" +
			"the same command with --resume continues from it. --config FILE.yaml sets flags from a\n" +
			"file (keys are flag names); --dry-run prints the effective settings in that form.\n" +
			"Run `ggtune train METHOD --help` for a method's flags.",
		Example: "  ggtune train lora -m base.gguf --data train.txt --val-split 0.05 -o adapter.gguf --steps 300 --lr 1e-3\n" +
			"  ggtune train prompt -m base.gguf --data qa.jsonl -o prompt.gguf --virtual-tokens 16 --init 'text:Answer the question'\n" +
			"  ggtune train lora --config run.yaml --steps 50",
		Args: cobra.ArbitraryArgs,
		// An unknown method's flags must not hide that the method is unknown.
		FParseErrWhitelist: cobra.FParseErrWhitelist{UnknownFlags: true},
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				_, err := method.Get(args[0])
				return fmt.Errorf("train: %w: %w", errUsage, err)
			}
			return fmt.Errorf("train: %w: choose a method: ggtune train %s (see ggtune train --help)", errUsage, strings.Join(method.Names(), "|"))
		},
	}
	for _, m := range method.All() {
		cmd.AddCommand(newTrainMethodCmd(m))
	}
	return cmd
}

// trainOpts holds the shared flags of a `ggtune train METHOD` command
// (the method's own are bound to its configuration).
type trainOpts struct {
	config, model, data, val, output, initFrom string
	valSplit                                   float64
	dryRun, asJSON                             bool

	steps, ctx, batch, gradAccum   int
	epochs                         float64
	lr, minLR                      float64
	schedule                       string
	warmup                         int
	weightDecay, beta1, beta2, eps float64
	maxGradNorm                    float64
	seed                           uint64
	threads                        int
	device                         string
	evalEvery, earlyStop           int
	saveEvery, maxValBatches       int
	resume, overwrite              bool
	resumeChanged                  string
	maxDataBytes                   int64
	maxLineBytes                   int
	metrics, plot                  string

	noPack, trainOnPrompt, skipBad bool
	format, chatTemplate           string
	gradCheckpoint                 string
	stride                         int
}

// newTrainMethodCmd builds `ggtune train METHOD` for one method, with the
// shared training flags and the method's own.
func newTrainMethodCmd(m method.Method) *cobra.Command { return newJobCmd(m, jobExtension{}) }

// jobExtension lets a command built on the training flags (distill) add
// its own flags and complete the job they describe.
type jobExtension struct {
	flags func(*pflag.FlagSet)
	job   func(*cobra.Command, *finetune.Job) error
}

// newJobCmd builds the command of one method with the shared training
// flags, the method's own and ext's.
func newJobCmd(m method.Method, ext jobExtension) *cobra.Command {
	var o trainOpts
	mi := m.Info()
	mcfg := m.NewConfig()
	cmd := &cobra.Command{
		Use:   m.Name() + " -m MODEL --data FILE -o OUT.gguf",
		Short: mi.Short,
		Long: mi.Short + ".\n-o is the " + mi.Output + " to write; the checkpoint OUT.gguf.ckpt, metrics\n" +
			"OUT.metrics.jsonl and loss plot OUT.loss.png go beside it (OUT is -o without .gguf).",
		Args: cobra.NoArgs,
	}
	f := cmd.Flags()
	f.SortFlags = false
	f.StringVar(&o.config, "config", "", "YAML file of flag values (keys are flag names; flags on the command line win)")
	f.StringVarP(&o.model, "model", "m", "", "base model GGUF (required)")
	f.StringVar(&o.data, "data", "", "training data: plain text, or JSONL/JSON records (required)")
	f.StringVar(&o.val, "val", "", "validation data file (held-out loss, perplexity and accuracy)")
	f.Float64Var(&o.valSplit, "val-split", 0, "hold out this fraction of --data for validation when --val is not given")
	f.StringVarP(&o.output, "output", "o", "", "output file: the "+mi.Output+" (required)")

	f.IntVar(&o.steps, "steps", 100, "optimizer steps (or give --epochs instead)")
	f.Float64Var(&o.epochs, "epochs", 0, "train for this many passes over the data instead of --steps (fractions allowed)")
	f.IntVar(&o.ctx, "ctx", 256, "tokens per training sequence (T)")
	f.IntVar(&o.batch, "batch", 4, "sequences per micro batch (B)")
	f.IntVar(&o.gradAccum, "grad-accum", 1, "micro batches per optimizer step (effective batch = batch x grad-accum)")
	f.Float64Var(&o.lr, "lr", mi.LR, "peak learning rate")
	f.Float64Var(&o.minLR, "min-lr", 0, "final learning rate of the linear and cosine schedules")
	f.StringVar(&o.schedule, "schedule", string(train.Cosine), "learning-rate schedule: constant, linear or cosine (after warmup)")
	f.IntVar(&o.warmup, "warmup", 0, "steps of linear learning-rate warmup from 0")
	f.Float64Var(&o.weightDecay, "weight-decay", 0, "AdamW decoupled weight decay")
	f.Float64Var(&o.beta1, "beta1", 0.9, "AdamW beta1")
	f.Float64Var(&o.beta2, "beta2", 0.999, "AdamW beta2")
	f.Float64Var(&o.eps, "eps", 1e-8, "AdamW epsilon")
	f.Float64Var(&o.maxGradNorm, "max-grad-norm", 1, "clip the global gradient norm to this (0: no clipping)")
	f.Uint64Var(&o.seed, "seed", 42, "seed of initialisation, data shuffling, validation split and dropout")
	f.IntVarP(&o.threads, "threads", "t", 0, "CPU threads (0: all)")
	f.StringVar(&o.device, "device", "", deviceUsage)

	f.IntVar(&o.evalEvery, "eval-every", 0, "evaluate on the validation data every N steps (0: only before and after)")
	f.IntVar(&o.earlyStop, "early-stop", 0, "stop after N evaluations without a lower validation loss (0: never; needs --eval-every)")
	f.IntVar(&o.maxValBatches, "max-val-batches", 0, "evaluate at most N validation batches (0: all)")
	f.IntVar(&o.saveEvery, "save-every", 0, "write the checkpoint OUT.gguf.ckpt every N steps (0: only on Ctrl-C)")
	f.BoolVar(&o.resume, "resume", false, "continue from the checkpoint OUT.gguf.ckpt (same flags, same result as an uninterrupted run)")
	f.StringVar(&o.resumeChanged, "resume-changed", "", "with --resume: settings deliberately changed since the checkpoint, e.g. steps,lr (others must match)")
	f.BoolVar(&o.overwrite, "overwrite", false, "start afresh even though the checkpoint OUT.gguf.ckpt exists (it is replaced)")
	f.StringVar(&o.metrics, "metrics", "", "JSONL metrics file (default OUT.metrics.jsonl; none: off)")
	f.StringVar(&o.plot, "plot", "", "loss-curve PNG (default OUT.loss.png; none: off)")

	f.StringVar(&o.format, "format", "auto", "data format: auto, plain, text, completion, alpaca or chat")
	f.StringVar(&o.gradCheckpoint, "grad-checkpoint", "auto", fmt.Sprintf("activation checkpointing: on, off, or auto (on from %d tokens per micro batch): recompute each block in the backward pass instead of keeping its activations", finetune.AutoCheckpointTokens))
	f.Lookup("grad-checkpoint").NoOptDefVal = "on"
	f.BoolVar(&o.noPack, "no-pack", false, "one example per sequence with padding, instead of packing short examples together")
	f.BoolVar(&o.trainOnPrompt, "train-on-prompt", false, "train on prompt and user tokens too, not only completions/assistant turns")
	f.BoolVar(&o.skipBad, "skip-bad", false, "skip (and count) malformed records instead of failing")
	f.StringVar(&o.chatTemplate, "chat-template", "", "chat template or built-in name such as chatml (default: the model's)")
	f.Int64Var(&o.maxDataBytes, "max-data-bytes", data.DefaultMaxBytes, "refuse a data file longer than this many bytes")
	f.IntVar(&o.maxLineBytes, "max-line-bytes", data.DefaultMaxLineBytes, "refuse a JSONL line longer than this many bytes")
	f.IntVar(&o.stride, "stride", 0, "plain text: tokens between window starts (0: the window length, no overlap)")

	if ext.flags != nil {
		ext.flags(f)
	}
	addMethodFlags(f, m, mcfg)
	if len(m.AdapterTypes()) > 0 {
		f.StringVar(&o.initFrom, "init-from", "", "continue training this "+m.Name()+" adapter GGUF (its settings replace the method flags)")
	}
	f.BoolVar(&o.dryRun, "dry-run", false, "check the flags and print the effective settings as a --config YAML, without training")
	f.BoolVar(&o.asJSON, "json", false, "print the final summary as JSON")

	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		var fromConfig map[string]bool
		if o.config != "" {
			var err error
			if fromConfig, err = applyConfig(cmd, o.config); err != nil {
				return err
			}
			// A flag on the command line displaces its exclusive
			// counterpart set by the file.
			for _, pair := range [][2]string{{"steps", "epochs"}, {"val", "val-split"}} {
				for i := range 2 {
					a, b := pair[i], pair[1-i]
					if fl := cmd.Flags().Lookup(b); cmd.Flags().Changed(a) && fromConfig[b] {
						if err := fl.Value.Set(fl.DefValue); err != nil {
							return err
						}
						delete(fromConfig, b)
					}
				}
			}
		}
		explicit := func(name string) bool { return cmd.Flags().Changed(name) || fromConfig[name] }
		job, err := buildJob(m, mcfg, &o, explicit)
		if err == nil && ext.job != nil {
			err = ext.job(cmd, &job)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", cmd.CommandPath(), err)
		}
		if o.dryRun {
			skip := "epochs"
			if explicit("epochs") {
				skip = "steps"
			}
			return printConfig(cmd.OutOrStdout(), cmd.Flags(), skip)
		}
		return runTrain(cmd, mi, job, o.asJSON)
	}
	return cmd
}

// addMethodFlags adds the method's flags to f; one whose name ext already
// took (LoRA's --alpha under distill) is added as METHOD-NAME (--lora-alpha).
func addMethodFlags(f *pflag.FlagSet, m method.Method, mcfg method.Config) {
	tmp := pflag.NewFlagSet(m.Name(), pflag.ContinueOnError)
	mcfg.AddFlags(tmp)
	tmp.VisitAll(func(fl *pflag.Flag) {
		if f.Lookup(fl.Name) == nil {
			f.AddFlag(fl)
			return
		}
		c := *fl
		c.Name, c.Shorthand = m.Name()+"-"+fl.Name, ""
		c.Usage += " (--" + fl.Name + " of ggtune train " + m.Name() + ")"
		f.AddFlag(&c)
	})
}

// sidePath returns the default path of a file written beside the output:
// flag value v, or OUT.suffix when v is empty, or "" when v is "none".
func sidePath(v, output, suffix string) string {
	switch v {
	case "none":
		return ""
	case "":
		return strings.TrimSuffix(output, ".gguf") + suffix
	}
	return v
}

// buildJob checks the flags and turns them into a finetune.Job; explicit
// reports whether a flag was given (on the command line or in --config).
func buildJob(m method.Method, mcfg method.Config, o *trainOpts, explicit func(string) bool) (finetune.Job, error) {
	var j finetune.Job
	for _, req := range []struct{ v, flag string }{{o.model, "-m MODEL"}, {o.data, "--data FILE"}, {o.output, "-o OUT.gguf"}} {
		if req.v == "" {
			return j, fmt.Errorf("%w: %s is required", errUsage, req.flag)
		}
	}
	if o.val != "" && o.valSplit != 0 {
		return j, fmt.Errorf("%w: --val and --val-split are exclusive", errUsage)
	}
	if o.valSplit < 0 || o.valSplit >= 1 {
		return j, fmt.Errorf("%w: --val-split %v: want a fraction in [0, 1)", errUsage, o.valSplit)
	}
	hasVal := o.val != "" || o.valSplit > 0
	steps := o.steps
	switch {
	case explicit("epochs") && explicit("steps"):
		return j, fmt.Errorf("%w: --steps and --epochs are exclusive", errUsage)
	case explicit("epochs"):
		if !(o.epochs > 0) || math.IsInf(o.epochs, 0) {
			return j, fmt.Errorf("%w: --epochs %v: want a positive number", errUsage, o.epochs)
		}
		steps = 0
	case steps <= 0:
		return j, fmt.Errorf("%w: --steps %d: want a positive number", errUsage, steps)
	}
	for _, c := range []struct {
		name string
		v    int
		min  int
	}{
		{"ctx", o.ctx, 2}, {"batch", o.batch, 1}, {"grad-accum", o.gradAccum, 1}, {"warmup", o.warmup, 0},
		{"eval-every", o.evalEvery, 0}, {"early-stop", o.earlyStop, 0}, {"save-every", o.saveEvery, 0},
		{"max-val-batches", o.maxValBatches, 0}, {"stride", o.stride, 0}, {"threads", o.threads, 0},
	} {
		if c.v < c.min {
			return j, fmt.Errorf("%w: --%s %d: want at least %d", errUsage, c.name, c.v, c.min)
		}
	}
	if (o.evalEvery > 0 || o.earlyStop > 0) && !hasVal {
		return j, fmt.Errorf("%w: --eval-every and --early-stop need validation data (--val or --val-split)", errUsage)
	}
	if o.earlyStop > 0 && o.evalEvery == 0 {
		return j, fmt.Errorf("%w: --early-stop needs --eval-every", errUsage)
	}
	sched := train.LRSchedule{Kind: train.Schedule(strings.ToLower(o.schedule)), LR: o.lr, MinLR: o.minLR, Warmup: o.warmup}
	probe := sched
	probe.Total = 1
	if err := probe.Validate(); err != nil {
		return j, fmt.Errorf("%w: %v", errUsage, err)
	}
	opt := train.AdamW{Beta1: o.beta1, Beta2: o.beta2, Eps: o.eps, WeightDecay: o.weightDecay, MaxGradNorm: o.maxGradNorm}
	switch {
	case o.beta1 < 0 || o.beta1 >= 1 || o.beta2 < 0 || o.beta2 >= 1:
		return j, fmt.Errorf("%w: --beta1 %v and --beta2 %v: want values in [0, 1)", errUsage, o.beta1, o.beta2)
	case !(o.eps > 0), o.weightDecay < 0, o.maxGradNorm < 0:
		return j, fmt.Errorf("%w: --eps %v, --weight-decay %v, --max-grad-norm %v: want eps > 0, others >= 0", errUsage, o.eps, o.weightDecay, o.maxGradNorm)
	}
	format, err := data.ParseFormat(o.format)
	if err != nil {
		return j, fmt.Errorf("%w: --format: %v", errUsage, err)
	}
	gc, err := finetune.ParseGradCheckpoint(o.gradCheckpoint)
	if err != nil {
		return j, fmt.Errorf("%w: --grad-checkpoint: %v", errUsage, err)
	}
	ckpt := o.output + ".ckpt"
	if err := checkResume(ckpt, o.resume, o.overwrite); err != nil {
		return j, err
	}
	j = finetune.Job{
		Method: m.Name(), Config: mcfg, Model: o.model, Data: o.data, Val: o.val, ValSplit: o.valSplit, Output: o.output,
		Context: o.ctx, Batch: o.batch, Pack: !o.noPack, Threads: o.threads, Device: o.device, Seed: o.seed, MaxValBatches: o.maxValBatches, InitFrom: o.initFrom,
		GradCheckpoint: gc,
		DataOptions: data.Options{Format: format, Stride: o.stride, TrainOnPrompt: o.trainOnPrompt, SkipBad: o.skipBad, ChatTemplate: o.chatTemplate,
			MaxBytes: o.maxDataBytes, MaxLineBytes: o.maxLineBytes},
		Train: train.Config{
			Steps: steps, Epochs: o.epochs, GradAccum: o.gradAccum, Schedule: sched, Optimizer: opt,
			EvalEvery: o.evalEvery, EarlyStop: o.earlyStop, SaveEvery: o.saveEvery, Checkpoint: ckpt, Resume: o.resume, Overwrite: o.overwrite, ResumeChanged: splitList(o.resumeChanged),
			MetricsPath: sidePath(o.metrics, o.output, ".metrics.jsonl"), PlotPath: sidePath(o.plot, o.output, ".loss.png"),
		},
	}
	base, err := binding.OpenGGUF(o.model)
	if err != nil {
		return j, err
	}
	defer base.Close()
	if err := mcfg.Resolve(base); err != nil {
		return j, fmt.Errorf("%w: %v", errUsage, err)
	}
	return j, nil
}

// printConfig writes the effective flag values, except skip's, as a YAML
// mapping that --config accepts.
func printConfig(w io.Writer, fs *pflag.FlagSet, skip string) error {
	doc := &yaml.Node{Kind: yaml.MappingNode}
	fs.VisitAll(func(f *pflag.Flag) {
		switch f.Name {
		case "config", "dry-run", "json", "help", skip:
			return
		}
		v := &yaml.Node{Kind: yaml.ScalarNode, Value: f.Value.String()}
		if f.Value.Type() == "string" {
			v.Tag = "!!str"
		}
		doc.Content = append(doc.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: f.Name}, v)
	})
	enc := yaml.NewEncoder(w)
	if err := enc.Encode(doc); err != nil {
		return err
	}
	return enc.Close()
}

// trainSummary is the JSON form of a training run's outcome (--json).
type trainSummary struct {
	Method          string            `json:"method"`
	Steps           int               `json:"steps"`
	ResumedFrom     int               `json:"resumed_from,omitempty"`
	Stopped         string            `json:"stopped,omitempty"`
	TrainableParams int64             `json:"trainable_params"`
	Examples        int               `json:"examples"`
	TrainLossFirst  float64           `json:"train_loss_first"`
	TrainLossLast   float64           `json:"train_loss_last"`
	EvalBefore      *train.Evaluation `json:"eval_before,omitempty"`
	EvalAfter       *train.Evaluation `json:"eval_after,omitempty"`
	Output          string            `json:"output"`
	Metrics         string            `json:"metrics,omitempty"`
	Plot            string            `json:"plot,omitempty"`
	Checkpoint      string            `json:"checkpoint,omitempty"`
}

// runTrain runs the job, reporting an interruption with how to resume, and
// prints the summary.
func runTrain(cmd *cobra.Command, mi method.Info, job finetune.Job, asJSON bool) error {
	// the interruption notice below and the training progress write from
	// two goroutines
	stderr := &syncWriter{w: cmd.ErrOrStderr()}
	job.Train.Progress = stderr
	if err := os.MkdirAll(filepath.Dir(job.Output), 0o755); err != nil {
		return fmt.Errorf("%s: %w", cmd.CommandPath(), err)
	}
	ctx := cmd.Context()
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
			fmt.Fprintln(stderr, "\nggtune: interrupted: stopping after the current step and writing the checkpoint (Ctrl-C again aborts at once)")
			signal.Reset(stopSignals...)
		case <-done:
		}
	}()
	fmt.Fprintf(stderr, "ggtune: %s on %s with %s -> %s\n", job.Method, job.Model, job.Data, job.Output)
	rep, err := finetune.Run(ctx, job)
	if errors.Is(err, train.ErrInterrupted) {
		if _, serr := os.Stat(job.Train.Checkpoint); serr == nil {
			return fmt.Errorf("%w; checkpoint written to %s: run the same command with --resume to continue", err, job.Train.Checkpoint)
		}
		return fmt.Errorf("%w; no checkpoint was written", err)
	}
	if err != nil {
		return err
	}
	s := trainSummary{
		Method: job.Method, Steps: rep.Result.Steps, ResumedFrom: rep.Result.ResumedFrom, Stopped: rep.Result.Stopped,
		TrainableParams: rep.Params, Examples: rep.Examples, TrainLossFirst: rep.Result.FirstLoss, TrainLossLast: rep.Result.LastLoss,
		EvalBefore: rep.Result.EvalBefore, EvalAfter: rep.Result.EvalAfter,
		Output: rep.Output, Metrics: job.Train.MetricsPath, Plot: job.Train.PlotPath,
	}
	if _, err := os.Stat(job.Train.Checkpoint); err == nil {
		s.Checkpoint = job.Train.Checkpoint
	}
	out := cmd.OutOrStdout()
	if asJSON {
		return json.NewEncoder(out).Encode(s)
	}
	printSummary(out, s, mi)
	return nil
}

// printSummary writes the human-readable end-of-training summary.
func printSummary(w io.Writer, s trainSummary, mi method.Info) {
	fmt.Fprintf(w, "trained %s: %d steps", s.Method, s.Steps)
	if s.ResumedFrom > 0 {
		fmt.Fprintf(w, " (resumed from step %d)", s.ResumedFrom)
	}
	if s.Stopped == "early-stop" {
		fmt.Fprint(w, ", stopped early (validation loss stopped improving)")
	}
	fmt.Fprintf(w, ", %d trainable parameters, %d training examples\n", s.TrainableParams, s.Examples)
	if b, a := s.EvalBefore, s.EvalAfter; b != nil && a != nil {
		fmt.Fprintf(w, "held-out loss        %.4f -> %.4f\n", b.Loss, a.Loss)
		fmt.Fprintf(w, "held-out perplexity  %.3f -> %.3f\n", b.Perplexity, a.Perplexity)
		fmt.Fprintf(w, "held-out accuracy    %.2f%% -> %.2f%%  (%d tokens)\n", 100*b.Accuracy, 100*a.Accuracy, a.Tokens)
		if a.Divergence > 0 {
			fmt.Fprintf(w, "held-out divergence  %.4f -> %.4f  (from the teacher, per token)\n", b.Divergence, a.Divergence)
		}
	}
	if s.Steps > s.ResumedFrom {
		fmt.Fprintf(w, "training loss        %.4f -> %.4f (first and last step)\n", s.TrainLossFirst, s.TrainLossLast)
	}
	fmt.Fprintf(w, "wrote %s: %s\n", mi.Output, s.Output)
	for _, p := range []struct{ what, path string }{{"metrics", s.Metrics}, {"loss plot", s.Plot}, {"checkpoint", s.Checkpoint}} {
		if p.path != "" {
			fmt.Fprintf(w, "      %s: %s\n", p.what, p.path)
		}
	}
}

// syncWriter serializes writes to w from several goroutines.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

// Write implements io.Writer.
func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// Fd returns the file descriptor of w when it is a file (so that progress
// output still finds the terminal), else an invalid one.
func (s *syncWriter) Fd() uintptr {
	if f, ok := s.w.(interface{ Fd() uintptr }); ok {
		return f.Fd()
	}
	return ^uintptr(0)
}
