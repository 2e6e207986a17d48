package main

import (
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/lora"
	"github.com/ggtune/ggtune/model"
	"github.com/ggtune/ggtune/prompttune"
)

func init() {
	register(newExportPEFTCmd)
	register(newImportPEFTCmd)
}

// promptShape reads the soft-prompt shape of the model file path (its
// header only; the weights are not loaded) and returns a CPU backend for
// the prompt's tensors (the caller closes it) and the model's name.
func promptShape(path string) (prompttune.Shape, *binding.Backend, string, error) {
	f, err := binding.OpenGGUF(path)
	if err != nil {
		return prompttune.Shape{}, nil, "", err
	}
	defer f.Close()
	cfg, err := model.ReadConfig(f)
	if err != nil {
		return prompttune.Shape{}, nil, "", err
	}
	backend, err := binding.NewCPUBackend(1)
	if err != nil {
		return prompttune.Shape{}, nil, "", err
	}
	name := cfg.Name
	if name == "" {
		name = filepath.Base(path)
	}
	return prompttune.ShapeOf(cfg), backend, name, nil
}

// newExportPEFTCmd builds `ggtune export-peft`: write a soft-prompt
// adapter in Hugging Face PEFT's layout.
func newExportPEFTCmd() *cobra.Command {
	var in, loraIn, modelPath, out string
	cmd := &cobra.Command{
		Use:   "export-peft (--adapter LORA.gguf | --prompt-adapter FILE) -m MODEL -o DIR",
		Short: "Export a LoRA adapter or a soft prompt to a Hugging Face PEFT directory",
		Long: "With --adapter, write a LoRA in PEFT's LORA layout (Hugging Face module names, q/k rows\n" +
			"of llama-family models permuted back to Hugging Face's order, lora_alpha/use_rslora\n" +
			"giving the same scale). With --prompt-adapter:\n" +
			"Write DIR/adapter_model.safetensors (prompt_embeddings) and DIR/adapter_config.json so\n" +
			"that PEFT loads the soft prompt for inference. P-tuning exports its encoder's output (as\n" +
			"PEFT saves it); prefix tuning exports the per-layer keys and values in PEFT's\n" +
			"past_key_values layout without the reparameterisation MLP. -m is the base model the\n" +
			"prompt was trained for (its shape is checked and its name recorded).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case (in == "") == (loraIn == ""):
				return fmt.Errorf("export-peft: %w: one of --adapter LORA.gguf or --prompt-adapter FILE is required", errUsage)
			case modelPath == "":
				return fmt.Errorf("export-peft: %w: -m MODEL is required", errUsage)
			case out == "":
				return fmt.Errorf("export-peft: %w: -o DIR is required", errUsage)
			}
			if loraIn != "" {
				return exportLoRAPEFT(cmd.OutOrStdout(), loraIn, modelPath, out)
			}
			shape, backend, name, err := promptShape(modelPath)
			if err != nil {
				return fmt.Errorf("export-peft: %w", err)
			}
			defer backend.Close()
			p, err := prompttune.Load(in, shape, backend)
			if err != nil {
				return fmt.Errorf("export-peft: %w", err)
			}
			defer p.Close()
			if err := p.ExportPEFT(out, name); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "exported %s (%s, %d virtual tokens) to %s\n", in, p.Config().Method, p.Config().NumVirtual, out)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&loraIn, "adapter", "", "LoRA adapter GGUF (written by `ggtune train lora` or llama.cpp)")
	f.StringVar(&in, "prompt-adapter", "", "soft-prompt GGUF written by `ggtune train prompt|prefix|ptuning`")
	f.StringVarP(&modelPath, "model", "m", "", "the base model GGUF the prompt was trained for (required)")
	f.StringVarP(&out, "output", "o", "", "directory to write (created if needed; required)")
	return cmd
}

// newImportPEFTCmd builds `ggtune import-peft`: read a PEFT prompt-learning
// adapter directory into a soft-prompt GGUF.
func newImportPEFTCmd() *cobra.Command {
	var modelPath, out string
	cmd := &cobra.Command{
		Use:   "import-peft DIR -m MODEL -o FILE.gguf",
		Short: "Import a Hugging Face PEFT adapter (LORA, PROMPT_TUNING, P_TUNING, PREFIX_TUNING) as a GGUF",
		Long: "A LORA adapter (also rsLoRA and lora_embedding_A/B) becomes a llama.cpp LoRA GGUF for\n" +
			"--lora and Ollama's ADAPTER; modules_to_save, DoRA and IA3 are refused. For soft prompts:\n" +
			"Read DIR/adapter_config.json and DIR/adapter_model.safetensors (the layout export-peft\n" +
			"writes) for the base model -m and write a soft-prompt GGUF for --prompt-adapter. A\n" +
			"P-tuning adapter becomes plain prompt tuning (PEFT stores only the encoder's output).",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case modelPath == "":
				return fmt.Errorf("import-peft: %w: -m MODEL is required", errUsage)
			case out == "":
				return fmt.Errorf("import-peft: %w: -o FILE.gguf is required", errUsage)
			}
			if typ, err := lora.PEFTType(args[0]); err != nil {
				return fmt.Errorf("import-peft: %w", err)
			} else if typ != "PROMPT_TUNING" && typ != "P_TUNING" && typ != "PREFIX_TUNING" {
				return importLoRAPEFT(cmd.OutOrStdout(), args[0], modelPath, out)
			}
			shape, backend, _, err := promptShape(modelPath)
			if err != nil {
				return fmt.Errorf("import-peft: %w", err)
			}
			defer backend.Close()
			p, err := prompttune.ImportPEFT(args[0], shape, backend)
			if err != nil {
				return err
			}
			defer p.Close()
			if err := p.Save(out); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "imported %s (%s, %d virtual tokens) to %s\n", args[0], p.Config().Method, p.Config().NumVirtual, out)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&modelPath, "model", "m", "", "the base model GGUF the prompt is for (required)")
	f.StringVarP(&out, "output", "o", "", "LoRA or soft-prompt GGUF to write (required)")
	return cmd
}
