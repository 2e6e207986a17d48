package method_test

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/method"
	_ "github.com/ggtune/ggtune/method/builtin"
)

func TestRegistryLookups(t *testing.T) {
	for _, name := range []string{"lora", "full", "head", "prompt", "prefix", "ptuning"} {
		m, err := method.Get(name)
		require.NoError(t, err, name)
		assert.Equal(t, name, m.Name())
		assert.Positive(t, m.Info().LR, "%s has a default learning rate", name)
		assert.NotNil(t, m.NewConfig())
	}
	for typ, name := range map[string]string{"lora": "lora", "prompt_tuning": "prompt", "prefix_tuning": "prefix", "p_tuning": "ptuning"} {
		m, err := method.ForAdapterType(typ)
		require.NoError(t, err, typ)
		assert.Equal(t, name, m.Name())
	}
	_, err := method.Get("frob")
	require.ErrorIs(t, err, method.ErrUnknownMethod)
	assert.Contains(t, err.Error(), `"frob"`)
	_, err = method.ForAdapterType("frobnicate")
	require.ErrorIs(t, err, method.ErrUnknownAdapter)
	assert.Contains(t, err.Error(), `"frobnicate"`)
	m, _ := method.Get("lora")
	assert.Panics(t, func() { method.Register(m) }, "a duplicate registration is a programming error")
}

func TestOpenRejectsUnknownAndNonAdapters(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, kvs ...binding.KV) string {
		w, err := binding.NewGGUFWriter(1)
		require.NoError(t, err)
		defer w.Close()
		for _, kv := range kvs {
			require.NoError(t, w.Set(kv.Key, kv.Value))
		}
		require.NoError(t, w.AddFloats("x", binding.TypeF32, []int64{1}, []float32{0}))
		p := filepath.Join(dir, name)
		require.NoError(t, w.WriteFile(p))
		return p
	}
	unknown := write("u.gguf", binding.KV{Key: "general.type", Value: "adapter"}, binding.KV{Key: "adapter.type", Value: "frobnicate"})
	_, _, err := method.Open(unknown, &method.Env{})
	require.ErrorIs(t, err, method.ErrUnknownAdapter)
	assert.Contains(t, err.Error(), "u.gguf")
	assert.Contains(t, err.Error(), `"frobnicate"`)

	model := write("m.gguf", binding.KV{Key: "general.type", Value: "model"})
	_, _, err = method.Open(model, &method.Env{})
	require.ErrorIs(t, err, method.ErrNotAdapter)
}
