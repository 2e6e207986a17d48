package model_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/internal/fixture"
	"github.com/ggtune/ggtune/internal/ggufpatch"
	"github.com/ggtune/ggtune/internal/randmodel"
	"github.com/ggtune/ggtune/model"
)

// rewrite copies a GGUF file, changing metadata with kv and dropping the
// tensors for which drop returns true.
func rewrite(t *testing.T, src, dst string, kv func(binding.KV) binding.KV, drop func(string) bool) {
	t.Helper()
	f, err := binding.OpenGGUF(src)
	require.NoError(t, err)
	defer f.Close()
	w, err := binding.NewGGUFWriter(len(f.Tensors()) + 1)
	require.NoError(t, err)
	defer w.Close()
	for _, e := range f.KVs() {
		e = kv(e)
		require.NoError(t, w.Set(e.Key, e.Value))
	}
	for _, ti := range f.Tensors() {
		if drop(ti.Name) {
			continue
		}
		b, err := f.ReadTensor(ti.Name)
		require.NoError(t, err)
		require.NoError(t, w.AddTensor(ti.Name, ti.Type, ti.Shape, b))
	}
	require.NoError(t, w.WriteFile(dst))
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.gguf")
	require.NoError(t, randmodel.Write(base, randmodel.Options{Seed: 1}))
	same := func(e binding.KV) binding.KV { return e }
	none := func(string) bool { return false }

	missing := filepath.Join(dir, "missing.gguf")
	rewrite(t, base, missing, same, func(n string) bool { return n == "blk.1.ffn_up.weight" })
	_, err := model.Load(missing, model.Options{Threads: 1})
	require.ErrorIs(t, err, model.ErrMissingTensor)
	require.Contains(t, err.Error(), "blk.1.ffn_up.weight")

	arch := filepath.Join(dir, "arch.gguf")
	rewrite(t, base, arch, func(e binding.KV) binding.KV {
		if e.Key == "general.architecture" {
			e.Value = "gpt2"
		}
		return e
	}, none)
	_, err = model.Load(arch, model.Options{Threads: 1})
	require.ErrorIs(t, err, model.ErrUnsupported)
	require.Contains(t, err.Error(), `"gpt2"`)

	heads := filepath.Join(dir, "heads.gguf")
	rewrite(t, base, heads, func(e binding.KV) binding.KV {
		if strings.HasSuffix(e.Key, ".attention.head_count_kv") {
			e.Value = uint32(3)
		}
		return e
	}, none)
	_, err = model.Load(heads, model.Options{Threads: 1})
	require.ErrorIs(t, err, model.ErrUnsupported)

	_, err = model.Load(filepath.Join(dir, "nope.gguf"), model.Options{Threads: 1})
	require.Error(t, err)
}

// TestLoadNamesBadMetadata: tokenizer metadata that libllama cannot read
// failed with only "libllama failed (set GGTUNE_LOG=debug ...)", and a
// head_count of 2^31 with "key length 0 differs from value length 0"; each
// error now names the key.
func TestLoadNamesBadMetadata(t *testing.T) {
	base := fixture.Path(t, "models/stories260K.gguf")
	for _, tc := range []struct {
		kv   binding.KV
		want string
	}{
		{binding.KV{Key: "tokenizer.ggml.model", Value: "nonsense"}, `tokenizer.ggml.model is "nonsense", want one of`},
		{binding.KV{Key: "tokenizer.ggml.model", Value: uint32(3)}, "tokenizer.ggml.model has type u32, want string"},
		{binding.KV{Key: "tokenizer.ggml.model", Value: "gpt2"}, `"gpt2" without tokenizer.ggml.merges`},
		{binding.KV{Key: "tokenizer.ggml.bos_token_id", Value: "x"}, "tokenizer.ggml.bos_token_id has type string, want u32"},
		{binding.KV{Key: "tokenizer.ggml.padding_token_id", Value: int32(-5)}, "tokenizer.ggml.padding_token_id has type i32, want u32"},
		{binding.KV{Key: "tokenizer.ggml.add_bos_token", Value: uint32(1)}, "tokenizer.ggml.add_bos_token has type u32, want bool"},
		{binding.KV{Key: "tokenizer.ggml.pre", Value: uint32(1)}, "tokenizer.ggml.pre has type u32, want string"},
		{binding.KV{Key: "llama.attention.head_count", Value: uint32(1 << 31)}, "llama.attention.head_count 2147483648 does not divide llama.embedding_length 64"},
		{binding.KV{Key: "llama.attention.key_length", Value: uint32(0)}, "llama.attention.key_length 0: want a positive head size"},
	} {
		t.Run(tc.kv.Key, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "m.gguf")
			require.NoError(t, ggufpatch.Write(base, path, nil, []binding.KV{tc.kv}))
			m, err := model.Load(path, model.Options{Threads: 1})
			if err == nil {
				_, err = m.Tokenizer()
				m.Close()
			}
			require.Error(t, err)
			require.Contains(t, err.Error(), tc.want)
			require.NotContains(t, err.Error(), "libllama failed")
		})
	}
}

func TestTrainableWeights(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f16.gguf")
	require.NoError(t, randmodel.Write(path, randmodel.Options{Type: binding.TypeF16, Seed: 2}))
	m, err := model.Load(path, model.Options{Threads: 1, Trainable: func(n string) bool { return strings.HasPrefix(n, "blk.1.") }})
	require.NoError(t, err)
	defer m.Close()
	require.NotEmpty(t, m.Trainable())
	for _, w := range m.Trainable() {
		require.True(t, strings.HasPrefix(w.Name(), "blk.1."))
		require.Equal(t, binding.TypeF32, w.Type())
		require.NoError(t, w.SetParam())
	}
	typ, ok := m.WeightType("blk.1.attn_q.weight")
	require.True(t, ok)
	require.Equal(t, binding.TypeF16, typ)
	require.Equal(t, binding.TypeF16, m.Weight("blk.0.attn_q.weight").Type())
	_, err = m.Logits(model.Shape{Batch: 1, Tokens: 4}, []int32{1, 2, 3, 4}, nil, nil)
	require.NoError(t, err)
}
