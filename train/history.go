package train

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"github.com/ggtune/ggtune/internal/atomicfile"
)

// ErrCheckpointExists reports a fresh run whose checkpoint file already
// exists: it would be replaced by the new run's. Set Config.Resume to
// continue it or Config.Overwrite to start over.
var ErrCheckpointExists = errors.New("a checkpoint exists")

// readHistory returns the records of the metrics file at path that a run
// resumed at step keeps: training records up to step and evaluations
// before it (the resumed run evaluates at step again). A missing file gives
// no records; a malformed line is an error naming it.
func readHistory(path string, step int) ([]Metrics, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	var out []Metrics
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<20)
	for line := 1; sc.Scan(); line++ {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		var m Metrics
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			return nil, fmt.Errorf("metrics %s:%d: %w", path, line, err)
		}
		if (m.Kind == "train" && m.Step <= step) || (m.Kind == "eval" && m.Step < step) {
			out = append(out, m)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("metrics %s: %w", path, err)
	}
	return out, nil
}

// metricsFile appends records to a JSONL metrics file. The file is only
// replaced when the first record arrives (a run that fails before it
// leaves the previous run's file alone), then holds the kept records of
// the resumed run followed by the new ones.
type metricsFile struct {
	path string
	keep []Metrics
	f    *os.File
	err  error // the first write error
}

func (w *metricsFile) write(m Metrics) {
	if w.path == "" || w.err != nil {
		return
	}
	if w.f == nil {
		var buf bytes.Buffer
		for _, k := range w.keep {
			b, _ := json.Marshal(k)
			buf.Write(append(b, '\n'))
		}
		if w.err = atomicfile.WriteBytes(w.path, buf.Bytes()); w.err != nil {
			return
		}
		// O_NOFOLLOW: a symlink planted after the atomic write is not followed.
		if w.f, w.err = os.OpenFile(w.path, os.O_WRONLY|os.O_APPEND|syscall.O_NOFOLLOW, 0); w.err != nil {
			w.err = fmt.Errorf("metrics: %w", w.err)
			return
		}
	}
	b, _ := json.Marshal(m)
	if _, err := w.f.Write(append(b, '\n')); err != nil {
		w.err = fmt.Errorf("metrics %s: %w", w.path, err)
	}
}

func (w *metricsFile) close() error {
	if w.f != nil {
		if err := w.f.Close(); err != nil && w.err == nil {
			w.err = fmt.Errorf("metrics %s: %w", w.path, err)
		}
		w.f = nil
	}
	return w.err
}

// finite reports whether v is neither NaN nor infinite.
func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// ErrResumeMismatch reports a resumed run whose settings differ from its
// checkpoint's in a way that breaks exact resume.
var ErrResumeMismatch = errors.New("the settings differ from the checkpoint's")

// settings returns the effective settings that exact resume depends on:
// the loop's own and cfg.Settings (the caller's: data, model, method).
func (cfg Config) settings(total int) map[string]string {
	g := func(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }
	s := map[string]string{
		"steps": strconv.Itoa(total), "grad-accum": strconv.Itoa(cfg.GradAccum),
		"schedule": string(cfg.Schedule.Kind), "lr": g(cfg.Schedule.LR), "min-lr": g(cfg.Schedule.MinLR),
		"warmup": strconv.Itoa(cfg.Schedule.Warmup), "beta1": g(cfg.Optimizer.Beta1), "beta2": g(cfg.Optimizer.Beta2),
		"eps": g(cfg.Optimizer.Eps), "weight-decay": g(cfg.Optimizer.WeightDecay), "max-grad-norm": g(cfg.Optimizer.MaxGradNorm),
		"eval-every": strconv.Itoa(cfg.EvalEvery), "early-stop": strconv.Itoa(cfg.EarlyStop),
	}
	for k, v := range cfg.Settings {
		s[k] = v
	}
	return s
}

// checkSettings compares the settings of a resumed run with its
// checkpoint's; a difference not named in allowed is an error naming the
// settings. A checkpoint without settings (an older file) is accepted.
func checkSettings(saved, now map[string]string, allowed []string) error {
	if len(saved) == 0 {
		return nil
	}
	ok := map[string]bool{}
	for _, a := range allowed {
		ok[a] = true
	}
	var diffs []string
	keys := make([]string, 0, len(now))
	for k := range now {
		keys = append(keys, k)
	}
	for k := range saved {
		if _, in := now[k]; !in {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		if saved[k] != now[k] && !ok[k] {
			diffs = append(diffs, fmt.Sprintf("%s was %q, now %q", k, saved[k], now[k]))
		}
	}
	if len(diffs) > 0 {
		return fmt.Errorf("%w: %s (the result would differ from an uninterrupted run; name the settings you mean to change in Config.ResumeChanged, --resume-changed on the command line)",
			ErrResumeMismatch, strings.Join(diffs, ", "))
	}
	return nil
}
