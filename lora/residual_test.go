package lora_test

import (
	"math"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gonum.org/v1/gonum/mat"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/internal/fixture"
	"github.com/ggtune/ggtune/internal/methodtest"
	"github.com/ggtune/ggtune/lora"
	"github.com/ggtune/ggtune/method"
	"github.com/ggtune/ggtune/model"
)

// dense returns a ggml [n0, n1] tensor as an n1×n0 matrix.
func dense(t *testing.T, vals []float32, n0, n1 int64) *mat.Dense {
	d := make([]float64, len(vals))
	for i, v := range vals {
		d[i] = float64(v)
	}
	return mat.NewDense(int(n1), int(n0), d)
}

func TestPiSSAAndOLoRAInit(t *testing.T) {
	path := fixture.Path(t, "models/stories260K.gguf")
	m, err := model.Load(path, model.Options{Threads: 2})
	require.NoError(t, err)
	defer m.Close()
	f, err := binding.OpenGGUF(path)
	require.NoError(t, err)
	defer f.Close()
	toks := methodtest.Tokens
	base := methodtest.GraphLogits(t, m, nil, toks)
	for _, init := range []lora.Init{lora.InitPiSSA, lora.InitOLoRA} {
		t.Run(string(init), func(t *testing.T) {
			cfg := lora.DefaultConfig()
			cfg.Init, cfg.Alpha = init, 16
			a, err := lora.New(cfg, f, m.Backend())
			require.NoError(t, err)
			defer a.Close()
			assert.Zero(t, methodtest.MaxAbsDiff(base, methodtest.GraphLogits(t, m, []model.Hook{a.Hook(1)}, toks)),
				"the residual base plus the initial adapter is the base")

			// Properties of the factorisations, per matrix: the residual
			// E = W - s·B·A is orthogonal to A's rows and B's columns (SVD),
			// and B has orthonormal columns with A = Bᵀ·W (QR).
			s := float64(a.Scale())
			for _, w := range a.Weights() {
				wv, err := f.ReadTensorFloats(w.Base)
				require.NoError(t, err)
				av, err := w.A.Floats()
				require.NoError(t, err)
				bv, err := w.B.Floats()
				require.NoError(t, err)
				W := dense(t, wv, w.A.Dim(0), w.B.Dim(1))
				A, B := dense(t, av, w.A.Dim(0), w.A.Dim(1)), dense(t, bv, w.B.Dim(0), w.B.Dim(1))
				var BA, E, EA, BE, BB, BW mat.Dense
				BA.Mul(B, A)
				BA.Scale(s, &BA)
				E.Sub(W, &BA)
				tol := 1e-4 * mat.Norm(W, 2)
				if init == lora.InitPiSSA {
					EA.Mul(&E, A.T())
					BE.Mul(B.T(), &E)
					assert.Less(t, mat.Norm(&EA, math.Inf(1)), tol*mat.Norm(A, 2), "%s: E·Aᵀ = 0", w.Base)
					assert.Less(t, mat.Norm(&BE, math.Inf(1)), tol*mat.Norm(B, 2), "%s: Bᵀ·E = 0", w.Base)
					assert.InDelta(t, mat.Norm(W, 2)*mat.Norm(W, 2), mat.Norm(&BA, 2)*mat.Norm(&BA, 2)+mat.Norm(&E, 2)*mat.Norm(&E, 2),
						1e-3*mat.Norm(W, 2)*mat.Norm(W, 2), "%s: the Frobenius norm splits", w.Base)
					continue
				}
				BB.Mul(B.T(), B)
				assert.True(t, mat.EqualApprox(&BB, eye(int(w.A.Dim(1))), 1e-4), "%s: BᵀB = I", w.Base)
				BW.Mul(B.T(), W)
				assert.True(t, mat.EqualApprox(&BW, A, 1e-4*mat.Norm(W, 2)), "%s: A = Bᵀ·W", w.Base)
			}

			// After training (here: a perturbation), the file is a plain LoRA
			// of rank 2r for the original base: libllama loads it and agrees.
			randomize(t, a, 5)
			want := methodtest.GraphLogits(t, m, []model.Hook{a.Hook(1)}, toks)
			require.Greater(t, methodtest.MaxAbsDiff(base, want), 1e-2)
			dir := t.TempDir()
			file := filepath.Join(dir, "a.gguf")
			require.NoError(t, a.Save(file))
			typ, err := method.AdapterType(file)
			require.NoError(t, err)
			assert.Equal(t, "lora", typ)
			d := methodtest.MaxAbsDiff(methodtest.LlamaLogitsWithLoRA(t, path, file, 1, toks), want)
			t.Logf("RESULT %s: max |libllama(base + converted adapter) - ggtune| = %.2e", init, d)
			assert.LessOrEqual(t, d, 1e-4, "llama.cpp loads the converted adapter on the original base")

			back, err := lora.Load(file, f, m.Backend())
			require.NoError(t, err)
			defer back.Close()
			assert.Equal(t, 2*cfg.Rank, back.Config().Rank)
			assert.LessOrEqual(t, methodtest.MaxAbsDiff(want, methodtest.GraphLogits(t, m, []model.Hook{back.Hook(1)}, toks)), 1e-4,
				"ggtune loads it as a plain LoRA (the sums differ only in order)")

			f32 := binding.TypeF32
			merged := filepath.Join(dir, "merged.gguf")
			require.NoError(t, lora.Merge(path, merged, []lora.Scaled{{Adapter: a, Scale: 1}}, lora.MergeOptions{Type: &f32}))
			dm := methodtest.MaxAbsDiff(methodtest.LlamaLogits(t, merged, toks), want)
			t.Logf("RESULT %s: max |libllama(merged) - ggtune| = %.2e", init, dm)
			assert.LessOrEqual(t, dm, 1e-4)
		})
	}
}

func eye(n int) *mat.Dense {
	d := mat.NewDense(n, n, nil)
	for i := 0; i < n; i++ {
		d.Set(i, i, 1)
	}
	return d
}
