package model_test

import (
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/model"
)

// controlVector is a LayerOutputHook adding a fixed direction to the
// output of some layers, as llama.cpp's control vectors do.
type controlVector struct {
	dirs map[int]*binding.Tensor
}

func (c *controlVector) LayerOutput(b *model.Builder, layer int, h *binding.Tensor) *binding.Tensor {
	if d, ok := c.dirs[layer]; ok {
		return b.Ctx.Add(h, d)
	}
	return h
}

// TestLayerOutputHookMatchesControlVector compares the LayerOutputHook
// point with libllama's control vectors (llama_apply_adapter_cvec), in the
// full-sequence graph and in a session.
func TestLayerOutputHookMatchesControlVector(t *testing.T) {
	m, path := loadStories(t)
	cfg := m.Config()
	ne, nl := cfg.NEmbd, cfg.NLayer
	// libllama's buffer starts at layer 1; apply to layers 1..nl-1.
	data := randFloats(ne*(nl-1), 0.3, 11)
	var shapes [][]int64
	var rows [][]float32
	for l := 1; l < nl; l++ {
		shapes = append(shapes, []int64{int64(ne)})
		rows = append(rows, data[(l-1)*ne:l*ne])
	}
	ts := newParams(t, m, rows, shapes)
	hook := &controlVector{dirs: map[int]*binding.Tensor{}}
	for l := 1; l < nl; l++ {
		hook.dirs[l] = ts[l-1]
	}
	toks := []int32{1, 403, 17, 260, 5, 88, 301, 44}

	lm, err := binding.LoadModel(path, binding.ModelParams{})
	require.NoError(t, err)
	defer lm.Close()
	lctx, err := binding.NewLlamaContext(lm, binding.ContextParams{NCtx: 64, Threads: 2, F32Cache: true})
	require.NoError(t, err)
	defer lctx.Close()
	require.NoError(t, lctx.SetControlVector(data, 1, nl-1))
	require.NoError(t, lctx.Decode(toks, 0, true))

	base, err := m.Logits(model.Shape{Batch: 1, Tokens: len(toks)}, toks, nil, nil)
	require.NoError(t, err)
	ours, err := m.Logits(model.Shape{Batch: 1, Tokens: len(toks)}, toks, nil, []model.Hook{hook})
	require.NoError(t, err)
	nv := cfg.NVocab
	var diff, moved float64
	for i := range toks {
		want, err := lctx.Logits(i)
		require.NoError(t, err)
		for k := 0; k < nv; k++ {
			diff = math.Max(diff, math.Abs(float64(want[k]-ours[i*nv+k])))
			moved = math.Max(moved, math.Abs(float64(want[k]-base[i*nv+k])))
		}
	}
	assert.Greater(t, moved, 0.1, "the control vector changes the output")
	assert.Less(t, diff, 1e-4)

	s, err := m.NewSession(model.SessionOptions{NCtx: 64, F32Cache: true, Hooks: []model.Hook{hook}})
	require.NoError(t, err)
	defer s.Close()
	last, err := s.Eval(toks)
	require.NoError(t, err)
	want, err := lctx.Logits(len(toks) - 1)
	require.NoError(t, err)
	var sd float64
	for k := range want {
		sd = math.Max(sd, math.Abs(float64(want[k]-last[k])))
	}
	assert.Less(t, sd, 1e-4)
}
