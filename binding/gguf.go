package binding

/*
#include <stdlib.h>
#include "ggml.h"
#include "gguf.h"
*/
import "C"

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"strings"
	"unsafe"

	"github.com/ggtune/ggtune/internal/atomicfile"
)

// GGUFTensorInfo describes one tensor stored in a GGUF file.
type GGUFTensorInfo struct {
	Name   string
	Type   Type
	Shape  []int64 // innermost first, as many dimensions as stored
	Offset int64   // from the start of the data section
	Size   int64   // bytes
}

// Elements returns the number of elements of the tensor.
func (ti GGUFTensorInfo) Elements() int64 {
	n := int64(1)
	for _, d := range ti.Shape {
		n *= d
	}
	return n
}

// KV is one GGUF metadata entry. Value is one of uint8, int8, uint16, int16,
// uint32, int32, uint64, int64, float32, float64, bool, string, or a slice of
// one of these.
type KV struct {
	Key   string
	Value any
}

// GGUFFile is an open GGUF file: its metadata, tensor directory and a handle
// to read tensor data. It is not safe for concurrent use.
type GGUFFile struct {
	path       string
	version    uint32
	alignment  int64
	dataOffset int64
	kvs        []KV
	index      map[string]int
	tensors    []GGUFTensorInfo
	tindex     map[string]int
	f          *os.File
}

// OpenGGUF reads the metadata and tensor directory of a GGUF file. A
// missing, truncated or corrupt file gives an error wrapping
// ErrInvalidGGUF (or the os error), never a crash.
func OpenGGUF(path string) (*GGUFFile, error) {
	if err := validateGGUF(path); err != nil {
		return nil, fmt.Errorf("open gguf %s: %w", path, err)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open gguf: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open gguf %s: %w", path, err)
	}
	var ggctx *C.struct_ggml_context
	cs := C.CString(path)
	defer freeCString(cs)
	g := C.gguf_init_from_file(cs, C.struct_gguf_init_params{no_alloc: true, ctx: &ggctx})
	if g == nil {
		f.Close()
		return nil, fmt.Errorf("open gguf %s: %w (set GGTUNE_LOG=debug for details)", path, ErrInvalidGGUF)
	}
	defer C.gguf_free(g)
	if ggctx != nil {
		defer C.ggml_free(ggctx)
	}
	out := &GGUFFile{
		path:       path,
		version:    uint32(C.gguf_get_version(g)),
		alignment:  int64(C.gguf_get_alignment(g)),
		dataOffset: int64(C.gguf_get_data_offset(g)),
		index:      map[string]int{},
		tindex:     map[string]int{},
		f:          f,
	}
	nkv := int64(C.gguf_get_n_kv(g))
	for i := int64(0); i < nkv; i++ {
		key := C.GoString(C.gguf_get_key(g, C.int64_t(i)))
		v, err := readGGUFValue(g, C.int64_t(i))
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("open gguf %s: key %q: %w", path, key, err)
		}
		out.index[key] = len(out.kvs)
		out.kvs = append(out.kvs, KV{Key: key, Value: v})
	}
	nt := int64(C.gguf_get_n_tensors(g))
	for i := int64(0); i < nt; i++ {
		name := C.gguf_get_tensor_name(g, C.int64_t(i))
		ti := GGUFTensorInfo{
			Name:   C.GoString(name),
			Type:   Type(C.gguf_get_tensor_type(g, C.int64_t(i))),
			Offset: int64(C.gguf_get_tensor_offset(g, C.int64_t(i))),
			Size:   int64(C.gguf_get_tensor_size(g, C.int64_t(i))),
		}
		if ggctx != nil {
			if t := C.ggml_get_tensor(ggctx, name); t != nil {
				nd := int(C.ggml_n_dims(t))
				for d := 0; d < nd; d++ {
					ti.Shape = append(ti.Shape, int64(t.ne[d]))
				}
			}
		}
		if out.dataOffset+ti.Offset+ti.Size > st.Size() {
			f.Close()
			return nil, fmt.Errorf("open gguf %s: %w: tensor %q data ends past the end of the file", path, ErrInvalidGGUF, ti.Name)
		}
		out.tindex[ti.Name] = len(out.tensors)
		out.tensors = append(out.tensors, ti)
	}
	setLeakFinalizer(out, func(f *GGUFFile) { f.Close() })
	return out, nil
}

func readGGUFValue(g *C.struct_gguf_context, id C.int64_t) (any, error) {
	switch t := C.gguf_get_kv_type(g, id); t {
	case C.GGUF_TYPE_UINT8:
		return uint8(C.gguf_get_val_u8(g, id)), nil
	case C.GGUF_TYPE_INT8:
		return int8(C.gguf_get_val_i8(g, id)), nil
	case C.GGUF_TYPE_UINT16:
		return uint16(C.gguf_get_val_u16(g, id)), nil
	case C.GGUF_TYPE_INT16:
		return int16(C.gguf_get_val_i16(g, id)), nil
	case C.GGUF_TYPE_UINT32:
		return uint32(C.gguf_get_val_u32(g, id)), nil
	case C.GGUF_TYPE_INT32:
		return int32(C.gguf_get_val_i32(g, id)), nil
	case C.GGUF_TYPE_FLOAT32:
		return float32(C.gguf_get_val_f32(g, id)), nil
	case C.GGUF_TYPE_UINT64:
		return uint64(C.gguf_get_val_u64(g, id)), nil
	case C.GGUF_TYPE_INT64:
		return int64(C.gguf_get_val_i64(g, id)), nil
	case C.GGUF_TYPE_FLOAT64:
		return float64(C.gguf_get_val_f64(g, id)), nil
	case C.GGUF_TYPE_BOOL:
		return bool(C.gguf_get_val_bool(g, id)), nil
	case C.GGUF_TYPE_STRING:
		return C.GoString(C.gguf_get_val_str(g, id)), nil
	case C.GGUF_TYPE_ARRAY:
		n := int(C.gguf_get_arr_n(g, id))
		at := C.gguf_get_arr_type(g, id)
		if at == C.GGUF_TYPE_STRING {
			out := make([]string, n)
			for i := range out {
				out[i] = C.GoString(C.gguf_get_arr_str(g, id, C.size_t(i)))
			}
			return out, nil
		}
		if at == C.GGUF_TYPE_ARRAY {
			return nil, fmt.Errorf("%w: nested arrays are not supported", ErrInvalidGGUF)
		}
		var p unsafe.Pointer
		if n > 0 {
			p = unsafe.Pointer(C.gguf_get_arr_data(g, id))
		}
		return arrayFromC(at, p, n)
	default:
		return nil, fmt.Errorf("%w: value type %d", ErrInvalidGGUF, int(t))
	}
}

func cslice[T any](p unsafe.Pointer, n int) []T {
	out := make([]T, n)
	if n > 0 {
		copy(out, unsafe.Slice((*T)(p), n))
	}
	return out
}

func arrayFromC(at C.enum_gguf_type, p unsafe.Pointer, n int) (any, error) {
	switch at {
	case C.GGUF_TYPE_UINT8:
		return cslice[uint8](p, n), nil
	case C.GGUF_TYPE_INT8:
		return cslice[int8](p, n), nil
	case C.GGUF_TYPE_UINT16:
		return cslice[uint16](p, n), nil
	case C.GGUF_TYPE_INT16:
		return cslice[int16](p, n), nil
	case C.GGUF_TYPE_UINT32:
		return cslice[uint32](p, n), nil
	case C.GGUF_TYPE_INT32:
		return cslice[int32](p, n), nil
	case C.GGUF_TYPE_FLOAT32:
		return cslice[float32](p, n), nil
	case C.GGUF_TYPE_UINT64:
		return cslice[uint64](p, n), nil
	case C.GGUF_TYPE_INT64:
		return cslice[int64](p, n), nil
	case C.GGUF_TYPE_FLOAT64:
		return cslice[float64](p, n), nil
	case C.GGUF_TYPE_BOOL:
		return cslice[bool](p, n), nil
	}
	return nil, fmt.Errorf("%w: array element type %d", ErrInvalidGGUF, int(at))
}

// Close closes the file. It is idempotent.
func (f *GGUFFile) Close() error {
	if f == nil || f.f == nil {
		return nil
	}
	err := f.f.Close()
	f.f = nil
	runtime.SetFinalizer(f, nil)
	return err
}

// Path returns the file's path.
func (f *GGUFFile) Path() string { return f.path }

// Version returns the GGUF format version.
func (f *GGUFFile) Version() uint32 { return f.version }

// Alignment returns the data alignment.
func (f *GGUFFile) Alignment() int64 { return f.alignment }

// KVs returns the metadata in file order.
func (f *GGUFFile) KVs() []KV { return f.kvs }

// Get returns the value for key.
func (f *GGUFFile) Get(key string) (any, bool) {
	i, ok := f.index[key]
	if !ok {
		return nil, false
	}
	return f.kvs[i].Value, true
}

// String returns the string value for key.
func (f *GGUFFile) String(key string) (string, bool) {
	v, ok := f.Get(key)
	s, isStr := v.(string)
	return s, ok && isStr
}

// Uint returns an unsigned or signed integer value for key as uint64.
func (f *GGUFFile) Uint(key string) (uint64, bool) {
	v, ok := f.Get(key)
	if !ok {
		return 0, false
	}
	switch x := v.(type) {
	case uint8:
		return uint64(x), true
	case uint16:
		return uint64(x), true
	case uint32:
		return uint64(x), true
	case uint64:
		return x, true
	case int8:
		return uint64(x), x >= 0
	case int16:
		return uint64(x), x >= 0
	case int32:
		return uint64(x), x >= 0
	case int64:
		return uint64(x), x >= 0
	}
	return 0, false
}

// Float returns a float value for key as float64.
func (f *GGUFFile) Float(key string) (float64, bool) {
	v, ok := f.Get(key)
	switch x := v.(type) {
	case float32:
		return float64(x), ok
	case float64:
		return x, ok
	}
	return 0, false
}

// Tensors returns the tensor directory in file order.
func (f *GGUFFile) Tensors() []GGUFTensorInfo { return f.tensors }

// TensorInfo returns the directory entry of the tensor named name.
func (f *GGUFFile) TensorInfo(name string) (GGUFTensorInfo, bool) {
	i, ok := f.tindex[name]
	if !ok {
		return GGUFTensorInfo{}, false
	}
	return f.tensors[i], true
}

// DataOffset returns the file offset of the tensor data section.
func (f *GGUFFile) DataOffset() int64 { return f.dataOffset }

// readable returns the directory entry of a tensor to read, or an error if
// there is none or the file is closed.
func (f *GGUFFile) readable(name string) (GGUFTensorInfo, error) {
	ti, ok := f.TensorInfo(name)
	if !ok {
		return ti, fmt.Errorf("read tensor %q from %s: no such tensor", name, f.path)
	}
	if f.f == nil {
		return ti, fmt.Errorf("read tensor %q: %w", name, ErrClosed)
	}
	return ti, nil
}

// ReadTensor reads the raw data of the tensor named name.
func (f *GGUFFile) ReadTensor(name string) ([]byte, error) {
	ti, err := f.readable(name)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, ti.Size)
	if _, err := f.f.ReadAt(buf, f.dataOffset+ti.Offset); err != nil {
		return nil, fmt.Errorf("read tensor %q from %s: %w", name, f.path, err)
	}
	return buf, nil
}

// ReadTensorFloats reads a tensor and converts it to float32.
func (f *GGUFFile) ReadTensorFloats(name string) ([]float32, error) {
	ti, ok := f.TensorInfo(name)
	if !ok {
		return nil, fmt.Errorf("read tensor %q from %s: no such tensor", name, f.path)
	}
	b, err := f.ReadTensor(name)
	if err != nil {
		return nil, err
	}
	out, err := DecodeFloats(ti.Type, b, ti.Elements())
	if err != nil {
		return nil, fmt.Errorf("read tensor %q from %s: %w", name, f.path, err)
	}
	return out, nil
}

// ReadTensorRows reads n rows of a tensor from row r0 on (a row being its
// first dimension) and converts them to float32, without reading the rest.
func (f *GGUFFile) ReadTensorRows(name string, r0, n int64) ([]float32, error) {
	ti, err := f.readable(name)
	if err != nil {
		return nil, err
	}
	if len(ti.Shape) == 0 {
		return nil, fmt.Errorf("read tensor %q from %s: no dimensions", name, f.path)
	}
	rows := ti.Elements() / ti.Shape[0]
	if r0 < 0 || n < 0 || r0+n > rows {
		return nil, fmt.Errorf("read tensor %q from %s: %w: rows %d to %d of %d", name, f.path, ErrShape, r0, r0+n, rows)
	}
	rb, err := ti.Type.RowBytes(ti.Shape[0])
	if err != nil {
		return nil, fmt.Errorf("read tensor %q from %s: %w", name, f.path, err)
	}
	buf := make([]byte, n*rb)
	if _, err := f.f.ReadAt(buf, f.dataOffset+ti.Offset+r0*rb); err != nil {
		return nil, fmt.Errorf("read tensor %q from %s: %w", name, f.path, err)
	}
	out, err := DecodeFloats(ti.Type, buf, n*ti.Shape[0])
	if err != nil {
		return nil, fmt.Errorf("read tensor %q from %s: %w", name, f.path, err)
	}
	return out, nil
}

// GGUFWriter builds a GGUF (version 3) file and writes it atomically; tensor
// data added with AddTensorFunc or AddFloatsFunc is produced while the file
// is written, one tensor at a time, so that writing a model needs no copy
// of it in memory. It is plain Go: ggml's gguf writer ignores a general.alignment
// set through its API when it lays out tensor data, so the layout is done
// here (the files are read back by ggml and libllama in the tests). It is
// not safe for concurrent use.
type GGUFWriter struct {
	kvs       []KV
	tensors   []ggufOutTensor
	names     map[string]bool
	alignment int64
	closed    bool
}

type ggufOutTensor struct {
	name string
	typ  Type
	ne   []int64
	size int64
	data []byte
	// produce, if set, makes data at write time (see AddTensorFunc).
	produce func() ([]byte, error)
}

// NewGGUFWriter creates an empty GGUF writer; maxTensors is a capacity hint.
func NewGGUFWriter(maxTensors int) (*GGUFWriter, error) {
	if maxTensors < 0 {
		return nil, fmt.Errorf("new gguf writer: %d tensors", maxTensors)
	}
	return &GGUFWriter{
		tensors:   make([]ggufOutTensor, 0, maxTensors),
		names:     map[string]bool{},
		alignment: ggufDefaultAlignment,
	}, nil
}

// Close releases the writer's memory. It is idempotent.
func (w *GGUFWriter) Close() {
	if w == nil {
		return
	}
	w.closed = true
	w.kvs, w.tensors, w.names = nil, nil, nil
}

// Set sets a metadata value (see [KV] for the accepted Go types; int and
// uint are stored as int64 and uint64). Setting an existing key replaces it
// and moves it to the end, as ggml's gguf does.
func (w *GGUFWriter) Set(key string, value any) error {
	if w.closed {
		return fmt.Errorf("gguf set %q: %w", key, ErrClosed)
	}
	if key == "" || strings.ContainsRune(key, 0) {
		return fmt.Errorf("gguf set: invalid key %q", key)
	}
	switch v := value.(type) {
	case int:
		value = int64(v)
	case uint:
		value = uint64(v)
	case string:
		if strings.ContainsRune(v, 0) {
			return fmt.Errorf("gguf set %q: string contains a NUL byte", key)
		}
	case []string:
		for i, e := range v {
			if strings.ContainsRune(e, 0) {
				return fmt.Errorf("gguf set %q: string %d contains a NUL byte", key, i)
			}
		}
	case uint8, int8, uint16, int16, uint32, int32, uint64, int64, float32, float64, bool,
		[]uint8, []int8, []uint16, []int16, []uint32, []int32, []uint64, []int64, []float32, []float64, []bool:
	default:
		return fmt.Errorf("gguf set %q: unsupported value type %T", key, value)
	}
	if key == "general.alignment" {
		a, ok := value.(uint32)
		if !ok || a == 0 || a&(a-1) != 0 {
			return fmt.Errorf("gguf set general.alignment: must be a power of two uint32, got %v (%T)", value, value)
		}
		w.alignment = int64(a)
	}
	for i, kv := range w.kvs {
		if kv.Key == key {
			w.kvs = append(w.kvs[:i], w.kvs[i+1:]...)
			break
		}
	}
	w.kvs = append(w.kvs, KV{Key: key, Value: value})
	return nil
}

// AddTensor adds a tensor with raw data in the layout of typ. The data is
// copied.
func (w *GGUFWriter) AddTensor(name string, typ Type, shape []int64, data []byte) error {
	return w.addTensor(name, typ, shape, int64(len(data)), append([]byte(nil), data...), nil)
}

// AddTensorFunc adds a tensor whose data produce returns when the file is
// written, so that a file of any size is written holding one tensor's data
// at a time. The data must have the size that typ and shape imply.
func (w *GGUFWriter) AddTensorFunc(name string, typ Type, shape []int64, produce func() ([]byte, error)) error {
	if produce == nil || len(shape) == 0 {
		return fmt.Errorf("gguf add tensor %q: no data or no shape", name)
	}
	rb, err := typ.RowBytes(shape[0])
	if err != nil {
		return fmt.Errorf("gguf add tensor %q: %w", name, err)
	}
	return w.addTensor(name, typ, shape, rb*rowsOf(shape), nil, produce)
}

// AddFloatsFunc adds a tensor whose float32 values values returns when the
// file is written; they are converted to typ then (see AddTensorFunc).
func (w *GGUFWriter) AddFloatsFunc(name string, typ Type, shape []int64, values func() ([]float32, error)) error {
	return w.AddTensorFunc(name, typ, shape, func() ([]byte, error) {
		v, err := values()
		if err != nil {
			return nil, err
		}
		if n := rowsOf(shape) * shape[0]; int64(len(v)) != n {
			return nil, fmt.Errorf("%w: %d values for %d elements", ErrShape, len(v), n)
		}
		return EncodeFloats(typ, v, shape[0])
	})
}

// rowsOf returns the number of rows of shape (the product of dimensions 1..).
func rowsOf(shape []int64) int64 {
	rows := int64(1)
	if len(shape) > 1 {
		for _, d := range shape[1:] {
			rows *= d
		}
	}
	return rows
}

func (w *GGUFWriter) addTensor(name string, typ Type, shape []int64, size int64, data []byte, produce func() ([]byte, error)) error {
	if w.closed {
		return fmt.Errorf("gguf add tensor %q: %w", name, ErrClosed)
	}
	if name == "" || len(name) >= C.GGML_MAX_NAME || strings.ContainsRune(name, 0) {
		return fmt.Errorf("gguf add tensor %q: name must have 1 to %d bytes", name, C.GGML_MAX_NAME-1)
	}
	if w.names[name] {
		return fmt.Errorf("gguf add tensor %q: duplicate name", name)
	}
	if !typ.Valid() {
		return fmt.Errorf("gguf add tensor %q: %w: %v", name, ErrType, typ)
	}
	if len(shape) < 1 || len(shape) > 4 {
		return fmt.Errorf("gguf add tensor %q: %w: %d dimensions", name, ErrShape, len(shape))
	}
	rows := int64(1)
	for _, d := range shape {
		if d <= 0 {
			return fmt.Errorf("gguf add tensor %q: %w: shape %v", name, ErrShape, shape)
		}
	}
	for _, d := range shape[1:] {
		rows *= d
	}
	rb, err := typ.RowBytes(shape[0])
	if err != nil {
		return fmt.Errorf("gguf add tensor %q: %w", name, err)
	}
	if size != rb*rows {
		return fmt.Errorf("gguf add tensor %q: %w: %d bytes for %v %v (want %d)", name, ErrShape, size, typ, shape, rb*rows)
	}
	// ggml stores as many dimensions as ggml_n_dims reports: trailing
	// dimensions of size 1 are dropped (at least one is kept).
	nd := len(shape)
	for nd > 1 && shape[nd-1] == 1 {
		nd--
	}
	w.tensors = append(w.tensors, ggufOutTensor{
		name: name, typ: typ, ne: append([]int64(nil), shape[:nd]...), size: size, data: data, produce: produce,
	})
	w.names[name] = true
	return nil
}

// AddFloats adds a tensor converting float32 data to typ.
func (w *GGUFWriter) AddFloats(name string, typ Type, shape []int64, data []float32) error {
	if len(shape) == 0 {
		return fmt.Errorf("gguf add tensor %q: no shape", name)
	}
	b, err := EncodeFloats(typ, data, shape[0])
	if err != nil {
		return fmt.Errorf("gguf add tensor %q: %w", name, err)
	}
	return w.addTensor(name, typ, shape, int64(len(b)), b, nil)
}

// ggufEncoder writes little-endian GGUF values.
type ggufEncoder struct {
	w   io.Writer
	n   int64
	err error
}

func (e *ggufEncoder) bytes(b []byte) {
	if e.err == nil {
		_, e.err = e.w.Write(b)
		e.n += int64(len(b))
	}
}

func (e *ggufEncoder) u32(v uint32) { e.bytes(binary.LittleEndian.AppendUint32(nil, v)) }
func (e *ggufEncoder) u64(v uint64) { e.bytes(binary.LittleEndian.AppendUint64(nil, v)) }
func (e *ggufEncoder) str(s string) { e.u64(uint64(len(s))); e.bytes([]byte(s)) }
func (e *ggufEncoder) pad(align int64) {
	if r := e.n % align; r != 0 {
		e.bytes(make([]byte, align-r))
	}
}

// ggufKind returns the GGUF type of a scalar or of an array's elements.
func ggufKind(v any) (typ uint32, array bool) {
	switch v.(type) {
	case uint8:
		return kvU8, false
	case int8:
		return kvI8, false
	case uint16:
		return kvU16, false
	case int16:
		return kvI16, false
	case uint32:
		return kvU32, false
	case int32:
		return kvI32, false
	case uint64:
		return kvU64, false
	case int64:
		return kvI64, false
	case float32:
		return kvF32, false
	case float64:
		return kvF64, false
	case bool:
		return kvBool, false
	case string:
		return kvString, false
	case []uint8:
		return kvU8, true
	case []int8:
		return kvI8, true
	case []uint16:
		return kvU16, true
	case []int16:
		return kvI16, true
	case []uint32:
		return kvU32, true
	case []int32:
		return kvI32, true
	case []uint64:
		return kvU64, true
	case []int64:
		return kvI64, true
	case []float32:
		return kvF32, true
	case []float64:
		return kvF64, true
	case []bool:
		return kvBool, true
	}
	return kvString, true // []string, the only other type Set accepts
}

func (e *ggufEncoder) scalar(v any) {
	switch x := v.(type) {
	case uint8:
		e.bytes([]byte{x})
	case int8:
		e.bytes([]byte{byte(x)})
	case uint16:
		e.bytes(binary.LittleEndian.AppendUint16(nil, x))
	case int16:
		e.bytes(binary.LittleEndian.AppendUint16(nil, uint16(x)))
	case uint32:
		e.u32(x)
	case int32:
		e.u32(uint32(x))
	case uint64:
		e.u64(x)
	case int64:
		e.u64(uint64(x))
	case float32:
		e.u32(math.Float32bits(x))
	case float64:
		e.u64(math.Float64bits(x))
	case bool:
		b := byte(0)
		if x {
			b = 1
		}
		e.bytes([]byte{b})
	case string:
		e.str(x)
	}
}

func encodeArray[T any](e *ggufEncoder, v []T) {
	e.u64(uint64(len(v)))
	for _, x := range v {
		e.scalar(x)
	}
}

func (e *ggufEncoder) value(v any) {
	typ, array := ggufKind(v)
	if !array {
		e.u32(typ)
		e.scalar(v)
		return
	}
	e.u32(kvArray)
	e.u32(typ)
	switch x := v.(type) {
	case []uint8:
		encodeArray(e, x)
	case []int8:
		encodeArray(e, x)
	case []uint16:
		encodeArray(e, x)
	case []int16:
		encodeArray(e, x)
	case []uint32:
		encodeArray(e, x)
	case []int32:
		encodeArray(e, x)
	case []uint64:
		encodeArray(e, x)
	case []int64:
		encodeArray(e, x)
	case []float32:
		encodeArray(e, x)
	case []float64:
		encodeArray(e, x)
	case []bool:
		encodeArray(e, x)
	case []string:
		encodeArray(e, x)
	}
}

// WriteFile writes the file atomically: to a temporary file in the same
// directory, synced, then renamed over path.
func (w *GGUFWriter) WriteFile(path string) error {
	if w.closed {
		return fmt.Errorf("write gguf %s: %w", path, ErrClosed)
	}
	err := atomicfile.Write(path, func(out io.Writer) error {
		e := &ggufEncoder{w: out}
		e.bytes([]byte("GGUF"))
		e.u32(ggufMaxVersion)
		e.u64(uint64(len(w.tensors)))
		e.u64(uint64(len(w.kvs)))
		for _, kv := range w.kvs {
			e.str(kv.Key)
			e.value(kv.Value)
		}
		var offset int64
		for _, t := range w.tensors {
			e.str(t.name)
			e.u32(uint32(len(t.ne)))
			for _, d := range t.ne {
				e.u64(uint64(d))
			}
			e.u32(uint32(t.typ))
			e.u64(uint64(offset))
			offset += (t.size + w.alignment - 1) / w.alignment * w.alignment
		}
		e.pad(w.alignment)
		for _, t := range w.tensors {
			data := t.data
			if t.produce != nil {
				var err error
				if data, err = t.produce(); err != nil {
					return fmt.Errorf("tensor %s: %w", t.name, err)
				}
				if int64(len(data)) != t.size {
					return fmt.Errorf("tensor %s: %w: produced %d bytes, want %d", t.name, ErrShape, len(data), t.size)
				}
			}
			e.bytes(data)
			e.pad(w.alignment)
			if e.err != nil {
				return e.err
			}
		}
		return e.err
	})
	if err != nil {
		return fmt.Errorf("write gguf: %w", err)
	}
	return nil
}
