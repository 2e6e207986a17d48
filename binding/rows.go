package binding

// #include "ggml.h"
import "C"

// SetRows writes the rows of src into dst at the row indices idx and
// returns the node that performs the write (a view of dst): dst [n, rows,
// k, l], src [n, m, k, l] (F32), idx [m] (I32, or [m, k'] broadcast over
// src's third dimension). Index values are not checked here: the caller
// must keep them in [0, rows). ggml has no backward for it: use it for
// caches, not in training graphs.
func (c *Context) SetRows(dst, src, idx *Tensor) *Tensor {
	if !c.ok("set_rows", dst, src, idx) {
		return nil
	}
	if src.Type() != TypeF32 {
		return c.fail("set_rows: %w: source must be f32, got %v", ErrType, src.Type())
	}
	if idx.Type() != TypeI32 && idx.Type() != TypeI64 {
		return c.fail("set_rows: %w: indices must be i32 or i64, got %v", ErrType, idx.Type())
	}
	if !dst.Type().Float() && !dst.Type().Quantized() {
		return c.fail("set_rows: %w: destination type %v", ErrType, dst.Type())
	}
	if _, err := dst.Type().RowBytes(dst.Dim(0)); err != nil {
		return c.fail("set_rows into %s: %w", dst, err)
	}
	if dst.Dim(0) != src.Dim(0) || dst.Dim(2) != src.Dim(2) || dst.Dim(3) != src.Dim(3) ||
		src.Dim(1) != idx.Dim(0) || src.Dim(2)%idx.Dim(1) != 0 || src.Dim(3)%idx.Dim(2) != 0 || idx.Dim(3) != 1 {
		return c.fail("set_rows: %w: %v into %v by indices %v", ErrShape, src.Shape(), dst.Shape(), idx.Shape())
	}
	if dst.Stride(0) != dst.Type().BlockBytes() || src.Stride(0) != src.Type().BlockBytes() {
		return c.fail("set_rows: %w: rows of %s and %s must be contiguous", ErrShape, dst, src)
	}
	if !c.reserve("set_rows", 0) {
		return nil
	}
	return c.wrap(C.ggml_set_rows(c.c, dst.t, src.t, idx.t))
}
