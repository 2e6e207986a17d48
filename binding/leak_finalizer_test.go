package binding_test

import (
	"bytes"
	"log/slog"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
)

// lockedBuffer is a bytes.Buffer that finalizers (on their own goroutine)
// and the test may use at once.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestFinalizerLogsLeak: finalizers closed forgotten objects silently,
// hiding the leak; now each is counted and logged at debug level.
func TestFinalizerLogsLeak(t *testing.T) {
	var buf lockedBuffer
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
