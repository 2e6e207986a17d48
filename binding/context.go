package binding

/*
#include <stdlib.h>
#include "ggml.h"

// ggtune_alloc_aligned returns n bytes aligned for ggml, or NULL when the
// memory is not available (ggml_init itself aborts in that case).
static void * ggtune_alloc_aligned(size_t n) {
    void * p = NULL;
    if (posix_memalign(&p, 64, n) != 0) {
        return NULL;
    }
    return p;
}
*/
import "C"

import (
	"fmt"
	"runtime"
	"unsafe"
)

// Context owns a ggml context: the metadata of tensors and graphs and, when
// created with allocation, their data as well. A Context is not safe for
// concurrent use.
type Context struct {
	c       *C.struct_ggml_context
	buf     unsafe.Pointer // the context's memory, owned by Go
	noAlloc bool
	size    int64
	err     error
	attns   []attention // attentions marked for the fused kernels (see Attention)
}

// TensorOverhead returns the context memory one tensor's metadata takes.
func TensorOverhead() int64 { return int64(C.ggml_tensor_overhead()) }

// GraphOverhead returns the context memory a graph of size nodes takes.
func GraphOverhead(size int, grads bool) int64 {
	return int64(C.ggml_graph_overhead_custom(C.size_t(size), C.bool(grads)))
}

// NewContext creates a context with memSize bytes of memory. With noAlloc
// the context holds only metadata, and tensor data lives in backend buffers
// (see [Backend.AllocContext] and [Sched]).
func NewContext(memSize int64, noAlloc bool) (*Context, error) {
	if memSize <= 0 || memSize > 1<<50 {
		return nil, fmt.Errorf("new context: %w: size %d", ErrOutOfMemory, memSize)
	}
	memSize = (memSize + 63) &^ 63
	buf := C.ggtune_alloc_aligned(C.size_t(memSize))
	if buf == nil {
		return nil, fmt.Errorf("new context of %d bytes: %w", memSize, ErrOutOfMemory)
	}
	params := C.struct_ggml_init_params{
		mem_size:   C.size_t(memSize),
		mem_buffer: buf,
		no_alloc:   C.bool(noAlloc),
	}
	c := C.ggml_init(params)
	if c == nil {
		C.free(buf)
		return nil, fmt.Errorf("new context of %d bytes: %w", memSize, ErrOutOfMemory)
	}
	ctx := &Context{c: c, buf: buf, noAlloc: noAlloc, size: memSize}
	setLeakFinalizer(ctx, (*Context).Close)
	return ctx, nil
}

// NewGraphContext creates a metadata-only context with room for maxTensors
// tensors and one graph of graphSize nodes (with gradients if grads).
func NewGraphContext(maxTensors, graphSize int, grads bool) (*Context, error) {
	size := int64(maxTensors)*TensorOverhead() + GraphOverhead(graphSize, grads) + 1024
	return NewContext(size, true)
}

// Close frees the context and every tensor and graph in it. It is idempotent.
func (c *Context) Close() {
	if c == nil || c.c == nil {
		return
	}
	C.ggml_free(c.c)
	C.free(c.buf)
	c.c, c.buf = nil, nil
	runtime.SetFinalizer(c, nil)
}

// holds reports whether the tensor t lives in the context's memory.
func (c *Context) holds(t *C.struct_ggml_tensor) bool {
	p, base := uintptr(unsafe.Pointer(t)), uintptr(c.buf)
	return c.buf != nil && p >= base && p < base+uintptr(c.size)
}

// Err returns the first error recorded while building operations.
func (c *Context) Err() error { return c.err }

// NoAlloc reports whether the context holds metadata only.
func (c *Context) NoAlloc() bool { return c.noAlloc }

// UsedMem returns the bytes of context memory in use.
func (c *Context) UsedMem() int64 {
	if c.c == nil {
		return 0
	}
	return int64(C.ggml_used_mem(c.c))
}

// FreeMem returns the bytes of context memory still available.
func (c *Context) FreeMem() int64 { return c.size - c.UsedMem() }

// fail records err as the context's sticky error (the first one wins).
func (c *Context) fail(format string, args ...any) *Tensor {
	if c.err == nil {
		c.err = fmt.Errorf(format, args...)
	}
	return nil
}

// Fail records err as the context's sticky error unless it already has
// one: graph builders above binding report their own invalid input the
// way operations do.
func (c *Context) Fail(err error) {
	if c.err == nil && err != nil {
		c.err = err
	}
}

// reserve checks that the context has room for one more tensor with nbytes
// of data, recording ErrOutOfMemory otherwise.
func (c *Context) reserve(op string, nbytes int64) bool {
	if c.c == nil {
		c.fail("%s: %w", op, ErrClosed)
		return false
	}
	need := TensorOverhead() + 64
	if !c.noAlloc {
		need += nbytes
	}
	if c.FreeMem() < need {
		c.fail("%s: %w: context has %d bytes free, needs %d", op, ErrOutOfMemory, c.FreeMem(), need)
		return false
	}
	return true
}

// ok checks the sticky error, the context state and that all operands are
// non-nil and belong to live contexts.
func (c *Context) ok(op string, ts ...*Tensor) bool {
	if c.err != nil {
		return false
	}
	if c.c == nil {
		c.fail("%s: %w", op, ErrClosed)
		return false
	}
	for i, t := range ts {
		if t == nil || t.t == nil {
			c.fail("%s: operand %d is nil (an earlier operation failed?)", op, i)
			return false
		}
		if t.ctx != nil && t.ctx.c == nil {
			c.fail("%s: operand %d: %w (its context)", op, i, ErrClosed)
			return false
		}
	}
	return true
}

// NewTensor creates a tensor of type typ with 1 to 4 dimensions ne
// (innermost first, as in ggml).
func (c *Context) NewTensor(typ Type, ne ...int64) *Tensor {
	if !c.ok("new tensor") {
		return nil
	}
	if !typ.Valid() {
		return c.fail("new tensor: %w: %v", ErrType, typ)
	}
	if len(ne) < 1 || len(ne) > 4 {
		return c.fail("new tensor: %w: %d dimensions", ErrShape, len(ne))
	}
	n := int64(1)
	for _, d := range ne {
		if d <= 0 {
			return c.fail("new tensor: %w: dimension %v", ErrShape, ne)
		}
		n *= d
	}
	rb, err := typ.RowBytes(ne[0])
	if err != nil {
		return c.fail("new tensor: %w", err)
	}
	if !c.reserve("new tensor", rb*(n/ne[0])) {
		return nil
	}
	var cne [4]C.int64_t
	for i := range cne {
		cne[i] = 1
	}
	for i, d := range ne {
		cne[i] = C.int64_t(d)
	}
	return c.wrap(C.ggml_new_tensor(c.c, C.enum_ggml_type(typ), C.int(len(ne)), &cne[0]))
}

// NewF32 creates an F32 tensor of shape ne and, if the context allocates,
// fills it with data (which may be nil).
func (c *Context) NewF32(data []float32, ne ...int64) *Tensor {
	t := c.NewTensor(TypeF32, ne...)
	if t == nil || data == nil {
		return t
	}
	if err := t.SetFloats(data); err != nil {
		return c.fail("new f32 tensor: %w", err)
	}
	return t
}

func (c *Context) wrap(t *C.struct_ggml_tensor) *Tensor {
	if t == nil {
		return c.fail("ggml returned no tensor")
	}
	return &Tensor{t: t, ctx: c}
}

// Tensor returns the tensor named name in the context, or nil.
func (c *Context) Tensor(name string) *Tensor {
	if c.c == nil {
		return nil
	}
	cs := C.CString(name)
	defer freeCString(cs)
	t := C.ggml_get_tensor(c.c, cs)
	if t == nil {
		return nil
	}
	return &Tensor{t: t, ctx: c}
}

// Tensors returns every tensor of the context in creation order.
func (c *Context) Tensors() []*Tensor {
	var out []*Tensor
	if c.c == nil {
		return nil
	}
	for t := C.ggml_get_first_tensor(c.c); t != nil; t = C.ggml_get_next_tensor(c.c, t) {
		out = append(out, &Tensor{t: t, ctx: c})
	}
	return out
}
