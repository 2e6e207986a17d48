package model_test

import (
	"context"
	"fmt"
	"log"
	"path/filepath"

	"github.com/ggtune/ggtune/internal/fixture"
	"github.com/ggtune/ggtune/model"
)

// Load a GGUF model and generate greedily (the zero GenerateParams: temperature 0)
// from a prompt.
func Example() {
	path := filepath.Join(fixture.Dir(), "models", "stories260K.gguf")
	m, err := model.Load(path, model.Options{Threads: 1})
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()
	res, err := m.Generate(context.Background(), "Once upon a time", model.GenerateParams{MaxTokens: 16}, nil)
	if err != nil {
		log.Fatal(err)
	}
	// The text continues the reference greedy story of stories260K.greedy.json
	// (produced by llama.cpp), which begins with the prompt.
	fmt.Printf("%d tokens: %q\n", len(res.IDs), res.Text)
	// Output: 16 tokens: ", there was a little girl named Lily. She loved to play"
}
