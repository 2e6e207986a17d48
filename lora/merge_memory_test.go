package lora_test

import (
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/internal/randmodel"
	"github.com/ggtune/ggtune/lora"
)

// vmHWM reads this process's peak resident set size in bytes.
func vmHWM(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	require.NoError(t, err)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			require.NoError(t, err)
			return kb * 1024
		}
	}
	t.Fatal("no VmHWM in /proc/self/status")
	return 0
}

// TestMergeStreams merges an adapter into a 540 MB model and checks that the
// peak RSS of the merge stays far below a copy of the model: tensors are
// read, merged and written one at a time.
func TestMergeStreams(t *testing.T) {
	if _, err := os.Stat("/proc/self/clear_refs"); err != nil {
		t.Skip("needs Linux /proc to measure peak RSS")
	}
	dir := t.TempDir()
	base := filepath.Join(dir, "base.gguf")
	require.NoError(t, randmodel.Write(base, randmodel.Options{NEmbd: 1024, NLayer: 8, NHead: 8, NFF: 4096, NVocab: 512, Seed: 3}))
	st, err := os.Stat(base)
	require.NoError(t, err)
	f, err := binding.OpenGGUF(base)
	require.NoError(t, err)
	defer f.Close()
	a, err := lora.New(lora.DefaultConfig(), f, cpu(t))
	require.NoError(t, err)
	defer a.Close()

	debug.FreeOSMemory()
	// Writing 5 to clear_refs resets the peak RSS to the current RSS.
	require.NoError(t, os.WriteFile("/proc/self/clear_refs", []byte("5"), 0))
	before := vmHWM(t)
	out := filepath.Join(dir, "merged.gguf")
	require.NoError(t, lora.Merge(base, out, []lora.Scaled{{Adapter: a, Scale: 1}}, lora.MergeOptions{}))
	grown := vmHWM(t) - before
	t.Logf("model %.0f MB, peak RSS grew by %.0f MB during the merge", float64(st.Size())/1e6, float64(grown)/1e6)
	assert.Less(t, grown, st.Size()/4, "merge must not hold the model in memory")
	mt, err := os.Stat(out)
	require.NoError(t, err)
	assert.Equal(t, st.Size(), mt.Size())
}
