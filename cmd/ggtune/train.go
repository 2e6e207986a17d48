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
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/data"
	"github.com/ggtune/ggtune/finetune"
	"github.com/ggtune/ggtune/lora"
	"github.com/ggtune/ggtune/model"
	"github.com/ggtune/ggtune/prompttune"
	"github.com/ggtune/ggtune/train"
)

func init() { register(newTrainCmd) }

// errUsage reports invalid or missing command-line arguments.
var errUsage = errors.New("invalid arguments")

// methodInfo describes one `ggtune train` subcommand.
type methodInfo struct {
	method finetune.Method
	short  string
	output string  // what -o holds
	lr     float64 // default learning rate
	init   string  // default --init ("" : no --init flag)
}

// trainMethods lists the methods in the order of `ggtune train --help`.
// Default learning rates follow common practice for each method (PEFT's
// examples, the QLoRA paper, HF Trainer).
var trainMethods = []methodInfo{
	{finetune.LoRA, "LoRA: train low-rank adapters on a frozen base (any base type, quantized included)", "LoRA adapter GGUF (llama.cpp format)", 2e-4, "kaiming"},
	{finetune.Full, "Full fine-tuning: train every weight (as F32)", "full model GGUF", 5e-5, ""},
	{finetune.Head, "Head-only fine-tuning: train the output layer (and optionally the last blocks)", "full model GGUF", 1e-4, ""},
	{finetune.Prompt, "Prompt tuning: learn virtual token embeddings before the input", "soft-prompt GGUF", 3e-2, "random"},
	{finetune.Prefix, "Prefix tuning: learn per-layer keys and values before the sequence", "soft-prompt GGUF", 1e-2, "random"},
	{finetune.PTuning, "P-tuning: learn virtual tokens produced by an MLP prompt encoder", "soft-prompt GGUF", 1e-3, "random"},
}

// newTrainCmd builds `ggtune train`, the parent of one subcommand per
// fine-tuning method.
func newTrainCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "train METHOD -m MODEL --data FILE -o OUT.gguf [flags]",
		Short: "Fine-tune a model: lora, full, head, prompt, prefix or ptuning",
		Long: "Fine-tune a GGUF model on a data file with one of the methods below and write the result\n" +
			"to -o: a LoRA adapter (loadable by llama.cpp and Ollama), a full model, or a soft prompt.\n" +
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
				return fmt.Errorf("train: %w: unknown method %q (want lora, full, head, prompt, prefix or ptuning)", errUsage, args[0])
			}
			return fmt.Errorf("train: %w: choose a method: ggtune train lora|full|head|prompt|prefix|ptuning (see ggtune train --help)", errUsage)
		},
	}
	for _, mi := range trainMethods {
		cmd.AddCommand(newTrainMethodCmd(mi))
	}
	return cmd
}

// trainOpts holds the flags of a `ggtune train METHOD` command.
type trainOpts struct {
	config, model, data, val, output, initFrom, encoder string
	valSplit                                            float64
	dryRun, asJSON                                      bool

	steps, ctx, batch, gradAccum   int
	epochs                         float64
	lr, minLR                      float64
	schedule                       string
	warmup                         int
	weightDecay, beta1, beta2, eps float64
	maxGradNorm                    float64
	seed                           uint64
	threads                        int
	evalEvery, earlyStop           int
	saveEvery, maxValBatches       int
	resume, overwrite              bool
	resumeChanged                  string
	maxDataBytes                   int64
	maxLineBytes                   int
	metrics, plot                  string

	noPack, trainOnPrompt, skipBad bool
	format, chatTemplate           string
	stride                         int

	rank                  int
	alpha, dropout        float32
	targets, layers, init string
	rslora                bool

	trainLayers string

	virtualTokens, encoderHidden int
	reparam                      bool
}

// newTrainMethodCmd builds `ggtune train METHOD` for one method, with the
// shared training flags and the method's own.
func newTrainMethodCmd(mi methodInfo) *cobra.Command {
	var o trainOpts
	cmd := &cobra.Command{
		Use:   string(mi.method) + " -m MODEL --data FILE -o OUT.gguf",
		Short: mi.short,
		Long: mi.short + ".\n-o is the " + mi.output + " to write; the checkpoint OUT.gguf.ckpt, metrics\n" +
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
	f.StringVarP(&o.output, "output", "o", "", "output file: the "+mi.output+" (required)")

	f.IntVar(&o.steps, "steps", 100, "optimizer steps (or give --epochs instead)")
	f.Float64Var(&o.epochs, "epochs", 0, "train for this many passes over the data instead of --steps (fractions allowed)")
	f.IntVar(&o.ctx, "ctx", 256, "tokens per training sequence (T)")
	f.IntVar(&o.batch, "batch", 4, "sequences per micro batch (B)")
	f.IntVar(&o.gradAccum, "grad-accum", 1, "micro batches per optimizer step (effective batch = batch x grad-accum)")
	f.Float64Var(&o.lr, "lr", mi.lr, "peak learning rate")
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
	f.BoolVar(&o.noPack, "no-pack", false, "one example per sequence with padding, instead of packing short examples together")
	f.BoolVar(&o.trainOnPrompt, "train-on-prompt", false, "train on prompt and user tokens too, not only completions/assistant turns")
	f.BoolVar(&o.skipBad, "skip-bad", false, "skip (and count) malformed records instead of failing")
	f.StringVar(&o.chatTemplate, "chat-template", "", "chat template or built-in name such as chatml (default: the model's)")
	f.Int64Var(&o.maxDataBytes, "max-data-bytes", data.DefaultMaxBytes, "refuse a data file longer than this many bytes")
	f.IntVar(&o.maxLineBytes, "max-line-bytes", data.DefaultMaxLineBytes, "refuse a JSONL line longer than this many bytes")
	f.IntVar(&o.stride, "stride", 0, "plain text: tokens between window starts (0: the window length, no overlap)")

	switch mi.method {
	case finetune.LoRA:
		d := lora.DefaultConfig()
		f.IntVar(&o.rank, "rank", d.Rank, "LoRA rank r")
		f.Float32Var(&o.alpha, "alpha", d.Alpha, "LoRA alpha (the update is scaled by alpha/r, or alpha/sqrt(r) with --rslora)")
		f.Float32Var(&o.dropout, "dropout", d.Dropout, "dropout on the LoRA input during training")
		f.StringVar(&o.targets, "targets", "all-linear", "adapted matrices: comma list of q,k,v,o,gate,up,down,output,embed (or q_proj,... names), or all-linear")
		f.StringVar(&o.layers, "layers", "all", "blocks to adapt: all, a list such as 0,1,4-7, or last:N")
		f.StringVar(&o.init, "init", mi.init, "initialisation of A: kaiming (PEFT's default) or gaussian (B starts at 0)")
		f.BoolVar(&o.rslora, "rslora", false, "rank-stabilised LoRA: scale by alpha/sqrt(r)")
	case finetune.Head:
		f.StringVar(&o.trainLayers, "train-layers", "last:0", "also train the last N transformer blocks: last:N (or N)")
	}
	switch mi.method {
	case finetune.LoRA, finetune.Prompt, finetune.Prefix, finetune.PTuning:
		f.StringVar(&o.initFrom, "init-from", "", "continue training this adapter or soft-prompt GGUF (its settings replace the method flags)")
	}
	switch mi.method {
	case finetune.Prompt, finetune.Prefix, finetune.PTuning:
		f.IntVar(&o.virtualTokens, "virtual-tokens", 20, "number of virtual tokens")
		f.StringVar(&o.init, "init", mi.init, `virtual-token initialisation: random, vocab (embeddings of random tokens) or text:"..." (embeddings of a text)`)
		if mi.method != finetune.Prompt {
			f.IntVar(&o.encoderHidden, "encoder-hidden", 0, "hidden size of the prompt encoder / reparameterisation MLP (0: n_embd)")
		}
		if mi.method == finetune.PTuning {
			f.StringVar(&o.encoder, "encoder", "mlp", "prompt encoder: mlp (Linear-ReLU-Linear-ReLU-Linear) or lstm (2-layer bidirectional LSTM + MLP head)")
		}
		if mi.method == finetune.Prefix {
			f.BoolVar(&o.reparam, "reparam", false, "reparameterise the prefix with an MLP during training (dropped in the saved file)")
		}
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
		job, err := buildJob(mi.method, &o, explicit)
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
func buildJob(method finetune.Method, o *trainOpts, explicit func(string) bool) (finetune.Job, error) {
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
	ckpt := o.output + ".ckpt"
	if err := checkResume(ckpt, o.resume, o.overwrite); err != nil {
		return j, err
	}
	j = finetune.Job{
		Method: method, Model: o.model, Data: o.data, Val: o.val, ValSplit: o.valSplit, Output: o.output,
		Context: o.ctx, Batch: o.batch, Pack: !o.noPack, Threads: o.threads, Seed: o.seed, MaxValBatches: o.maxValBatches, InitFrom: o.initFrom,
		DataOptions: data.Options{Format: format, Stride: o.stride, TrainOnPrompt: o.trainOnPrompt, SkipBad: o.skipBad, ChatTemplate: o.chatTemplate,
			MaxBytes: o.maxDataBytes, MaxLineBytes: o.maxLineBytes},
		Train: train.Config{
			Steps: steps, Epochs: o.epochs, GradAccum: o.gradAccum, Schedule: sched, Optimizer: opt,
			EvalEvery: o.evalEvery, EarlyStop: o.earlyStop, SaveEvery: o.saveEvery, Checkpoint: ckpt, Resume: o.resume, Overwrite: o.overwrite, ResumeChanged: splitList(o.resumeChanged),
			MetricsPath: sidePath(o.metrics, o.output, ".metrics.jsonl"), PlotPath: sidePath(o.plot, o.output, ".loss.png"),
		},
	}
	switch method {
	case finetune.LoRA:
		j.LoRA, err = loraConfig(o)
	case finetune.Head:
		j.TrainLayers, err = parseLast(o.trainLayers)
		if err != nil {
			err = fmt.Errorf("%w: --train-layers: %v", errUsage, err)
		}
	case finetune.Prompt, finetune.Prefix, finetune.PTuning:
		j.Prompt, err = promptConfig(method, o)
	}
	return j, err
}

// loraConfig turns the LoRA flags into a lora.Config.
func loraConfig(o *trainOpts) (lora.Config, error) {
	targets, err := lora.ParseTargets(o.targets)
	if err != nil {
		return lora.Config{}, fmt.Errorf("--targets: %w", err)
	}
	c := lora.Config{Rank: o.rank, Alpha: o.alpha, Dropout: o.dropout, Targets: targets, Init: lora.Init(strings.ToLower(o.init)), RSLoRA: o.rslora}
	if err := c.Validate(); err != nil {
		return lora.Config{}, err
	}
	if c.Layers, err = loraLayers(o.layers, o.model); err != nil {
		return lora.Config{}, fmt.Errorf("%w: --layers: %v", errUsage, err)
	}
	return c, nil
}

// loraLayers parses --layers: "all", "last:N", or a comma list of block
// indices and ranges A-B. The model file is read for the number of blocks.
func loraLayers(s, modelPath string) ([]int, error) {
	s = strings.TrimSpace(strings.ToLower(s))
	if s == "" || s == "all" {
		return nil, nil
	}
	f, err := binding.OpenGGUF(modelPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cfg, err := model.ReadConfig(f)
	if err != nil {
		return nil, err
	}
	n := cfg.NLayer
	if strings.HasPrefix(s, "last:") {
		k, err := parseLast(s)
		if err != nil {
			return nil, err
		}
		if k < 1 || k > n {
			return nil, fmt.Errorf("%q: the model has %d blocks", s, n)
		}
		out := make([]int, 0, k)
		for l := n - k; l < n; l++ {
			out = append(out, l)
		}
		return out, nil
	}
	seen := map[int]bool{}
	var out []int
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		lo, hi, isRange := strings.Cut(part, "-")
		a, errA := strconv.Atoi(lo)
		b, errB := a, error(nil)
		if isRange {
			b, errB = strconv.Atoi(hi)
		}
		if errA != nil || errB != nil || a > b {
			return nil, fmt.Errorf("%q: want all, last:N, or block indices and ranges such as 0,1,4-7", part)
		}
		if a < 0 || b >= n {
			return nil, fmt.Errorf("%q: block index out of range (the model has blocks 0-%d)", part, n-1)
		}
		for l := a; l <= b; l++ {
			if !seen[l] {
				seen[l] = true
				out = append(out, l)
			}
		}
	}
	sort.Ints(out)
	return out, nil
}

// parseLast parses "last:N" or "N" (N >= 0).
func parseLast(s string) (int, error) {
	v := strings.TrimPrefix(strings.TrimSpace(strings.ToLower(s)), "last:")
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q: want last:N with N >= 0", s)
	}
	return n, nil
}

// promptConfig turns the soft-prompt flags into a prompttune.Config.
func promptConfig(method finetune.Method, o *trainOpts) (prompttune.Config, error) {
	pm, err := prompttune.ParseMethod(string(method))
	if err != nil {
		return prompttune.Config{}, err
	}
	c := prompttune.Config{Method: pm, NumVirtual: o.virtualTokens, EncoderHidden: o.encoderHidden, Reparam: o.reparam, Encoder: o.encoder}
	switch init := strings.TrimSpace(o.init); {
	case strings.HasPrefix(init, "text:"), strings.HasPrefix(init, "text="):
		c.Init, c.InitText = prompttune.InitText, unquote(init[len("text:"):])
	default:
		c.Init = prompttune.Init(strings.ToLower(init))
	}
	if err := c.Validate(); err != nil {
		return prompttune.Config{}, fmt.Errorf("%w (--virtual-tokens, --init random|vocab|text:\"...\")", err)
	}
	return c, nil
}

// unquote strips one pair of matching quotes.
func unquote(s string) string {
	if len(s) >= 2 && (s[0] == '"' || s[0] == '\'') && s[len(s)-1] == s[0] {
		return s[1 : len(s)-1]
	}
	return s
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
	Method          finetune.Method   `json:"method"`
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
func runTrain(cmd *cobra.Command, mi methodInfo, job finetune.Job, asJSON bool) error {
	stderr := cmd.ErrOrStderr()
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
	fmt.Fprintf(stderr, "ggtune: %s on %s with %s -> %s\n", mi.method, job.Model, job.Data, job.Output)
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
		Method: mi.method, Steps: rep.Result.Steps, ResumedFrom: rep.Result.ResumedFrom, Stopped: rep.Result.Stopped,
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
func printSummary(w io.Writer, s trainSummary, mi methodInfo) {
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
	}
	if s.Steps > s.ResumedFrom {
		fmt.Fprintf(w, "training loss        %.4f -> %.4f (first and last step)\n", s.TrainLossFirst, s.TrainLossLast)
	}
	fmt.Fprintf(w, "wrote %s: %s\n", mi.output, s.Output)
	for _, p := range []struct{ what, path string }{{"metrics", s.Metrics}, {"loss plot", s.Plot}, {"checkpoint", s.Checkpoint}} {
		if p.path != "" {
			fmt.Fprintf(w, "      %s: %s\n", p.what, p.path)
		}
	}
}
