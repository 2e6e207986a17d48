package shrink

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ggtune/ggtune/finetune"
	"github.com/ggtune/ggtune/method"
	"github.com/ggtune/ggtune/model"
	"github.com/ggtune/ggtune/train"
)

// HealRequest is one healing step: train the shrunk model Model (a GGUF
// file) and write the healed model to Output (a full GGUF of the same
// shape). Original is the unshrunk model, the teacher of a distilling
// healer. Dir is a scratch directory for the healer's own files.
type HealRequest struct {
	Original string
	Model    string
	Output   string
	Dir      string
	Stage    int // 1 for the first removal
}

// Healer recovers a shrunk model's quality between removals. [TrainHealer]
// trains on text with any method of the registry; a healer that distils
// from HealRequest.Original plugs in the same way.
type Healer interface {
	Heal(ctx context.Context, req HealRequest) error
}

// TrainHealer heals by training (finetune.Run) the shrunk model: Job is
// the template (method, data, context, batch, optimizer, steps, ...), whose
// Model and Output are set per request. With Distill set, every stage
// distils from the unshrunk model (HealRequest.Original, computed on the
// fly) with those loss settings, instead of learning the labels alone.
// A method whose
// result is a model (full, head) writes the healed model directly; an
// adapter (lora, dora, ia3, ...) is merged into the shrunk model with
// method.Merge, so each stage's result is a plain GGUF (merged quantized
// weights are re-quantized to their type).
type TrainHealer struct {
	Job     finetune.Job
	Distill *train.Distill
}

// Heal implements Healer.
func (h TrainHealer) Heal(ctx context.Context, req HealRequest) error {
	meth, err := method.Get(h.Job.Method)
	if err != nil {
		return fmt.Errorf("heal: %w", err)
	}
	j := h.Job
	j.Model = req.Model
	adapter := len(meth.AdapterTypes()) > 0
	j.Output = req.Output
	if adapter {
		j.Output = filepath.Join(req.Dir, fmt.Sprintf("heal-%d-adapter.gguf", req.Stage))
		defer os.Remove(j.Output)
	}
	j.Train.Checkpoint = filepath.Join(req.Dir, fmt.Sprintf("heal-%d.ckpt", req.Stage))
	defer os.Remove(j.Train.Checkpoint)
	j.Train.Overwrite = true
	j.Train.MetricsPath, j.Train.PlotPath = "", ""
	if h.Distill != nil {
		j.Distill = &finetune.Distillation{Teacher: req.Original, Loss: *h.Distill}
	}
	if _, err := finetune.Run(ctx, j); err != nil {
		return fmt.Errorf("heal stage %d (%s, %d steps): %w", req.Stage, j.Method, j.Train.Steps, err)
	}
	if !adapter {
		return nil
	}
	if err := mergeAdapter(req.Model, j.Output, req.Output, j.Threads); err != nil {
		return fmt.Errorf("heal stage %d: %w", req.Stage, err)
	}
	return nil
}

// mergeAdapter folds the adapter file into base and writes out.
func mergeAdapter(base, adapter, out string, threads int) error {
	m, err := model.Load(base, model.Options{Threads: threads})
	if err != nil {
		return err
	}
	defer m.Close()
	env, err := method.NewEnv(base, m, m.Backend())
	if err != nil {
		return err
	}
	defer env.Close()
	inst, _, err := method.Open(adapter, env)
	if err != nil {
		return err
	}
	defer inst.Close()
	return method.Merge(base, out, []method.Scaled{{Instance: inst, Scale: 1, Name: adapter}}, method.MergeOptions{})
}
