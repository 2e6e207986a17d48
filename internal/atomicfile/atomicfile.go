// Package atomicfile writes files atomically: readers see either the old
// file or the complete new one, never a half-written file.
package atomicfile

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/ggtune/ggtune/internal/outguard"
)

// Write creates or replaces path: write fills a temporary file in the same
// directory, which is flushed, synced and renamed over path. A new file gets
// mode 0666 less the umask; a replaced file keeps its mode. A symlink at
// path is replaced, never followed. On any error the temporary file is
// removed and path is untouched.
func Write(path string, write func(w io.Writer) error) (err error) {
	tmp, err := createTemp(path)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	bw := bufio.NewWriterSize(tmp, 1<<20)
	if err := write(bw); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if st, err := os.Lstat(path); err == nil && st.Mode().IsRegular() {
		if err := tmp.Chmod(st.Mode().Perm()); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// createTemp creates a new temporary file beside path, named by
// [outguard.TempPattern], with mode 0666 less the umask (the kernel applies
// it; os.CreateTemp would give 0600).
func createTemp(path string) (*os.File, error) {
	prefix := filepath.Join(filepath.Dir(path), strings.TrimSuffix(outguard.TempPattern(path), "*"))
	for {
		f, err := os.OpenFile(prefix+strconv.FormatUint(rand.Uint64(), 36), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o666)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		return f, err
	}
}

// WriteBytes writes b to path atomically (see Write).
func WriteBytes(path string, b []byte) error {
	return Write(path, func(w io.Writer) error {
		_, err := w.Write(b)
		return err
	})
}
