package atomicfile_test

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/internal/atomicfile"
)

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f.bin")
	require.NoError(t, os.WriteFile(path, []byte("old"), 0o600))

	err := atomicfile.Write(path, func(w io.Writer) error {
		_, _ = w.Write([]byte("partial"))
		return errors.New("boom")
	})
	require.Error(t, err)
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, "old", string(b), "a failed write leaves the old file")
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Len(t, entries, 1, "no temporary file is left behind")

	require.NoError(t, atomicfile.WriteBytes(path, []byte("new")))
	b, err = os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, "new", string(b))
	st, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm(), "a replaced file keeps its mode")

	assert.Error(t, atomicfile.WriteBytes(filepath.Join(dir, "missing", "x"), nil))
}

// TestWriteModeAndLinks: new files get 0666 less the umask (they were
// always 0644), and a symlink at the path is replaced, never followed.
func TestWriteModeAndLinks(t *testing.T) {
	dir := t.TempDir()
	for _, umask := range []int{0o022, 0o077, 0o002} {
		old := syscall.Umask(umask)
		path := filepath.Join(dir, "new.bin")
		os.Remove(path)
		err := atomicfile.WriteBytes(path, []byte("x"))
		syscall.Umask(old)
		require.NoError(t, err)
		st, err := os.Stat(path)
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o666&^umask), st.Mode().Perm(), "umask %o", umask)
	}
	target := filepath.Join(dir, "target.txt")
	require.NoError(t, os.WriteFile(target, []byte("precious"), 0o644))
	link := filepath.Join(dir, "metrics.jsonl")
	require.NoError(t, os.Symlink(target, link))
	require.NoError(t, atomicfile.WriteBytes(link, []byte("metrics")))
	b, err := os.ReadFile(target)
	require.NoError(t, err)
	assert.Equal(t, "precious", string(b), "the symlink's target is untouched")
	st, err := os.Lstat(link)
	require.NoError(t, err)
	assert.True(t, st.Mode().IsRegular())
}
