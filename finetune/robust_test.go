package finetune_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/finetune"
	"github.com/ggtune/ggtune/internal/outguard"
	"github.com/ggtune/ggtune/train"
)

// copyFile copies src into dir (tests never write next to shared data).
func copyFile(t *testing.T, src, dir string) string {
	t.Helper()
	b, err := os.ReadFile(src)
	require.NoError(t, err)
	p := filepath.Join(dir, filepath.Base(src))
	require.NoError(t, os.WriteFile(p, b, 0o644))
	return p
}

// TestRunRefusesClobberingInputs: -o = -m replaced the base model with the
// adapter, --metrics = --data destroyed the data, --plot = -m the model.
func TestRunRefusesClobberingInputs(t *testing.T) {
	dir := t.TempDir()
	j := baseJob(t, "lora")
	j.Model = copyFile(t, j.Model, dir)
	j.Train.Steps = 2
	link := filepath.Join(dir, "link.gguf")
	require.NoError(t, os.Symlink(j.Model, link))
	for _, c := range []struct {
		name string
		edit func(*finetune.Job)
		flag string
	}{
		{"output is the model", func(k *finetune.Job) { k.Output = k.Model }, "-o"},
		{"output is a symlink to the model", func(k *finetune.Job) { k.Output = link }, "-o"},
		{"output is the data", func(k *finetune.Job) { k.Output = k.Data }, "-o"},
		{"metrics is the data", func(k *finetune.Job) { k.Train.MetricsPath = k.Data }, "--metrics"},
		{"plot is the model", func(k *finetune.Job) { k.Train.PlotPath = link }, "--plot"},
		{"checkpoint is the validation data", func(k *finetune.Job) { k.Train.Checkpoint = k.Val }, "checkpoint"},
	} {
		t.Run(c.name, func(t *testing.T) {
			k := j
			c.edit(&k)
			before := map[string][32]byte{k.Model: fileHash(t, k.Model), k.Data: fileHash(t, k.Data), k.Val: fileHash(t, k.Val)}
			_, err := finetune.Run(context.Background(), k)
			require.ErrorIs(t, err, outguard.ErrClobber)
			assert.Contains(t, err.Error(), c.flag)
			for p, h := range before {
				assert.Equal(t, h, fileHash(t, p), "%s is untouched", p)
			}
		})
	}
	k := j
	k.Output = dir
	_, err := finetune.Run(context.Background(), k)
	require.ErrorIs(t, err, outguard.ErrNotWritable, "a directory as -o is found before training")
}

// TestRunDivergenceWritesNothing: --lr 1e30 wrote ±1e30 weights (NaN at
// eval) with success for lora, full and prompt.
func TestRunDivergenceWritesNothing(t *testing.T) {
	for _, method := range []string{"lora", "full", "prompt"} {
		t.Run(method, func(t *testing.T) {
			j := baseJob(t, method)
			j.Train.Steps = 3
			j.Train.Schedule = train.LRSchedule{Kind: train.Constant, LR: 1e30}
			_, err := finetune.Run(context.Background(), j)
			require.ErrorIs(t, err, train.ErrDiverged)
			t.Logf("%s: %v", method, err)
			assert.NoFileExists(t, j.Output)
			assert.NoFileExists(t, j.Output+".ckpt")
		})
	}
}

// TestResumeRefusesChangedData: resuming on different data (or a changed
// seed) silently continued; the checkpoint holds the data's fingerprint.
func TestResumeRefusesChangedData(t *testing.T) {
	j := baseJob(t, "lora")
	j.Train.Steps, j.Train.SaveEvery = 2, 2
	_, err := finetune.Run(context.Background(), j)
	require.NoError(t, err)
	require.NoError(t, os.Remove(j.Output))
	b, err := os.ReadFile(j.Data)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(j.Data, append(b, "\nmore text\n"...), 0o644))
	k := j
	k.Train.Resume = true
	_, err = finetune.Run(context.Background(), k)
	require.ErrorIs(t, err, train.ErrResumeMismatch)
	assert.Contains(t, err.Error(), "data was")
	assert.NoFileExists(t, j.Output)
	k.Seed = 7
	k.Train.ResumeChanged = []string{"data"}
	_, err = finetune.Run(context.Background(), k)
	require.ErrorIs(t, err, train.ErrResumeMismatch)
	assert.Contains(t, err.Error(), "seed was")
}
