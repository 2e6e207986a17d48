package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/ggtune/ggtune/internal/outguard"
	"github.com/ggtune/ggtune/model"
)

// checkResume checks --resume and --overwrite against the checkpoint path:
// resuming needs the checkpoint, and a fresh run must not silently replace
// one (step 30 became step 5).
func checkResume(ckpt string, resume, overwrite bool) error {
	_, err := os.Stat(ckpt)
	exists := err == nil
	switch {
	case resume && overwrite:
		return fmt.Errorf("%w: --resume and --overwrite are exclusive", errUsage)
	case resume && !exists:
		return fmt.Errorf("%w: --resume: no checkpoint %s (one is written on Ctrl-C and every --save-every steps)", errUsage, ckpt)
	case !resume && !overwrite && exists:
		return fmt.Errorf("%w: the checkpoint %s exists: add --resume to continue that run, or --overwrite to start afresh", errUsage, ckpt)
	}
	return nil
}

// stickyWriter remembers the first write error, so that a command whose
// output could not be written (a closed pipe, a full disk) exits non-zero.
type stickyWriter struct {
	w   io.Writer
	err error
}

func (s *stickyWriter) Write(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	n, err := s.w.Write(p)
	if err != nil {
		s.err = err
	}
	return n, err
}

// check returns the first write error, naming what was written to.
func (s *stickyWriter) check(what string) error {
	if s.err == nil {
		return nil
	}
	return fmt.Errorf("write %s: %w", what, s.err)
}

// checkMerge makes merge read its inputs as strictly as generate: the base
// passes every model check, no adapter holds a NaN or infinite value, and
// -o is none of the inputs (symlinks and hard links included) and can be
// created.
func checkMerge(base string, specs []string, out string) error {
	inputs := []outguard.File{{Flag: "-m", Path: base}}
	for _, spec := range specs {
		sp, err := parseScaled(spec)
		if err != nil {
			return fmt.Errorf("--lora: %w", err)
		}
		inputs = append(inputs, outguard.File{Flag: "--lora", Path: sp.Path})
	}
	output := outguard.File{Flag: "-o", Path: out}
	if err := outguard.Distinct(inputs, []outguard.File{output}); err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	if err := outguard.Creatable(output); err != nil {
		return err
	}
	if _, err := outguard.RemoveStale(out); err != nil {
		return err
	}
	if err := model.Check(base); err != nil {
		return err
	}
	for _, in := range inputs[1:] {
		if err := model.CheckFinite(in.Path); err != nil {
			return fmt.Errorf("--lora %s: %w", in.Path, err)
		}
	}
	return nil
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
