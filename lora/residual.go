package lora

import (
	"fmt"
	"math"

	"gonum.org/v1/gonum/mat"

	"github.com/ggtune/ggtune/binding"
)

// Initialisations that move part of the base weight into the adapter.
const (
	// InitPiSSA (Meng et al. 2024) starts A and B at the top r singular
	// vectors of W: s·B·A = U_r·Σ_r·V_rᵀ, A = √(Σ_r/s)·V_rᵀ, B = U_r·√(Σ_r/s).
	InitPiSSA Init = "pissa"
	// InitOLoRA (Büyükakyüz 2024) starts A and B at the first r rows of R
	// and columns of Q of W = Q·R.
	InitOLoRA Init = "olora"
)

// residual reports whether the initialisation moves part of W into the
// adapter: the model then runs W − s·B₀·A₀ + s·B·A, with B₀ and A₀ the
// frozen initial factors.
func (c Config) residual() bool { return c.Init == InitPiSSA || c.Init == InitOLoRA }

// initResidual sets A and B (and their frozen copies A0, B0) from the base
// weight's values (ggml layout [in, out], row o holds output o's inputs).
func (w *Weight) initResidual(init Init, base []float32, scale float32) error {
	in, r := int(w.A.Dim(0)), int(w.A.Dim(1))
	out := int(w.B.Dim(1))
	if len(base) != in*out {
		return fmt.Errorf("%s: %d values for [%d, %d]", w.Base, len(base), in, out)
	}
	if r > min(in, out) {
		return fmt.Errorf("%w: %s init of %s: rank %d exceeds min(%d, %d)", ErrConfig, init, w.Base, r, in, out)
	}
	data := make([]float64, len(base))
	for i, v := range base {
		data[i] = float64(v)
	}
	W := mat.NewDense(out, in, data)
	av := make([]float32, r*in)  // A (r, in), row-major = ggml [in, r]
	bv := make([]float32, out*r) // B (out, r), row-major = ggml [r, out]
	s := float64(scale)
	switch init {
	case InitPiSSA:
		var svd mat.SVD
		if !svd.Factorize(W, mat.SVDThin) {
			return fmt.Errorf("pissa init of %s: the SVD did not converge", w.Base)
		}
		var u, v mat.Dense
		svd.UTo(&u)
		svd.VTo(&v)
		sv := svd.Values(nil)
		for k := 0; k < r; k++ {
			g := math.Sqrt(sv[k] / s)
			for i := 0; i < in; i++ {
				av[k*in+i] = float32(g * v.At(i, k))
			}
			for o := 0; o < out; o++ {
				bv[o*r+k] = float32(u.At(o, k) * g)
			}
		}
	case InitOLoRA:
		q, rr := qr(W)
		for k := 0; k < r; k++ {
			for i := 0; i < in; i++ {
				av[k*in+i] = float32(rr.At(k, i))
			}
			for o := 0; o < out; o++ {
				bv[o*r+k] = float32(q.At(o, k))
			}
		}
	default:
		return fmt.Errorf("%w: init %q", ErrConfig, init)
	}
	for _, p := range []struct {
		t    *binding.Tensor
		vals []float32
	}{{w.A, av}, {w.B, bv}, {w.A0, av}, {w.B0, bv}} {
		if err := p.t.SetFloats(p.vals); err != nil {
			return err
		}
	}
	return nil
}

// qr returns the reduced QR factors of W (m×n): Q m×k, R k×n, k = min(m, n).
// A wide W is factorised through its leading m×m block: W = Q·(Qᵀ·W).
func qr(W *mat.Dense) (*mat.Dense, *mat.Dense) {
	m, n := W.Dims()
	sq := W
	if m < n {
		sq = mat.DenseCopyOf(W.Slice(0, m, 0, m))
	}
	var f mat.QR
	f.Factorize(sq)
	var q mat.Dense
	f.QTo(&q)
	k := min(m, n)
	Q := mat.DenseCopyOf(q.Slice(0, m, 0, k))
	var R mat.Dense
	R.Mul(Q.T(), W)
	return Q, &R
}
