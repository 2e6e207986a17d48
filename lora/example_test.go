package lora_test

import (
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/internal/fixture"
	"github.com/ggtune/ggtune/lora"
)

// Export an adapter to Hugging Face PEFT's layout and import a PEFT LoRA
// directory as a llama.cpp LoRA GGUF.
func ExampleImportPEFT() {
	base, err := binding.OpenGGUF(filepath.Join(fixture.Dir(), "models", "stories260K.gguf"))
	if err != nil {
		log.Fatal(err)
	}
	defer base.Close()
	backend, err := binding.NewCPUBackend(1)
	if err != nil {
		log.Fatal(err)
	}
	defer backend.Close()
	cfg := lora.DefaultConfig()
	cfg.Rank, cfg.Alpha, cfg.RSLoRA = 4, 8, true
	a, err := lora.New(cfg, base, backend)
	if err != nil {
		log.Fatal(err)
	}
	defer a.Close()
	dir, err := os.MkdirTemp("", "ggtune-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	peft := filepath.Join(dir, "peft")
	if err := a.ExportPEFT(peft, base, "stories260K"); err != nil {
		log.Fatal(err)
	}

	b, err := lora.ImportPEFT(peft, base, backend)
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()
	if err := b.Save(filepath.Join(dir, "imported.gguf")); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%d weights, rank %d, scale %.3f\n", len(b.Weights()), b.Config().Rank, b.Scale())
	// Output: 35 weights, rank 4, scale 4.000
}
