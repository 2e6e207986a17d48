package train

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/ggtune/ggtune/binding"
)

// CheckpointVersion versions the checkpoint file layout.
const CheckpointVersion = 1

// ErrCheckpoint reports a checkpoint that does not fit the engine.
var ErrCheckpoint = errors.New("invalid checkpoint")

// Position is a resumable position in the training data.
type Position struct {
	Epoch int // completed epochs
	Index int // batches taken in the current epoch
}

// Checkpoint is the training state saved beside the trainable tensors.
type Checkpoint struct {
	Step     int      // optimizer steps taken
	Position Position // where the data continues
	// Best is the best validation loss so far and Stale the number of
	// evaluations since it improved (early stopping).
	Best  float64
	Stale int
	// Settings are the run's effective settings (Config.Settings and the
	// loop's own), compared on resume.
	Settings map[string]string
}

// settingKey prefixes the metadata keys of Checkpoint.Settings.
const settingKey = "ggtune.checkpoint.setting."

// SaveCheckpoint writes the trainable tensors, the AdamW moments and ck to
// path (a GGUF file, written atomically).
func (e *Engine) SaveCheckpoint(path string, ck Checkpoint) error {
	w, err := binding.NewGGUFWriter(3 * len(e.params))
	if err != nil {
		return fmt.Errorf("save checkpoint: %w", err)
	}
	defer w.Close()
	for _, kv := range []binding.KV{
		{Key: "general.type", Value: "ggtune.checkpoint"},
		{Key: "ggtune.checkpoint.version", Value: uint32(CheckpointVersion)},
		{Key: "ggtune.checkpoint.step", Value: int64(ck.Step)},
		{Key: "ggtune.checkpoint.epoch", Value: int64(ck.Position.Epoch)},
		{Key: "ggtune.checkpoint.index", Value: int64(ck.Position.Index)},
		{Key: "ggtune.checkpoint.best", Value: ck.Best},
		{Key: "ggtune.checkpoint.stale", Value: int64(ck.Stale)},
		{Key: "ggtune.checkpoint.params", Value: int64(len(e.params))},
	} {
		if err := w.Set(kv.Key, kv.Value); err != nil {
			return fmt.Errorf("save checkpoint: %w", err)
		}
	}
	keys := make([]string, 0, len(ck.Settings))
	for k := range ck.Settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if err := w.Set(settingKey+k, ck.Settings[k]); err != nil {
			return fmt.Errorf("save checkpoint: %w", err)
		}
	}
	for i, p := range e.params {
		for j, t := range []*binding.Tensor{p, e.ms[i], e.vs[i]} {
			sh := p.Shape()
			// streamed: each tensor is read while the file is written
			if err := w.AddFloatsFunc(ckName(i, j), binding.TypeF32, sh[:], t.Floats); err != nil {
				return fmt.Errorf("save checkpoint: %w", err)
			}
		}
	}
	if err := w.WriteFile(path); err != nil {
		return fmt.Errorf("save checkpoint: %w", err)
	}
	return nil
}

// ckName names tensor kind j (0 value, 1 first moment, 2 second moment) of
// parameter i; parameters are matched by position, and shapes are checked.
func ckName(i, j int) string {
	return fmt.Sprintf("p%d.%s", i, [3]string{"value", "adam_m", "adam_v"}[j])
}

// LoadCheckpoint restores the trainable tensors, AdamW moments and step
// count from a checkpoint written by SaveCheckpoint for the same
// parameters.
func (e *Engine) LoadCheckpoint(path string) (Checkpoint, error) {
	f, err := binding.OpenGGUF(path)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("load checkpoint: %w", err)
	}
	defer f.Close()
	if s, _ := f.String("general.type"); s != "ggtune.checkpoint" {
		return Checkpoint{}, fmt.Errorf("load checkpoint %s: %w: general.type %q", path, ErrCheckpoint, s)
	}
	if v, _ := f.Uint("ggtune.checkpoint.version"); v != CheckpointVersion {
		return Checkpoint{}, fmt.Errorf("load checkpoint %s: %w: version %d, want %d", path, ErrCheckpoint, v, CheckpointVersion)
	}
	if n, _ := f.Uint("ggtune.checkpoint.params"); n != uint64(len(e.params)) {
		return Checkpoint{}, fmt.Errorf("load checkpoint %s: %w: %d parameters, the run has %d", path, ErrCheckpoint, n, len(e.params))
	}
	num := func(key string) int {
		v, ok := f.Get(key)
		if x, isInt := v.(int64); ok && isInt {
			return int(x)
		}
		return 0
	}
	best, _ := f.Float("ggtune.checkpoint.best")
	ck := Checkpoint{
		Step:     num("ggtune.checkpoint.step"),
		Position: Position{Epoch: num("ggtune.checkpoint.epoch"), Index: num("ggtune.checkpoint.index")},
		Best:     best,
		Stale:    num("ggtune.checkpoint.stale"),
		Settings: map[string]string{},
	}
	for _, kv := range f.KVs() {
		if k, ok := strings.CutPrefix(kv.Key, settingKey); ok {
			if v, isStr := kv.Value.(string); isStr {
				ck.Settings[k] = v
			}
		}
	}
	for i, p := range e.params {
		for j, t := range []*binding.Tensor{p, e.ms[i], e.vs[i]} {
			name := ckName(i, j)
			ti, ok := f.TensorInfo(name)
			if !ok {
				return Checkpoint{}, fmt.Errorf("load checkpoint %s: %w: no tensor %s", path, ErrCheckpoint, name)
			}
			if ti.Elements() != t.Elements() {
				return Checkpoint{}, fmt.Errorf("load checkpoint %s: %w: %s has %d values, parameter %s has %d", path, ErrCheckpoint, name, ti.Elements(), p.Name(), t.Elements())
			}
			vals, err := f.ReadTensorFloats(name)
			if err != nil {
				return Checkpoint{}, fmt.Errorf("load checkpoint: %w", err)
			}
			if err := t.SetFloats(vals); err != nil {
				return Checkpoint{}, fmt.Errorf("load checkpoint: %w", err)
			}
		}
	}
	for _, acc := range e.accs {
		if err := acc.Zero(); err != nil {
			return Checkpoint{}, fmt.Errorf("load checkpoint: %w", err)
		}
	}
	e.step, e.accumulated = ck.Step, 0
	return ck, nil
}
