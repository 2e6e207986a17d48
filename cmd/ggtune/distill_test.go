package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/finetune"
	"github.com/ggtune/ggtune/internal/fixture"
	"github.com/ggtune/ggtune/method"
)

// TestDistillCLI runs `ggtune distill` with a teacher adapter (LoRA, whose
// own --alpha becomes --lora-alpha) and with a top-k cache, and checks the
// usage errors.
func TestDistillCLI(t *testing.T) {
	f := setup(t)
	teacherAdapter := filepath.Join(f.dir, "teacher-lora.gguf")
	mustGgtune(t, "train", "lora", "-m", f.model, "--data", f.train, "-o", teacherAdapter, "--steps", "3", "--ctx", "32", "--batch", "2",
		"--lr", "1e-2", "-t", "2", "--metrics", "none", "--plot", "none")
	common := []string{"--teacher", f.model, "--teacher-adapter", teacherAdapter + ":0.8", "-m", f.model, "--data", f.train, "--val", f.val,
		"--steps", "3", "--ctx", "32", "--batch", "2", "--max-val-batches", "2", "-t", "2", "--metrics", "none", "--plot", "none", "--json"}
	for _, c := range []struct {
		name string
		args []string
	}{
		{"lora on the fly", []string{"--method", "lora", "--lora-alpha", "16", "--alpha", "0.7", "--temperature", "2", "--divergence", "jsd", "--beta", "0.3"}},
		{"full from a cache", []string{"--method=full", "--lr", "1e-4", "--teacher-cache", filepath.Join(f.dir, "cache"), "--top-k", "32", "--divergence", "reverse-kl"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			out := filepath.Join(f.dir, c.name+".gguf")
			stdout, stderr, err := ggtune(t, append(append([]string{"distill", "-o", out}, common...), c.args...)...)
			require.NoError(t, err, stderr)
			assert.Contains(t, stderr, "distill: teacher")
			var s trainSummary
			require.NoError(t, json.Unmarshal([]byte(stdout), &s))
			require.NotNil(t, s.EvalAfter)
			assert.Greater(t, s.EvalAfter.Divergence, 0.0, "held-out divergence from the teacher")
			assert.Equal(t, 3, s.Steps)
			typ, err := method.AdapterType(out)
			if c.name == "lora on the fly" {
				require.NoError(t, err)
				assert.Equal(t, "lora", typ)
			} else {
				_, err := os.Stat(filepath.Join(f.dir, "cache", "train.topk"))
				require.NoError(t, err)
			}
		})
	}
	t.Run("help", func(t *testing.T) {
		stdout := mustGgtune(t, "distill", "--method", "lora", "--help")
		assert.Contains(t, stdout, "--lora-alpha")
		assert.Contains(t, stdout, "--teacher-cache")
	})
	cfg := filepath.Join(f.dir, "run.yaml")
	require.NoError(t, os.WriteFile(cfg, []byte("method: full\n"), 0o644))
	for _, c := range []struct {
		name, want string
		args       []string
	}{
		{"method only in --config", "give --method on the command line", []string{"--teacher", f.model, "--config", cfg}},
		{"no teacher", "--teacher T.gguf is required", nil},
		{"bad divergence", "divergence", []string{"--teacher", f.model, "--divergence", "hellinger"}},
		{"bad alpha", "--alpha 1.5", []string{"--teacher", f.model, "--alpha", "1.5"}},
		{"unknown method", "unknown method", []string{"--teacher", f.model, "--method", "nope"}},
		{"other vocabulary", "token", []string{"--teacher", fixture.Path(t, "models/llama-2-tiny-random.gguf")}},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{"distill", "-m", f.model, "--data", f.train, "-o", filepath.Join(f.dir, "x.gguf")}, c.args...)
			_, _, err := ggtune(t, args...)
			require.Error(t, err)
			assert.Contains(t, err.Error(), c.want)
			if c.name == "other vocabulary" {
				assert.ErrorIs(t, err, finetune.ErrVocabMismatch)
			} else {
				assert.ErrorIs(t, err, errUsage)
			}
		})
	}
}
