package main

import (
	"github.com/spf13/cobra"
)

// subcommands holds the constructors of every subcommand; each command's
// file registers itself in an init function.
var subcommands []func() *cobra.Command

func register(f func() *cobra.Command) { subcommands = append(subcommands, f) }

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "ggtune",
		Short:         "Fine-tune and run GGUF language models on llama.cpp's ggml runtime",
		SilenceUsage:  true,
		SilenceErrors: true,
		// -m hf://OWNER/REPO/FILE.gguf (or https://) on every command.
		PersistentPreRunE: resolveModelFlag,
	}
	for _, f := range subcommands {
		root.AddCommand(f())
	}
	return root
}
