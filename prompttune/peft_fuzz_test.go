package prompttune

import (
	"testing"
)

// FuzzDecodeSafetensors feeds mutated safetensors files to the PEFT
// reader: each is decoded or refused with an error, never a panic or an
// allocation as large as a corrupt shape, and decoded tensors hold as many
// values as their shape says. `go test -fuzz FuzzDecodeSafetensors
// ./prompttune` fuzzes.
func FuzzDecodeSafetensors(f *testing.F) {
	seed, err := encodeSafetensors(map[string]stTensor{
		"prompt_embeddings": {shape: []int64{4, 8}, data: make([]float32, 32)},
		"bias":              {shape: []int64{3}, data: []float32{1, 2, 3}},
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	f.Add([]byte("\x10\x00\x00\x00\x00\x00\x00\x00{}              "))
	// A shape whose element count overflows int64 to the data's size.
	f.Add(append([]byte("\x50\x00\x00\x00\x00\x00\x00\x00"),
		[]byte(`{"t":{"dtype":"F32","shape":[4611686018427387905,4],"data_offsets":[0,16]}}     `+"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00")...))
	f.Fuzz(func(t *testing.T, b []byte) {
		ts, err := decodeSafetensors(b)
		if err != nil {
			return
		}
		for name, tt := range ts {
			n := int64(1)
			for _, d := range tt.shape {
				n *= d
			}
			if n != int64(len(tt.data)) {
				t.Errorf("tensor %s: shape %v but %d values", name, tt.shape, len(tt.data))
			}
		}
	})
}
