package binding_test

import (
	"bytes"
	"log/slog"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
)

// TestFinalizerLogsLeak: finalizers closed forgotten objects silently,
// hiding the leak; now each is counted and logged at debug level.
func TestFinalizerLogsLeak(t *testing.T) {
	var buf bytes.Buffer
	binding.SetLogger(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	defer binding.SetLogger(nil)
	before := binding.Leaks()
	func() {
		ctx, err := binding.NewContext(1<<16, false)
		require.NoError(t, err)
		_ = ctx // dropped without Close
	}()
	closed, err := binding.NewContext(1<<16, false)
	require.NoError(t, err)
	closed.Close()
	deadline := time.Now().Add(5 * time.Second)
	for binding.Leaks() == before && time.Now().Before(deadline) {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	assert.Equal(t, before+1, binding.Leaks(), "the forgotten context, not the closed one")
	assert.Contains(t, buf.String(), "unclosed object freed by its finalizer")
	assert.Contains(t, buf.String(), "binding.Context")
}
