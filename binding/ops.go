package binding

// #include "ggml.h"
import "C"

import "fmt"

// The operations below build graph nodes. Each validates its operands in Go
// and, on invalid input, records the context's sticky error and returns nil
// (see the package documentation).

func sameShape(a, b *Tensor) bool { return a.Shape() == b.Shape() }

// layout is the memory layout an operand of a CPU kernel must have.
type layout int

const (
	anyLayout   layout = iota
	rowsLayout         // the elements of each row are adjacent (nb[0] == type size)
	rows1Layout        // rows adjacent and dimensions 2, 3 packed (ggml_is_contiguous_1)
	denseLayout        // fully contiguous
)

func (l layout) String() string {
	switch l {
	case rowsLayout:
		return "contiguous rows"
	case rows1Layout:
		return "contiguous rows (dimensions 2 and 3 packed)"
	case denseLayout:
		return "a contiguous tensor"
	}
	return "any layout"
}

// has reports whether t satisfies the layout l.
func (t *Tensor) has(l layout) bool {
	switch l {
	case rowsLayout:
		return t.Stride(0) == t.Type().BlockBytes()
	case rows1Layout:
		return t.Stride(0) == t.Type().BlockBytes() && bool(C.ggml_is_contiguous_1(t.t))
	case denseLayout:
		return t.Contiguous()
	}
	return true
}

// layoutOK records an error unless operand i of op has layout l.
func (c *Context) layoutOK(op string, l layout, i int, t *Tensor) bool {
	if t.has(l) {
		return true
	}
	c.fail("%s: %w: operand %d %s (strides %v) must have %v; use Cont first", op, ErrShape, i, t, t.Strides(), l)
	return false
}

// canRepeat reports whether b can be broadcast to a's shape.
func canRepeat(b, a *Tensor) bool {
	for i := 0; i < 4; i++ {
		if b.Dim(i) == 0 || a.Dim(i)%b.Dim(i) != 0 {
			return false
		}
	}
	return true
}

func (c *Context) floatOperands(op string, ts ...*Tensor) bool {
	for i, t := range ts {
		if !t.Type().Float() {
			c.fail("%s: %w: operand %d %s must be f32, f16 or bf16", op, ErrType, i, t)
			return false
		}
	}
	return true
}

func (c *Context) binary(op string, a, b *Tensor, f func(*C.struct_ggml_context, *C.struct_ggml_tensor, *C.struct_ggml_tensor) *C.struct_ggml_tensor) *Tensor {
	if !c.ok(op, a, b) || !c.floatOperands(op, a, b) {
		return nil
	}
	if !canRepeat(b, a) {
		return c.fail("%s: %w: %v cannot be broadcast to %v", op, ErrShape, b.Shape(), a.Shape())
	}
	if !c.layoutOK(op, rowsLayout, 0, a) {
		return nil
	}
	if !sameShape(a, b) && !c.layoutOK(op, rowsLayout, 1, b) {
		return nil
	}
	if b.Type() != TypeF32 && b.Type() != a.Type() {
		return c.fail("%s: %w: %v with %v", op, ErrType, a.Type(), b.Type())
	}
	if !c.reserve(op, a.Bytes()) {
		return nil
	}
	return c.wrap(f(c.c, a.t, b.t))
}

// Add returns a + b, broadcasting b over a.
func (c *Context) Add(a, b *Tensor) *Tensor {
	return c.binary("add", a, b, func(x *C.struct_ggml_context, p, q *C.struct_ggml_tensor) *C.struct_ggml_tensor {
		return C.ggml_add(x, p, q)
	})
}

// Sub returns a - b, broadcasting b over a.
func (c *Context) Sub(a, b *Tensor) *Tensor {
	return c.binary("sub", a, b, func(x *C.struct_ggml_context, p, q *C.struct_ggml_tensor) *C.struct_ggml_tensor {
		return C.ggml_sub(x, p, q)
	})
}

// Mul returns the element-wise product a * b, broadcasting b over a.
func (c *Context) Mul(a, b *Tensor) *Tensor {
	return c.binary("mul", a, b, func(x *C.struct_ggml_context, p, q *C.struct_ggml_tensor) *C.struct_ggml_tensor {
		return C.ggml_mul(x, p, q)
	})
}

// Div returns the element-wise quotient a / b, broadcasting b over a.
func (c *Context) Div(a, b *Tensor) *Tensor {
	return c.binary("div", a, b, func(x *C.struct_ggml_context, p, q *C.struct_ggml_tensor) *C.struct_ggml_tensor {
		return C.ggml_div(x, p, q)
	})
}

// Add1 returns a + s where s is a one-element tensor. It is built as a
// broadcasting add (ggml's own add1 differentiates s to the mean instead of
// the sum of the gradient, and only for single-row a).
func (c *Context) Add1(a, s *Tensor) *Tensor {
	if !c.ok("add1", a, s) || !c.floatOperands("add1", a, s) {
		return nil
	}
	if s.Elements() != 1 {
		return c.fail("add1: %w: second operand has %d elements, want 1", ErrShape, s.Elements())
	}
	if s.Type() != TypeF32 && s.Type() != a.Type() {
		return c.fail("add1: %w: %v with %v", ErrType, a.Type(), s.Type())
	}
	if !c.layoutOK("add1", rowsLayout, 0, a) {
		return nil
	}
	if !c.reserve("add1", a.Bytes()) {
		return nil
	}
	return c.wrap(C.ggml_add(c.c, a.t, s.t))
}

func (c *Context) unary(op string, a *Tensor, need layout, f func(*C.struct_ggml_context, *C.struct_ggml_tensor) *C.struct_ggml_tensor) *Tensor {
	if !c.ok(op, a) || !c.floatOperands(op, a) || !c.layoutOK(op, need, 0, a) {
		return nil
	}
	if !c.reserve(op, a.Bytes()) {
		return nil
	}
	return c.wrap(f(c.c, a.t))
}

// Scale returns a * s.
func (c *Context) Scale(a *Tensor, s float32) *Tensor {
	return c.unary("scale", a, denseLayout, func(x *C.struct_ggml_context, p *C.struct_ggml_tensor) *C.struct_ggml_tensor {
		return C.ggml_scale(x, p, C.float(s))
	})
}

// Sqr returns a squared element-wise.
func (c *Context) Sqr(a *Tensor) *Tensor { return c.unary("sqr", a, rows1Layout, cSqr) }

// Sqrt returns the element-wise square root.
func (c *Context) Sqrt(a *Tensor) *Tensor { return c.unary("sqrt", a, rows1Layout, cSqrt) }

// Log returns the element-wise natural logarithm.
func (c *Context) Log(a *Tensor) *Tensor { return c.unary("log", a, rows1Layout, cLog) }

// Exp returns the element-wise exponential.
func (c *Context) Exp(a *Tensor) *Tensor { return c.unary("exp", a, rows1Layout, cExp) }

// Neg returns -a.
func (c *Context) Neg(a *Tensor) *Tensor { return c.unary("neg", a, rows1Layout, cNeg) }

// Abs returns |a|.
func (c *Context) Abs(a *Tensor) *Tensor { return c.unary("abs", a, rows1Layout, cAbs) }

// Sgn returns the element-wise sign.
func (c *Context) Sgn(a *Tensor) *Tensor { return c.unary("sgn", a, rows1Layout, cSgn) }

// Step returns 1 where a > 0 and 0 elsewhere.
func (c *Context) Step(a *Tensor) *Tensor { return c.unary("step", a, rows1Layout, cStep) }

// ReLU returns max(a, 0).
func (c *Context) ReLU(a *Tensor) *Tensor { return c.unary("relu", a, rows1Layout, cRelu) }

// SiLU returns a * sigmoid(a).
func (c *Context) SiLU(a *Tensor) *Tensor { return c.unary("silu", a, rows1Layout, cSilu) }

// Softplus returns log(1 + exp(a)).
func (c *Context) Softplus(a *Tensor) *Tensor { return c.unary("softplus", a, rows1Layout, cSoftplus) }

// Tanh returns tanh(a). ggml has no backward for it: inference only.
func (c *Context) Tanh(a *Tensor) *Tensor { return c.unary("tanh", a, rows1Layout, cTanh) }

// GELU returns the GELU activation. ggml has no backward for it: inference only.
func (c *Context) GELU(a *Tensor) *Tensor { return c.unary("gelu", a, rows1Layout, cGelu) }

// Sigmoid returns 1 / (1 + exp(-a)). ggml has no backward for it: inference only.
func (c *Context) Sigmoid(a *Tensor) *Tensor { return c.unary("sigmoid", a, rows1Layout, cSigmoid) }

// Clamp limits a to [lo, hi]. ggml has no backward for it.
func (c *Context) Clamp(a *Tensor, lo, hi float32) *Tensor {
	return c.unary("clamp", a, rowsLayout, func(x *C.struct_ggml_context, p *C.struct_ggml_tensor) *C.struct_ggml_tensor {
		return C.ggml_clamp(x, p, C.float(lo), C.float(hi))
	})
}

// Sum returns the sum of all elements as a one-element tensor.
func (c *Context) Sum(a *Tensor) *Tensor {
	return c.unary("sum", a, rowsLayout, cSum)
}

// SumRows returns the sum of each row: shape [1, ne1, ne2, ne3].
func (c *Context) SumRows(a *Tensor) *Tensor { return c.unary("sum_rows", a, rowsLayout, cSumRows) }

// Mean returns the mean of each row: shape [1, ne1, ne2, ne3].
func (c *Context) Mean(a *Tensor) *Tensor { return c.unary("mean", a, rowsLayout, cMean) }

// RMSNorm normalises each row by its root mean square: x / sqrt(mean(x²) + eps).
func (c *Context) RMSNorm(a *Tensor, eps float32) *Tensor {
	if !(eps >= 0) {
		return c.fail("rms_norm: %w: eps %v must be >= 0", ErrShape, eps)
	}
	return c.unary("rms_norm", a, rowsLayout, func(x *C.struct_ggml_context, p *C.struct_ggml_tensor) *C.struct_ggml_tensor {
		return C.ggml_rms_norm(x, p, C.float(eps))
	})
}

// Norm normalises each row to zero mean and unit variance (LayerNorm without
// affine). ggml has no backward for it: inference only.
func (c *Context) Norm(a *Tensor, eps float32) *Tensor {
	if !(eps >= 0) {
		return c.fail("norm: %w: eps %v must be >= 0", ErrShape, eps)
	}
	return c.unary("norm", a, rowsLayout, func(x *C.struct_ggml_context, p *C.struct_ggml_tensor) *C.struct_ggml_tensor {
		return C.ggml_norm(x, p, C.float(eps))
	})
}

// Cont returns a contiguous copy of a.
func (c *Context) Cont(a *Tensor) *Tensor {
	if !c.ok("cont", a) || !c.reserve("cont", a.Bytes()) {
		return nil
	}
	return c.wrap(C.ggml_cont(c.c, a.t))
}

// Repeat broadcasts a to the shape of like.
func (c *Context) Repeat(a, like *Tensor) *Tensor {
	if !c.ok("repeat", a, like) || !c.floatOperands("repeat", a) {
		return nil
	}
	if !canRepeat(a, like) {
		return c.fail("repeat: %w: %v cannot be repeated to %v", ErrShape, a.Shape(), like.Shape())
	}
	if !c.layoutOK("repeat", rowsLayout, 0, a) {
		return nil
	}
	if !c.reserve("repeat", like.Elements()*4) {
		return nil
	}
	return c.wrap(C.ggml_repeat(c.c, a.t, like.t))
}

// MulMat returns the matrix product with ggml's convention: a [k, m, ...]
// and b [k, n, ...] give [m, n, ...] (each result element is a row of a dot
// a row of b). a may be quantized (frozen weights); b is F32.
func (c *Context) MulMat(a, b *Tensor) *Tensor {
	if !c.ok("mul_mat", a, b) {
		return nil
	}
	if a.Dim(0) != b.Dim(0) || b.Dim(2)%a.Dim(2) != 0 || b.Dim(3)%a.Dim(3) != 0 {
		return c.fail("mul_mat: %w: %v x %v", ErrShape, a.Shape(), b.Shape())
	}
	if a.Transposed() {
		return c.fail("mul_mat: %w: first operand %s is transposed; make it contiguous first", ErrShape, a)
	}
	if b.Type() != TypeF32 && !(b.Type() == a.Type() && a.Type().Float()) {
		return c.fail("mul_mat: %w: second operand must be f32, got %v", ErrType, b.Type())
	}
	if !c.layoutOK("mul_mat", rowsLayout, 0, a) || !c.layoutOK("mul_mat", rowsLayout, 1, b) {
		return nil
	}
	if !a.Type().Float() && !a.Type().Quantized() {
		return c.fail("mul_mat: %w: first operand type %v", ErrType, a.Type())
	}
	if !c.reserve("mul_mat", a.Dim(1)*b.Dim(1)*b.Dim(2)*b.Dim(3)*4) {
		return nil
	}
	return c.wrap(C.ggml_mul_mat(c.c, a.t, b.t))
}

// OutProd returns the outer product used by mul_mat's backward pass:
// a [m, k, ...] and b [n, k, ...] give [m, n, ...].
func (c *Context) OutProd(a, b *Tensor) *Tensor {
	if !c.ok("out_prod", a, b) {
		return nil
	}
	if a.Dim(1) != b.Dim(1) || b.Dim(2)%a.Dim(2) != 0 || b.Dim(3)%a.Dim(3) != 0 {
		return c.fail("out_prod: %w: %v and %v", ErrShape, a.Shape(), b.Shape())
	}
	if b.Type() != TypeF32 {
		return c.fail("out_prod: %w: second operand must be f32", ErrType)
	}
	if a.Type() != TypeF32 && !a.Type().Quantized() {
		return c.fail("out_prod: %w: first operand must be f32 or quantized, got %v", ErrType, a.Type())
	}
	if a.Type().Quantized() && (a.Dim(2) != b.Dim(2) || a.Dim(3) != b.Dim(3)) {
		return c.fail("out_prod: %w: a quantized first operand %v cannot be broadcast over %v", ErrShape, a.Shape(), b.Shape())
	}
	if !c.layoutOK("out_prod", rowsLayout, 0, a) {
		return nil
	}
	if !c.reserve("out_prod", a.Dim(0)*b.Dim(0)*b.Dim(2)*b.Dim(3)*4) {
		return nil
	}
	return c.wrap(C.ggml_out_prod(c.c, a.t, b.t))
}

// GetRows gathers rows of a by the I32 indices in ids: a [n, rows, k] and
// ids [m, k] give [n, m, k]. Index values are not checked here: the caller
// must keep them in [0, a.Dim(1)).
func (c *Context) GetRows(a, ids *Tensor) *Tensor {
	if !c.ok("get_rows", a, ids) {
		return nil
	}
	if ids.Type() != TypeI32 {
		return c.fail("get_rows: %w: indices must be i32, got %v", ErrType, ids.Type())
	}
	if a.Dim(2) != ids.Dim(1) || ids.Dim(3) != 1 {
		return c.fail("get_rows: %w: %v by indices %v", ErrShape, a.Shape(), ids.Shape())
	}
	if !c.layoutOK("get_rows", rowsLayout, 0, a) {
		return nil
	}
	if !c.reserve("get_rows", a.Dim(0)*ids.Elements()*4) {
		return nil
	}
	return c.wrap(C.ggml_get_rows(c.c, a.t, ids.t))
}

// RoPEMode selects the rotary embedding layout.
type RoPEMode int

// RoPE layouts: Normal rotates adjacent pairs (llama), NeoX rotates the two
// halves (qwen2, qwen3, gpt-neox).
const (
	RoPENormal RoPEMode = 0
	RoPENeoX   RoPEMode = C.GGML_ROPE_TYPE_NEOX
)

// RoPEParams are the rotary position embedding parameters.
type RoPEParams struct {
	Dims       int // rotated dimensions per head (even, <= head size)
	Mode       RoPEMode
	NCtxOrig   int     // original training context (YaRN)
	FreqBase   float32 // theta base, e.g. 10000
	FreqScale  float32 // 1 / linear scaling factor
	ExtFactor  float32 // YaRN extrapolation mix (0 disables)
	AttnFactor float32 // YaRN magnitude scale (1 normally)
	BetaFast   float32
	BetaSlow   float32
}

// RoPE rotates a [head_dim, n_head, n_tokens, ...] by the I32 positions pos
// (one per token). freqFactors may be nil.
func (c *Context) RoPE(a, pos, freqFactors *Tensor, p RoPEParams) *Tensor {
	if !c.ok("rope", a, pos) || !c.floatOperands("rope", a) {
		return nil
	}
	if pos.Type() != TypeI32 || pos.Elements() != a.Dim(2) {
		return c.fail("rope: %w: positions %s for %d tokens", ErrShape, pos, a.Dim(2))
	}
	if p.Dims <= 0 || p.Dims%2 != 0 || int64(p.Dims) > a.Dim(0) {
		return c.fail("rope: %w: %d rotated dimensions for head size %d", ErrShape, p.Dims, a.Dim(0))
	}
	if p.Mode != RoPENormal && p.Mode != RoPENeoX {
		return c.fail("rope: %w: mode %d", ErrShape, p.Mode)
	}
	if !c.layoutOK("rope", rowsLayout, 0, a) {
		return nil
	}
	var ff *C.struct_ggml_tensor
	if freqFactors != nil {
		if freqFactors.Type() != TypeF32 || freqFactors.Dim(0) < int64(p.Dims/2) {
			return c.fail("rope: %w: frequency factors %s", ErrShape, freqFactors)
		}
		ff = freqFactors.t
	}
	if !c.reserve("rope", a.Bytes()) {
		return nil
	}
	return c.wrap(C.ggml_rope_ext(c.c, a.t, pos.t, ff, C.int(p.Dims), C.int(p.Mode), C.int(p.NCtxOrig),
		C.float(p.FreqBase), C.float(p.FreqScale), C.float(p.ExtFactor), C.float(p.AttnFactor),
		C.float(p.BetaFast), C.float(p.BetaSlow)))
}

// SoftMax returns softmax(a*scale + mask) over rows. mask may be nil; it must
// be F32 or F16 with mask.ne0 == a.ne0 and mask.ne1 >= a.ne1 (no gradient
// flows into the mask).
func (c *Context) SoftMax(a, mask *Tensor, scale float32) *Tensor {
	if !c.ok("soft_max", a) || !c.floatOperands("soft_max", a) {
		return nil
	}
	if !a.Contiguous() {
		return c.fail("soft_max: %w: operand %s is not contiguous", ErrShape, a)
	}
	var m *C.struct_ggml_tensor
	if mask != nil {
		if !c.ok("soft_max", mask) {
			return nil
		}
		if mask.Type() != TypeF32 && mask.Type() != TypeF16 {
			return c.fail("soft_max: %w: mask must be f32 or f16", ErrType)
		}
		if !mask.Contiguous() || mask.Dim(0) != a.Dim(0) || mask.Dim(1) < a.Dim(1) ||
			a.Dim(2)%mask.Dim(2) != 0 || a.Dim(3)%mask.Dim(3) != 0 {
			return c.fail("soft_max: %w: mask %v for %v", ErrShape, mask.Shape(), a.Shape())
		}
		m = mask.t
	}
	if !c.reserve("soft_max", a.Bytes()) {
		return nil
	}
	return c.wrap(C.ggml_soft_max_ext(c.c, a.t, m, C.float(scale), 0))
}

// DiagMaskInf sets elements above the diagonal (shifted by nPast) to -inf.
func (c *Context) DiagMaskInf(a *Tensor, nPast int) *Tensor {
	return c.unary("diag_mask_inf", a, denseLayout, func(x *C.struct_ggml_context, p *C.struct_ggml_tensor) *C.struct_ggml_tensor {
		return C.ggml_diag_mask_inf(x, p, C.int(nPast))
	})
}

// DiagMaskZero sets elements above the diagonal (shifted by nPast) to 0.
func (c *Context) DiagMaskZero(a *Tensor, nPast int) *Tensor {
	return c.unary("diag_mask_zero", a, denseLayout, func(x *C.struct_ggml_context, p *C.struct_ggml_tensor) *C.struct_ggml_tensor {
		return C.ggml_diag_mask_zero(x, p, C.int(nPast))
	})
}

// SwiGLU returns silu(a) * b (the split form, which has a backward pass).
func (c *Context) SwiGLU(a, b *Tensor) *Tensor {
	if !c.ok("swiglu", a, b) || !c.floatOperands("swiglu", a, b) {
		return nil
	}
	if !sameShape(a, b) || a.Type() != b.Type() {
		return c.fail("swiglu: %w: %s and %s", ErrShape, a, b)
	}
	if !c.layoutOK("swiglu", rows1Layout, 0, a) || !c.layoutOK("swiglu", rows1Layout, 1, b) {
		return nil
	}
	if !c.reserve("swiglu", a.Bytes()) {
		return nil
	}
	return c.wrap(C.ggml_swiglu_split(c.c, a.t, b.t))
}

// CrossEntropyLoss returns the mean over rows of the cross entropy between
// softmax(logits) and the target distribution labels (same shape).
func (c *Context) CrossEntropyLoss(logits, labels *Tensor) *Tensor {
	if !c.ok("cross_entropy_loss", logits, labels) {
		return nil
	}
	if logits.Type() != TypeF32 || labels.Type() != TypeF32 {
		return c.fail("cross_entropy_loss: %w: operands must be f32", ErrType)
	}
	if !sameShape(logits, labels) || !logits.Contiguous() || !labels.Contiguous() {
		return c.fail("cross_entropy_loss: %w: %v and %v (both contiguous, same shape)", ErrShape, logits.Shape(), labels.Shape())
	}
	if !c.reserve("cross_entropy_loss", 4) {
		return nil
	}
	return c.wrap(C.ggml_cross_entropy_loss(c.c, logits.t, labels.t))
}

// Cast converts a to type typ (a copy).
func (c *Context) Cast(a *Tensor, typ Type) *Tensor {
	if !c.ok("cast", a) {
		return nil
	}
	if !typ.Valid() || !(typ.Float() || typ.Quantized()) {
		return c.fail("cast: %w: to %v", ErrType, typ)
	}
	if _, err := typ.RowBytes(a.Dim(0)); err != nil {
		return c.fail("cast %s: %w", a, err)
	}
	if !c.reserve("cast", a.Elements()*4) {
		return nil
	}
	return c.wrap(C.ggml_cast(c.c, a.t, C.enum_ggml_type(typ)))
}

// Cpy copies a into b (same number of elements) and returns the node that
// performs the copy (a view of b).
func (c *Context) Cpy(a, b *Tensor) *Tensor {
	if !c.ok("cpy", a, b) {
		return nil
	}
	if a.Elements() != b.Elements() {
		return c.fail("cpy: %w: %d elements into %d", ErrShape, a.Elements(), b.Elements())
	}
	if _, err := b.Type().RowBytes(b.Dim(0)); err != nil {
		return c.fail("cpy into %s: %w", b, err)
	}
	if !c.reserve("cpy", 0) {
		return nil
	}
	return c.wrap(C.ggml_cpy(c.c, a.t, b.t))
}

// Concat joins a and b along dimension dim. ggml has no backward for it:
// build training graphs with Acc or Set instead.
func (c *Context) Concat(a, b *Tensor, dim int) *Tensor {
	if !c.ok("concat", a, b) {
		return nil
	}
	if dim < 0 || dim > 3 || a.Type() != b.Type() {
		return c.fail("concat: %w: dim %d of %s and %s", ErrShape, dim, a, b)
	}
	for i := 0; i < 4; i++ {
		if i != dim && a.Dim(i) != b.Dim(i) {
			return c.fail("concat: %w: %v and %v along %d", ErrShape, a.Shape(), b.Shape(), dim)
		}
	}
	if !c.reserve("concat", a.Bytes()+b.Bytes()) {
		return nil
	}
	return c.wrap(C.ggml_concat(c.c, a.t, b.t, C.int(dim)))
}

// accExtent checks that writing b with strides (nb1, nb2, nb3) at offset
// stays inside a.
func accExtent(a, b *Tensor, nb1, nb2, nb3, offset int64) error {
	if nb1 < 0 || nb2 < 0 || nb3 < 0 || offset < 0 {
		return fmt.Errorf("%w: negative stride or offset", ErrShape)
	}
	last := offset + (b.Dim(0)-1)*a.Stride(0) + (b.Dim(1)-1)*nb1 + (b.Dim(2)-1)*nb2 + (b.Dim(3)-1)*nb3 + a.Stride(0)
	if last > a.Bytes() {
		return fmt.Errorf("%w: region of %v at offset %d exceeds %v", ErrShape, b.Shape(), offset, a.Shape())
	}
	return nil
}

// Acc returns a copy of a with b added into the region described by the
// byte strides nb1..nb3 and the byte offset (all in a's layout).
func (c *Context) Acc(a, b *Tensor, nb1, nb2, nb3, offset int64) *Tensor {
	return c.accSet("acc", a, b, nb1, nb2, nb3, offset, func(x *C.struct_ggml_context, p, q *C.struct_ggml_tensor) *C.struct_ggml_tensor {
		return C.ggml_acc(x, p, q, C.size_t(nb1), C.size_t(nb2), C.size_t(nb3), C.size_t(offset))
	})
}

// Set returns a copy of a with the region described as for Acc replaced by b.
func (c *Context) Set(a, b *Tensor, nb1, nb2, nb3, offset int64) *Tensor {
	return c.accSet("set", a, b, nb1, nb2, nb3, offset, func(x *C.struct_ggml_context, p, q *C.struct_ggml_tensor) *C.struct_ggml_tensor {
		return C.ggml_set(x, p, q, C.size_t(nb1), C.size_t(nb2), C.size_t(nb3), C.size_t(offset))
	})
}

func (c *Context) accSet(op string, a, b *Tensor, nb1, nb2, nb3, offset int64, f func(*C.struct_ggml_context, *C.struct_ggml_tensor, *C.struct_ggml_tensor) *C.struct_ggml_tensor) *Tensor {
	if !c.ok(op, a, b) {
		return nil
	}
	if a.Type() != TypeF32 || b.Type() != TypeF32 {
		return c.fail("%s: %w: operands must be f32", op, ErrType)
	}
	if !a.Contiguous() || b.Elements() > a.Elements() {
		return c.fail("%s: %w: %s into %s", op, ErrShape, b, a)
	}
	if !c.layoutOK(op, rowsLayout, 1, b) {
		return nil
	}
	if err := accExtent(a, b, nb1, nb2, nb3, offset); err != nil {
		return c.fail("%s: %w", op, err)
	}
	if !c.reserve(op, a.Bytes()) {
		return nil
	}
	return c.wrap(f(c.c, a.t, b.t))
}

// OptStepAdamW returns the node that applies one AdamW step to the F32
// parameter a with gradient grad and moments m and v (all of a's shape).
// params is an F32 tensor of 7 values: alpha, beta1, beta2, eps, wd,
// beta1h = 1/(1-beta1^t), beta2h = 1/(1-beta2^t).
func (c *Context) OptStepAdamW(a, grad, m, v, params *Tensor) *Tensor {
	if !c.ok("opt_step_adamw", a, grad, m, v, params) {
		return nil
	}
	for _, t := range []*Tensor{a, grad, m, v, params} {
		if t.Type() != TypeF32 {
			return c.fail("opt_step_adamw: %w: %s must be f32", ErrType, t)
		}
	}
	if !sameShape(a, grad) || !sameShape(a, m) || !sameShape(a, v) || params.Elements() != 7 {
		return c.fail("opt_step_adamw: %w: parameter %v, grad %v, m %v, v %v, params %d", ErrShape,
			a.Shape(), grad.Shape(), m.Shape(), v.Shape(), params.Elements())
	}
	if !a.IsParam() {
		return c.fail("opt_step_adamw: %s is not marked as a parameter (Tensor.SetParam)", a)
	}
	if !c.reserve("opt_step_adamw", 0) {
		return nil
	}
	return c.wrap(C.ggml_opt_step_adamw(c.c, a.t, grad.t, m.t, v.t, params.t))
}

func cSqr(x *C.struct_ggml_context, p *C.struct_ggml_tensor) *C.struct_ggml_tensor {
	return C.ggml_sqr(x, p)
}
func cSqrt(x *C.struct_ggml_context, p *C.struct_ggml_tensor) *C.struct_ggml_tensor {
	return C.ggml_sqrt(x, p)
}
func cLog(x *C.struct_ggml_context, p *C.struct_ggml_tensor) *C.struct_ggml_tensor {
	return C.ggml_log(x, p)
}
func cExp(x *C.struct_ggml_context, p *C.struct_ggml_tensor) *C.struct_ggml_tensor {
	return C.ggml_exp(x, p)
}
func cNeg(x *C.struct_ggml_context, p *C.struct_ggml_tensor) *C.struct_ggml_tensor {
	return C.ggml_neg(x, p)
}
func cAbs(x *C.struct_ggml_context, p *C.struct_ggml_tensor) *C.struct_ggml_tensor {
	return C.ggml_abs(x, p)
}
func cSgn(x *C.struct_ggml_context, p *C.struct_ggml_tensor) *C.struct_ggml_tensor {
	return C.ggml_sgn(x, p)
}
func cStep(x *C.struct_ggml_context, p *C.struct_ggml_tensor) *C.struct_ggml_tensor {
	return C.ggml_step(x, p)
}
func cRelu(x *C.struct_ggml_context, p *C.struct_ggml_tensor) *C.struct_ggml_tensor {
	return C.ggml_relu(x, p)
}
func cSilu(x *C.struct_ggml_context, p *C.struct_ggml_tensor) *C.struct_ggml_tensor {
	return C.ggml_silu(x, p)
}
func cSoftplus(x *C.struct_ggml_context, p *C.struct_ggml_tensor) *C.struct_ggml_tensor {
	return C.ggml_softplus(x, p)
}
func cTanh(x *C.struct_ggml_context, p *C.struct_ggml_tensor) *C.struct_ggml_tensor {
	return C.ggml_tanh(x, p)
}
func cGelu(x *C.struct_ggml_context, p *C.struct_ggml_tensor) *C.struct_ggml_tensor {
	return C.ggml_gelu(x, p)
}
func cSigmoid(x *C.struct_ggml_context, p *C.struct_ggml_tensor) *C.struct_ggml_tensor {
	return C.ggml_sigmoid(x, p)
}
func cSum(x *C.struct_ggml_context, p *C.struct_ggml_tensor) *C.struct_ggml_tensor {
	return C.ggml_sum(x, p)
}
func cSumRows(x *C.struct_ggml_context, p *C.struct_ggml_tensor) *C.struct_ggml_tensor {
	return C.ggml_sum_rows(x, p)
}
func cMean(x *C.struct_ggml_context, p *C.struct_ggml_tensor) *C.struct_ggml_tensor {
	return C.ggml_mean(x, p)
}
