package data_test

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/data"
	"github.com/ggtune/ggtune/internal/fixture"
)

// synthetic builds n examples of lengths 2..12 whose tokens encode their
// index and position; odd examples have a two-token prompt.
func synthetic(n, ctx int) *data.Dataset {
	ds := &data.Dataset{Name: "synthetic", Context: ctx, Pad: 7}
	for i := range n {
		l := 2 + (i*7)%11
		ex := data.Example{Tokens: make([]int32, l), Target: make([]bool, l), Line: i + 1}
		for t := range l {
			ex.Tokens[t] = int32(1000*i + t)
			ex.Target[t] = t > 0 && (i%2 == 0 || t >= 2)
		}
		ds.Examples = append(ds.Examples, ex)
	}
	return ds
}

// checkBatch verifies a batch against the data set: placement, segments,
// positions, padding, labels, mask and packing tightness.
func checkBatch(t *testing.T, ds *data.Dataset, cfg data.LoaderConfig, b *data.Batch) {
	t.Helper()
	B, T := cfg.Batch, cfg.Context
	require.Equal(t, B, b.B)
	require.Equal(t, T, b.T)
	for _, s := range [][]int32{b.Tokens, b.Labels, b.Segments, b.Positions} {
		require.Len(t, s, B*T)
	}
	require.Len(t, b.Mask, B*T)
	next := 0 // cursor in b.Examples
	rows, targets := 0, 0
	used := make([]int, B)
	for r := range B {
		off := 0
		for seg := int32(1); next < len(b.Examples) && off < T && b.Segments[r*T+off] == seg; seg++ {
			ex := ds.Examples[b.Examples[next]]
			next++
			for p, tok := range ex.Tokens {
				i := r*T + off + p
				require.Equal(t, tok, b.Tokens[i])
				require.Equal(t, seg, b.Segments[i])
				require.Equal(t, int32(p), b.Positions[i], "positions restart per segment")
				want := data.IgnoreLabel
				if p+1 < len(ex.Tokens) && ex.Target[p+1] {
					want = ex.Tokens[p+1]
				}
				require.Equal(t, want, b.Labels[i], "row %d pos %d", r, off+p)
			}
			off += len(ex.Tokens)
			if !cfg.Pack {
				break
			}
		}
		used[r] = off
		if off > 0 {
			rows++
		}
		for i := r*T + off; i < (r+1)*T; i++ {
			require.Equal(t, ds.Pad, b.Tokens[i], "padding")
			require.Zero(t, b.Segments[i])
			require.Zero(t, b.Positions[i])
			require.Equal(t, data.IgnoreLabel, b.Labels[i])
		}
	}
	require.Equal(t, len(b.Examples), next, "every placed example is found in the rows")
	for i, lab := range b.Labels {
		if lab >= 0 {
			targets++
			require.Equal(t, float32(1), b.Mask[i])
			require.Less(t, i%T, T-1)
			require.Equal(t, b.Segments[i], b.Segments[i+1], "a label never crosses a segment")
			require.Equal(t, b.Tokens[i+1], lab)
		} else {
			require.Zero(t, b.Mask[i])
		}
	}
	require.Equal(t, targets, b.Targets)
	require.Equal(t, rows, b.Rows)
	if cfg.Pack {
		// A row is closed only when the following example does not fit.
		for r := range B - 1 {
			if k := countBefore(b, r+1); k < len(b.Examples) && used[r+1] > 0 {
				require.Greater(t, len(ds.Examples[b.Examples[k]].Tokens), T-used[r], "row %d could hold the next example", r)
			}
		}
	}
}

// countBefore counts the examples placed in rows before row r.
func countBefore(b *data.Batch, r int) int {
	n := 0
	for i := 0; i < r*b.T; i++ {
		if b.Positions[i] == 0 && b.Segments[i] > 0 {
			n++
		}
	}
	return n
}

func TestLoaderBatches(t *testing.T) {
	ds := synthetic(37, 16)
	totalTargets := 0
	for _, ex := range ds.Examples {
		for _, tgt := range ex.Target[1:] {
			if tgt {
				totalTargets++
			}
		}
	}
	for _, pack := range []bool{true, false} {
		for _, shuffle := range []bool{true, false} {
			t.Run(fmt.Sprintf("pack=%v shuffle=%v", pack, shuffle), func(t *testing.T) {
				cfg := data.LoaderConfig{Batch: 3, Context: 16, Pack: pack, Shuffle: shuffle, Seed: 42, Epochs: 2}
				l, err := data.NewLoader(ds, cfg)
				require.NoError(t, err)
				var stream []int
				steps, targets := 0, 0
				pos := data.Position{}
				for {
					b, err := l.Next()
					if err == io.EOF {
						break
					}
					require.NoError(t, err)
					checkBatch(t, ds, cfg, b)
					require.Equal(t, pos, b.Start)
					pos = b.End
					require.Equal(t, pos, l.Position())
					stream = append(stream, b.Examples...)
					targets += b.Targets
					steps++
					if pos.Epoch < 2 {
						require.Equal(t, cfg.Batch, b.Rows, "only the last batch has empty rows")
					}
				}
				_, err = l.Next()
				assert.ErrorIs(t, err, io.EOF)
				assert.Equal(t, steps, l.Steps())
				assert.Equal(t, 2*totalTargets, targets)
				require.Len(t, stream, 2*len(ds.Examples))
				for e := range 2 {
					want := rand.New(rand.NewPCG(42, uint64(e))).Perm(len(ds.Examples))
					if !shuffle {
						want = want[:0]
						for i := range ds.Examples {
							want = append(want, i)
						}
					}
					assert.Equal(t, want, stream[e*len(ds.Examples):(e+1)*len(ds.Examples)], "epoch %d order", e)
				}
				if pack {
					assert.Less(t, steps*cfg.Batch, 2*len(ds.Examples), "packing puts several examples in a row")
				} else {
					assert.Equal(t, (2*len(ds.Examples)+cfg.Batch-1)/cfg.Batch, steps)
				}
			})
		}
	}
}

func TestLoaderDeterminismAndResume(t *testing.T) {
	ds := synthetic(23, 16)
	cfg := data.LoaderConfig{Batch: 2, Context: 16, Pack: true, Shuffle: true, Seed: 9}
	run := func(l *data.Loader, n int) []*data.Batch {
		var out []*data.Batch
		for range n {
			b, err := l.Next()
			require.NoError(t, err)
			out = append(out, b)
		}
		return out
	}
	a, err := data.NewLoader(ds, cfg)
	require.NoError(t, err)
	b, err := data.NewLoader(ds, cfg)
	require.NoError(t, err)
	assert.Equal(t, run(a, 12), run(b, 12), "same seed, same batches")
	assert.Equal(t, -1, a.Steps(), "endless stream")

	other := cfg
	other.Seed = 10
	c, err := data.NewLoader(ds, other)
	require.NoError(t, err)
	fresh, err := data.NewLoader(ds, cfg)
	require.NoError(t, err)
	assert.NotEqual(t, run(fresh, 3)[0].Examples, run(c, 3)[0].Examples, "another seed, another order")

	// Interrupt after 7 batches, save the position as a checkpoint would,
	// and resume in a new loader: the next batches (crossing epochs) match.
	full, err := data.NewLoader(ds, cfg)
	require.NoError(t, err)
	run(full, 7)
	saved, err := json.Marshal(full.Position())
	require.NoError(t, err)
	want := run(full, 15)
	require.Greater(t, want[len(want)-1].End.Epoch, want[0].Start.Epoch)

	var pos data.Position
	require.NoError(t, json.Unmarshal(saved, &pos))
	resumed, err := data.NewLoader(ds, cfg)
	require.NoError(t, err)
	require.NoError(t, resumed.Seek(pos))
	assert.Equal(t, want, run(resumed, 15))
}

func TestLoaderErrors(t *testing.T) {
	ds := synthetic(5, 16)
	_, err := data.NewLoader(&data.Dataset{}, data.LoaderConfig{Batch: 1})
	assert.ErrorIs(t, err, data.ErrNoExamples)
	_, err = data.NewLoader(ds, data.LoaderConfig{Batch: 0})
	assert.ErrorContains(t, err, "batch 0")
	_, err = data.NewLoader(ds, data.LoaderConfig{Batch: 1, Context: 8})
	assert.ErrorContains(t, err, "the context is 8")

	l, err := data.NewLoader(ds, data.LoaderConfig{Batch: 1, Epochs: 2})
	require.NoError(t, err)
	for _, p := range []data.Position{{Epoch: -1}, {Index: 5}, {Index: -1}, {Epoch: 3}, {Epoch: 2, Index: 1}} {
		assert.ErrorIs(t, l.Seek(p), data.ErrPosition, "%+v", p)
	}
	require.NoError(t, l.Seek(data.Position{Epoch: 2}))
	_, err = l.Next()
	assert.ErrorIs(t, err, io.EOF)
}

func TestAttentionMaskAndOneHot(t *testing.T) {
	ds := &data.Dataset{Name: "tiny", Context: 6, Pad: 0, Examples: []data.Example{
		{Tokens: []int32{5, 6}, Target: []bool{false, true}},
		{Tokens: []int32{7, 8, 9}, Target: []bool{false, false, true}},
	}}
	l, err := data.NewLoader(ds, data.LoaderConfig{Batch: 1, Pack: true, Epochs: 1})
	require.NoError(t, err)
	b, err := l.Next()
	require.NoError(t, err)
	assert.Equal(t, []int32{5, 6, 7, 8, 9, 0}, b.Tokens)
	assert.Equal(t, []int32{1, 1, 2, 2, 2, 0}, b.Segments)
	assert.Equal(t, []int32{0, 1, 0, 1, 2, 0}, b.Positions)
	assert.Equal(t, []int32{6, -1, -1, 9, -1, -1}, b.Labels)
	assert.Equal(t, []float32{1, 0, 0, 1, 0, 0}, b.Mask)

	x := float32(math.Inf(-1))
	assert.Equal(t, []float32{
		0, x, x, x, x, x,
		0, 0, x, x, x, x,
		x, x, 0, x, x, x,
		x, x, 0, 0, x, x,
		x, x, 0, 0, 0, x,
		x, x, x, x, x, 0,
	}, b.AttentionMask())

	oh, err := b.OneHot(10)
	require.NoError(t, err)
	want := make([]float32, 60)
	want[0*10+6], want[3*10+9] = 1, 1
	assert.Equal(t, want, oh)
	_, err = b.OneHot(9)
	assert.ErrorContains(t, err, "outside the vocabulary")
}

func TestLoaderOnTokenizedData(t *testing.T) {
	m := vocab(t)
	ds, err := data.Load(fixture.Path(t, "text/wikisql-valid.jsonl"), m, data.Options{Context: 128})
	require.NoError(t, err)
	for _, pack := range []bool{true, false} {
		cfg := data.LoaderConfig{Batch: 4, Context: 256, Pack: pack, Shuffle: true, Seed: 1, Epochs: 1}
		l, err := data.NewLoader(ds, cfg)
		require.NoError(t, err)
		targets, n := 0, 0
		for {
			b, err := l.Next()
			if err == io.EOF {
				break
			}
			require.NoError(t, err)
			checkBatch(t, ds, cfg, b)
			targets += b.Targets
			n++
		}
		assert.Equal(t, ds.Stats.Targets, targets, "pack=%v: each target once per epoch", pack)
		assert.Equal(t, l.Steps(), n)
	}
}

func TestSplit(t *testing.T) {
	m := vocab(t)
	ds, err := data.Load(fixture.Path(t, "text/wikisql-train.jsonl"), m, data.Options{Context: 128})
	require.NoError(t, err)
	require.Len(t, ds.Examples, 1000)
	train, val, err := ds.Split(0.1, 3)
	require.NoError(t, err)
	require.Equal(t, 900, train.Len())
	require.Equal(t, 100, val.Len())
	lines := func(d *data.Dataset) []int {
		var out []int
		for _, ex := range d.Examples {
			out = append(out, ex.Line)
		}
		return out
	}
	seen := map[int]int{}
	for _, l := range append(lines(train), lines(val)...) {
		seen[l]++
	}
	require.Len(t, seen, 1000, "train and validation partition the examples")
	assert.IsIncreasing(t, lines(val), "source order is kept")
	assert.Equal(t, train.Stats.Targets+val.Stats.Targets, ds.Stats.Targets)

	_, val2, err := ds.Split(0.1, 3)
	require.NoError(t, err)
	assert.Equal(t, lines(val), lines(val2), "same seed, same split")
	_, val3, err := ds.Split(0.1, 4)
	require.NoError(t, err)
	assert.NotEqual(t, lines(val), lines(val3))

	want := rand.New(rand.NewPCG(3, 0x73706c6974)).Perm(1000)[:100]
	got := map[int]bool{}
	for _, l := range lines(val) {
		got[l-1] = true
	}
	for _, i := range want {
		assert.True(t, got[i], "example %d is in the documented split", i)
	}

	for _, f := range []float64{0, 1, -0.5, math.NaN()} {
		_, _, err := ds.Split(f, 1)
		assert.Error(t, err, "%g", f)
	}
	_, _, err = synthetic(1, 16).Split(0.5, 1)
	assert.ErrorContains(t, err, "too few")
}
