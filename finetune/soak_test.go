package finetune_test

import (
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/finetune"
	"github.com/ggtune/ggtune/internal/fixture"
	"github.com/ggtune/ggtune/lora"
	"github.com/ggtune/ggtune/model"
	"github.com/ggtune/ggtune/train"
)

// rssBytes returns the resident set size from /proc/self/statm.
func rssBytes(t *testing.T) int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		t.Skip("no /proc/self/statm")
	}
	f := strings.Fields(string(b))
	pages, err := strconv.ParseInt(f[1], 10, 64)
	require.NoError(t, err)
	return pages * int64(os.Getpagesize())
}

// TestLoadTrainFreeRSS runs load / build graph / train step / free many
// times: every C object is freed by its owner's Close and the memory goes
// back to the system (binding.MmapThreshold), so the resident set stays
// flat. make test runs 100 cycles (growth < 4 MB; before the threshold fix
// 100 cycles grew by 25 MB); GGTUNE_SOAK=1 runs the 1000-cycle soak (growth
// < 20 MB).
func TestLoadTrainFreeRSS(t *testing.T) {
	path := fixture.Path(t, "models/stories260K.gguf")
	warmup, cycles, limit := 20, 100, int64(4<<20)
	if os.Getenv("GGTUNE_SOAK") == "1" {
		warmup, cycles, limit = 200, 1000, 20<<20
	}
	batch := train.Batch{B: 1, T: 16, Tokens: make([]int32, 16), Targets: make([]int32, 16)}
	for i := range batch.Tokens {
		batch.Tokens[i], batch.Targets[i] = int32(10+i), int32(11+i)
	}
	cycle := func() {
		m, err := model.Load(path, model.Options{Threads: 2})
		require.NoError(t, err)
		defer m.Close()
		f, err := binding.OpenGGUF(path)
		require.NoError(t, err)
		defer f.Close()
		a, err := lora.New(lora.DefaultConfig(), f, m.Backend())
		require.NoError(t, err)
		defer a.Close()
		params, err := a.Params()
		require.NoError(t, err)
		e, err := train.NewEngine(finetune.GraphBuilder(m, []model.Hook{a.Hook(1)}, 1), train.Groups(params...), m.Backend(), 1, 16, train.DefaultAdamW())
		require.NoError(t, err)
		defer e.Close()
		_, err = e.Accumulate(batch)
		require.NoError(t, err)
		_, err = e.Step(1e-3)
		require.NoError(t, err)
	}
	// Warm up: the Go heap and the C allocator's small-object arenas reach
	// their working size.
	for range warmup {
		cycle()
	}
	debug.FreeOSMemory()
	before := rssBytes(t)
	leaks := binding.Leaks()
	for range cycles {
		cycle()
	}
	debug.FreeOSMemory()
	growth := rssBytes(t) - before
	t.Logf("RESULT %d load/train-step/free cycles: RSS %.1f MB -> growth %.2f MB", cycles, float64(before)/1e6, float64(growth)/1e6)
	assert.Less(t, growth, limit, "RSS grew by %d bytes", growth)
	assert.Equal(t, leaks, binding.Leaks(), "objects freed by their finalizer instead of Close")
}
