package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/hub"
	"github.com/ggtune/ggtune/internal/fixture"
)

// TestPullCLI serves stories260K from a local stand-in for the hub and
// checks `ggtune pull` and `-m hf://...` on another command.
func TestPullCLI(t *testing.T) {
	model, err := os.ReadFile(fixture.Path(t, "models/stories260K.gguf"))
	require.NoError(t, err)
	sum := sha256.Sum256(model)
	hits := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/karpathy/tinyllamas/resolve/main/stories260K.gguf" {
			http.NotFound(w, r)
			return
		}
		hits++
		w.Header().Set("X-Linked-Etag", `"`+hex.EncodeToString(sum[:])+`"`)
		http.ServeContent(w, r, "stories260K.gguf", time.Unix(0, 0), bytes.NewReader(model))
	}))
	defer srv.Close()
	cache := t.TempDir()
	t.Setenv("GGTUNE_CACHE", cache)
	t.Setenv("HF_ENDPOINT", srv.URL)

	ref := "hf://karpathy/tinyllamas/stories260K.gguf"
	out := mustGgtune(t, "pull", ref)
	want := filepath.Join(cache, "hf", "karpathy", "tinyllamas", "main", "stories260K.gguf")
	assert.Equal(t, want, strings.TrimSpace(out))
	got, err := os.ReadFile(want)
	require.NoError(t, err)
	assert.Equal(t, model, got)

	out = mustGgtune(t, "tokenize", "-m", ref, "--text", "Once upon a time")
	assert.Contains(t, out, "[")
	out = mustGgtune(t, "info", ref)
	assert.Contains(t, out, "llama")
	assert.Equal(t, 1, hits, "-m and positional models resolve through the cache")

	_, _, err = ggtune(t, "pull", "hf://karpathy/tinyllamas/missing.gguf")
	require.ErrorIs(t, err, hub.ErrNotFound)
	_, _, err = ggtune(t, "pull", ref, "--sha256", strings.Repeat("0", 64))
	require.ErrorIs(t, err, hub.ErrChecksum)
}
