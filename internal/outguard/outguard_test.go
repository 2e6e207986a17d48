package outguard_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/internal/outguard"
)

func TestDistinct(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "base.gguf")
	require.NoError(t, os.WriteFile(in, []byte("model"), 0o644))
	sym := filepath.Join(dir, "sym.gguf")
	require.NoError(t, os.Symlink(in, sym))
	hard := filepath.Join(dir, "hard.gguf")
	require.NoError(t, os.Link(in, hard))
	sub := filepath.Join(dir, "sub")
	require.NoError(t, os.Mkdir(sub, 0o755))
	dirLink := filepath.Join(dir, "dirlink")
	require.NoError(t, os.Symlink(sub, dirLink))
	inputs := []outguard.File{{Flag: "-m", Path: in}, {Flag: "--data", Path: ""}}
	for _, c := range []struct {
		name    string
		outputs []outguard.File
		clobber bool
	}{
		{"same path", []outguard.File{{Flag: "-o", Path: in}}, true},
		{"relative spelling", []outguard.File{{Flag: "-o", Path: filepath.Join(dir, ".", "x", "..", "base.gguf")}}, true},
		{"symlink to input", []outguard.File{{Flag: "--plot", Path: sym}}, true},
		{"hard link to input", []outguard.File{{Flag: "-o", Path: hard}}, true},
		{"two outputs, new file", []outguard.File{{Flag: "-o", Path: filepath.Join(sub, "a")}, {Flag: "--metrics", Path: filepath.Join(dirLink, "a")}}, true},
		{"distinct", []outguard.File{{Flag: "-o", Path: filepath.Join(dir, "out.gguf")}, {Flag: "--metrics", Path: filepath.Join(dir, "out.jsonl")}, {Flag: "--plot", Path: ""}}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := outguard.Distinct(inputs, c.outputs)
			if !c.clobber {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, outguard.ErrClobber)
			assert.Contains(t, err.Error(), c.outputs[len(c.outputs)-1].Flag)
		})
	}
}

func TestCreatable(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, outguard.Creatable(outguard.File{Flag: "-o", Path: filepath.Join(dir, "new", "deeper", "out.gguf")}))
	err := outguard.Creatable(outguard.File{Flag: "-o", Path: dir})
	require.ErrorIs(t, err, outguard.ErrNotWritable)
	assert.Contains(t, err.Error(), "is a directory")
	if os.Geteuid() != 0 {
		ro := filepath.Join(dir, "ro")
		require.NoError(t, os.Mkdir(ro, 0o555))
		err = outguard.Creatable(outguard.File{Flag: "--metrics", Path: filepath.Join(ro, "m.jsonl")})
		require.ErrorIs(t, err, outguard.ErrNotWritable)
		assert.Contains(t, err.Error(), "--metrics")
	}
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	for _, e := range entries {
		assert.NotContains(t, e.Name(), ".tmp-", "no probe file is left")
	}
}

func TestRemoveStale(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out[1].gguf.ckpt")
	for _, name := range []string{".out[1].gguf.ckpt.tmp-123", ".out[1].gguf.ckpt.tmp-abc", "out[1].gguf.ckpt", ".other.tmp-1", ".out[1].gguf.tmp-9"} {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), nil, 0o644))
	}
	n, err := outguard.RemoveStale(out)
	require.NoError(t, err)
	assert.Equal(t, 2, n)
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var left []string
	for _, e := range entries {
		left = append(left, e.Name())
	}
	assert.ElementsMatch(t, []string{"out[1].gguf.ckpt", ".other.tmp-1", ".out[1].gguf.tmp-9"}, left)
}

// TestTempDir checks that a stale scratch directory of the same output and
// kind is removed, and that others (another kind, another output, a file of
// that name) are kept.
func TestTempDir(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "small.gguf")
	stale := filepath.Join(dir, ".small.gguf.shrink-123")
	require.NoError(t, os.MkdirAll(filepath.Join(stale, "sub"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(stale, "sub", "stage-1.gguf"), []byte("x"), 0o644))
	keep := []string{filepath.Join(dir, ".small.gguf.samples-1"), filepath.Join(dir, ".other.gguf.shrink-1")}
	for _, k := range keep {
		require.NoError(t, os.Mkdir(k, 0o755))
	}
	file := filepath.Join(dir, ".small.gguf.shrink-file")
	require.NoError(t, os.WriteFile(file, []byte("x"), 0o644))

	d, err := outguard.TempDir(out, "shrink")
	require.NoError(t, err)
	st, err := os.Stat(d)
	require.NoError(t, err)
	assert.True(t, st.IsDir())
	assert.Equal(t, dir, filepath.Dir(d))
	_, err = os.Stat(stale)
	assert.True(t, os.IsNotExist(err), "stale directory left")
	for _, k := range append(keep, file) {
		_, err := os.Stat(k)
		assert.NoError(t, err, "%s removed", k)
	}
}
