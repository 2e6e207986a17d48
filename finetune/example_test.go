package finetune_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/finetune"
	"github.com/ggtune/ggtune/internal/fixture"
	"github.com/ggtune/ggtune/lora"
	"github.com/ggtune/ggtune/model"
	"github.com/ggtune/ggtune/prompttune"
	"github.com/ggtune/ggtune/train"
)

// Train a LoRA adapter, save it, load it back for generation, and merge it
// into a full model that generates the same text without the adapter.
func ExampleRun_lora() {
	ctx := context.Background()
	base := filepath.Join(fixture.Dir(), "models", "stories260K.gguf")
	dir, err := os.MkdirTemp("", "ggtune-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	adapter := filepath.Join(dir, "lora.gguf")
	loraCfg := lora.DefaultConfig()
	rep, err := finetune.Run(ctx, finetune.Job{
		Method: "lora", Model: base, Data: filepath.Join(fixture.Dir(), "text", "tinyshakespeare.txt"),
		ValSplit: 0.02, Output: adapter, Context: 64, Batch: 4, Pack: true, Seed: 1, Threads: 1,
		MaxValBatches: 4, Config: &loraCfg,
		Train: train.Config{Steps: 20, Optimizer: train.DefaultAdamW(),
			Schedule: train.LRSchedule{Kind: train.Constant, LR: 1e-2}},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("held-out loss went down:", rep.Result.EvalAfter.Loss < rep.Result.EvalBefore.Loss)

	// Load the saved adapter and generate with it.
	m, err := model.Load(base, model.Options{Threads: 1})
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()
	f, err := binding.OpenGGUF(base)
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	a, err := lora.Load(adapter, f, m.Backend())
	if err != nil {
		log.Fatal(err)
	}
	defer a.Close()
	p := model.GenerateParams{MaxTokens: 24, Hooks: []model.Hook{a.Hook(1)}}
	withAdapter, err := m.Generate(ctx, "ROMEO:", p, nil)
	if err != nil {
		log.Fatal(err)
	}

	// Merge it: the full model needs no adapter.
	merged := filepath.Join(dir, "merged.gguf")
	if err := lora.Merge(base, merged, []lora.Scaled{{Adapter: a, Scale: 1}}, lora.MergeOptions{}); err != nil {
		log.Fatal(err)
	}
	mm, err := model.Load(merged, model.Options{Threads: 1})
	if err != nil {
		log.Fatal(err)
	}
	defer mm.Close()
	fromMerged, err := mm.Generate(ctx, "ROMEO:", model.GenerateParams{MaxTokens: 24}, nil)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("merged model generates the same text:", fromMerged.Text == withAdapter.Text)
	// Output:
	// held-out loss went down: true
	// merged model generates the same text: true
}

// Prompt-tune: learn 8 virtual tokens in front of a frozen model.
func ExampleRun_promptTuning() {
	dir, err := os.MkdirTemp("", "ggtune-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	job := finetune.Job{
		Method: "prompt", Model: filepath.Join(fixture.Dir(), "models", "stories260K.gguf"),
		Data: filepath.Join(fixture.Dir(), "text", "tinyshakespeare.txt"), ValSplit: 0.02,
		Output: filepath.Join(dir, "prompt.gguf"), Context: 64, Batch: 4, Pack: true, Seed: 1, Threads: 1,
		MaxValBatches: 4,
		Config:        &prompttune.Config{Method: prompttune.PromptTuning, NumVirtual: 8, Init: prompttune.InitRandom},
		Train: train.Config{Steps: 20, Optimizer: train.DefaultAdamW(),
			Schedule: train.LRSchedule{Kind: train.Constant, LR: 3e-2}},
	}
	rep, err := finetune.Run(context.Background(), job)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("trainable values:", rep.Params)
	fmt.Println("held-out loss went down:", rep.Result.EvalAfter.Loss < rep.Result.EvalBefore.Loss)
	// Output:
	// trainable values: 512
	// held-out loss went down: true
}
