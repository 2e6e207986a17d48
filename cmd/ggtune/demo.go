package main

import (
	"github.com/spf13/cobra"

	"github.com/ggtune/ggtune/demo"
)

func init() { register(newDemoCmd) }

// newDemoCmd builds `ggtune demo`, the main job on an embedded default.
func newDemoCmd() *cobra.Command {
	var o demo.Options
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Train a tiny base model, LoRA-tune it on Shakespeare, and verify the adapter with libllama",
		Long: "demo runs ggtune end to end with no download beyond Go modules: it trains a tiny base\n" +
			"model from scratch on War and Peace (cached), LoRA-fine-tunes it on Shakespeare, shows\n" +
			"the held-out loss falling and samples before and after, writes the adapter GGUF and the\n" +
			"loss plot to --out, and checks that libllama loads the adapter and agrees with ggtune.\n" +
			"The texts come from the pinned ollama module (third_party/ollama after `make deps`).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Log = cmd.OutOrStdout()
			_, err := demo.Run(cmd.Context(), o)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.BaseText, "base-text", "", "text to train the base model on (default: War and Peace from the ollama module)")
	f.StringVar(&o.TuneText, "tune-text", "", "text to LoRA-tune on (default: Shakespeare from the ollama module)")
	f.StringVar(&o.CacheDir, "cache", "", "directory for the cached base model (default: the user cache dir /ggtune)")
	f.StringVar(&o.OutDir, "out", "out", "directory for the adapter, metrics and loss plot")
	f.IntVarP(&o.Threads, "threads", "t", 0, "CPU threads (0: all)")
	f.IntVar(&o.BaseSteps, "base-steps", 500, "optimizer steps of base training")
	f.IntVar(&o.TuneSteps, "steps", 120, "optimizer steps of LoRA training")
	return cmd
}
