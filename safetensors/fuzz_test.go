package safetensors_test

import (
	"testing"

	"github.com/ggtune/ggtune/safetensors"
)

// FuzzDecode feeds mutated safetensors files to Decode: each is decoded or
// refused with an error, never a panic, and every decoded tensor holds as
// many values as its shape says. `go test -fuzz FuzzDecode ./safetensors`
// fuzzes.
func FuzzDecode(f *testing.F) {
	seed, err := safetensors.Encode(&safetensors.File{Metadata: map[string]string{"format": "pt"}, Tensors: map[string]safetensors.Tensor{
		"prompt_embeddings": {DType: safetensors.F32, Shape: []int{4, 8}, Data: make([]float32, 32)},
		"bias":              {DType: safetensors.BF16, Shape: []int{3}, Data: []float32{1, 2, 3}},
	}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	f.Add([]byte("\x10\x00\x00\x00\x00\x00\x00\x00{}              "))
	// A shape whose element count overflows int64 to the data's size.
	f.Add(append([]byte("\x50\x00\x00\x00\x00\x00\x00\x00"),
		[]byte(`{"t":{"dtype":"F32","shape":[4611686018427387905,4],"data_offsets":[0,16]}}     `+"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00")...))
	f.Fuzz(func(t *testing.T, b []byte) {
		file, err := safetensors.Decode(b)
		if err != nil {
			return
		}
		for name, tt := range file.Tensors {
			if tt.Elements() != len(tt.Data) {
				t.Errorf("tensor %s: shape %v but %d values", name, tt.Shape, len(tt.Data))
			}
		}
	})
}
