package finetune

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSaveResultRescues: a failed final save (full disk, removed
// directory) lost hours of training; the result goes beside the
// checkpoint and the error says where.
func TestSaveResultRescues(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "gone", "out.gguf")
	ckpt := filepath.Join(dir, "out.gguf.ckpt")
	save := func(path string) error {
		if filepath.Dir(path) != dir {
			return errors.New("no space left on device")
		}
		return os.WriteFile(path, []byte("weights"), 0o644)
	}
	got, err := saveResult(save, out, ckpt)
	require.ErrorIs(t, err, ErrSavedElsewhere)
	want := filepath.Join(dir, "rescued-out.gguf")
	assert.Equal(t, want, got)
	assert.Contains(t, err.Error(), want)
	assert.Contains(t, err.Error(), "no space left")
	assert.FileExists(t, want)

	got, err = saveResult(save, filepath.Join(dir, "ok.gguf"), ckpt)
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(dir, "ok.gguf"), got)
}
