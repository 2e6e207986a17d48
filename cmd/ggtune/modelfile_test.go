package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/internal/fixture"
	"github.com/ggtune/ggtune/lora"
	"github.com/ggtune/ggtune/ollama"
)

func TestModelfileCLI(t *testing.T) {
	base := fixture.Path(t, "models/stories260K.gguf")
	dir := t.TempDir()
	f, err := binding.OpenGGUF(base)
	require.NoError(t, err)
	defer f.Close()
	backend, err := binding.NewCPUBackend(1)
	require.NoError(t, err)
	defer backend.Close()
	a, err := lora.New(lora.DefaultConfig(), f, backend)
	require.NoError(t, err)
	defer a.Close()
	adapter := filepath.Join(dir, "a.gguf")
	require.NoError(t, a.Save(adapter))

	out := mustGgtune(t, "modelfile", "--adapter", adapter, "-m", base)
	assert.Contains(t, out, "FROM "+base+"\n")
	assert.Contains(t, out, "ADAPTER "+adapter+"\n")
	assert.Contains(t, out, "PARAMETER temperature 0\n")
	assert.Contains(t, out, "PARAMETER repeat_penalty 1\n")

	mf := filepath.Join(dir, "Modelfile")
	mustGgtune(t, "modelfile", "--adapter", adapter, "-m", base, "--merge", "--temp", "0.7", "-o", mf)
	b, err := os.ReadFile(mf)
	require.NoError(t, err)
	merged := filepath.Join(dir, "a.merged.gguf")
	assert.Contains(t, string(b), "FROM "+merged+"\n")
	assert.NotContains(t, string(b), "ADAPTER")
	assert.Contains(t, string(b), "PARAMETER temperature 0.7\n")
	assert.FileExists(t, merged)

	_, _, err = ggtune(t, "modelfile", "--adapter", base, "-m", base)
	require.ErrorIs(t, err, ollama.ErrMismatch)
	_, _, err = ggtune(t, "modelfile", "-m", base)
	require.ErrorIs(t, err, errUsage)
}
