// Package safetensors reads and writes Hugging Face safetensors files for
// the whole project (PEFT adapters of every method). Parsing and header
// validation are github.com/nlpodyssey/safetensors, a port of Hugging
// Face's reference implementation: the header size is bounded, every
// tensor's offsets must be contiguous, its byte size must equal its shape
// times its dtype size (with overflow checks) and the data must end where
// the file ends. On top of that this package accepts only the float dtypes
// ggtune uses (F32, F16, BF16), names the file and tensor in every error,
// decodes values to float32 and writes files atomically.
package safetensors

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"sort"

	st "github.com/nlpodyssey/safetensors"
	"github.com/x448/float16"

	"github.com/ggtune/ggtune/internal/atomicfile"
)

// ErrFormat is returned (wrapped) for a file that is not a valid
// safetensors file or holds a tensor this package cannot represent.
var ErrFormat = errors.New("invalid safetensors file")

// DType is a tensor's stored element type.
type DType string

// The element types ggtune reads and writes.
const (
	F32  DType = "F32"
	F16  DType = "F16"
	BF16 DType = "BF16"
)

var toLib = map[DType]st.DType{F32: st.F32, F16: st.F16, BF16: st.BF16}

// Tensor is one tensor: its stored type, its shape (PyTorch order, the
// last dimension varies fastest) and its values widened to float32.
type Tensor struct {
	DType DType
	Shape []int
	Data  []float32
}

// Elements returns the product of the shape.
func (t Tensor) Elements() int {
	n := 1
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// File is the content of a safetensors file.
type File struct {
	Metadata map[string]string // the __metadata__ strings (nil if none)
	Tensors  map[string]Tensor
}

// Names returns the tensor names in sorted order.
func (f *File) Names() []string {
	names := make([]string, 0, len(f.Tensors))
	for n := range f.Tensors {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// ReadFile reads and validates the safetensors file at path.
func ReadFile(path string) (*File, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read safetensors: %w", err)
	}
	f, err := Decode(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return f, nil
}

// Decode validates the header of a safetensors file held in b, then
// decodes its tensors.
func Decode(b []byte) (*File, error) {
	s, err := st.Deserialize(b)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	f := &File{Tensors: map[string]Tensor{}}
	if md := readMetadata(b); len(md) > 0 {
		f.Metadata = md
	}
	for _, nt := range s.Tensors() {
		v := nt.TensorView
		var dt DType
		switch v.DType() {
		case st.F32:
			dt = F32
		case st.F16:
			dt = F16
		case st.BF16:
			dt = BF16
		default:
			return nil, fmt.Errorf("%w: tensor %s has dtype %s (want F32, F16 or BF16)", ErrFormat, nt.Name, v.DType())
		}
		shape := make([]int, len(v.Shape()))
		for i, d := range v.Shape() {
			if d > math.MaxInt32 {
				return nil, fmt.Errorf("%w: tensor %s has shape %v", ErrFormat, nt.Name, v.Shape())
			}
			shape[i] = int(d)
		}
		f.Tensors[nt.Name] = Tensor{DType: dt, Shape: shape, Data: decode(dt, v.Data())}
	}
	return f, nil
}

// readMetadata returns the __metadata__ map of an already validated file.
func readMetadata(b []byte) map[string]string {
	_, md, err := st.ReadMetadata(b)
	if err != nil {
		return nil
	}
	return md.Metadata()
}

func decode(dt DType, b []byte) []float32 {
	switch dt {
	case F16:
		out := make([]float32, len(b)/2)
		for i := range out {
			out[i] = float16.Frombits(binary.LittleEndian.Uint16(b[2*i:])).Float32()
		}
		return out
	case BF16:
		out := make([]float32, len(b)/2)
		for i := range out {
			out[i] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(b[2*i:])) << 16)
		}
		return out
	}
	out := make([]float32, len(b)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return out
}

func encode(dt DType, v []float32) []byte {
	switch dt {
	case F16:
		b := make([]byte, 2*len(v))
		for i, x := range v {
			binary.LittleEndian.PutUint16(b[2*i:], float16.Fromfloat32(x).Bits())
		}
		return b
	case BF16:
		b := make([]byte, 2*len(v))
		for i, x := range v {
			binary.LittleEndian.PutUint16(b[2*i:], bf16(x))
		}
		return b
	}
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

// bf16 rounds x to bfloat16 (round to nearest even; NaN stays NaN).
func bf16(x float32) uint16 {
	u := math.Float32bits(x)
	if u&0x7fffffff > 0x7f800000 {
		return uint16(u>>16) | 0x40
	}
	return uint16((u + 0x7fff + (u>>16)&1) >> 16)
}

// Encode serialises f: tensors sorted by dtype alignment then name (the
// reference implementation's order), header padded to 8 bytes. Values are
// rounded to each tensor's DType (F32 when empty).
func Encode(f *File) ([]byte, error) {
	views := make(map[string]st.TensorView, len(f.Tensors))
	for name, t := range f.Tensors {
		if t.DType == "" {
			t.DType = F32
		}
		dt, ok := toLib[t.DType]
		if !ok {
			return nil, fmt.Errorf("safetensors: tensor %s: %w: dtype %q", name, ErrFormat, t.DType)
		}
		if t.Elements() != len(t.Data) {
			return nil, fmt.Errorf("safetensors: tensor %s: %w: shape %v for %d values", name, ErrFormat, t.Shape, len(t.Data))
		}
		shape := make([]uint64, len(t.Shape))
		for i, d := range t.Shape {
			if d < 0 {
				return nil, fmt.Errorf("safetensors: tensor %s: %w: shape %v", name, ErrFormat, t.Shape)
			}
			shape[i] = uint64(d)
		}
		v, err := st.NewTensorView(dt, shape, encode(t.DType, t.Data))
		if err != nil {
			return nil, fmt.Errorf("safetensors: tensor %s: %w", name, err)
		}
		views[name] = v
	}
	return st.Serialize(views, f.Metadata)
}

// WriteFile writes f to path atomically (a temporary file renamed over
// path): a reader never sees a half-written file.
func WriteFile(path string, f *File) error {
	b, err := Encode(f)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return atomicfile.WriteBytes(path, b)
}
