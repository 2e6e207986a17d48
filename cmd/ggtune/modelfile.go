package main

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/internal/atomicfile"
	"github.com/ggtune/ggtune/lora"
	"github.com/ggtune/ggtune/ollama"
)

func init() { register(newModelfileCmd) }

// newModelfileCmd builds `ggtune modelfile`: check an adapter against its
// base model and write an Ollama Modelfile for it.
func newModelfileCmd() *cobra.Command {
	var (
		adapter, base, out, merged string
		merge, noTemplate          bool
		temp, topP, minP, penalty  float32
		topK, lastN                int
	)
	cmd := &cobra.Command{
		Use:   "modelfile --adapter A.gguf -m BASE.gguf [-o Modelfile]",
		Short: "Write an Ollama Modelfile for a LoRA adapter (checked against its base model)",
		Long: "Check that the LoRA adapter fits the base model (architecture, tensor names and shapes;\n" +
			"Ollama itself only says \"llama runner process has terminated\") and write a Modelfile:\n" +
			"FROM the base and ADAPTER the LoRA, TEMPLATE matched from the base's chat template, and\n" +
			"PARAMETER lines for the sampling (default greedy: temperature 0, repeat_penalty 1, since\n" +
			"Ollama's default penalty 1.1 applies even at temperature 0). Architectures that Ollama\n" +
			"runs on its Go engine (qwen3, gemma3, llama4, ...) reject LoRA: for them, or with --merge,\n" +
			"the adapter is merged into --merged (default A.merged.gguf) and the Modelfile uses FROM\n" +
			"that file. Soft prompts are refused: Ollama cannot use them. Then: ollama create NAME -f Modelfile.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case adapter == "":
				return fmt.Errorf("modelfile: %w: --adapter A.gguf is required", errUsage)
			case base == "":
				return fmt.Errorf("modelfile: %w: -m BASE.gguf is required", errUsage)
			}
			arch, err := ollama.Check(adapter, base)
			if err != nil {
				return fmt.Errorf("modelfile: %w", err)
			}
			mf := ollama.Modelfile{From: base, Adapter: adapter,
				Params: ollama.SamplingParams(temp, topP, minP, penalty, topK, lastN)}
			if !noTemplate {
				if mf.Template, err = ollama.TemplateFor(base); err != nil {
					return fmt.Errorf("modelfile: %w (use --no-template)", err)
				}
			}
			if merge || ollama.NeedsMerge(arch) {
				if merged == "" {
					merged = strings.TrimSuffix(adapter, filepath.Ext(adapter)) + ".merged.gguf"
				}
				if err := mergeOne(adapter, base, merged); err != nil {
					return fmt.Errorf("modelfile: %w", err)
				}
				mf.From, mf.Adapter = merged, ""
				fmt.Fprintf(cmd.ErrOrStderr(), "merged %s into %s (Ollama runs %s without LoRA support)\n", adapter, merged, arch)
			}
			if out == "" || out == "-" {
				_, err := fmt.Fprint(cmd.OutOrStdout(), mf.String())
				return err
			}
			if err := atomicfile.WriteBytes(out, []byte(mf.String())); err != nil {
				return fmt.Errorf("modelfile: %w", err)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "wrote %s: ollama create NAME -f %s\n", out, out)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&adapter, "adapter", "", "LoRA adapter GGUF (required)")
	f.StringVarP(&base, "model", "m", "", "base model GGUF the adapter was trained on (required)")
	f.StringVarP(&out, "output", "o", "", "Modelfile to write (default: stdout)")
	f.BoolVar(&merge, "merge", false, "merge the adapter into the base even where Ollama could load it")
	f.StringVar(&merged, "merged", "", "path of the merged model (default: the adapter's name with .merged.gguf)")
	f.BoolVar(&noTemplate, "no-template", false, "write no TEMPLATE (Ollama then picks one itself)")
	f.Float32Var(&temp, "temp", 0, "PARAMETER temperature")
	f.IntVar(&topK, "top-k", 40, "PARAMETER top_k")
	f.Float32Var(&topP, "top-p", 0.95, "PARAMETER top_p")
	f.Float32Var(&minP, "min-p", 0.05, "PARAMETER min_p")
	f.Float32Var(&penalty, "repeat-penalty", 1, "PARAMETER repeat_penalty (Ollama's default is 1.1)")
	f.IntVar(&lastN, "repeat-last-n", 64, "PARAMETER repeat_last_n")
	return cmd
}

// mergeOne folds the adapter at scale 1 into a copy of base written to out.
func mergeOne(adapter, base, out string) error {
	f, err := binding.OpenGGUF(base)
	if err != nil {
		return err
	}
	defer f.Close()
	backend, err := binding.NewCPUBackend(1)
	if err != nil {
		return err
	}
	defer backend.Close()
	a, err := lora.Load(adapter, f, backend)
	if err != nil {
		return err
	}
	defer a.Close()
	return lora.Merge(base, out, []lora.Scaled{{Adapter: a, Scale: 1}}, lora.MergeOptions{})
}
