package main

import (
	"fmt"
	"io"
	"path/filepath"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/lora"
)

// exportLoRAPEFT writes the LoRA adapter file in for the base model path
// modelPath as a PEFT LoRA directory out.
func exportLoRAPEFT(w io.Writer, in, modelPath, out string) error {
	base, err := binding.OpenGGUF(modelPath)
	if err != nil {
		return fmt.Errorf("export-peft: %w", err)
	}
	defer base.Close()
	backend, err := binding.NewCPUBackend(1)
	if err != nil {
		return fmt.Errorf("export-peft: %w", err)
	}
	defer backend.Close()
	a, err := lora.Load(in, base, backend)
	if err != nil {
		return fmt.Errorf("export-peft: %w", err)
	}
	defer a.Close()
	name, _ := base.String("general.name")
	if name == "" {
		name = filepath.Base(modelPath)
	}
	if err := a.ExportPEFT(out, base, name); err != nil {
		return err
	}
	fmt.Fprintf(w, "exported %s (LoRA r=%d, %d weights) to %s\n", in, a.Config().Rank, len(a.Weights()), out)
	return nil
}

// importLoRAPEFT reads the PEFT LoRA directory dir for the base model
// modelPath and writes a llama.cpp LoRA GGUF out.
func importLoRAPEFT(w io.Writer, dir, modelPath, out string) error {
	base, err := binding.OpenGGUF(modelPath)
	if err != nil {
		return fmt.Errorf("import-peft: %w", err)
	}
	defer base.Close()
	backend, err := binding.NewCPUBackend(1)
	if err != nil {
		return fmt.Errorf("import-peft: %w", err)
	}
	defer backend.Close()
	a, err := lora.ImportPEFT(dir, base, backend)
	if err != nil {
		return err
	}
	defer a.Close()
	if err := a.Save(out); err != nil {
		return err
	}
	fmt.Fprintf(w, "imported %s (LoRA r=%d, %d weights) to %s\n", dir, a.Config().Rank, len(a.Weights()), out)
	return nil
}
