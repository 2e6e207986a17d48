package finetune

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

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
	if err := outguard.Distinct(inputs, outputs); err != nil {
		return fmt.Errorf("%w: %w", ErrJob, err)
	}
	if err := outguard.Creatable(outputs...); err != nil {
		return fmt.Errorf("%w: %w", ErrJob, err)
	}
	if _, err := outguard.RemoveStale(j.Output); err != nil {
		return err
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
