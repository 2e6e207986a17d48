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
	if o.Context < 2 || o.Batch < 1 {
		return train.Evaluation{}, fmt.Errorf("%w: context %d and batch %d (want >= 2 and >= 1)", ErrJob, o.Context, o.Batch)
	}
	tok, err := m.Tokenizer()
	if err != nil {
		return train.Evaluation{}, err
	}
	opts := o.DataOptions
	opts.Context, opts.Templater = o.Context, templater
	ds, err := data.Load(path, tokenizer{tok}, opts)
	if err != nil {
		return train.Evaluation{}, err
	}
	logData(o.Log, ds)
	bs, err := batches(ds, Job{Context: o.Context, Batch: o.Batch, Pack: o.Pack, MaxValBatches: o.MaxBatches})
	if err != nil {
		return train.Evaluation{}, err
	}
	eng, err := train.NewEvalEngine(GraphBuilder(m, hooks, 0), m.Backend(), o.Batch, o.Context)
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
