package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/ggtune/ggtune/data"
	"github.com/ggtune/ggtune/finetune"
)

func init() { register(newEvalCmd) }

// newEvalCmd builds `ggtune eval`: held-out loss, perplexity and token
// accuracy of a model, optionally with adapters, on a data file.
func newEvalCmd() *cobra.Command {
	var (
		path, dataPath, format, chatTemplate string
		o                                    finetune.EvalOptions
		threads, stride, maxLineBytes        int
		device                               string
		maxDataBytes                         int64
		noPack, trainOnPrompt, skipBad       bool
		asJSON                               bool
	)
	cmd := &cobra.Command{
		Use:   "eval -m MODEL --data FILE [--adapter A[:SCALE]]...",
		Short: "Measure a model's loss, perplexity and token accuracy on a data file",
		Long: "Evaluate the model (with any adapters: LoRA, IA3, soft prompts, ...) on a data file, read and\n" +
			"batched exactly as `ggtune train` reads validation data: the mean cross-entropy over the\n" +
			"trained tokens (completions and assistant turns unless --train-on-prompt), its\n" +
			"perplexity exp(loss), and the fraction of those tokens the model predicts exactly\n" +
			"(greedy). Plain text is cut into --ctx windows; --stride N overlaps them and scores\n" +
			"each token once (sliding-window perplexity).",
		Args: cobra.NoArgs,
	}
	hooksFromFlags := addHookFlags(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		switch {
		case path == "":
			return fmt.Errorf("eval: %w: -m MODEL is required", errUsage)
		case dataPath == "":
			return fmt.Errorf("eval: %w: --data FILE is required", errUsage)
		case o.Context < 2 || o.Batch < 1 || o.MaxBatches < 0 || stride < 0:
			return fmt.Errorf("eval: %w: --ctx %d, --batch %d, --max-batches %d, --stride %d (want ctx >= 2, batch >= 1, others >= 0)",
				errUsage, o.Context, o.Batch, o.MaxBatches, stride)
		}
		f, err := data.ParseFormat(format)
		if err != nil {
			return fmt.Errorf("eval: %w: --format: %v", errUsage, err)
		}
		o.Pack, o.Log = !noPack, cmd.ErrOrStderr()
		o.DataOptions = data.Options{Format: f, Stride: stride, MaskOverlap: stride > 0, TrainOnPrompt: trainOnPrompt,
			SkipBad: skipBad, ChatTemplate: chatTemplate, MaxBytes: maxDataBytes, MaxLineBytes: maxLineBytes}
		m, hooks, closeAll, err := loadWithHooks(path, threads, device, hooksFromFlags)
		if err != nil {
			return err
		}
		defer closeAll()
		ev, err := finetune.Evaluate(m, hooks, dataPath, o)
		if err != nil {
			return err
		}
		out := cmd.OutOrStdout()
		if asJSON {
			return json.NewEncoder(out).Encode(ev)
		}
		_, err = fmt.Fprintf(out, "loss %.4f  perplexity %.3f  accuracy %.2f%%  (%d tokens)\n", ev.Loss, ev.Perplexity, 100*ev.Accuracy, ev.Tokens)
		return err
	}
	fl := cmd.Flags()
	fl.StringVarP(&path, "model", "m", "", "model GGUF file (required)")
	fl.StringVar(&dataPath, "data", "", "data file: plain text, or JSONL/JSON records (required)")
	fl.IntVar(&o.Context, "ctx", 256, "tokens per sequence")
	fl.IntVar(&o.Batch, "batch", 4, "sequences per batch")
	fl.IntVar(&o.MaxBatches, "max-batches", 0, "evaluate at most N batches (0: the whole file)")
	fl.StringVar(&format, "format", "auto", "data format: auto, plain, text, completion, alpaca or chat")
	fl.BoolVar(&noPack, "no-pack", false, "one example per sequence with padding, instead of packing")
	fl.BoolVar(&trainOnPrompt, "train-on-prompt", false, "score prompt and user tokens too")
	fl.BoolVar(&skipBad, "skip-bad", false, "skip malformed records instead of failing")
	fl.StringVar(&chatTemplate, "chat-template", "", "chat template or built-in name (default: the model's)")
	fl.Int64Var(&maxDataBytes, "max-data-bytes", data.DefaultMaxBytes, "refuse a data file longer than this many bytes")
	fl.IntVar(&maxLineBytes, "max-line-bytes", data.DefaultMaxLineBytes, "refuse a JSONL line longer than this many bytes")
	fl.IntVar(&stride, "stride", 0, "plain text: tokens between window starts (0: no overlap)")
	fl.IntVarP(&threads, "threads", "t", 0, "CPU threads (0: all)")
	fl.StringVar(&device, "device", "", deviceUsage)
	fl.BoolVar(&asJSON, "json", false, "print {loss, perplexity, accuracy, tokens} as JSON")
	return cmd
}
