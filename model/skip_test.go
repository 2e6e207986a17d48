package model_test

import (
	"math"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/model"
)

// skipLayers is a LayerSkipHook leaving out the layers in its set.
type skipLayers map[int]bool

func (s skipLayers) SkipLayer(layer int) bool { return s[layer] }

// TestLayerSkipHook checks the skip point against plain Go arithmetic:
// with every block skipped, stories260K's logits are the output matrix
// times the output-normed token embeddings, in the full-sequence
// graph and in a session. Skipping one block must change the logits
// (the hook is not ignored).
func TestLayerSkipHook(t *testing.T) {
	m, path := loadStories(t)
	cfg := m.Config()
	f, err := binding.OpenGGUF(path)
	require.NoError(t, err)
	defer f.Close()
	embd, err := f.ReadTensorFloats("token_embd.weight")
	require.NoError(t, err)
	norm, err := f.ReadTensorFloats("output_norm.weight")
	require.NoError(t, err)
	out := embd
	if !cfg.TiedOutput {
		out, err = f.ReadTensorFloats("output.weight")
		require.NoError(t, err)
	}
	toks := []int32{1, 403, 17, 260, 5, 88}
	ne, nv := cfg.NEmbd, cfg.NVocab
	want := make([]float64, len(toks)*nv)
	for i, tok := range toks {
		e := embd[int(tok)*ne : int(tok+1)*ne]
		ss := 0.0
		for _, v := range e {
			ss += float64(v) * float64(v)
		}
		inv := 1 / math.Sqrt(ss/float64(ne)+float64(cfg.RMSEps))
		for v := 0; v < nv; v++ {
			row := out[v*ne : (v+1)*ne]
			dot := 0.0
			for j := range e {
				dot += float64(e[j]) * inv * float64(norm[j]) * float64(row[j])
			}
			want[i*nv+v] = dot
		}
	}
	all := skipLayers{}
	for l := 0; l < cfg.NLayer; l++ {
		all[l] = true
	}
	shape := model.Shape{Batch: 1, Tokens: len(toks)}
	got, err := m.Logits(shape, toks, nil, []model.Hook{all})
	require.NoError(t, err)
	maxDiff := 0.0
	for i := range want {
		maxDiff = math.Max(maxDiff, math.Abs(float64(got[i])-want[i]))
	}
	require.Less(t, maxDiff, 1e-4, "all blocks skipped: graph vs plain Go")

	s, err := m.NewSession(model.SessionOptions{NCtx: 32, Hooks: []model.Hook{all}, F32Cache: true})
	require.NoError(t, err)
	defer s.Close()
	last, err := s.Eval(toks)
	require.NoError(t, err)
	for v := 0; v < nv; v++ {
		require.InDelta(t, want[(len(toks)-1)*nv+v], float64(last[v]), 1e-4, "session logit %d", v)
	}

	base, err := m.Logits(shape, toks, nil, nil)
	require.NoError(t, err)
	one, err := m.Logits(shape, toks, nil, []model.Hook{skipLayers{2: true}})
	require.NoError(t, err)
	diff := 0.0
	for i := range base {
		diff = math.Max(diff, math.Abs(float64(base[i]-one[i])))
	}
	require.Greater(t, diff, 1e-2, "skipping block 2 changed nothing")
}
