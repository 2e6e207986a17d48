package binding_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/internal/fixture"
)

// FuzzOpenGGUF feeds mutated GGUF files to the Go validator, the gguf
// reader and libllama's vocabulary loader: none may crash or abort, and a
// file OpenGGUF accepts must have readable tensors. Seeded with real files;
// `go test` runs the seeds, `go test -fuzz FuzzOpenGGUF ./binding` fuzzes.
func FuzzOpenGGUF(f *testing.F) {
	for _, rel := range []string{"models/stories260K.gguf", "vocab/ggml-vocab-llama-spm.gguf", "vocab/ggml-vocab-gpt-2.gguf"} {
		b, err := os.ReadFile(fixture.Path(f, rel))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(b[:min(len(b), 4096)]) // the header and the start of the metadata
	}
	f.Add([]byte("GGUF\x03\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		path := filepath.Join(t.TempDir(), "f.gguf")
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		g, err := binding.OpenGGUF(path)
		if err != nil {
			return
		}
		for _, ti := range g.Tensors() {
			if _, err := g.ReadTensor(ti.Name); err != nil {
				t.Errorf("tensor %s of an accepted file: %v", ti.Name, err)
			}
		}
		g.Close()
		if m, err := binding.LoadModel(path, binding.ModelParams{VocabOnly: true}); err == nil {
			m.Close()
		}
	})
}
