// Package outguard checks the files a command will write before it does any
// work: no output may be one of its inputs (compared by device and inode, so
// symlinks and hard links are caught) or another output, and every output
// must be creatable. It also removes stale temporaries that an interrupted
// atomic write (package atomicfile) left behind.
package outguard

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// ErrClobber reports an output path that resolves to an input or to
// another output.
var ErrClobber = errors.New("output would overwrite an input")

// ErrNotWritable reports an output that cannot be created: a directory, a
// missing or read-only parent directory.
var ErrNotWritable = errors.New("output cannot be written")

// File is a path given by a flag; Flag names it in errors (for example
// "-o" or "--metrics"). An empty Path is ignored.
type File struct {
	Flag, Path string
}

// Distinct returns an error wrapping [ErrClobber], naming both flags, if an
// output is the same file as an input or as another output. Existing files
// are compared by device and inode; outputs that do not exist yet by their
// absolute path with symlinked directories resolved.
func Distinct(inputs, outputs []File) error {
	type seen struct {
		File
		info os.FileInfo
		abs  string
	}
	var all []seen
	add := func(f File) seen {
		s := seen{File: f, abs: resolve(f.Path)}
		s.info, _ = os.Stat(f.Path)
		return s
	}
	for _, in := range inputs {
		if in.Path != "" {
			all = append(all, add(in))
		}
	}
	nIn := len(all)
	for _, out := range outputs {
		if out.Path == "" {
			continue
		}
		o := add(out)
		for i, prev := range all {
			same := o.abs == prev.abs
			if o.info != nil && prev.info != nil {
				same = os.SameFile(o.info, prev.info)
			}
			if !same {
				continue
			}
			what := "input"
			if i >= nIn {
				what = "output"
			}
			return fmt.Errorf("%w: %s %s is the same file as the %s %s %s", ErrClobber, out.Flag, out.Path, what, prev.Flag, prev.Path)
		}
		all = append(all, o)
	}
	return nil
}

// resolve returns path made absolute, with symlinks in its directory
// resolved (the file itself may not exist yet).
func resolve(path string) string {
	abs, err := filepath.Abs(path)
	if err != nil {
		return filepath.Clean(path)
	}
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		return r
	}
	dir, base := filepath.Split(abs)
	if r, err := filepath.EvalSymlinks(dir); err == nil {
		return filepath.Join(r, base)
	}
	return abs
}

// Creatable checks that each output can be written, before any work is
// done: it is not a directory, and a temporary file can be created in its
// directory (created when missing), which is where atomic writes put it.
// The error wraps [ErrNotWritable] and names the flag.
func Creatable(outputs ...File) error {
	for _, o := range outputs {
		if o.Path == "" {
			continue
		}
		if st, err := os.Stat(o.Path); err == nil && st.IsDir() {
			return fmt.Errorf("%w: %s %s is a directory", ErrNotWritable, o.Flag, o.Path)
		}
		dir := filepath.Dir(o.Path)
		if err := os.MkdirAll(dir, 0o777); err != nil {
			return fmt.Errorf("%w: %s %s: %v", ErrNotWritable, o.Flag, o.Path, err)
		}
		tmp, err := os.CreateTemp(dir, TempPattern(o.Path))
		if err != nil {
			return fmt.Errorf("%w: %s %s: %v", ErrNotWritable, o.Flag, o.Path, err)
		}
		tmp.Close()
		if err := os.Remove(tmp.Name()); err != nil {
			return fmt.Errorf("%w: %s %s: %v", ErrNotWritable, o.Flag, o.Path, err)
		}
	}
	return nil
}

// TempPattern is the os.CreateTemp pattern of the temporary files written
// beside path: ".NAME.tmp-*" in path's directory.
func TempPattern(path string) string { return "." + filepath.Base(path) + ".tmp-*" }

// RemoveStale removes the temporaries of path's naming ([TempPattern]) that
// a killed process left beside it and returns how many it removed.
func RemoveStale(path string) (int, error) {
	if path == "" {
		return 0, nil
	}
	pattern := filepath.Join(globEscape(filepath.Dir(path)), globEscape(strings.TrimSuffix(TempPattern(path), "*"))+"*")
	names, err := filepath.Glob(pattern)
	if err != nil {
		return 0, fmt.Errorf("remove stale temporaries of %s: %w", path, err)
	}
	n := 0
	for _, name := range names {
		if st, err := os.Lstat(name); err != nil || !st.Mode().IsRegular() {
			continue
		}
		if err := os.Remove(name); err != nil && !errors.Is(err, os.ErrNotExist) {
			return n, fmt.Errorf("remove stale temporary %s: %w", name, err)
		}
		n++
	}
	return n, nil
}

// TempDir creates a scratch directory ".NAME.KIND-*" beside path (for a
// command's intermediate files, on the output's file system) after removing
// the directories of that naming that a killed run left behind. The caller
// removes it.
func TempDir(path, kind string) (string, error) {
	dir, prefix := filepath.Dir(path), "."+filepath.Base(path)+"."+kind+"-"
	stale, err := filepath.Glob(filepath.Join(globEscape(dir), globEscape(prefix)+"*"))
	if err != nil {
		return "", fmt.Errorf("remove stale directories of %s: %w", path, err)
	}
	for _, d := range stale {
		if st, err := os.Lstat(d); err == nil && st.IsDir() {
			if err := os.RemoveAll(d); err != nil {
				return "", fmt.Errorf("remove stale directory %s: %w", d, err)
			}
		}
	}
	d, err := os.MkdirTemp(dir, prefix+"*")
	if err != nil {
		return "", fmt.Errorf("scratch directory for %s: %w", path, err)
	}
	return d, nil
}

// globEscape quotes the metacharacters of filepath.Match in s.
func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
