package binding

// #include "ggml.h"
import "C"

import (
	"fmt"
	"strings"
)

// Type is a ggml element type.
type Type int32

// Element types used by ggtune. Other ggml types can be converted with Type(n).
const (
	TypeF32  Type = C.GGML_TYPE_F32
	TypeF16  Type = C.GGML_TYPE_F16
	TypeQ4_0 Type = C.GGML_TYPE_Q4_0
	TypeQ4_1 Type = C.GGML_TYPE_Q4_1
	TypeQ5_0 Type = C.GGML_TYPE_Q5_0
	TypeQ5_1 Type = C.GGML_TYPE_Q5_1
	TypeQ8_0 Type = C.GGML_TYPE_Q8_0
	TypeQ2_K Type = C.GGML_TYPE_Q2_K
	TypeQ3_K Type = C.GGML_TYPE_Q3_K
	TypeQ4_K Type = C.GGML_TYPE_Q4_K
	TypeQ5_K Type = C.GGML_TYPE_Q5_K
	TypeQ6_K Type = C.GGML_TYPE_Q6_K
	TypeI8   Type = C.GGML_TYPE_I8
	TypeI16  Type = C.GGML_TYPE_I16
	TypeI32  Type = C.GGML_TYPE_I32
	TypeI64  Type = C.GGML_TYPE_I64
	TypeF64  Type = C.GGML_TYPE_F64
	TypeBF16 Type = C.GGML_TYPE_BF16
)

// Valid reports whether t names a type that this ggml build knows.
func (t Type) Valid() bool {
	if t < 0 || t >= C.GGML_TYPE_COUNT {
		return false
	}
	return C.ggml_blck_size(C.enum_ggml_type(t)) > 0 && C.ggml_type_size(C.enum_ggml_type(t)) > 0
}

// String returns ggml's name for the type, such as "f32" or "q8_0".
func (t Type) String() string {
	if !t.Valid() {
		return fmt.Sprintf("type(%d)", int32(t))
	}
	return C.GoString(C.ggml_type_name(C.enum_ggml_type(t)))
}

// BlockSize returns the number of elements in one block of the type.
func (t Type) BlockSize() int64 { return int64(C.ggml_blck_size(C.enum_ggml_type(t))) }

// BlockBytes returns the size in bytes of one block of the type.
func (t Type) BlockBytes() int64 { return int64(C.ggml_type_size(C.enum_ggml_type(t))) }

// Quantized reports whether t is a block-quantized type.
func (t Type) Quantized() bool { return bool(C.ggml_is_quantized(C.enum_ggml_type(t))) }

// Float reports whether t is F32, F16 or BF16.
func (t Type) Float() bool { return t == TypeF32 || t == TypeF16 || t == TypeBF16 }

// RowBytes returns the bytes of a row of n elements, or an error if n is not
// a multiple of the type's block size.
func (t Type) RowBytes(n int64) (int64, error) {
	if !t.Valid() {
		return 0, fmt.Errorf("%w: %v", ErrType, t)
	}
	if n < 0 || n%t.BlockSize() != 0 {
		return 0, fmt.Errorf("%w: row of %d elements is not a multiple of the %v block size %d", ErrShape, n, t, t.BlockSize())
	}
	return n / t.BlockSize() * t.BlockBytes(), nil
}

// TypeByName returns the type with ggml's name s ("f32", "q8_0", "q4_K",
// ...), compared without regard to case ("q4_k" is q4_K).
func TypeByName(s string) (Type, error) {
	for i := Type(0); i < C.GGML_TYPE_COUNT; i++ {
		if i.Valid() && strings.EqualFold(i.String(), s) {
			return i, nil
		}
	}
	return 0, fmt.Errorf("%w: unknown type name %q", ErrType, s)
}
