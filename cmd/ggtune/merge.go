package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/method"
)

func init() { register(newMergeCmd) }

// newMergeCmd builds `ggtune merge`: fold LoRA adapters into a base model
// and write a full GGUF that llama.cpp, Ollama and ggtune load without the
// adapters.
func newMergeCmd() *cobra.Command {
	var (
		base, out, typ string
		specs          adapterSpecs
		threads        int
	)
	cmd := &cobra.Command{
		Use:   "merge -m BASE --adapter A[:SCALE] [--adapter B[:SCALE]]... -o OUT.gguf",
		Short: "Merge adapters (LoRA, IA3, DoRA, ...) into a base model (a full GGUF)",
		Long: "Write a copy of the base model with the adapters folded into its weights, in order:\n" +
			"for LoRA W' = W + sum(scale * alpha/r * B*A), llama.cpp's --lora-scaled semantics. The merged\n" +
			"matrices keep their base type (quantized ones are re-quantized) unless --type is given;\n" +
			"every other tensor and all metadata are copied unchanged. The file is written atomically.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case base == "":
				return fmt.Errorf("merge: %w: -m BASE is required", errUsage)
			case len(specs) == 0:
				return fmt.Errorf("merge: %w: at least one --adapter FILE[:SCALE] is required", errUsage)
			case out == "":
				return fmt.Errorf("merge: %w: -o OUT.gguf is required", errUsage)
			}
			var opts method.MergeOptions
			if typ != "" {
				t, err := binding.TypeByName(typ)
				if err != nil {
					return fmt.Errorf("merge: %w: --type: %v (for example f32, f16, bf16, q8_0, q4_0, q4_k)", errUsage, err)
				}
				opts.Type = &t
			}
			if err := checkMerge(base, specs, out); err != nil {
				return fmt.Errorf("merge: %w", err)
			}
			backend, err := binding.NewCPUBackend(threads)
			if err != nil {
				return err
			}
			defer backend.Close()
			adapters, err := loadAdapters(specs, base, nil, backend)
			if err != nil {
				return fmt.Errorf("merge: %w", err)
			}
			scaled := make([]method.Scaled, len(adapters))
			for i, a := range adapters {
				defer a.inst.Close()
				scaled[i] = method.Scaled{Instance: a.inst, Scale: a.scale, Name: a.spec}
			}
			if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
				return fmt.Errorf("merge: %w", err)
			}
			if err := method.Merge(base, out, scaled, opts); err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "merged into %s:", out)
			for _, a := range adapters {
				fmt.Fprintf(w, " %s (%s, scale %g)", a.spec, a.method.Name(), a.scale)
			}
			fmt.Fprintln(w)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&base, "model", "m", "", "base model GGUF (required)")
	addAdapterFlags(f, &specs)
	f.StringVarP(&out, "output", "o", "", "merged model GGUF to write (required)")
	f.StringVar(&typ, "type", "", "element type of the merged matrices, e.g. f32, f16, bf16, q8_0 (default: each keeps its base type)")
	f.IntVarP(&threads, "threads", "t", 0, "CPU threads (0: all)")
	return cmd
}
