package finetune

import (
	"fmt"
	"io"

	"github.com/ggtune/ggtune/data"
	"github.com/ggtune/ggtune/model"
	"github.com/ggtune/ggtune/train"
)

// EvalOptions configure Evaluate.
type EvalOptions struct {
	Context int  // tokens per sequence (T)
	Batch   int  // sequences per batch (B)
	Pack    bool // pack short examples into full rows
	// MaxBatches bounds the batches evaluated (0: the whole file).
	MaxBatches int
	// DataOptions configure reading the file (Context and Templater are
	// filled in).
	DataOptions data.Options
	// Log, if set, receives the data set's summary line (records,
	// examples, drops by reason).
	Log io.Writer
}

// Evaluate computes the held-out loss, perplexity and token accuracy of m
// with hooks (adapters, soft prompts; nil for the bare model) on the data
// file path, batched exactly as Run batches validation data.
func Evaluate(m *model.Model, hooks []model.Hook, path string, o EvalOptions) (train.Evaluation, error) {
	return evaluate(m, hooks, path, o)
}

// evaluate is Evaluate with engine options (distillation).
func evaluate(m *model.Model, hooks []model.Hook, path string, o EvalOptions, opts ...train.Option) (train.Evaluation, error) {
	if o.Context < 2 || o.Batch < 1 {
		return train.Evaluation{}, fmt.Errorf("%w: context %d and batch %d (want >= 2 and >= 1)", ErrJob, o.Context, o.Batch)
	}
	bs, _, err := ReadBatches(m, path, o, 0, 0)
	if err != nil {
		return train.Evaluation{}, err
	}
	eng, err := train.NewEvalEngine(GraphBuilder(m, hooks, 0), m.Backend(), o.Batch, o.Context, opts...)
	if err != nil {
		return train.Evaluation{}, err
	}
	defer eng.Close()
	ev, err := train.Evaluate(eng, bs)
	if err != nil {
		return train.Evaluation{}, fmt.Errorf("evaluate %s: %w", path, err)
	}
	return ev, nil
}

// ReadBatches reads the data file path with m's tokenizer and batches it as
// Run batches validation data (one pass, in order, at most o.MaxBatches
// batches per part). With split > 0 it cuts the examples as a Job with
// ValSplit split and Seed seed does and returns the training part first
// and the held-out part second; otherwise all of the file is the first.
func ReadBatches(m *model.Model, path string, o EvalOptions, split float64, seed uint64) (rest, held []train.Batch, err error) {
	if o.Context < 2 || o.Batch < 1 {
		return nil, nil, fmt.Errorf("%w: context %d and batch %d (want >= 2 and >= 1)", ErrJob, o.Context, o.Batch)
	}
	tok, err := m.Tokenizer()
	if err != nil {
		return nil, nil, err
	}
	opts := o.DataOptions
	opts.Context, opts.Templater = o.Context, templater
	ds, err := data.Load(path, tokenizer{tok}, opts)
	if err != nil {
		return nil, nil, err
	}
	logData(o.Log, ds)
	var val *data.Dataset
	if split > 0 {
		if ds, val, err = ds.Split(split, seed); err != nil {
			return nil, nil, err
		}
	}
	j := Job{Context: o.Context, Batch: o.Batch, Pack: o.Pack, MaxValBatches: o.MaxBatches}
	if rest, err = batches(ds, j, nil); err != nil {
		return nil, nil, err
	}
	if held, err = batches(val, j, nil); err != nil {
		return nil, nil, err
	}
	return rest, held, nil
}

// EvaluateDistillation is Evaluate that also measures the mean divergence
// of m (with hooks) from d's teacher on the data file path, at d.Loss's
// temperature and divergence (Evaluation.Divergence; the teacher runs on
// the fly, its cache is not used).
func EvaluateDistillation(m *model.Model, hooks []model.Hook, d *Distillation, path string, o EvalOptions) (train.Evaluation, error) {
	if err := d.validate(); err != nil {
		return train.Evaluation{}, err
	}
	t, err := openTeacher(d, m.Path(), m.Backend())
	if err != nil {
		return train.Evaluation{}, err
	}
	defer t.Close()
	l := d.Loss
	l.Teacher = GraphBuilder(t.m, t.hooks, 0)
	return evaluate(m, hooks, path, o, train.WithDistill(l))
}
