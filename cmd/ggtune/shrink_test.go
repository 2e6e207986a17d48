package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/internal/fixture"
	"github.com/ggtune/ggtune/model"
	"github.com/ggtune/ggtune/shrink"
)

// TestShrinkCommand runs data-free `ggtune shrink` on stories260K: one
// block removed, the FFNs narrowed to 120 channels, healed by a LoRA merged
// back after each stage. libllama loads the result with the new shape, and
// the table, the JSON report and the plot are written.
func TestShrinkCommand(t *testing.T) {
	src := fixture.Path(t, "models/stories260K.gguf")
	dir := t.TempDir()
	out := filepath.Join(dir, "small.gguf")
	stdout := mustGgtune(t, "shrink", "-m", src, "--to-layers", "4", "--ffn-to", "120", "--sample-tokens", "3000",
		"--ctx", "64", "--batch", "4", "--heal-steps", "5", "--heal-method", "lora", "--lr", "3e-3", "-t", "1",
		"--bench-tokens", "32", "-o", out)
	t.Log(stdout)
	assert.Contains(t, stdout, "remove block")
	assert.Contains(t, stdout, "ffn 172 -> 120")

	lm, err := binding.LoadModel(out, binding.ModelParams{})
	require.NoError(t, err)
	assert.Equal(t, 4, lm.NLayer())
	lm.Close()
	f, err := binding.OpenGGUF(out)
	require.NoError(t, err)
	cfg, err := model.ReadConfig(f)
	f.Close()
	require.NoError(t, err)
	assert.Equal(t, 120, cfg.NFF)

	b, err := os.ReadFile(filepath.Join(dir, "small.shrink.json"))
	require.NoError(t, err)
	var rep shrink.Report
	require.NoError(t, json.Unmarshal(b, &rep))
	require.Len(t, rep.Stages, 3)
	assert.True(t, rep.Healed)
	assert.Less(t, rep.Stages[2].Params, rep.Stages[1].Params)
	assert.Less(t, rep.Stages[1].Params, rep.Stages[0].Params)
	_, err = os.Stat(filepath.Join(dir, "small.shrink.png"))
	assert.NoError(t, err)
	left, err := filepath.Glob(filepath.Join(dir, ".small.gguf.*"))
	require.NoError(t, err)
	assert.Empty(t, left, "scratch files left beside the output")
}

// TestShrinkCommandRefuses checks the usage errors of `ggtune shrink`.
func TestShrinkCommandRefuses(t *testing.T) {
	src := fixture.Path(t, "models/stories260K.gguf")
	dir := t.TempDir()
	txt := filepath.Join(dir, "d.txt")
	require.NoError(t, os.WriteFile(txt, []byte("Once upon a time there was a cat."), 0o644))
	out := filepath.Join(dir, "o.gguf")
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"no model", []string{"--to-layers", "3", "--data", txt, "-o", out}, "-m MODEL is required"},
		{"no data", []string{"-m", src, "--to-layers", "3", "-o", out}, "--data FILE"},
		{"nothing to do", []string{"-m", src, "--data", txt, "-o", out}, "nothing to do"},
		{"heal method", []string{"-m", src, "--to-layers", "3", "--data", txt, "-o", out, "--heal-method", "prompt"}, "--heal-method"},
		{"importance", []string{"-m", src, "--to-layers", "3", "--data", txt, "-o", out, "--importance", "magic"}, "--importance"},
		{"clobber", []string{"-m", src, "--to-layers", "3", "--data", txt, "-o", src}, "same file"},
		{"too many layers", []string{"-m", src, "--to-layers", "9", "--data", txt, "-o", out}, "has 5"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := ggtune(t, append([]string{"shrink"}, tc.args...)...)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			_, serr := os.Stat(out)
			assert.True(t, os.IsNotExist(serr))
		})
	}
}
