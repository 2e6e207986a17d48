//go:build ignore

// mkmodels writes the random real-shape models that scripts/gpu-check.sh
// benchmarks: the 86M llama shape and the 541M qwen2 shape of
// `ggtune bench --train` (defaultTrainModels in cmd/ggtune/benchtrain.go;
// keep the two in step). A model whose file already exists is kept, so a
// rerun on a warm machine does not write it again.
//
//	go run scripts/gpu-check/mkmodels.go -out DIR [-vocab GGUF] NAME...
//
// NAME is one of llama-86M-f32, llama-86M-q8_0, qwen2-541M-f32,
// qwen2-541M-q8_0 (ggml type names); each is written to DIR/NAME.gguf.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/internal/randmodel"
)

// shapes are the models by name, as cmd/ggtune's defaultTrainModels.
func shapes(vocab string) map[string]randmodel.Options {
	out := map[string]randmodel.Options{}
	for _, typ := range []binding.Type{binding.TypeF32, binding.TypeQ8_0} {
		out[fmt.Sprintf("llama-86M-%v", typ)] = randmodel.Options{NEmbd: 768, NLayer: 12, NHead: 12, NFF: 2048, NVocab: 512, Type: typ, Seed: 1}
		out[fmt.Sprintf("qwen2-541M-%v", typ)] = randmodel.Options{Arch: "qwen2", NEmbd: 896, NLayer: 24, NHead: 14, NHeadKV: 2,
			NFF: 4864, NVocab: 102400, Type: typ, Seed: 1, VocabFrom: vocab}
	}
	return out
}

func main() {
	outDir := flag.String("out", "", "directory to write NAME.gguf into")
	vocab := flag.String("vocab", "", "vocabulary GGUF of the 541M shape (empty: a synthetic 102,400-token one)")
	flag.Parse()
	if err := run(*outDir, *vocab, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "mkmodels:", err)
		os.Exit(1)
	}
}

func run(outDir, vocab string, names []string) error {
	all := shapes(vocab)
	if outDir == "" || len(names) == 0 {
		known := make([]string, 0, len(all))
		for n := range all {
			known = append(known, n)
		}
		sort.Strings(known)
		return fmt.Errorf("usage: mkmodels -out DIR [-vocab GGUF] NAME... (NAME: %s)", strings.Join(known, ", "))
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return fmt.Errorf("-out %s: %w", outDir, err)
	}
	for _, name := range names {
		opts, ok := all[name]
		if !ok {
			return fmt.Errorf("model %q: not a known shape", name)
		}
		path := filepath.Join(outDir, name+".gguf")
		if st, err := os.Stat(path); err == nil && st.Size() > 0 {
			fmt.Printf("%s: kept (%d MB)\n", path, st.Size()>>20)
			continue
		}
		if err := randmodel.Write(path, opts); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
		st, err := os.Stat(path)
		if err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
		fmt.Printf("%s: written (%d MB)\n", path, st.Size()>>20)
	}
	return nil
}
