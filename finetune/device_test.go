package finetune_test

import (
	"context"
	"math"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/finetune"
	"github.com/ggtune/ggtune/internal/devicetest"
	"github.com/ggtune/ggtune/internal/fixture"
	"github.com/ggtune/ggtune/internal/randmodel"
	"github.com/ggtune/ggtune/model"
	"github.com/ggtune/ggtune/train"
)

// TestDeviceTrainingParity trains each method for a few optimizer steps on
// the test device and on the CPU from the same initial parameters and
// batches, with an AdamW configured to step by exactly 0.01 × the gradient
// (β1 = β2 = 0, ε = 1e30, rate 1e28): the losses of every step and the
// gradients of every parameter must agree.
func TestDeviceTrainingParity(t *testing.T) {
	be := devicetest.Backend(t, 2)
	path := fixture.Path(t, "models/stories260K.gguf")
	const B, T, steps = 2, 24, 3
	rng := rand.New(rand.NewPCG(5, 6))
	var batches []train.Batch
	for s := 0; s < steps; s++ {
		batches = append(batches, randomBatch(rng, B, T, 7, 12))
	}
	q8 := filepath.Join(t.TempDir(), "qwen2-q8_0.gguf")
	require.NoError(t, randmodel.Write(q8, randmodel.Options{Arch: "qwen2", NEmbd: 64, NHead: 4, NHeadKV: 2, NFF: 128,
		Type: binding.TypeQ8_0, Untied: true, Seed: 9}))
	opt := train.AdamW{Eps: 1e30}
	const rate = 1e28 // rate/ε: each step moves a parameter by −0.01 × its gradient
	for _, c := range []struct {
		name, method, path string
		tol                float64
		dequantize         bool // the CPU's weights in F32
	}{
		{"lora", "lora", path, tol, false}, {"full", "full", path, tol, false}, {"prompt", "prompt", path, tol, false},
		{"prefix", "prefix", path, tol, false}, {"dora", "dora", path, tol, false}, {"ia3", "ia3", path, tol, false},
		// A quantized base with grouped-query attention and biases: the
		// device multiplies by the Q8_0 weights, the CPU by their F32
		// dequantization (its own Q8_0 products would round the
		// activations to Q8_0 as well, which the device does not).
		{"lora-qwen2-q8_0", "lora", q8, tol, true},
	} {
		name, path, tol := c.name, c.path, c.tol
		t.Run(name, func(t *testing.T) {
			setup := resolveMethod(t, c.method, path)
			type result struct {
				losses []float64
				params [][][]float32 // per step, per parameter
			}
			var init [][]float32
			run := func(backend *binding.Backend) result {
				opts := model.Options{Backend: backend, Threads: 2}
				if c.dequantize && backend.IsCPU() {
					opts.Trainable = func(string) bool { return true }
				}
				in := setup.newInstance(t, path, opts)
				defer in.close()
				m, inst, groups, params := in.m, in.inst, in.groups, in.params
				if init == nil {
					for _, p := range params {
						v, err := p.Floats()
						require.NoError(t, err)
						init = append(init, v)
					}
				} else {
					require.Len(t, params, len(init))
					for i, p := range params {
						require.NoError(t, p.SetFloats(init[i]))
					}
				}
				e, err := train.NewEngine(finetune.GraphBuilder(m, inst.Hooks(1), 1), groups, m.Backend(), B, T, opt)
				require.NoError(t, err)
				defer e.Close()
				var r result
				for _, b := range batches {
					loss, err := e.Accumulate(b)
					require.NoError(t, err)
					_, err = e.Step(rate)
					require.NoError(t, err)
					r.losses = append(r.losses, loss)
					var ps [][]float32
					for _, p := range params {
						v, err := p.Floats()
						require.NoError(t, err)
						ps = append(ps, v)
					}
					r.params = append(r.params, ps)
				}
				if !backend.IsCPU() {
					logPlacement(t, e)
				}
				return r
			}
			cpu, err := binding.NewCPUBackend(2)
			require.NoError(t, err)
			defer cpu.Close()
			want := run(cpu)
			got := run(be)
			moved, worst := 0, 0.0
			for s := range want.losses {
				require.InDelta(t, want.losses[s], got.losses[s], tol*math.Abs(want.losses[s]), "loss at step %d", s)
				var wantBefore, wantAfter, gotBefore, gotAfter []float32
				for i := range want.params[s] {
					wb, gb := init[i], init[i]
					if s > 0 {
						wb, gb = want.params[s-1][i], got.params[s-1][i]
					}
					wantBefore, wantAfter = append(wantBefore, wb...), append(wantAfter, want.params[s][i]...)
					gotBefore, gotAfter = append(gotBefore, gb...), append(gotAfter, got.params[s][i]...)
					if !slices.Equal(want.params[s][i], wb) {
						moved++
					}
				}
				rel := gradError(wantBefore, wantAfter, gotBefore, gotAfter)
				worst = max(worst, rel)
				require.LessOrEqual(t, rel, tol, "step %d: gradient", s)
			}
			t.Logf("%s on %s: %d steps, losses %.6g (CPU %.6g), worst gradient error %.3g", name, be.Name(), steps, got.losses, want.losses, worst)
			require.Positive(t, moved, "no parameter moved")
		})
	}
}

// tol bounds the device's losses and gradients (all parameters of a step
// together) relative to the CPU's. It holds for F32 products: Vulkan's
// shaders for devices with F16 support round the operands of matrix
// products to F16 in shared memory (3e-4 relative per product), so .ci/run
// sets GGML_VK_DISABLE_F16 for lavapipe.
const tol = 1e-4

// gradError returns ‖Δgot − Δwant‖ / ‖Δwant‖ for the updates of the
// parameters over one step (each −0.01 × the gradient); the absolute
// difference when none moved.
func gradError(wantBefore, wantAfter, gotBefore, gotAfter []float32) float64 {
	var num, den float64
	for i := range wantAfter {
		dw := float64(wantAfter[i] - wantBefore[i])
		dg := float64(gotAfter[i] - gotBefore[i])
		num += (dg - dw) * (dg - dw)
		den += dw * dw
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}

func logPlacement(t *testing.T, e *train.Engine) {
	t.Helper()
	p := e.Placement()
	t.Logf("placement: %d splits; %v", p.Splits, p.Ops)
}

// TestDeviceAdapterLoadsInLlama trains a LoRA adapter on the test device
// through the job API, then loads it in libllama on the CPU: libllama's
// logits with the adapter equal ggtune's graph with it on the device.
func TestDeviceAdapterLoadsInLlama(t *testing.T) {
	be := devicetest.Backend(t, 2)
	j := baseJob(t, "lora")
	j.Device = devicetest.Name(t)
	j.Train.Steps, j.MaxValBatches = 12, 2
	rep, err := finetune.Run(context.Background(), j)
	require.NoError(t, err)
	t.Logf("on %s: held-out loss %.4f -> %.4f", j.Device, rep.Result.EvalBefore.Loss, rep.Result.EvalAfter.Loss)
	require.Less(t, rep.Result.EvalAfter.Loss, rep.Result.EvalBefore.Loss)

	m, err := model.Load(j.Model, model.Options{Backend: be})
	require.NoError(t, err)
	defer m.Close()
	maxDiff := llamaAdapterDiff(t, m, j.Output)
	t.Logf("max |logits(ggtune on %s) - logits(libllama on the CPU)| with the adapter: %.2e", be.Name(), maxDiff)
	require.LessOrEqual(t, maxDiff, 1e-4)
}

// TestDeviceResumesCPUCheckpoint interrupts a run on the CPU after 3 of 6
// steps and resumes its checkpoint (parameters, AdamW moments, data
// position) on the test device: the losses of all 6 steps equal an
// uninterrupted run on the CPU.
func TestDeviceResumesCPUCheckpoint(t *testing.T) {
	devicetest.Backend(t, 2)
	j := baseJob(t, "lora")
	j.Train.Steps = 6
	j.Val, j.ValSplit = "", 0
	dev := devicetest.Name(t)
	want, got := interruptAndResume(t, j, dev)
	for i := range want {
		require.InDelta(t, want[i], got[i], tol*want[i], "step %d", i+1)
	}
	t.Logf("losses: CPU %.6g, CPU then %s %.6g", want, dev, got)
}
