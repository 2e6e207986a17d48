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

// TestDropsCountedByReason: records that yield nothing to train were
// dropped silently; each is counted by reason with where the first was, and
// a file with nothing trainable fails naming the reasons.
func TestDropsCountedByReason(t *testing.T) {
	m := vocab(t)
	long := strings.Repeat("once upon a time there was a little girl ", 20)
	good := `{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello there"}]}`
	for _, tc := range []struct {
		name    string
		lines   []string
		opts    data.Options
		drops   map[data.DropReason]int
		first   string
		summary string
	}{
		{"chat", []string{good,
			`{"messages":[{"role":"human","content":"hi"},{"role":"gpt","content":"hello"}]}`,
			`{"messages":[{"role":"system","content":"be nice"},{"role":"user","content":"hi"}]}`,
			`{"messages":[{"role":"user","content":"x"},{"role":"bot","content":"y"}]}`,
			`{"messages":[{"role":"user","content":"` + long + `"},{"role":"assistant","content":"the end"}]}`,
		}, data.Options{}, map[data.DropReason]int{data.DropUnknownRole: 2, data.DropNoAssistant: 1, data.DropTooLong: 1}, "x.jsonl:2",
			"dropped 4: 2 unknown chat role (first at x.jsonl:2), 1 no assistant turn (first at x.jsonl:3), 1 prompt longer than the context (--ctx) (first at x.jsonl:5)"},
		{"train on prompt keeps a conversation without an assistant", []string{good,
			`{"messages":[{"role":"system","content":"be nice"},{"role":"user","content":"hi"}]}`,
		}, data.Options{TrainOnPrompt: true}, nil, "", ""},
		{"completion and skip-bad", []string{`{"prompt":"` + long + `","completion":" end"}`, `{"prompt":"a","completion":" b"}`, `{"prompt": 3}`, `not json`},
			data.Options{SkipBad: true}, map[data.DropReason]int{data.DropTooLong: 1, data.DropMalformed: 2}, "x.jsonl:1",
			"dropped 3: 2 malformed, skipped (--skip-bad) (first at x.jsonl:3), 1 prompt longer than the context (--ctx) (first at x.jsonl:1)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := tc.opts
			opts.Context, opts.Templater, opts.ChatTemplate = 64, applyTemplate, "chatml"
			ds, err := data.Load(writeFile(t, "x.jsonl", lines(tc.lines...)), m, opts)
			require.NoError(t, err)
			if tc.drops == nil {
				assert.Empty(t, ds.Stats.Drops)
				assert.Equal(t, len(tc.lines), ds.Len())
				return
			}
			assert.Equal(t, tc.drops, ds.Stats.Drops)
			assert.Equal(t, strings.ReplaceAll(tc.summary, "x.jsonl", filepath.Join(filepath.Dir(ds.Name), "x.jsonl")), ds.Stats.DropSummary())
			assert.Contains(t, ds.Summary(), ds.Stats.DropSummary())
		})
	}
	_, err := data.Load(writeFile(t, "x.jsonl", lines(`{"messages":[{"role":"human","content":"hi"},{"role":"gpt","content":"hello"}]}`,
		`{"messages":[{"role":"user","content":"hi"}]}`)), m, data.Options{Context: 64, Templater: applyTemplate, ChatTemplate: "chatml"})
	require.ErrorIs(t, err, data.ErrNoExamples)
	assert.Contains(t, err.Error(), "nothing trainable in 2 records; dropped 2: 1 no assistant turn")
	assert.Contains(t, err.Error(), "1 unknown chat role")
}
