package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ggtune/ggtune/data"
	"github.com/ggtune/ggtune/finetune"
	"github.com/ggtune/ggtune/internal/outguard"
	"github.com/ggtune/ggtune/method"
	"github.com/ggtune/ggtune/model"
	"github.com/ggtune/ggtune/shrink"
	"github.com/ggtune/ggtune/train"
)

func init() { register(newShrinkCmd) }

// shrinkOpts holds the flags of `ggtune shrink`.
type shrinkOpts struct {
	model, output, data, val, format string
	valSplit                         float64
	toLayers, ffnTo                  int
	importance                       string
	healSteps                        int
	healMethod                       string
	lr                               float64
	alpha, temperature, beta         float64
	divergence                       string
	ctx, batch, threads              int
	device                           string
	seed                             uint64
	calibBatches, evalBatches        int
	benchTokens, sampleTokens        int
	report, plot                     string
	asJSON                           bool
}

// newShrinkCmd builds `ggtune shrink`: progressive shrinking of a model
// (blocks, then FFN width), healed by training between removals.
func newShrinkCmd() *cobra.Command {
	var o shrinkOpts
	cmd := &cobra.Command{
		Use:   "shrink -m MODEL --to-layers N [--ffn-to N] --data FILE -o OUT.gguf",
		Short: "Make a smaller model: remove blocks one at a time by measured importance, narrow the FFNs, heal in between",
		Long: "Progressive shrinking. Until --to-layers blocks are left, remove the block of lowest importance\n" +
			"(--importance influence: ShortGPT's Block Influence, 1 - cos(block input, block output) over\n" +
			"calibration tokens of --data; loss: the calibration loss increase when the block is skipped),\n" +
			"then heal the smaller model with --heal-steps of training (--heal-method lora: a LoRA merged\n" +
			"back; full: every weight, stored as F32). Then --ffn-to keeps the FFN channels of largest mean\n" +
			"activation (Minitron), at most a third at a time, healed the same way. Each stage is measured on\n" +
			"held-out text (--val, or a --val-split of --data that healing never trains on): parameters,\n" +
			"file size, loss before and after healing, mean KL to the source and libllama prompt-eval tokens/s;\n" +
			"the table goes to stdout, the report to OUT.shrink.json and a loss-against-size plot to\n" +
			"OUT.shrink.png. Without --data, --sample-tokens N of text sampled from the model are the data\n" +
			"(and a tenth as many the held-out text). The output is an ordinary GGUF that libllama loads;\n" +
			"the source is only read. Removing blocks keeps every tensor's type; see docs/shrink.md for FFN\n" +
			"pruning of quantized weights.",
		Example: "  ggtune shrink -m base.gguf --to-layers 3 --data train.txt --val val.txt -o small.gguf --heal-steps 60 --heal-method full --lr 1e-3\n" +
			"  ggtune shrink -m base.gguf --to-layers 20 --ffn-to 8192 --sample-tokens 200000 -o small.gguf",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runShrink(cmd, &o)
		},
	}
	f := cmd.Flags()
	f.SortFlags = false
	f.StringVarP(&o.model, "model", "m", "", "model GGUF to shrink (required; never modified)")
	f.IntVar(&o.toLayers, "to-layers", 0, "transformer blocks to keep (0: all)")
	f.IntVar(&o.ffnTo, "ffn-to", 0, "FFN channels to keep per block (0: all)")
	f.StringVar(&o.data, "data", "", "calibration and healing data: plain text or JSONL/JSON records")
	f.StringVar(&o.val, "val", "", "held-out data for the stage reports")
	f.Float64Var(&o.valSplit, "val-split", 0.05, "without --val: hold out this fraction of --data")
	f.IntVar(&o.sampleTokens, "sample-tokens", 0, "without --data: sample this many tokens of text from the model as data (data-free)")
	f.StringVarP(&o.output, "output", "o", "", "shrunk model GGUF to write (required)")
	f.StringVar(&o.importance, "importance", string(shrink.Influence), "block importance: influence (Block Influence) or loss (loss increase when skipped)")
	f.IntVar(&o.healSteps, "heal-steps", 50, "training steps of healing after each stage (0: no healing)")
	f.StringVar(&o.healMethod, "heal-method", "lora", "healing method: lora (merged back after each stage) or full")
	f.StringVar(&o.healMethod, "method", "lora", "the same as --heal-method (the flag of train and distill)")
	kd := train.DefaultDistill()
	f.Float64Var(&o.alpha, "alpha", kd.Alpha, "healing distils from the original model: weight α of the divergence in (1−α)·CE + α·T²·D (0: the labels alone)")
	f.Float64Var(&o.temperature, "temperature", kd.Temperature, "distillation temperature T of healing")
	f.StringVar(&o.divergence, "divergence", string(kd.Divergence), "distillation divergence of healing: kl, reverse-kl or jsd")
	f.Float64Var(&o.beta, "beta", kd.Beta, "β of --divergence jsd")
	f.Float64Var(&o.lr, "lr", 0, "healing learning rate (0: the method's default, as in ggtune train)")
	f.IntVar(&o.ctx, "ctx", 256, "tokens per sequence (T)")
	f.IntVar(&o.batch, "batch", 4, "sequences per batch (B)")
	f.IntVar(&o.calibBatches, "calib-batches", 8, "calibration batches for importance")
	f.IntVar(&o.evalBatches, "eval-batches", 8, "held-out batches for loss and KL")
	f.IntVar(&o.benchTokens, "bench-tokens", 128, "prompt length of the libllama prompt-eval speed per stage (0: off)")
	f.StringVar(&o.format, "format", "auto", "data format: auto, plain, text, completion, alpaca or chat")
	f.Uint64Var(&o.seed, "seed", 42, "seed of healing, the validation split and sampling")
	f.IntVarP(&o.threads, "threads", "t", 0, "CPU threads (0: all)")
	f.StringVar(&o.device, "device", "", deviceUsage)
	f.StringVar(&o.report, "report", "", "JSON report (default OUT.shrink.json; none: off)")
	f.StringVar(&o.plot, "plot", "", "loss-against-size PNG (default OUT.shrink.png; none: off)")
	f.BoolVar(&o.asJSON, "json", false, "print the report as JSON instead of the table")
	return cmd
}

// shrinkHealMethods are the healing methods: a LoRA is merged back after
// each stage, full fine-tuning writes the model itself.
var shrinkHealMethods = map[string]bool{"lora": true, "full": true}

func runShrink(cmd *cobra.Command, o *shrinkOpts) error {
	switch {
	case o.model == "":
		return fmt.Errorf("shrink: %w: -m MODEL is required", errUsage)
	case o.output == "":
		return fmt.Errorf("shrink: %w: -o OUT.gguf is required", errUsage)
	case o.data == "" && o.sampleTokens == 0:
		return fmt.Errorf("shrink: %w: --data FILE (or --sample-tokens N for data-free shrinking) is required", errUsage)
	case o.data != "" && o.sampleTokens != 0:
		return fmt.Errorf("shrink: %w: --data and --sample-tokens are exclusive", errUsage)
	case o.toLayers == 0 && o.ffnTo == 0:
		return fmt.Errorf("shrink: %w: nothing to do: give --to-layers N and/or --ffn-to N", errUsage)
	case o.val != "" && cmd.Flags().Changed("val-split"):
		return fmt.Errorf("shrink: %w: --val and --val-split are exclusive", errUsage)
	case !(o.alpha >= 0 && o.alpha <= 1):
		return fmt.Errorf("shrink: %w: --alpha %v (want [0, 1])", errUsage, o.alpha)
	case !(o.temperature > 0) || math.IsInf(o.temperature, 0):
		return fmt.Errorf("shrink: %w: --temperature %v (want > 0)", errUsage, o.temperature)
	case !(o.beta >= 0 && o.beta <= 1):
		return fmt.Errorf("shrink: %w: --beta %v (want [0, 1])", errUsage, o.beta)
	case !shrinkHealMethods[o.healMethod]:
		return fmt.Errorf("shrink: %w: --heal-method %q (want lora or full)", errUsage, o.healMethod)
	case o.importance != string(shrink.Influence) && o.importance != string(shrink.LossIncrease):
		return fmt.Errorf("shrink: %w: --importance %q (want influence or loss)", errUsage, o.importance)
	}
	for _, c := range []struct {
		name string
		v    int
		min  int
	}{
		{"to-layers", o.toLayers, 0}, {"ffn-to", o.ffnTo, 0}, {"heal-steps", o.healSteps, 0}, {"ctx", o.ctx, 2}, {"batch", o.batch, 1},
		{"calib-batches", o.calibBatches, 1}, {"eval-batches", o.evalBatches, 1}, {"bench-tokens", o.benchTokens, 0},
		{"sample-tokens", o.sampleTokens, 0}, {"threads", o.threads, 0},
	} {
		if c.v < c.min {
			return fmt.Errorf("shrink: %w: --%s %d: want at least %d", errUsage, c.name, c.v, c.min)
		}
	}
	if o.val == "" && !(o.valSplit > 0 && o.valSplit < 1) {
		return fmt.Errorf("shrink: %w: --val-split %v: want a fraction in (0, 1), or give --val", errUsage, o.valSplit)
	}
	if !(o.lr >= 0) {
		return fmt.Errorf("shrink: %w: --lr %v: want a positive rate (0: the method's default)", errUsage, o.lr)
	}
	format, err := data.ParseFormat(o.format)
	if err != nil {
		return fmt.Errorf("shrink: %w: --format: %v", errUsage, err)
	}
	report, plot := sidePath(o.report, o.output, ".shrink.json"), sidePath(o.plot, o.output, ".shrink.png")
	inputs := []outguard.File{{Flag: "-m", Path: o.model}, {Flag: "--data", Path: o.data}, {Flag: "--val", Path: o.val}}
	outputs := []outguard.File{{Flag: "-o", Path: o.output}, {Flag: "--report", Path: report}, {Flag: "--plot", Path: plot}}
	if err := os.MkdirAll(filepath.Dir(o.output), 0o755); err != nil {
		return fmt.Errorf("shrink: %w", err)
	}
	if err := outguard.Distinct(inputs, outputs); err != nil {
		return fmt.Errorf("shrink: %w: %w", errUsage, err)
	}
	if err := outguard.Creatable(outputs...); err != nil {
		return fmt.Errorf("shrink: %w", err)
	}
	for _, out := range outputs {
		if _, err := outguard.RemoveStale(out.Path); err != nil {
			return fmt.Errorf("shrink: %w", err)
		}
	}
	if err := model.Check(o.model); err != nil {
		return fmt.Errorf("shrink: %w", err)
	}
	ctx := cmd.Context()
	stderr := cmd.ErrOrStderr()
	dataPath, valPath, valSplit := o.data, o.val, o.valSplit
	if valPath != "" {
		valSplit = 0
	}
	if o.sampleTokens > 0 {
		dir, err := shrink.SampleDir(o.output)
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		dataPath, valPath, valSplit = filepath.Join(dir, "train.txt"), filepath.Join(dir, "val.txt"), 0
		fmt.Fprintf(stderr, "ggtune: sampling %d + %d tokens of text from %s\n", o.sampleTokens, max(o.sampleTokens/10, o.ctx), o.model)
		if err := sampleData(ctx, o, dataPath, valPath); err != nil {
			return fmt.Errorf("shrink: %w", err)
		}
	}
	dopts := data.Options{Format: format}
	var healer shrink.Healer
	if o.healSteps > 0 {
		meth, err := method.Get(o.healMethod)
		if err != nil {
			return fmt.Errorf("shrink: %w", err)
		}
		lr := o.lr
		if lr == 0 {
			lr = meth.Info().LR
		}
		var kd *train.Distill
		if o.alpha > 0 {
			div, err := train.ParseDivergence(o.divergence)
			if err != nil {
				return fmt.Errorf("shrink: %w: --divergence: %v", errUsage, err)
			}
			kd = &train.Distill{Alpha: o.alpha, Temperature: o.temperature, Divergence: div, Beta: o.beta}
		}
		healer = shrink.TrainHealer{Distill: kd, Job: finetune.Job{
			Method: o.healMethod, Data: dataPath, ValSplit: valSplit, Context: o.ctx, Batch: o.batch, Pack: true,
			Threads: o.threads, Device: o.device, Seed: o.seed, DataOptions: dopts, MaxValBatches: o.evalBatches,
			Train: train.Config{Steps: o.healSteps, Optimizer: train.DefaultAdamW(),
				Schedule: train.LRSchedule{Kind: train.Cosine, LR: lr}, Progress: stderr},
		}}
	}
	fmt.Fprintf(stderr, "ggtune: shrink %s -> %s\n", o.model, o.output)
	rep, err := shrink.Run(ctx, shrink.Options{
		Model: o.model, Output: o.output, Data: dataPath, Val: valPath, ValSplit: valSplit,
		ToLayers: o.toLayers, FFNTo: o.ffnTo, Importance: shrink.Importance(o.importance), Heal: healer,
		Context: o.ctx, Batch: o.batch, CalibBatches: o.calibBatches, EvalBatches: o.evalBatches, DataOptions: dopts,
		Threads: o.threads, Device: o.device, Seed: o.seed, BenchTokens: o.benchTokens, Progress: stderr,
	})
	if err != nil {
		return err
	}
	if report != "" {
		if err := rep.WriteJSON(report); err != nil {
			return err
		}
	}
	if plot != "" {
		if err := rep.Plot(plot); err != nil {
			return err
		}
	}
	out := &stickyWriter{w: cmd.OutOrStdout()}
	if o.asJSON {
		if err := json.NewEncoder(out).Encode(rep); err != nil {
			return err
		}
		return out.check("stdout")
	}
	if err := rep.WriteTable(out); err != nil {
		return err
	}
	written := []string{o.output}
	for _, p := range []string{report, plot} {
		if p != "" {
			written = append(written, p)
		}
	}
	fmt.Fprintf(out, "wrote %s\n", strings.Join(written, ", "))
	return out.check("stdout")
}

// sampleData writes --sample-tokens of text sampled from the model to
// trainPath and a tenth as many (at least one context) to valPath, with
// different seeds.
func sampleData(ctx context.Context, o *shrinkOpts, trainPath, valPath string) error {
	m, err := model.Load(o.model, model.Options{Threads: o.threads, Device: o.device})
	if err != nil {
		return err
	}
	defer m.Close()
	if err := shrink.SampleText(ctx, m, trainPath, o.sampleTokens, o.seed); err != nil {
		return err
	}
	return shrink.SampleText(ctx, m, valPath, max(o.sampleTokens/10, o.ctx), o.seed+1<<32)
}
