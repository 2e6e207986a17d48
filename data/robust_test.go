package data_test

import (
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/data"
)

// TestReadBounded: --data /dev/zero grew to 8.6 GB in 23 s; reading stops
// at MaxBytes with ErrTooLarge, for every format.
func TestReadBounded(t *testing.T) {
	for _, f := range []data.Format{data.FormatAuto, data.FormatPlain, data.FormatText} {
		_, err := data.ReadFile("/dev/zero", data.Options{Format: f, MaxBytes: 4 << 20})
		require.Error(t, err, "format %q", f)
		if f != data.FormatText { // JSONL stops earlier, at the first over-long line
			require.ErrorIs(t, err, data.ErrTooLarge)
			assert.Contains(t, err.Error(), "--max-data-bytes")
		}
	}
	_, err := data.Read(strings.NewReader(strings.Repeat("word ", 1000)), "x.txt", data.Options{MaxBytes: 100})
	require.ErrorIs(t, err, data.ErrTooLarge)
	rs, err := data.Read(strings.NewReader(strings.Repeat("word ", 20)), "x.txt", data.Options{MaxBytes: 100})
	require.NoError(t, err, "exactly the limit is accepted")
	assert.Len(t, rs.Records, 1)
}

// TestReadFIFO: a FIFO with no writer blocked `eval --data FIFO` forever.
func TestReadFIFO(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "data.txt")
	require.NoError(t, syscall.Mkfifo(fifo, 0o600))
	done := make(chan error, 1)
	go func() {
		_, err := data.ReadFile(fifo, data.Options{})
		done <- err
	}()
	select {
	case err := <-done:
		require.ErrorIs(t, err, data.ErrNoExamples, "a FIFO without a writer reads as empty")
	case <-time.After(10 * time.Second):
		t.Fatal("reading a FIFO without a writer blocked")
	}
}
