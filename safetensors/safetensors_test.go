package safetensors_test

import (
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/safetensors"
)

// file assembles a safetensors file by hand: the 8-byte little-endian
// header length, the JSON header, the data.
func file(header string, data []byte) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	return append(append(b, header...), data...)
}

// TestDecodeKnownBytes decodes a file written by hand to the format's
// specification, with values whose encodings are known constants.
func TestDecodeKnownBytes(t *testing.T) {
	data := []byte{
		0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0xc0, // F32 1, -2
		0x00, 0x3c, 0x00, 0x38, // F16 1, 0.5
		0x80, 0x3f, 0x40, 0xc0, // BF16 1, -3
	}
	h := `{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},` +
		`"b":{"dtype":"F16","shape":[1,2],"data_offsets":[8,12]},"c":{"dtype":"BF16","shape":[2,1],"data_offsets":[12,16]}}`
	f, err := safetensors.Decode(file(h, data))
	require.NoError(t, err)
	assert.Equal(t, map[string]string{"format": "pt"}, f.Metadata)
	assert.Equal(t, []string{"a", "b", "c"}, f.Names())
	assert.Equal(t, safetensors.Tensor{DType: safetensors.F32, Shape: []int{2}, Data: []float32{1, -2}}, f.Tensors["a"])
	assert.Equal(t, safetensors.Tensor{DType: safetensors.F16, Shape: []int{1, 2}, Data: []float32{1, 0.5}}, f.Tensors["b"])
	assert.Equal(t, safetensors.Tensor{DType: safetensors.BF16, Shape: []int{2, 1}, Data: []float32{1, -3}}, f.Tensors["c"])
}

func TestRoundTrip(t *testing.T) {
	vals := []float32{0, 1, -1, 0.5, 3.140625, -65504, float32(math.Inf(1)), 1e-7}
	in := &safetensors.File{Metadata: map[string]string{"format": "pt"}, Tensors: map[string]safetensors.Tensor{
		"x.f32":  {DType: safetensors.F32, Shape: []int{2, 4}, Data: vals},
		"x.f16":  {DType: safetensors.F16, Shape: []int{8}, Data: vals},
		"x.bf16": {DType: safetensors.BF16, Shape: []int{4, 2}, Data: vals},
	}}
	path := filepath.Join(t.TempDir(), "a.safetensors")
	require.NoError(t, safetensors.WriteFile(path, in))
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	n := binary.LittleEndian.Uint64(raw)
	assert.Zero(t, (8+n)%8, "data starts 8-byte aligned")
	out, err := safetensors.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, in.Tensors["x.f32"], out.Tensors["x.f32"])
	// F16 holds these values exactly except 1e-7 (a subnormal), BF16 all
	// but -65504.
	assert.InDelta(t, 1e-7, out.Tensors["x.f16"].Data[7], 6e-8)
	assert.Equal(t, vals[:7], out.Tensors["x.f16"].Data[:7])
	bvals := append([]float32(nil), vals[:7]...)
	bvals[5] = -65536 // the nearest bfloat16
	assert.Equal(t, bvals, out.Tensors["x.bf16"].Data[:7])
	// Writing what was read gives the same bytes.
	again, err := safetensors.Encode(out)
	require.NoError(t, err)
	assert.Equal(t, raw, again)
}

func TestBadFiles(t *testing.T) {
	f32 := make([]byte, 8)
	tests := []struct {
		name, want string
		b          []byte
	}{
		{"short", "header too small", []byte{1, 2}},
		{"header past end", "invalid header length", binary.LittleEndian.AppendUint64(nil, 100)},
		{"huge header", "header too large", binary.LittleEndian.AppendUint64(nil, 1<<40)},
		{"not json", "invalid header", file("{nope", f32)},
		{"offsets past data", "incomplete", file(`{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}`, f32)},
		{"size mismatch", "offsets mismatch", file(`{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}`, f32)},
		{"gap", "offset", file(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, f32)},
		{"overflow", "num elements", file(`{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}`, f32)},
		{"negative", "shape", file(`{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}`, f32)},
		{"int dtype", "tensor a has dtype I64", file(`{"a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}`, f32)},
		{"unknown dtype", "DType", file(`{"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,8]}}`, f32)},
		{"trailing bytes", "incomplete", file(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, f32)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := safetensors.Decode(tc.b)
			require.ErrorIs(t, err, safetensors.ErrFormat)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
	path := filepath.Join(t.TempDir(), "bad.safetensors")
	require.NoError(t, os.WriteFile(path, []byte{1}, 0o644))
	_, err := safetensors.ReadFile(path)
	require.ErrorIs(t, err, safetensors.ErrFormat)
	assert.True(t, strings.HasPrefix(err.Error(), path), "error names the file: %v", err)
}

func TestEncodeRejects(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.safetensors")
	require.NoError(t, os.WriteFile(path, []byte("old"), 0o644))
	err := safetensors.WriteFile(path, &safetensors.File{Tensors: map[string]safetensors.Tensor{
		"w": {Shape: []int{3}, Data: []float32{1, 2}},
	}})
	require.ErrorIs(t, err, safetensors.ErrFormat)
	assert.Contains(t, err.Error(), "tensor w")
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, "old", string(b), "a failed write leaves the old file")
}
