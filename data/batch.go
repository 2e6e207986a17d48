package data

import (
	"fmt"
	"io"
	"math"
	"math/rand/v2"
)

// IgnoreLabel is the label of positions without a target.
const IgnoreLabel int32 = -1

// Position is a place in a [Loader]'s example stream: the next example is
// number Index of epoch Epoch's order. Store it in a checkpoint to resume.
type Position struct {
	Epoch int `json:"epoch"`
	Index int `json:"index"`
}

// LoaderConfig configures a [Loader].
type LoaderConfig struct {
	// Batch is the number of rows B (at least 1).
	Batch int
	// Context is the row length T; zero means the data set's Context.
	// Every example must fit.
	Context int
	// Pack places several examples in a row, in stream order, while they
	// fit (segments); otherwise each row holds one example and padding.
	Pack bool
	// Shuffle orders each epoch by a permutation from Seed; otherwise the
	// source order is used every epoch.
	Shuffle bool
	// Seed selects the shuffle: epoch e's order is
	// rand.New(rand.NewPCG(Seed, uint64(e))).Perm(n).
	Seed uint64
	// Epochs ends the stream after this many passes ([Loader.Next] then
	// returns io.EOF); zero means endless.
	Epochs int
}

// Batch is B rows of T positions in row-major order (flat index
// row*T + t). See the package documentation for the label convention.
type Batch struct {
	// B and T are the batch's shape.
	B, T int
	// Tokens are the input tokens (the data set's Pad at padding).
	Tokens []int32
	// Labels are the next-token targets, or IgnoreLabel.
	Labels []int32
	// Mask is 1 where Labels holds a target and 0 elsewhere.
	Mask []float32
	// Segments number the examples of a row from 1; 0 is padding.
	Segments []int32
	// Positions restart at 0 with each segment (0 at padding); use them as
	// the RoPE positions.
	Positions []int32
	// Rows is the number of rows holding an example; the remaining rows
	// (only in the last batch of a finite stream) are all padding.
	Rows int
	// Targets is the number of positions with a target (the sum of Mask).
	Targets int
	// Examples are the data-set indices of the examples placed, in order.
	Examples []int
	// Start and End are the stream positions before and after the batch.
	Start, End Position
}

// Loader turns a data set into a deterministic stream of batches. The
// stream is the concatenation of epoch orders; rows take examples from it
// in order, so a row may hold the end of one epoch and the start of the
// next. Batches depend only on the data set, the config and the start
// position, so [Loader.Seek] to a saved [Loader.Position] reproduces the
// rest of an interrupted run exactly. A Loader is not safe for concurrent use.
type Loader struct {
	ds        *Dataset
	cfg       LoaderConfig
	pos       Position
	perm      []int // order of epoch permEpoch
	permEpoch int
}

// NewLoader returns a loader at the start of epoch 0.
func NewLoader(ds *Dataset, cfg LoaderConfig) (*Loader, error) {
	if ds == nil || len(ds.Examples) == 0 {
		return nil, fmt.Errorf("new loader: %w", ErrNoExamples)
	}
	if cfg.Context == 0 {
		cfg.Context = ds.Context
	}
	if cfg.Batch < 1 || cfg.Context < 2 || cfg.Epochs < 0 {
		return nil, fmt.Errorf("new loader for %s: batch %d, context %d, epochs %d: want batch >= 1, context >= 2, epochs >= 0",
			ds.Name, cfg.Batch, cfg.Context, cfg.Epochs)
	}
	for i, ex := range ds.Examples {
		if len(ex.Tokens) == 0 || len(ex.Tokens) > cfg.Context || len(ex.Target) != len(ex.Tokens) {
			return nil, fmt.Errorf("new loader for %s: example %d (%s:%d) has %d tokens and %d flags; the context is %d",
				ds.Name, i, ex.File, ex.Line, len(ex.Tokens), len(ex.Target), cfg.Context)
		}
	}
	return &Loader{ds: ds, cfg: cfg, permEpoch: -1}, nil
}

// Position returns the position of the next example to be batched.
func (l *Loader) Position() Position { return l.pos }

// Seek moves the stream to p, typically a position saved in a checkpoint.
func (l *Loader) Seek(p Position) error {
	n := len(l.ds.Examples)
	if p.Epoch < 0 || p.Index < 0 || p.Index >= n || (l.cfg.Epochs > 0 && p.Epoch > l.cfg.Epochs) ||
		(l.cfg.Epochs > 0 && p.Epoch == l.cfg.Epochs && p.Index != 0) {
		return fmt.Errorf("seek %s to epoch %d index %d: %w (%d examples, %d epochs)", l.ds.Name, p.Epoch, p.Index, ErrPosition, n, l.cfg.Epochs)
	}
	l.pos = p
	return nil
}

// Next returns the next batch, or io.EOF after the last epoch. Every batch
// has B rows; only the last one of a finite stream can have empty rows.
func (l *Loader) Next() (*Batch, error) {
	if l.done() {
		return nil, io.EOF
	}
	B, T := l.cfg.Batch, l.cfg.Context
	b := &Batch{B: B, T: T, Tokens: make([]int32, B*T), Labels: make([]int32, B*T), Mask: make([]float32, B*T),
		Segments: make([]int32, B*T), Positions: make([]int32, B*T), Start: l.pos}
	for i := range b.Tokens {
		b.Tokens[i] = l.ds.Pad
		b.Labels[i] = IgnoreLabel
	}
	l.fill(b)
	b.End = l.pos
	return b, nil
}

// Steps returns the number of batches a finite stream yields from its
// start, or -1 for an endless one. It simulates the stream (lengths only)
// and leaves the loader where it is.
func (l *Loader) Steps() int {
	if l.cfg.Epochs == 0 {
		return -1
	}
	sim := &Loader{ds: l.ds, cfg: l.cfg, permEpoch: -1}
	n := 0
	for !sim.done() {
		sim.fill(nil)
		n++
	}
	return n
}

// done reports whether a finite stream is exhausted.
func (l *Loader) done() bool { return l.cfg.Epochs > 0 && l.pos.Epoch >= l.cfg.Epochs }

// current returns the data-set index of the example at the position.
func (l *Loader) current() int {
	if !l.cfg.Shuffle {
		return l.pos.Index
	}
	if l.permEpoch != l.pos.Epoch {
		l.perm = rand.New(rand.NewPCG(l.cfg.Seed, uint64(l.pos.Epoch))).Perm(len(l.ds.Examples))
		l.permEpoch = l.pos.Epoch
	}
	return l.perm[l.pos.Index]
}

// advance moves to the next example.
func (l *Loader) advance() {
	l.pos.Index++
	if l.pos.Index == len(l.ds.Examples) {
		l.pos = Position{Epoch: l.pos.Epoch + 1}
	}
}

// fill consumes one batch worth of examples, writing them into b unless b
// is nil (a dry run for Steps).
func (l *Loader) fill(b *Batch) {
	T := l.cfg.Context
	for r := 0; r < l.cfg.Batch && !l.done(); r++ {
		off, seg := 0, int32(0)
		for !l.done() {
			idx := l.current()
			ex := &l.ds.Examples[idx]
			if off+len(ex.Tokens) > T {
				break
			}
			seg++
			if b != nil {
				b.place(ex, r*T+off, seg)
				b.Examples = append(b.Examples, idx)
			}
			off += len(ex.Tokens)
			l.advance()
			if !l.cfg.Pack {
				break
			}
		}
		if b != nil {
			b.Rows++
		}
	}
}

// place writes ex as segment seg starting at flat index at.
func (b *Batch) place(ex *Example, at int, seg int32) {
	n := len(ex.Tokens)
	for t, tok := range ex.Tokens {
		i := at + t
		b.Tokens[i] = tok
		b.Segments[i] = seg
		b.Positions[i] = int32(t)
		if t+1 < n && ex.Target[t+1] {
			b.Labels[i] = ex.Tokens[t+1]
			b.Mask[i] = 1
			b.Targets++
		}
	}
}

// AttentionMask returns the additive attention mask of the batch as B*T*T
// floats laid out [row][query][key] (ggml: ne0 = key, ne1 = query, ne2 =
// row): 0 where the key is at or before the query in the same segment, -Inf
// elsewhere. Padding positions attend to earlier padding of their row, so no
// query row is all -Inf.
func (b *Batch) AttentionMask() []float32 {
	T := b.T
	m := make([]float32, b.B*T*T)
	inf := float32(math.Inf(-1))
	for r := 0; r < b.B; r++ {
		seg := b.Segments[r*T : (r+1)*T]
		for q := 0; q < T; q++ {
			row := m[(r*T+q)*T : (r*T+q+1)*T]
			for k := range row {
				if k > q || seg[k] != seg[q] {
					row[k] = inf
				}
			}
		}
	}
	return m
}

// OneHot returns the labels as B*T rows of nVocab floats (ggml: ne0 =
// nVocab, ne1 = B*T), with a 1 at the label and all zeros where there is no
// target, the layout ggml's cross-entropy loss takes. It fails if a label
// is outside the vocabulary.
func (b *Batch) OneHot(nVocab int) ([]float32, error) {
	out := make([]float32, len(b.Labels)*nVocab)
	for i, lab := range b.Labels {
		if lab == IgnoreLabel {
			continue
		}
		if lab < 0 || int(lab) >= nVocab {
			return nil, fmt.Errorf("one-hot labels: label %d at position %d is outside the vocabulary of %d", lab, i, nVocab)
		}
		out[i*nVocab+int(lab)] = 1
	}
	return out, nil
}
