package binding

// #include "ggml.h"
import "C"

// Reshape returns a view of the contiguous tensor a with shape ne (1 to 4
// dimensions, same number of elements).
func (c *Context) Reshape(a *Tensor, ne ...int64) *Tensor {
	if !c.ok("reshape", a) {
		return nil
	}
	if !a.Contiguous() {
		return c.fail("reshape: %w: %s is not contiguous", ErrShape, a)
	}
	if len(ne) < 1 || len(ne) > 4 {
		return c.fail("reshape: %w: %d dimensions", ErrShape, len(ne))
	}
	n := int64(1)
	for _, d := range ne {
		if d <= 0 {
			return c.fail("reshape: %w: %v", ErrShape, ne)
		}
		n *= d
	}
	if n != a.Elements() {
		return c.fail("reshape: %w: %v has %d elements, %s has %d", ErrShape, ne, n, a, a.Elements())
	}
	if _, err := a.Type().RowBytes(ne[0]); err != nil {
		return c.fail("reshape %s: %w", a, err)
	}
	if !c.reserve("reshape", 0) {
		return nil
	}
	switch len(ne) {
	case 1:
		return c.wrap(C.ggml_reshape_1d(c.c, a.t, C.int64_t(ne[0])))
	case 2:
		return c.wrap(C.ggml_reshape_2d(c.c, a.t, C.int64_t(ne[0]), C.int64_t(ne[1])))
	case 3:
		return c.wrap(C.ggml_reshape_3d(c.c, a.t, C.int64_t(ne[0]), C.int64_t(ne[1]), C.int64_t(ne[2])))
	default:
		return c.wrap(C.ggml_reshape_4d(c.c, a.t, C.int64_t(ne[0]), C.int64_t(ne[1]), C.int64_t(ne[2]), C.int64_t(ne[3])))
	}
}

// View returns a strided view of a: shape ne (1 to 4 dimensions), byte
// strides nb for dimensions 1.. (len(nb) == len(ne)-1) and a byte offset.
func (c *Context) View(a *Tensor, ne []int64, nb []int64, offset int64) *Tensor {
	if !c.ok("view", a) {
		return nil
	}
	if len(ne) < 1 || len(ne) > 4 || len(nb) != len(ne)-1 || offset < 0 {
		return c.fail("view: %w: shape %v strides %v offset %d", ErrShape, ne, nb, offset)
	}
	rb, err := a.Type().RowBytes(ne[0])
	if err != nil {
		return c.fail("view of %s: %w", a, err)
	}
	// Bytes spanned: the last byte of the last row.
	end := offset + rb
	for i := 1; i < len(ne); i++ {
		if ne[i] <= 0 || nb[i-1] < 0 {
			return c.fail("view: %w: shape %v strides %v", ErrShape, ne, nb)
		}
		end += (ne[i] - 1) * nb[i-1]
	}
	if ne[0] <= 0 || end > a.Bytes() {
		return c.fail("view: %w: shape %v strides %v offset %d exceeds %s (%d bytes)", ErrShape, ne, nb, offset, a, a.Bytes())
	}
	if !c.reserve("view", 0) {
		return nil
	}
	switch len(ne) {
	case 1:
		return c.wrap(C.ggml_view_1d(c.c, a.t, C.int64_t(ne[0]), C.size_t(offset)))
	case 2:
		return c.wrap(C.ggml_view_2d(c.c, a.t, C.int64_t(ne[0]), C.int64_t(ne[1]), C.size_t(nb[0]), C.size_t(offset)))
	case 3:
		return c.wrap(C.ggml_view_3d(c.c, a.t, C.int64_t(ne[0]), C.int64_t(ne[1]), C.int64_t(ne[2]),
			C.size_t(nb[0]), C.size_t(nb[1]), C.size_t(offset)))
	default:
		return c.wrap(C.ggml_view_4d(c.c, a.t, C.int64_t(ne[0]), C.int64_t(ne[1]), C.int64_t(ne[2]), C.int64_t(ne[3]),
			C.size_t(nb[0]), C.size_t(nb[1]), C.size_t(nb[2]), C.size_t(offset)))
	}
}

// Permute returns a view of a whose dimension i moves to position axes[i].
func (c *Context) Permute(a *Tensor, axes [4]int) *Tensor {
	if !c.ok("permute", a) {
		return nil
	}
	var seen [4]bool
	for _, ax := range axes {
		if ax < 0 || ax > 3 || seen[ax] {
			return c.fail("permute: %w: axes %v are not a permutation of 0..3", ErrShape, axes)
		}
		seen[ax] = true
	}
	if !c.reserve("permute", 0) {
		return nil
	}
	return c.wrap(C.ggml_permute(c.c, a.t, C.int(axes[0]), C.int(axes[1]), C.int(axes[2]), C.int(axes[3])))
}

// Transpose swaps the first two dimensions of a (a view).
func (c *Context) Transpose(a *Tensor) *Tensor {
	if !c.ok("transpose", a) || !c.reserve("transpose", 0) {
		return nil
	}
	return c.wrap(C.ggml_transpose(c.c, a.t))
}
