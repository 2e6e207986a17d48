package binding_test

import (
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/internal/fixture"
	"github.com/ggtune/ggtune/model"
)

// rewriteKVs copies the GGUF at src to dst with the metadata values in edit
// replaced (tensors unchanged).
func rewriteKVs(t *testing.T, src, dst string, edit map[string]any) {
	t.Helper()
	f, err := binding.OpenGGUF(src)
	require.NoError(t, err)
	defer f.Close()
	w, err := binding.NewGGUFWriter(len(f.Tensors()))
	require.NoError(t, err)
	defer w.Close()
	for _, kv := range f.KVs() {
		v := kv.Value
		if e, ok := edit[kv.Key]; ok {
			v = e
		}
		require.NoError(t, w.Set(kv.Key, v))
	}
	for _, ti := range f.Tensors() {
		b, err := f.ReadTensor(ti.Name)
		require.NoError(t, err)
		require.NoError(t, w.AddTensor(ti.Name, ti.Type, ti.Shape, b))
	}
	require.NoError(t, w.WriteFile(dst))
}

// TestVocabMatchesTensors: a token list shorter or longer than the
// embedding matrix (generate aborted with std::out_of_range on the shorter
// one; train, eval and merge accepted it) is refused by every model loader.
func TestVocabMatchesTensors(t *testing.T) {
	src := fixture.Path(t, "models/stories260K.gguf")
	f, err := binding.OpenGGUF(src)
	require.NoError(t, err)
	tokens, _ := f.Get("tokenizer.ggml.tokens")
	f.Close()
	toks := tokens.([]string)
	require.Len(t, toks, 512)
	for name, n := range map[string]int{"shorter": 500, "longer": 520} {
		t.Run(name, func(t *testing.T) {
			list := append([]string(nil), toks[:min(n, len(toks))]...)
			for i := len(list); i < n; i++ {
				list = append(list, "extra"+string(rune('a'+i-len(toks))))
			}
			scores, types := make([]float32, n), make([]int32, n)
			for i := range types {
				types[i] = 1
			}
			path := filepath.Join(t.TempDir(), "vocab.gguf")
			rewriteKVs(t, src, path, map[string]any{"tokenizer.ggml.tokens": list, "tokenizer.ggml.scores": scores, "tokenizer.ggml.token_type": types})
			gerr, lerr := openBoth(path)
			require.NoError(t, gerr, "the container is valid")
			require.Error(t, lerr, "libllama refuses it")
			f, err := binding.OpenGGUF(path)
			require.NoError(t, err)
			defer f.Close()
			err = f.CheckVocab()
			require.ErrorIs(t, err, binding.ErrVocabMismatch)
			assert.Contains(t, err.Error(), "token_embd.weight")
			_, err = model.Load(path, model.Options{Threads: 1})
			require.ErrorIs(t, err, binding.ErrVocabMismatch, "ggtune's loader (train, eval, merge, generate) refuses it")
		})
	}
}

// TestFIFORefused: a FIFO with no writer used to block OpenGGUF and
// LoadModel forever; it is refused at once as not a regular file.
func TestFIFORefused(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no FIFOs")
	}
	fifo := filepath.Join(t.TempDir(), "model.gguf")
	require.NoError(t, syscall.Mkfifo(fifo, 0o600))
	done := make(chan [2]error, 1)
	go func() {
		g, l := openBoth(fifo)
		done <- [2]error{g, l}
	}()
	select {
	case errs := <-done:
		for _, err := range errs {
			require.ErrorIs(t, err, binding.ErrNotRegular)
			assert.Contains(t, err.Error(), fifo)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("opening a FIFO blocked")
	}
	_, err := binding.MapFile(fifo)
	assert.Error(t, err)
	_, statErr := os.Stat(fifo)
	require.NoError(t, statErr)
}

// TestThreadsBounded: thread counts past 4x the CPUs ended in
// GGML_ASSERT(rc == 0) or minutes of spinning; they are errors now.
func TestThreadsBounded(t *testing.T) {
	for _, n := range []int{-1, binding.MaxThreads() + 1, 100000} {
		_, err := binding.NewCPUBackend(n)
		require.ErrorIs(t, err, binding.ErrThreads, "threads %d", n)
		assert.Contains(t, err.Error(), "threads")
	}
	b, err := binding.NewCPUBackend(binding.MaxThreads())
	require.NoError(t, err)
	defer b.Close()
	require.ErrorIs(t, b.SetThreads(100000), binding.ErrThreads)
	require.NoError(t, b.SetThreads(1))
	m, err := binding.LoadModel(fixture.Path(t, "models/stories260K.gguf"), binding.ModelParams{})
	require.NoError(t, err)
	defer m.Close()
	_, err = binding.NewLlamaContext(m, binding.ContextParams{NCtx: 16, Threads: 100000})
	require.ErrorIs(t, err, binding.ErrThreads)
}
