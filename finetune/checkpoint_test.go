package finetune_test

import (
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/finetune"
	"github.com/ggtune/ggtune/internal/fixture"
	"github.com/ggtune/ggtune/model"
	"github.com/ggtune/ggtune/train"
)

// TestGradCheckpointBitwise checks that activation checkpointing changes
// nothing but memory: for every kind of method, the gradients of a packed
// batch with recomputed activations equal those with stored activations
// bit for bit.
func TestGradCheckpointBitwise(t *testing.T) {
	path := fixture.Path(t, "models/stories260K.gguf")
	// With beta1 = beta2 = 0, no clipping and a huge eps, one AdamW step of
	// rate 1e30 moves every parameter by its gradient.
	opt := train.AdamW{Beta1: 0, Beta2: 0, Eps: 1e30}
	const B, T = 2, 24
	rng := rand.New(rand.NewPCG(7, 8))
	batch := randomBatch(rng, B, T, 5, 10)
	for _, name := range []string{"lora", "dora", "full", "prompt", "prefix", "ptuning", "ia3", "bottleneck"} {
		t.Run(name, func(t *testing.T) {
			in := resolveMethod(t, name, path).newInstance(t, path, model.Options{Threads: 2})
			defer in.close()
			m, inst, params := in.m, in.inst, in.params
			saved := make([][]float32, len(params))
			for i, p := range params {
				var err error
				saved[i], err = p.Floats()
				require.NoError(t, err)
			}
			grads := func(checkpoint bool) (float64, [][]float32) {
				for i, p := range params {
					require.NoError(t, p.SetFloats(saved[i]))
				}
				b := finetune.GraphBuilder(m, inst.Hooks(1), 1, finetune.WithGradCheckpoint(checkpoint))
				e, err := train.NewEngine(b, train.Groups(params...), m.Backend(), B, T, opt)
				require.NoError(t, err)
				defer e.Close()
				loss, err := e.Accumulate(batch)
				require.NoError(t, err)
				_, err = e.Step(1e30)
				require.NoError(t, err)
				out := make([][]float32, len(params))
				for i, p := range params {
					after, err := p.Floats()
					require.NoError(t, err)
					for k := range after {
						after[k] = saved[i][k] - after[k]
					}
					out[i] = after
				}
				return loss, out
			}
			loss0, g0 := grads(false)
			loss1, g1 := grads(true)
			assert.Equal(t, loss0, loss1, "loss")
			var nonzero int
			for i := range g0 {
				require.Equal(t, g0[i], g1[i], "gradient of %s", params[i].Name())
				for _, v := range g0[i] {
					if v != 0 {
						nonzero++
					}
				}
			}
			assert.Positive(t, nonzero, "some gradient is not zero")
			for i, p := range params {
				require.NoError(t, p.SetFloats(saved[i]))
			}
		})
	}
}
