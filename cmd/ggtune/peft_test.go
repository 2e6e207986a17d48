package main

import (
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/internal/fixture"
	"github.com/ggtune/ggtune/lora"
)

// TestPEFTLoRACLI round-trips a LoRA through export-peft and import-peft:
// the imported GGUF holds the same tensors bit for bit and the same
// adapter.lora.alpha; modules_to_save is refused with a clear error.
func TestPEFTLoRACLI(t *testing.T) {
	modelPath := fixture.Path(t, "models/stories260K.gguf")
	base, err := binding.OpenGGUF(modelPath)
	require.NoError(t, err)
	defer base.Close()
	backend, err := binding.NewCPUBackend(1)
	require.NoError(t, err)
	defer backend.Close()
	cfg := lora.DefaultConfig()
	cfg.Rank, cfg.Alpha, cfg.RSLoRA = 4, 12, true
	a, err := lora.New(cfg, base, backend)
	require.NoError(t, err)
	defer a.Close()
	rng := rand.New(rand.NewPCG(1, 2))
	for _, w := range a.Weights() {
		v := make([]float32, w.B.Elements())
		for i := range v {
			v[i] = float32(rng.NormFloat64())
		}
		require.NoError(t, w.B.SetFloats(v))
	}
	dir := t.TempDir()
	in := filepath.Join(dir, "a.gguf")
	require.NoError(t, a.Save(in))
	peft := filepath.Join(dir, "peft")
	out := mustGgtune(t, "export-peft", "--adapter", in, "-m", modelPath, "-o", peft)
	assert.Contains(t, out, "(lora)")
	back := filepath.Join(dir, "back.gguf")
	mustGgtune(t, "import-peft", peft, "-m", modelPath, "-o", back)

	f1, err := binding.OpenGGUF(in)
	require.NoError(t, err)
	defer f1.Close()
	f2, err := binding.OpenGGUF(back)
	require.NoError(t, err)
	defer f2.Close()
	a1, _ := f1.Float("adapter.lora.alpha")
	a2, _ := f2.Float("adapter.lora.alpha")
	assert.Equal(t, a1, a2)
	require.Len(t, f2.Tensors(), len(f1.Tensors()))
	for _, ti := range f1.Tensors() {
		want, err := f1.ReadTensor(ti.Name)
		require.NoError(t, err)
		got, err := f2.ReadTensor(ti.Name)
		require.NoError(t, err, ti.Name)
		require.Equal(t, want, got, ti.Name)
	}

	js, err := os.ReadFile(filepath.Join(peft, lora.PEFTConfigFile))
	require.NoError(t, err)
	var pc map[string]any
	require.NoError(t, json.Unmarshal(js, &pc))
	pc["modules_to_save"] = []string{"lm_head"}
	js, err = json.Marshal(pc)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(peft, lora.PEFTConfigFile), js, 0o644))
	_, _, err = ggtune(t, "import-peft", peft, "-m", modelPath, "-o", filepath.Join(dir, "refused.gguf"))
	require.ErrorIs(t, err, lora.ErrPEFTUnsupported)
	assert.Contains(t, err.Error(), "modules_to_save [lm_head]")
	assert.NoFileExists(t, filepath.Join(dir, "refused.gguf"))

	_, _, err = ggtune(t, "export-peft", "-m", modelPath, "-o", peft)
	require.ErrorIs(t, err, errUsage)
}

// TestPEFTDoRAAndIA3CLI round-trips a trained-looking DoRA and IA3 adapter
// through export-peft and import-peft: the imported GGUF has the same
// adapter.type and the same tensors bit for bit.
func TestPEFTDoRAAndIA3CLI(t *testing.T) {
	files := setup(t)
	modelPath, dir := files.model, files.dir
	for _, name := range []string{"dora", "ia3"} {
		t.Run(name, func(t *testing.T) {
			in := filepath.Join(dir, name+".gguf")
			mustGgtune(t, "train", name, "-m", modelPath, "--data", files.train, "-o", in,
				"--steps", "2", "--ctx", "32", "--batch", "1", "--lr", "0.05", "-t", "2", "--metrics", "none", "--plot", "none")
			peft := filepath.Join(dir, name+"-peft")
			out := mustGgtune(t, "export-peft", "--adapter", in, "-m", modelPath, "-o", peft)
			assert.Contains(t, out, "("+name+")")
			back := filepath.Join(dir, name+"-back.gguf")
			out = mustGgtune(t, "import-peft", peft, "-m", modelPath, "-o", back)
			assert.Contains(t, out, "("+name+", read by ")
			f1, err := binding.OpenGGUF(in)
			require.NoError(t, err)
			defer f1.Close()
			f2, err := binding.OpenGGUF(back)
			require.NoError(t, err)
			defer f2.Close()
			t1, _ := f1.String("adapter.type")
			t2, _ := f2.String("adapter.type")
			assert.Equal(t, name, t2)
			assert.Equal(t, t1, t2)
			require.Len(t, f2.Tensors(), len(f1.Tensors()))
			for _, ti := range f1.Tensors() {
				want, err := f1.ReadTensor(ti.Name)
				require.NoError(t, err)
				got, err := f2.ReadTensor(ti.Name)
				require.NoError(t, err, ti.Name)
				require.Equal(t, want, got, ti.Name)
			}
		})
	}
}
