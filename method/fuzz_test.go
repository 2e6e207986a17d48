package method_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/internal/fixture"
	"github.com/ggtune/ggtune/method"
	"github.com/ggtune/ggtune/model"
)

// FuzzOpen feeds mutated adapter files to method.Open, which dispatches on
// adapter.type to every method's loader (lora, dora, ia3, lntune,
// bottleneck, prompt, prefix, ptuning) against stories260K: each input is
// loaded or refused with an error, never a crash, and a loaded adapter
// saves again. Seeded with a fresh adapter of every adapter method; `go
// test -fuzz FuzzOpen ./method` fuzzes.
func FuzzOpen(f *testing.F) {
	path := fixture.Path(f, "models/stories260K.gguf")
	m, err := model.Load(path, model.Options{Threads: 1})
	require.NoError(f, err)
	defer m.Close()
	env, err := method.NewEnv(path, m, m.Backend())
	require.NoError(f, err)
	defer env.Close()
	dir := f.TempDir()
	for _, meth := range method.All() {
		if len(meth.AdapterTypes()) == 0 {
			continue // full and head write models
		}
		cfg := meth.NewConfig()
		require.NoError(f, cfg.Resolve(env.Base), meth.Name())
		inst, err := meth.New(env, cfg)
		require.NoError(f, err, meth.Name())
		file := filepath.Join(dir, meth.Name()+".gguf")
		require.NoError(f, inst.Save(file), meth.Name())
		inst.Close()
		b, err := os.ReadFile(file)
		require.NoError(f, err)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := t.TempDir()
		file := filepath.Join(dir, "a.gguf")
		if err := os.WriteFile(file, b, 0o644); err != nil {
			t.Fatal(err)
		}
		inst, meth, err := method.Open(file, env)
		if err != nil {
			return
		}
		defer inst.Close()
		inst.Hooks(1)
		if err := inst.Save(filepath.Join(dir, "again.gguf")); err != nil {
			t.Errorf("%s adapter loaded but does not save: %v", meth.Name(), err)
		}
	})
}
