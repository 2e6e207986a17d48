// Package gradcheck checks the gradients of ggml's automatic
// differentiation ([binding.Graph.BuildBackward]) against central finite
// differences. It is plain Go over package binding, for tests of every
// package that builds trainable graphs.
//
// The pattern: a [Case] lists F32 parameters with their initial values and a
// build function that turns them into an output tensor of any shape. Check
// builds loss = sum(w ⊙ output) with fixed random weights w (so that every
// output element contributes a different, nontrivial amount), runs ggml's
// backward pass once, and compares each parameter's gradient with
//
//	(loss(p + h) - loss(p - h)) / (2h)
//
// for every element, where the loss is evaluated by a forward-only graph and
// summed in float64. Everything lives in one allocating [binding.Context]
// computed on the CPU backend, so build functions may create constant
// tensors with data directly (ctx.NewF32(data, shape...)).
package gradcheck

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/ggtune/ggtune/binding"
)

// Param is one trainable F32 tensor: its name, shape (innermost first) and
// initial values.
type Param struct {
	Name  string
	Shape []int64
	Data  []float32
}

// BuildFunc builds the output of the graph under test from the parameter
// tensors (in the order of [Case.Params]). It returns nil when an operation
// failed; Check then reports ctx.Err().
type BuildFunc func(ctx *binding.Context, params []*binding.Tensor) *binding.Tensor

// Case describes one gradient check.
type Case struct {
	Params []Param
	Build  BuildFunc
	// Reference, if set, builds the function whose finite differences are
	// the oracle, instead of Build. It must produce an output of the same
	// shape; use it where Build is not smooth in the parameters (for
	// example a quantized weight, whose mul_mat also quantizes the input,
	// is checked against the same product with the dequantized weight).
	Reference BuildFunc
	Eps       float64 // finite-difference step (default 1e-3)
	Seed      uint64  // seed of the loss weights
	Threads   int     // CPU threads (default 1)
	MemSize   int64   // context size in bytes (default 64 MiB)
	GraphSize int     // graph capacity in nodes (default 4096)
}

// Result compares the two gradients of one parameter.
type Result struct {
	Name     string
	Analytic []float64 // ggml's backward pass
	Numeric  []float64 // central finite differences
	// RelErr is ||Analytic - Numeric|| / max(||Analytic||, ||Numeric||)
	// (0 when both are zero).
	RelErr float64
	// MaxAbsErr is the largest element-wise difference.
	MaxAbsErr float64
	// Norm is ||Numeric||, to tell a trivially zero gradient from a real one.
	Norm float64
}

// String summarises the result for test messages.
func (r Result) String() string {
	return fmt.Sprintf("%s: relative error %.3g, max abs error %.3g, |grad| %.3g", r.Name, r.RelErr, r.MaxAbsErr, r.Norm)
}

// Uniform returns a parameter with values uniform in [lo, hi).
func Uniform(rng *rand.Rand, name string, lo, hi float32, shape ...int64) Param {
	data := make([]float32, elements(shape))
	for i := range data {
		data[i] = lo + (hi-lo)*rng.Float32()
	}
	return Param{Name: name, Shape: shape, Data: data}
}

// Signed returns a parameter whose values have magnitudes uniform in
// [lo, hi) and random signs (keeping them away from zero, where functions
// such as relu and abs have a kink).
func Signed(rng *rand.Rand, name string, lo, hi float32, shape ...int64) Param {
	p := Uniform(rng, name, lo, hi, shape...)
	for i := range p.Data {
		if rng.IntN(2) == 0 {
			p.Data[i] = -p.Data[i]
		}
	}
	return p
}

func elements(shape []int64) int64 {
	n := int64(1)
	for _, d := range shape {
		n *= d
	}
	return n
}

// Check runs the gradient check of c and returns one result per parameter.
func Check(c Case) ([]Result, error) {
	if len(c.Params) == 0 || c.Build == nil {
		return nil, errors.New("gradcheck: a case needs parameters and a build function")
	}
	eps := c.Eps
	if eps == 0 {
		eps = 1e-3
	}
	threads := c.Threads
	if threads <= 0 {
		threads = 1
	}
	mem := c.MemSize
	if mem <= 0 {
		mem = 64 << 20
	}
	gsize := c.GraphSize
	if gsize <= 0 {
		gsize = 4096
	}
	ctx, err := binding.NewContext(mem, false)
	if err != nil {
		return nil, fmt.Errorf("gradcheck: %w", err)
	}
	defer ctx.Close()

	params := make([]*binding.Tensor, len(c.Params))
	data := make([][]float32, len(c.Params))
	for i, p := range c.Params {
		if int64(len(p.Data)) != elements(p.Shape) {
			return nil, fmt.Errorf("gradcheck: parameter %q has %d values for shape %v", p.Name, len(p.Data), p.Shape)
		}
		data[i] = append([]float32(nil), p.Data...)
		t := ctx.NewF32(data[i], p.Shape...)
		if t == nil {
			return nil, fmt.Errorf("gradcheck: parameter %q: %w", p.Name, ctx.Err())
		}
		t.SetName(p.Name)
		if err := t.SetParam(); err != nil {
			return nil, fmt.Errorf("gradcheck: %w", err)
		}
		params[i] = t
	}

	out := c.Build(ctx, params)
	if out == nil {
		return nil, fmt.Errorf("gradcheck: build: %w", ctx.Err())
	}
	if out.Type() != binding.TypeF32 {
		return nil, fmt.Errorf("gradcheck: output %s is not f32", out)
	}
	ref := out
	if c.Reference != nil {
		if ref = c.Reference(ctx, params); ref == nil {
			return nil, fmt.Errorf("gradcheck: reference: %w", ctx.Err())
		}
		if ref.Shape() != out.Shape() || ref.Type() != binding.TypeF32 {
			return nil, fmt.Errorf("gradcheck: reference %s does not match output %s", ref, out)
		}
	}

	// Loss weights: magnitudes in [0.5, 1.5) with random signs.
	rng := rand.New(rand.NewPCG(c.Seed, 0x67726164))
	shape := out.Shape()
	weights := make([]float32, out.Elements())
	for i := range weights {
		weights[i] = 0.5 + rng.Float32()
		if rng.IntN(2) == 0 {
			weights[i] = -weights[i]
		}
	}
	w := ctx.NewF32(weights, shape[:]...)
	// w is the first operand so that out may be any view (mul accepts a
	// non-contiguous second operand of the same shape).
	loss := ctx.Sum(ctx.Mul(w, out))
	if loss == nil {
		return nil, fmt.Errorf("gradcheck: loss: %w", ctx.Err())
	}
	loss.SetName("gradcheck loss")
	if err := loss.SetLoss(); err != nil {
		return nil, fmt.Errorf("gradcheck: %w", err)
	}

	backend, err := binding.NewCPUBackend(threads)
	if err != nil {
		return nil, fmt.Errorf("gradcheck: %w", err)
	}
	defer backend.Close()

	gb, err := ctx.NewGraph(gsize, true)
	if err != nil {
		return nil, fmt.Errorf("gradcheck: %w", err)
	}
	if err := gb.BuildForward(loss); err != nil {
		return nil, fmt.Errorf("gradcheck: %w", err)
	}
	if err := gb.BuildBackward(ctx); err != nil {
		return nil, fmt.Errorf("gradcheck: %w", err)
	}
	gf, err := ctx.NewGraph(gsize, false)
	if err != nil {
		return nil, fmt.Errorf("gradcheck: %w", err)
	}
	if err := gf.BuildForward(ref); err != nil {
		return nil, fmt.Errorf("gradcheck: %w", err)
	}

	gb.Reset()
	if err := backend.Compute(gb); err != nil {
		return nil, fmt.Errorf("gradcheck: backward: %w", err)
	}
	results := make([]Result, len(params))
	for i, p := range params {
		g := gb.Grad(p)
		if g == nil {
			return nil, fmt.Errorf("gradcheck: parameter %q has no gradient (does the output depend on it?)", c.Params[i].Name)
		}
		gv, err := g.Floats()
		if err != nil {
			return nil, fmt.Errorf("gradcheck: gradient of %q: %w", c.Params[i].Name, err)
		}
		results[i].Name = c.Params[i].Name
		results[i].Analytic = make([]float64, len(gv))
		for j, v := range gv {
			results[i].Analytic[j] = float64(v)
		}
	}

	lossAt := func() (float64, error) {
		if err := backend.Compute(gf); err != nil {
			return 0, err
		}
		y, err := ref.Floats()
		if err != nil {
			return 0, err
		}
		sum := 0.0
		for k, v := range y {
			sum += float64(v) * float64(weights[k])
		}
		return sum, nil
	}
	for i, p := range params {
		num := make([]float64, len(data[i]))
		for j := range data[i] {
			orig := data[i][j]
			plus, minus := float32(float64(orig)+eps), float32(float64(orig)-eps)
			data[i][j] = plus
			if err := p.SetFloats(data[i]); err != nil {
				return nil, fmt.Errorf("gradcheck: %w", err)
			}
			lp, err := lossAt()
			if err != nil {
				return nil, fmt.Errorf("gradcheck: forward: %w", err)
			}
			data[i][j] = minus
			if err := p.SetFloats(data[i]); err != nil {
				return nil, fmt.Errorf("gradcheck: %w", err)
			}
			lm, err := lossAt()
			if err != nil {
				return nil, fmt.Errorf("gradcheck: forward: %w", err)
			}
			data[i][j] = orig
			num[j] = (lp - lm) / (float64(plus) - float64(minus))
		}
		if err := p.SetFloats(data[i]); err != nil {
			return nil, fmt.Errorf("gradcheck: %w", err)
		}
		results[i].Numeric = num
		compare(&results[i])
	}
	return results, nil
}

func compare(r *Result) {
	var diff, na, nn float64
	for j := range r.Numeric {
		d := r.Analytic[j] - r.Numeric[j]
		diff += d * d
		na += r.Analytic[j] * r.Analytic[j]
		nn += r.Numeric[j] * r.Numeric[j]
		r.MaxAbsErr = math.Max(r.MaxAbsErr, math.Abs(d))
	}
	r.Norm = math.Sqrt(nn)
	if den := math.Max(math.Sqrt(na), math.Sqrt(nn)); den > 0 {
		r.RelErr = math.Sqrt(diff) / den
	}
}
