package finetune

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/ggtune/ggtune/internal/outguard"
	"github.com/ggtune/ggtune/train"
)

// ErrSavedElsewhere reports a result that could not be written to the
// job's Output and was written to another path instead (Report.Output).
var ErrSavedElsewhere = errors.New("the result was written elsewhere")

// checkFiles runs before anything is loaded: no output may be an input or
// another output (symlinks and hard links included), every output must be
// creatable, and stale temporaries of the output are removed.
func (j *Job) checkFiles(cfg train.Config) error {
	inputs := []outguard.File{{Flag: "-m", Path: j.Model}, {Flag: "--data", Path: j.Data}, {Flag: "--val", Path: j.Val}, {Flag: "--init-from", Path: j.InitFrom}}
	outputs := []outguard.File{{Flag: "-o", Path: j.Output}, {Flag: "checkpoint", Path: cfg.Checkpoint}, {Flag: "--metrics", Path: cfg.MetricsPath}, {Flag: "--plot", Path: cfg.PlotPath}}
	if d := j.Distill; d != nil {
		inputs = append(inputs, outguard.File{Flag: "--teacher", Path: d.Teacher})
		for _, a := range d.TeacherAdapters {
			inputs = append(inputs, outguard.File{Flag: "--teacher-adapter", Path: a.Path})
		}
		if d.CacheDir != "" {
			outputs = append(outputs, outguard.File{Flag: "--teacher-cache", Path: d.cachePath("train")}, outguard.File{Flag: "--teacher-cache", Path: d.cachePath("val")})
		}
	}
	if err := outguard.Distinct(inputs, outputs); err != nil {
		return fmt.Errorf("%w: %w", ErrJob, err)
	}
	if err := outguard.Creatable(outputs...); err != nil {
		return fmt.Errorf("%w: %w", ErrJob, err)
	}
	for _, o := range outputs {
		if o.Flag != "-o" && o.Flag != "--teacher-cache" {
			continue
		}
		if _, err := outguard.RemoveStale(o.Path); err != nil {
			return err
		}
	}
	return nil
}

// saveResult writes the trained result with save to out. If that fails
// (the disk filled up, the directory went away), the result is written
// beside the checkpoint, or failing that in the temporary directory, so
// that hours of training are not lost; the path used is returned with an
// error wrapping ErrSavedElsewhere.
func saveResult(save func(string) error, out, checkpoint string) (string, error) {
	err := save(out)
	if err == nil {
		return out, nil
	}
	name := filepath.Base(out)
	for _, dir := range []string{filepath.Dir(checkpoint), os.TempDir()} {
		alt := filepath.Join(dir, "rescued-"+name)
		if filepath.Clean(alt) == filepath.Clean(out) {
			continue
		}
		if serr := save(alt); serr == nil {
			return alt, fmt.Errorf("%w: writing %s failed (%v); the result is in %s", ErrSavedElsewhere, out, err, alt)
		}
	}
	return "", err
}

// settings returns the job's settings that exact resume depends on, for
// train.Config.Settings: the method and its options, the shape of the
// batches, the seed, and fingerprints of the model and data files.
func (j *Job) settings() (map[string]string, error) {
	s := map[string]string{
		"method": j.Method, "seed": strconv.FormatUint(j.Seed, 10), "ctx": strconv.Itoa(j.Context),
		"batch": strconv.Itoa(j.Batch), "pack": strconv.FormatBool(j.Pack), "val-split": strconv.FormatFloat(j.ValSplit, 'g', -1, 64),
		"data-options": fmt.Sprintf("%+v", dataSettings(j)), "method-config": fmt.Sprintf("%+v", j.Config),
	}
	for key, path := range map[string]string{"model": j.Model, "data": j.Data, "val": j.Val, "init-from": j.InitFrom} {
		if path == "" {
			continue
		}
		fp, err := fingerprint(path, key != "model")
		if err != nil {
			return nil, err
		}
		s[key] = fp
	}
	if j.Distill != nil {
		if err := j.Distill.settings(s); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// dataSettings is the part of the data options that shapes the batches.
func dataSettings(j *Job) any {
	o := j.DataOptions
	return struct {
		Format                               string
		Stride                               int
		TrainOnPrompt, SkipBad, ParseSpecial bool
		ChatTemplate                         string
	}{string(o.Format), o.Stride, o.TrainOnPrompt, o.SkipBad, o.ParseSpecial, o.ChatTemplate}
}

// fingerprint identifies a file's content: its size and SHA-256 (full), or
// its size and modification time (for large inputs such as base models,
// where hashing would cost seconds).
func fingerprint(path string, full bool) (string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	if !full {
		return fmt.Sprintf("%d bytes, modified %s", st.Size(), st.ModTime().UTC().Format(time.RFC3339Nano)), nil
	}
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("fingerprint %s: %w", path, err)
	}
	return fmt.Sprintf("%d bytes, sha256 %x", st.Size(), h.Sum(nil)), nil
}
