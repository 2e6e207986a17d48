package binding

/*
#include <stdlib.h>
#include "ggml.h"
#include "gguf.h"
*/
import "C"

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"unsafe"
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
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open gguf: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open gguf %s: %w", path, err)
	}
	var magic [4]byte
	if _, err := io.ReadFull(f, magic[:]); err != nil || string(magic[:]) != "GGUF" {
		f.Close()
		return nil, fmt.Errorf("open gguf %s: %w: bad magic", path, ErrInvalidGGUF)
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
	runtime.SetFinalizer(out, (*GGUFFile).Close)
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

// ReadTensor reads the raw data of the tensor named name.
func (f *GGUFFile) ReadTensor(name string) ([]byte, error) {
	ti, ok := f.TensorInfo(name)
	if !ok {
		return nil, fmt.Errorf("read tensor %q from %s: no such tensor", name, f.path)
	}
	if f.f == nil {
		return nil, fmt.Errorf("read tensor %q: %w", name, ErrClosed)
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

// GGUFWriter builds a GGUF file in memory and writes it atomically. It is
// not safe for concurrent use.
type GGUFWriter struct {
	g       *C.struct_gguf_context
	ctx     *Context
	names   map[string]bool
	buffers []unsafe.Pointer
	keys    map[string]bool
}

// NewGGUFWriter creates an empty GGUF writer with room for maxTensors tensors.
func NewGGUFWriter(maxTensors int) (*GGUFWriter, error) {
	ctx, err := NewContext(int64(maxTensors+1)*TensorOverhead()+1024, true)
	if err != nil {
		return nil, fmt.Errorf("new gguf writer: %w", err)
	}
	w := &GGUFWriter{g: C.gguf_init_empty(), ctx: ctx, names: map[string]bool{}, keys: map[string]bool{}}
	runtime.SetFinalizer(w, (*GGUFWriter).Close)
	return w, nil
}

// Close frees the writer. It is idempotent.
func (w *GGUFWriter) Close() {
	if w == nil || w.g == nil {
		return
	}
	C.gguf_free(w.g)
	w.g = nil
	w.ctx.Close()
	for _, p := range w.buffers {
		C.free(p)
	}
	w.buffers = nil
	runtime.SetFinalizer(w, nil)
}

func ggufArray[T any](w *GGUFWriter, ck *C.char, t C.enum_gguf_type, v []T) {
	var zero T
	if len(v) == 0 {
		C.gguf_set_arr_data(w.g, ck, t, nil, 0)
		return
	}
	n := C.size_t(len(v)) * C.size_t(unsafe.Sizeof(zero))
	p := C.malloc(n)
	defer C.free(p)
	copy(unsafe.Slice((*T)(p), len(v)), v)
	C.gguf_set_arr_data(w.g, ck, t, p, C.size_t(len(v)))
}

// Set sets a metadata value (see [KV] for the accepted Go types; int and
// uint are stored as int64 and uint64).
func (w *GGUFWriter) Set(key string, value any) error {
	if w.g == nil {
		return fmt.Errorf("gguf set %q: %w", key, ErrClosed)
	}
	if key == "" || strings.ContainsRune(key, 0) {
		return fmt.Errorf("gguf set: invalid key %q", key)
	}
	if key == "general.alignment" {
		a, ok := value.(uint32)
		if !ok || a == 0 || a&(a-1) != 0 {
			return fmt.Errorf("gguf set general.alignment: must be a power of two uint32, got %v", value)
		}
	}
	ck := C.CString(key)
	defer freeCString(ck)
	switch v := value.(type) {
	case uint8:
		C.gguf_set_val_u8(w.g, ck, C.uint8_t(v))
	case int8:
		C.gguf_set_val_i8(w.g, ck, C.int8_t(v))
	case uint16:
		C.gguf_set_val_u16(w.g, ck, C.uint16_t(v))
	case int16:
		C.gguf_set_val_i16(w.g, ck, C.int16_t(v))
	case uint32:
		C.gguf_set_val_u32(w.g, ck, C.uint32_t(v))
	case int32:
		C.gguf_set_val_i32(w.g, ck, C.int32_t(v))
	case uint64:
		C.gguf_set_val_u64(w.g, ck, C.uint64_t(v))
	case int64:
		C.gguf_set_val_i64(w.g, ck, C.int64_t(v))
	case uint:
		C.gguf_set_val_u64(w.g, ck, C.uint64_t(v))
	case int:
		C.gguf_set_val_i64(w.g, ck, C.int64_t(v))
	case float32:
		C.gguf_set_val_f32(w.g, ck, C.float(v))
	case float64:
		C.gguf_set_val_f64(w.g, ck, C.double(v))
	case bool:
		C.gguf_set_val_bool(w.g, ck, C.bool(v))
	case string:
		if strings.ContainsRune(v, 0) {
			return fmt.Errorf("gguf set %q: string contains a NUL byte", key)
		}
		cv := C.CString(v)
		defer freeCString(cv)
		C.gguf_set_val_str(w.g, ck, cv)
	case []uint8:
		ggufArray(w, ck, C.GGUF_TYPE_UINT8, v)
	case []int8:
		ggufArray(w, ck, C.GGUF_TYPE_INT8, v)
	case []uint16:
		ggufArray(w, ck, C.GGUF_TYPE_UINT16, v)
	case []int16:
		ggufArray(w, ck, C.GGUF_TYPE_INT16, v)
	case []uint32:
		ggufArray(w, ck, C.GGUF_TYPE_UINT32, v)
	case []int32:
		ggufArray(w, ck, C.GGUF_TYPE_INT32, v)
	case []uint64:
		ggufArray(w, ck, C.GGUF_TYPE_UINT64, v)
	case []int64:
		ggufArray(w, ck, C.GGUF_TYPE_INT64, v)
	case []float32:
		ggufArray(w, ck, C.GGUF_TYPE_FLOAT32, v)
	case []float64:
		ggufArray(w, ck, C.GGUF_TYPE_FLOAT64, v)
	case []bool:
		ggufArray(w, ck, C.GGUF_TYPE_BOOL, v)
	case []string:
		ptrs := C.malloc(C.size_t(max(len(v), 1)) * C.size_t(unsafe.Sizeof((*C.char)(nil))))
		defer C.free(ptrs)
		arr := unsafe.Slice((**C.char)(ptrs), max(len(v), 1))
		for i, s := range v {
			if strings.ContainsRune(s, 0) {
				for _, p := range arr[:i] {
					freeCString(p)
				}
				return fmt.Errorf("gguf set %q: string %d contains a NUL byte", key, i)
			}
			arr[i] = C.CString(s)
		}
		C.gguf_set_arr_str(w.g, ck, (**C.char)(ptrs), C.size_t(len(v)))
		for _, p := range arr[:len(v)] {
			freeCString(p)
		}
	default:
		return fmt.Errorf("gguf set %q: unsupported value type %T", key, value)
	}
	w.keys[key] = true
	return nil
}

// AddTensor adds a tensor with raw data in the layout of typ.
func (w *GGUFWriter) AddTensor(name string, typ Type, shape []int64, data []byte) error {
	if w.g == nil {
		return fmt.Errorf("gguf add tensor %q: %w", name, ErrClosed)
	}
	if name == "" || len(name) >= C.GGML_MAX_NAME || strings.ContainsRune(name, 0) {
		return fmt.Errorf("gguf add tensor %q: name must have 1 to %d bytes", name, C.GGML_MAX_NAME-1)
	}
	if w.names[name] {
		return fmt.Errorf("gguf add tensor %q: duplicate name", name)
	}
	t := w.ctx.NewTensor(typ, shape...)
	if t == nil {
		err := w.ctx.Err()
		w.ctx.err = nil
		return fmt.Errorf("gguf add tensor %q: %w", name, err)
	}
	if int64(len(data)) != t.Bytes() {
		return fmt.Errorf("gguf add tensor %q: %w: %d bytes for %v %v (want %d)", name, ErrShape, len(data), typ, shape, t.Bytes())
	}
	t.SetName(name)
	p := C.malloc(C.size_t(max(len(data), 1)))
	w.buffers = append(w.buffers, p)
	if len(data) > 0 {
		copy(unsafe.Slice((*byte)(p), len(data)), data)
	}
	t.t.data = p
	C.gguf_add_tensor(w.g, t.t)
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
	return w.AddTensor(name, typ, shape, b)
}

// WriteFile writes the file atomically: to a temporary file in the same
// directory, then renamed over path.
func (w *GGUFWriter) WriteFile(path string) error {
	if w.g == nil {
		return fmt.Errorf("write gguf %s: %w", path, ErrClosed)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write gguf %s: %w", path, err)
	}
	tmpName := tmp.Name()
	tmp.Close()
	cs := C.CString(tmpName)
	defer freeCString(cs)
	if !C.gguf_write_to_file(w.g, cs, false) {
		os.Remove(tmpName)
		return fmt.Errorf("write gguf %s: ggml could not write the file", path)
	}
	if err := os.Rename(tmpName, path); err != nil {
		os.Remove(tmpName)
		return fmt.Errorf("write gguf %s: %w", path, err)
	}
	return nil
}
