package finetune

import (
	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/data"
	"github.com/ggtune/ggtune/model"
	"github.com/ggtune/ggtune/train"
)

// GraphBuilder returns the train.Builder that builds the model's forward
// graph with the given hooks (seed seeds dropout masks).
func GraphBuilder(m *model.Model, hooks []model.Hook, seed uint64, opts ...BuilderOption) train.Builder {
	g := &graphBuilder{m: m, hooks: hooks, seed: seed}
	for _, o := range opts {
		o(g)
	}
	return g
}

// BuilderOption configures a GraphBuilder.
type BuilderOption func(*graphBuilder)

// WithGradCheckpoint turns activation checkpointing of training graphs on
// or off (off by default): the backward pass keeps only each transformer
// block's input and recomputes the block's activations when it needs them.
func WithGradCheckpoint(on bool) BuilderOption {
	return func(g *graphBuilder) { g.checkpoint = on }
}

// graphBuilder lets the training engine build the model's forward graph
// with a method's hooks.
type graphBuilder struct {
	m          *model.Model
	hooks      []model.Hook
	seed       uint64
	checkpoint bool
}

type forward struct {
	f          *model.Forward
	seed       uint64
	checkpoint bool
}

// Checkpoints implements train.Checkpointer.
func (f forward) Checkpoints() []*binding.Tensor {
	if !f.checkpoint || !f.f.Builder.Train {
		return nil
	}
	return f.f.BlockInputs
}

// Logits implements train.Forward.
func (f forward) Logits() *binding.Tensor { return f.f.Logits }

// SetBatch implements train.Forward.
func (f forward) SetBatch(tokens, segments []int32) error { return f.f.SetBatch(tokens, segments) }

// Reseed implements train.Reseeder: dropout masks follow the step.
func (f forward) Reseed(seed uint64) { f.f.Builder.Reseed(f.seed ^ seed*0x9e3779b97f4a7c15) }

// BuildForward implements train.Builder.
func (g *graphBuilder) BuildForward(ctx *binding.Context, b, t int, training bool) (train.Forward, error) {
	f, err := g.m.BuildForward(ctx, model.Shape{Batch: b, Tokens: t, Train: training, Seed: g.seed}, g.hooks)
	if err != nil {
		return nil, err
	}
	return forward{f: f, seed: g.seed, checkpoint: g.checkpoint}, nil
}

// GraphSize implements train.GraphSizer.
func (g *graphBuilder) GraphSize() int { return g.m.GraphSize() }

// VocabSize implements train.Builder.
func (g *graphBuilder) VocabSize() int { return g.m.Config().NVocab }

// toTrainBatch converts a data batch: padding (segment 0) becomes the
// model's negative segment id.
func toTrainBatch(b *data.Batch) train.Batch {
	segs := make([]int32, len(b.Segments))
	for i, s := range b.Segments {
		if s == 0 {
			segs[i] = -1
		} else {
			segs[i] = s
		}
	}
	return train.Batch{B: b.B, T: b.T, Tokens: b.Tokens, Targets: b.Labels, Segments: segs}
}

// loaderSource adapts a data.Loader (endless) to train.Source.
type loaderSource struct {
	l        *data.Loader
	perEpoch int // batches in one epoch
	examples int // examples in one epoch
	attach   func(*data.Batch, *train.Batch) error
}

// Next implements train.Source.
func (s *loaderSource) Next() (train.Batch, error) {
	b, err := s.l.Next()
	if err != nil {
		return train.Batch{}, err
	}
	tb := toTrainBatch(b)
	if s.attach != nil {
		if err := s.attach(b, &tb); err != nil {
			return train.Batch{}, err
		}
	}
	return tb, nil
}

// Position implements train.Source.
func (s *loaderSource) Position() train.Position {
	p := s.l.Position()
	return train.Position{Epoch: p.Epoch, Index: p.Index}
}

// Seek implements train.Source.
func (s *loaderSource) Seek(p train.Position) error {
	return s.l.Seek(data.Position{Epoch: p.Epoch, Index: p.Index})
}

// BatchesPerEpoch implements train.Source.
func (s *loaderSource) BatchesPerEpoch() int { return s.perEpoch }

// Epoch implements train.Source.
func (s *loaderSource) Epoch() float64 {
	p := s.l.Position()
	return float64(p.Epoch) + float64(p.Index)/float64(max(s.examples, 1))
}

// tokenizer adapts the model's tokenizer to data.Tokenizer.
type tokenizer struct{ t *model.Tokenizer }

// Tokenize implements data.Tokenizer (as do the methods below).
func (t tokenizer) Tokenize(text string, addSpecial, parseSpecial bool) ([]int32, error) {
	return t.t.Encode(text, addSpecial, parseSpecial)
}
func (t tokenizer) BOS() int32           { return t.t.BOS() }
func (t tokenizer) EOS() int32           { return t.t.EOS() }
func (t tokenizer) AddBOS() bool         { return t.t.AddBOS() }
func (t tokenizer) AddEOS() bool         { return t.t.AddEOS() }
func (t tokenizer) ChatTemplate() string { return t.t.ChatTemplate() }
