package demo_test

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/demo"
)

// TestDemoShort runs the demo with few steps on the texts of the pinned
// ollama module (reached through third_party/ollama, made by `make deps`).
func TestDemoShort(t *testing.T) {
	root, err := filepath.Abs("..")
	require.NoError(t, err)
	text := func(rel string) string {
		p := filepath.Join(root, "third_party", "ollama", rel)
		if _, err := os.Stat(p); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is missing (run make deps): %v", p, err)
			}
			t.Skipf("%s is missing (run make deps)", p)
		}
		return p
	}
	dir := t.TempDir()
	rep, err := demo.Run(context.Background(), demo.Options{
		BaseText: text("tokenizer/testdata/war-and-peace.txt"), TuneText: text("integration/testdata/shakespeare.txt"),
		CacheDir: filepath.Join(dir, "cache"), OutDir: filepath.Join(dir, "out"), Threads: 2,
		BaseSteps: 40, TuneSteps: 20, Log: io.Discard,
	})
	require.NoError(t, err)
	assert.Less(t, rep.BaseLoss[1], rep.BaseLoss[0], "the base model learns")
	assert.Less(t, rep.HeldOut[1], rep.HeldOut[0], "LoRA lowers the held-out loss")
	assert.LessOrEqual(t, rep.LlamaMaxDiff, 1e-3)
	for _, p := range []string{rep.BasePath, rep.AdapterPath, rep.PlotPath} {
		assert.FileExists(t, p)
	}
	assert.NotEmpty(t, rep.SampleBefore)
	assert.NotEmpty(t, rep.SampleAfter)
}
