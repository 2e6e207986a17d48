package binding

/*
#include <string.h>
#include "ggml.h"
#include "ggml-cpu.h"
#include "ggml-backend.h"
#include "ggtune.h"
*/
import "C"

import (
	"fmt"
	"unsafe"
)

// Tensor is a ggml tensor. It is owned by the [Context] that created it and
// is valid until that context is closed.
type Tensor struct {
	t   *C.struct_ggml_tensor
	ctx *Context
}

// Shape returns the four dimensions (innermost first).
func (t *Tensor) Shape() [4]int64 {
	return [4]int64{int64(t.t.ne[0]), int64(t.t.ne[1]), int64(t.t.ne[2]), int64(t.t.ne[3])}
}

// Dim returns dimension i (0..3).
func (t *Tensor) Dim(i int) int64 { return int64(t.t.ne[i]) }

// Strides returns the byte strides of the four dimensions.
func (t *Tensor) Strides() [4]int64 {
	return [4]int64{int64(t.t.nb[0]), int64(t.t.nb[1]), int64(t.t.nb[2]), int64(t.t.nb[3])}
}

// Stride returns the byte stride of dimension i.
func (t *Tensor) Stride(i int) int64 { return int64(t.t.nb[i]) }

// Type returns the element type.
func (t *Tensor) Type() Type { return Type(t.t._type) }

// Elements returns the number of elements.
func (t *Tensor) Elements() int64 { return int64(C.ggml_nelements(t.t)) }

// Rows returns the number of rows (all dimensions but the first).
func (t *Tensor) Rows() int64 { return int64(C.ggml_nrows(t.t)) }

// Bytes returns the size of the tensor's data in bytes.
func (t *Tensor) Bytes() int64 { return int64(C.ggml_nbytes(t.t)) }

// Contiguous reports whether the elements are stored without gaps in order.
func (t *Tensor) Contiguous() bool { return bool(C.ggml_is_contiguous(t.t)) }

// Transposed reports whether the first two dimensions are swapped in memory.
func (t *Tensor) Transposed() bool { return bool(C.ggml_is_transposed(t.t)) }

// Name returns the tensor's name.
func (t *Tensor) Name() string { return C.GoString(C.ggml_get_name(t.t)) }

// SetName sets the tensor's name (truncated to ggml's 63 bytes) and returns t.
func (t *Tensor) SetName(name string) *Tensor {
	cs := C.CString(name)
	defer freeCString(cs)
	C.ggml_set_name(t.t, cs)
	return t
}

// SetParam marks the tensor as a trainable parameter (F32 only).
func (t *Tensor) SetParam() error {
	if t.Type() != TypeF32 {
		return fmt.Errorf("set param %q: %w: parameters must be f32, not %v", t.Name(), ErrType, t.Type())
	}
	if t.t.op != C.GGML_OP_NONE {
		return fmt.Errorf("set param %q: only leaf tensors can be parameters", t.Name())
	}
	C.ggml_set_param(t.t)
	return nil
}

// SetLoss marks the tensor as the loss to differentiate (a scalar F32).
func (t *Tensor) SetLoss() error {
	if t.Type() != TypeF32 || t.Elements() != 1 {
		return fmt.Errorf("set loss %q: %w: the loss must be a scalar f32", t.Name(), ErrShape)
	}
	C.ggml_set_loss(t.t)
	return nil
}

// SetInput marks the tensor as a graph input (allocated before the graph).
func (t *Tensor) SetInput() *Tensor { C.ggml_set_input(t.t); return t }

// SetOutput marks the tensor as a graph output (never overwritten).
//
// A view's source is marked too: ggml's graph allocator frees (and reuses)
// the memory under a view once the source's last reader has run, even when
// the view itself is an output.
func (t *Tensor) SetOutput() *Tensor {
	for v := t.t; v != nil; v = v.view_src {
		C.ggml_set_output(v)
	}
	return t
}

// IsParam reports whether the tensor is a trainable parameter.
func (t *Tensor) IsParam() bool { return t.t.flags&C.GGML_TENSOR_FLAG_PARAM != 0 }

// Allocated reports whether the tensor has memory for its data.
func (t *Tensor) Allocated() bool { return t.t.data != nil || t.t.buffer != nil }

// OpName returns the name of the operation that produces the tensor.
func (t *Tensor) OpName() string { return C.GoString(C.ggml_op_desc(t.t)) }

// String describes the tensor for messages.
func (t *Tensor) String() string {
	if t == nil || t.t == nil {
		return "<nil tensor>"
	}
	return fmt.Sprintf("%q %v %v", t.Name(), t.Type(), t.Shape())
}

func (t *Tensor) checkData(op string, nbytes int64) error {
	if t == nil || t.t == nil {
		return fmt.Errorf("%s: nil tensor", op)
	}
	if t.ctx != nil && t.ctx.c == nil {
		return fmt.Errorf("%s %s: %w", op, t, ErrClosed)
	}
	if !t.Allocated() {
		return fmt.Errorf("%s %s: %w", op, t, ErrNotAllocated)
	}
	if !t.Contiguous() {
		return fmt.Errorf("%s %s: tensor is not contiguous", op, t)
	}
	if nbytes != t.Bytes() {
		return fmt.Errorf("%s %s: %w: %d bytes given, tensor has %d", op, t, ErrShape, nbytes, t.Bytes())
	}
	return nil
}

func (t *Tensor) write(p unsafe.Pointer, n int64) {
	if n == 0 {
		return
	}
	if t.t.buffer != nil {
		C.ggml_backend_tensor_set(t.t, p, 0, C.size_t(n))
	} else {
		C.memcpy(t.t.data, p, C.size_t(n))
	}
}

func (t *Tensor) read(p unsafe.Pointer, n int64) {
	if n == 0 {
		return
	}
	if t.t.buffer != nil {
		C.ggml_backend_tensor_get(t.t, p, 0, C.size_t(n))
	} else {
		C.memcpy(p, t.t.data, C.size_t(n))
	}
}

// SetBytes copies raw data (in the tensor's own type layout) into the tensor.
func (t *Tensor) SetBytes(b []byte) error {
	if err := t.checkData("set bytes", int64(len(b))); err != nil {
		return err
	}
	if len(b) > 0 {
		t.write(unsafe.Pointer(&b[0]), int64(len(b)))
	}
	return nil
}

// RawBytes returns a copy of the tensor's data in its own type layout. The
// elements of a non-contiguous view (a permutation, a transpose, a strided
// view) are gathered in logical order; for block-quantized types the view's
// rows must be contiguous.
func (t *Tensor) RawBytes() ([]byte, error) {
	if t != nil && t.t != nil && t.Allocated() && !t.Contiguous() {
		return t.gather()
	}
	if err := t.checkData("read bytes", t.Bytes()); err != nil {
		return nil, err
	}
	b := make([]byte, t.Bytes())
	if len(b) > 0 {
		t.read(unsafe.Pointer(&b[0]), int64(len(b)))
	}
	return b, nil
}

// gather copies the elements of a non-contiguous tensor into a contiguous
// slice. ggml_nbytes of a view is the span from its first to its last byte,
// so the whole span is read once and the rows are picked out of it.
func (t *Tensor) gather() ([]byte, error) {
	if t.ctx != nil && t.ctx.c == nil {
		return nil, fmt.Errorf("read %s: %w", t, ErrClosed)
	}
	typ := t.Type()
	es := typ.BlockBytes()
	rowBytes, err := typ.RowBytes(t.Dim(0))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", t, err)
	}
	if typ.BlockSize() != 1 && t.Stride(0) != es {
		return nil, fmt.Errorf("read %s: %w: rows of a quantized view must be contiguous", t, ErrShape)
	}
	span := make([]byte, t.Bytes())
	if len(span) > 0 {
		t.read(unsafe.Pointer(&span[0]), int64(len(span)))
	}
	ne, nb := t.Shape(), t.Strides()
	out := make([]byte, 0, rowBytes*t.Rows())
	for i3 := int64(0); i3 < ne[3]; i3++ {
		for i2 := int64(0); i2 < ne[2]; i2++ {
			for i1 := int64(0); i1 < ne[1]; i1++ {
				base := i1*nb[1] + i2*nb[2] + i3*nb[3]
				if typ.BlockSize() != 1 || nb[0] == es {
					out = append(out, span[base:base+rowBytes]...)
					continue
				}
				for i0 := int64(0); i0 < ne[0]; i0++ {
					off := base + i0*nb[0]
					out = append(out, span[off:off+es]...)
				}
			}
		}
	}
	return out, nil
}

// SetFloats stores data in the tensor, converting to its type (F32, F16,
// BF16 or a quantized type). len(data) must equal the number of elements.
func (t *Tensor) SetFloats(data []float32) error {
	if t == nil || t.t == nil {
		return fmt.Errorf("set floats: nil tensor")
	}
	if int64(len(data)) != t.Elements() {
		return fmt.Errorf("set floats %s: %w: %d values for %d elements", t, ErrShape, len(data), t.Elements())
	}
	b, err := EncodeFloats(t.Type(), data, t.Dim(0))
	if err != nil {
		return fmt.Errorf("set floats %s: %w", t, err)
	}
	return t.SetBytes(b)
}

// Floats returns the tensor's elements converted to float32 (gathered in
// logical order if it is a non-contiguous view).
func (t *Tensor) Floats() ([]float32, error) {
	b, err := t.RawBytes()
	if err != nil {
		return nil, err
	}
	out, err := DecodeFloats(t.Type(), b, t.Elements())
	if err != nil {
		return nil, fmt.Errorf("read floats %s: %w", t, err)
	}
	return out, nil
}

// SetInts stores int32 data in an I32 tensor.
func (t *Tensor) SetInts(data []int32) error {
	if t == nil || t.t == nil {
		return fmt.Errorf("set ints: nil tensor")
	}
	if t.Type() != TypeI32 {
		return fmt.Errorf("set ints %s: %w: tensor is not i32", t, ErrType)
	}
	if err := t.checkData("set ints", int64(len(data))*4); err != nil {
		return err
	}
	if len(data) > 0 {
		t.write(unsafe.Pointer(&data[0]), int64(len(data))*4)
	}
	return nil
}

// Ints returns the data of an I32 tensor (gathered in logical order if it
// is a non-contiguous view).
func (t *Tensor) Ints() ([]int32, error) {
	if t.Type() != TypeI32 {
		return nil, fmt.Errorf("read ints %s: %w: tensor is not i32", t, ErrType)
	}
	b, err := t.RawBytes()
	if err != nil {
		return nil, err
	}
	out := make([]int32, len(b)/4)
	if len(out) > 0 {
		copy(unsafe.Slice((*byte)(unsafe.Pointer(&out[0])), len(b)), b)
	}
	return out, nil
}

// Zero sets every byte of the tensor's data to zero.
func (t *Tensor) Zero() error {
	if err := t.checkData("zero", t.Bytes()); err != nil {
		return err
	}
	if t.t.buffer != nil {
		C.ggml_backend_tensor_memset(t.t, 0, 0, C.size_t(t.Bytes()))
	} else {
		C.memset(t.t.data, 0, C.size_t(t.Bytes()))
	}
	return nil
}

// EncodeFloats converts float32 values into the byte layout of typ, with
// rows of rowLen elements (rowLen must be a multiple of the block size).
func EncodeFloats(typ Type, data []float32, rowLen int64) ([]byte, error) {
	n := int64(len(data))
	if rowLen <= 0 || n%rowLen != 0 {
		return nil, fmt.Errorf("%w: %d values are not whole rows of %d", ErrShape, n, rowLen)
	}
	rb, err := typ.RowBytes(rowLen)
	if err != nil {
		return nil, err
	}
	out := make([]byte, rb*(n/rowLen))
	if n == 0 {
		return out, nil
	}
	src := unsafe.Pointer(&data[0])
	dst := unsafe.Pointer(&out[0])
	switch {
	case typ == TypeF32:
		copy(out, unsafe.Slice((*byte)(src), n*4))
	case typ == TypeF16:
		C.ggml_fp32_to_fp16_row((*C.float)(src), (*C.ggml_fp16_t)(dst), C.int64_t(n))
	case typ == TypeBF16:
		C.ggml_fp32_to_bf16_row_ref((*C.float)(src), (*C.ggml_bf16_t)(dst), C.int64_t(n))
	case typ.Quantized():
		if C.ggml_quantize_requires_imatrix(C.enum_ggml_type(typ)) {
			return nil, fmt.Errorf("%w: quantizing to %v needs an importance matrix", ErrType, typ)
		}
		C.ggml_quantize_chunk(C.enum_ggml_type(typ), (*C.float)(src), dst, 0, C.int64_t(n/rowLen), C.int64_t(rowLen), nil)
	default:
		return nil, fmt.Errorf("%w: cannot convert floats to %v", ErrType, typ)
	}
	return out, nil
}

// DecodeFloats converts n elements of typ stored in b to float32.
func DecodeFloats(typ Type, b []byte, n int64) ([]float32, error) {
	rb, err := typ.RowBytes(n)
	if err != nil {
		return nil, err
	}
	if int64(len(b)) != rb {
		return nil, fmt.Errorf("%w: %d bytes for %d %v elements (want %d)", ErrShape, len(b), n, typ, rb)
	}
	out := make([]float32, n)
	if n == 0 {
		return out, nil
	}
	src := unsafe.Pointer(&b[0])
	dst := (*C.float)(unsafe.Pointer(&out[0]))
	switch {
	case typ == TypeF32:
		copy(unsafe.Slice((*byte)(unsafe.Pointer(&out[0])), n*4), b)
	case typ == TypeF16:
		C.ggml_fp16_to_fp32_row((*C.ggml_fp16_t)(src), dst, C.int64_t(n))
	case typ == TypeBF16:
		C.ggml_bf16_to_fp32_row((*C.ggml_bf16_t)(src), dst, C.int64_t(n))
	case typ.Quantized():
		traits := C.ggml_get_type_traits(C.enum_ggml_type(typ))
		if traits.to_float == nil {
			return nil, fmt.Errorf("%w: no dequantization for %v", ErrType, typ)
		}
		C.ggtune_call_to_float(traits.to_float, src, dst, C.int64_t(n))
	case typ == TypeI32:
		for i, v := range unsafe.Slice((*int32)(src), n) {
			out[i] = float32(v)
		}
	default:
		return nil, fmt.Errorf("%w: cannot convert %v to floats", ErrType, typ)
	}
	return out, nil
}

// Src returns operand i of the operation that produces t, or nil.
func (t *Tensor) Src(i int) *Tensor {
	if i < 0 || i >= C.GGML_MAX_SRC || t.t.src[i] == nil {
		return nil
	}
	return &Tensor{t: t.t.src[i], ctx: t.ctx}
}

// Op returns the name of the operation that computes t ("NONE" for a leaf),
// as ggml spells it, for example "MUL_MAT".
func (t *Tensor) Op() string { return C.GoString(C.ggml_op_name(t.t.op)) }
