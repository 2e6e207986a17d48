package main

import (
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/method"
)

func init() {
	register(newExportPEFTCmd)
	register(newImportPEFTCmd)
}

// baseEnv opens the header of the base model file path (the weights are
// not loaded) with a CPU backend for an adapter's tensors, and returns the
// model's name; closeAll frees both.
func baseEnv(path string) (env *method.Env, name string, closeAll func(), err error) {
	backend, err := binding.NewCPUBackend(1)
	if err != nil {
		return nil, "", nil, err
	}
	env, err = method.NewEnv(path, nil, backend)
	if err != nil {
		backend.Close()
		return nil, "", nil, err
	}
	name = env.Config.Name
	if name == "" {
		name = filepath.Base(path)
	}
	return env, name, func() { env.Close(); backend.Close() }, nil
}

// newExportPEFTCmd builds `ggtune export-peft`: write an adapter (LoRA,
// DoRA, IA3, soft prompts) in Hugging Face PEFT's layout.
func newExportPEFTCmd() *cobra.Command {
	var in, modelPath, out string
	cmd := &cobra.Command{
		Use:   "export-peft --adapter FILE -m MODEL -o DIR",
		Short: "Export an adapter (LoRA, DoRA, IA3, prompt, prefix, P-tuning) to a Hugging Face PEFT directory",
		Long: "Write DIR/adapter_model.safetensors and DIR/adapter_config.json so that PEFT loads the\n" +
			"adapter for inference; the adapter's method must support PEFT export. LoRA and DoRA\n" +
			"become peft_type LORA (use_rslora, use_dora, lora_magnitude_vector), IA3 becomes IA3\n" +
			"(k_proj, v_proj, down_proj as the feed-forward module); for llama-family models the q/k\n" +
			"rows are permuted back to Hugging Face's order. P-tuning exports its encoder's output (as\n" +
			"PEFT saves it); prefix tuning exports the per-layer keys and values in PEFT's\n" +
			"past_key_values layout without the reparameterisation MLP. -m is the base model the\n" +
			"adapter was trained for (its shape is checked and its name recorded).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case in == "":
				return fmt.Errorf("export-peft: %w: --adapter FILE is required", errUsage)
			case modelPath == "":
				return fmt.Errorf("export-peft: %w: -m MODEL is required", errUsage)
			case out == "":
				return fmt.Errorf("export-peft: %w: -o DIR is required", errUsage)
			}
			env, name, closeAll, err := baseEnv(modelPath)
			if err != nil {
				return fmt.Errorf("export-peft: %w", err)
			}
			defer closeAll()
			inst, m, err := method.Open(in, env)
			if err != nil {
				return fmt.Errorf("export-peft: %w", err)
			}
			defer inst.Close()
			ex, ok := inst.(method.PEFTExporter)
			if !ok {
				return fmt.Errorf("export-peft: %s: %w: %s adapters have no PEFT export", in, method.ErrUnsupported, m.Name())
			}
			if err := ex.ExportPEFT(out, name); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "exported %s (%s) to %s\n", in, m.Name(), out)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&in, "adapter", "", "adapter GGUF written by `ggtune train` (required)")
	f.StringVar(&in, "prompt-adapter", "", "alias of --adapter")
	f.StringVarP(&modelPath, "model", "m", "", "the base model GGUF the adapter was trained for (required)")
	f.StringVarP(&out, "output", "o", "", "directory to write (created if needed; required)")
	return cmd
}

// newImportPEFTCmd builds `ggtune import-peft`: read a PEFT adapter
// directory (LORA, IA3, prompt learning) into a GGUF.
func newImportPEFTCmd() *cobra.Command {
	var modelPath, out string
	cmd := &cobra.Command{
		Use:   "import-peft DIR -m MODEL -o FILE.gguf",
		Short: "Import a Hugging Face PEFT adapter (LORA with rsLoRA/DoRA, IA3, PROMPT_TUNING, P_TUNING, PREFIX_TUNING) as a GGUF",
		Long: "Read DIR/adapter_config.json and DIR/adapter_model.safetensors (the layout export-peft\n" +
			"writes) for the base model -m with the method that imports its peft_type, and write a GGUF for --adapter\n" +
			"(LORA with use_dora becomes a dora adapter). A P-tuning adapter becomes plain prompt tuning\n" +
			"(PEFT stores only the encoder's output).",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case modelPath == "":
				return fmt.Errorf("import-peft: %w: -m MODEL is required", errUsage)
			case out == "":
				return fmt.Errorf("import-peft: %w: -o FILE.gguf is required", errUsage)
			}
			env, _, closeAll, err := baseEnv(modelPath)
			if err != nil {
				return fmt.Errorf("import-peft: %w", err)
			}
			defer closeAll()
			inst, m, err := method.ImportPEFT(args[0], env)
			if err != nil {
				return err
			}
			defer inst.Close()
			if err := inst.Save(out); err != nil {
				return err
			}
			// The file's adapter.type, not the importer: a LORA with use_dora
			// is a dora adapter.
			typ, err := method.AdapterType(out)
			if err != nil {
				return fmt.Errorf("import-peft: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "imported %s (%s, read by %s) to %s\n", args[0], typ, m.Name(), out)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&modelPath, "model", "m", "", "the base model GGUF the adapter is for (required)")
	f.StringVarP(&out, "output", "o", "", "adapter GGUF to write (required)")
	return cmd
}
