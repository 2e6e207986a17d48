package lora_test

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/internal/hfref"
	"github.com/ggtune/ggtune/internal/methodtest"
	"github.com/ggtune/ggtune/internal/randmodel"
	"github.com/ggtune/ggtune/lora"
	"github.com/ggtune/ggtune/method"
	"github.com/ggtune/ggtune/model"
	"github.com/ggtune/ggtune/safetensors"
)

// llamaLogitsFile decodes tokens with libllama (F32 KV cache) and the
// adapter file at scale 1 ("" for none).
func llamaLogitsFile(t *testing.T, model, adapter string, tokens []binding.Token) [][]float32 {
	t.Helper()
	lm, err := binding.LoadModel(model, binding.ModelParams{})
	require.NoError(t, err)
	defer lm.Close()
	ctx, err := binding.NewLlamaContext(lm, binding.ContextParams{NCtx: 64, Threads: 2, F32Cache: true})
	require.NoError(t, err)
	defer ctx.Close()
	if adapter != "" {
		ad, err := lm.LoadAdapter(adapter)
		require.NoError(t, err)
		defer ad.Close()
		require.NoError(t, ctx.SetAdapter(ad, 1))
	}
	require.NoError(t, ctx.Decode(tokens, 0, true))
	out := make([][]float32, len(tokens))
	for i := range tokens {
		out[i], err = ctx.Logits(i)
		require.NoError(t, err)
	}
	return out
}

func maxDiff64(a [][]float32, b [][]float64) float64 {
	var m float64
	for i := range a {
		for j := range a[i] {
			m = math.Max(m, math.Abs(float64(a[i][j])-b[i][j]))
		}
	}
	return m
}

// TestPEFTImportMatchesHFLayout is the oracle test of the layout: a random
// PEFT adapter is applied in plain Go arithmetic to the base weights
// converted to Hugging Face's layout, and the logits must equal libllama's
// with the imported adapter. For llama the q/k permutation is proved by a
// negative control: without it libllama's logits are far off.
func TestPEFTImportMatchesHFLayout(t *testing.T) {
	stories, _ := openBase(t)
	qwen := filepath.Join(t.TempDir(), "qwen2.gguf")
	require.NoError(t, randmodel.Write(qwen, randmodel.Options{Arch: "qwen2", NEmbd: 32, NLayer: 2, NHead: 4, NHeadKV: 2, Untied: true, Seed: 5}))
	qwen3 := filepath.Join(t.TempDir(), "qwen3.gguf")
	require.NoError(t, randmodel.Write(qwen3, randmodel.Options{Arch: "qwen3", NEmbd: 32, NLayer: 2, NHead: 4, NHeadKV: 2, HeadDim: 16, Untied: true, Seed: 6}))
	tokens := []binding.Token{1, 403, 407, 261, 378, 290, 44, 500, 3, 17, 260, 311}
	for _, tc := range []struct {
		name, model string
		r           int
		alpha       float64
		rslora      bool
	}{
		{"llama stories260K", stories, 4, 8, false},
		{"llama rslora", stories, 4, 6, true},
		{"qwen2 random", qwen, 2, 4, false},
		{"qwen3 random", qwen3, 2, 4, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hf := hfref.Load(t, tc.model)
			dir := filepath.Join(t.TempDir(), "peft")
			hfref.WriteLoRA(t, dir, hf, tc.r, tc.alpha, tc.rslora, 11)
			base, err := binding.OpenGGUF(tc.model)
			require.NoError(t, err)
			defer base.Close()
			a, err := lora.ImportPEFT(dir, base, cpu(t))
			require.NoError(t, err)
			defer a.Close()
			out := filepath.Join(t.TempDir(), "imported.gguf")
			require.NoError(t, a.Save(out))

			hf.ApplyLoRA(t, dir)
			ids := make([]int, len(tokens))
			for i, tok := range tokens {
				ids[i] = int(tok)
			}
			want := hf.Logits(ids)
			got := llamaLogitsFile(t, tc.model, out, tokens)
			diff := maxDiff64(got, want)
			var scale float64
			for _, row := range want {
				for _, v := range row {
					scale = math.Max(scale, math.Abs(v))
				}
			}
			t.Logf("libllama with the imported adapter vs the HF-layout reference: max abs diff %.3g (logits up to %.3g)", diff, scale)
			require.Less(t, diff, 2e-4*math.Max(1, scale))

			if base, _ := base.String("general.architecture"); base != "llama" {
				return
			}
			// Negative control: the same adapter with q and k B left in HF's
			// row order.
			st, err := safetensors.ReadFile(filepath.Join(dir, lora.PEFTWeightsFile))
			require.NoError(t, err)
			for _, w := range a.Weights() {
				if w.Target == lora.TargetQ || w.Target == lora.TargetK {
					mod := map[lora.Target]string{lora.TargetQ: "q_proj", lora.TargetK: "k_proj"}[w.Target]
					raw := st.Tensors["base_model.model.model.layers."+strconv.Itoa(w.Layer)+".self_attn."+mod+".lora_B.weight"]
					require.NoError(t, w.B.SetFloats(raw.Data))
				}
			}
			naive := filepath.Join(t.TempDir(), "naive.gguf")
			require.NoError(t, a.Save(naive))
			bad := maxDiff64(llamaLogitsFile(t, tc.model, naive, tokens), want)
			t.Logf("without the q/k permutation: max abs diff %.3g", bad)
			require.Greater(t, bad, 50*diff)
		})
	}
}

// TestPEFTDoRAMatchesHFLayout is the oracle test of DoRA's layout: a random
// PEFT DoRA adapter (use_dora, lora_magnitude_vector) applied in plain Go
// arithmetic to the HF-layout base weights gives the logits of ggtune's
// graph with the imported adapter and of libllama on the imported adapter
// merged into the base (libllama cannot load DoRA). For llama, keeping the
// q/k magnitudes in HF's row order (B permuted) is far off.
func TestPEFTDoRAMatchesHFLayout(t *testing.T) {
	stories, _ := openBase(t)
	qwen := filepath.Join(t.TempDir(), "qwen2.gguf")
	require.NoError(t, randmodel.Write(qwen, randmodel.Options{Arch: "qwen2", NEmbd: 32, NLayer: 2, NHead: 4, NHeadKV: 2, Untied: true, Seed: 5}))
	tokens := []int32{1, 403, 407, 261, 378, 290, 44, 500, 3, 17, 260, 311}
	ids := make([]int, len(tokens))
	for i, tok := range tokens {
		ids[i] = int(tok)
	}
	f32 := binding.TypeF32
	for _, tc := range []struct{ name, model string }{{"llama stories260K", stories}, {"qwen2 random", qwen}} {
		t.Run(tc.name, func(t *testing.T) {
			hf := hfref.Load(t, tc.model)
			dir := filepath.Join(t.TempDir(), "peft")
			hfref.WriteDoRA(t, dir, hf, 4, 8, 13)
			m, err := model.Load(tc.model, model.Options{Threads: 2})
			require.NoError(t, err)
			defer m.Close()
			env, err := method.NewEnv(tc.model, m, m.Backend())
			require.NoError(t, err)
			defer env.Close()
			inst, meth, err := method.ImportPEFT(dir, env)
			require.NoError(t, err)
			defer inst.Close()
			assert.Equal(t, "lora", meth.Name())
			hf.ApplyLoRA(t, dir)
			want := hf.Logits(ids)
			var scale float64
			for _, row := range want {
				for _, v := range row {
					scale = math.Max(scale, math.Abs(v))
				}
			}
			graph := maxDiff64(methodtest.GraphLogits(t, m, inst.Hooks(1), tokens), want)
			merged := filepath.Join(t.TempDir(), "merged.gguf")
			require.NoError(t, method.Merge(tc.model, merged, []method.Scaled{{Instance: inst, Scale: 1, Name: "dora"}}, method.MergeOptions{Type: &f32}))
			llama := maxDiff64(methodtest.LlamaLogits(t, merged, tokens), want)
			t.Logf("RESULT DoRA vs the HF-layout reference: ggtune graph %.3g, libllama on the merged model %.3g (logits up to %.3g)", graph, llama, scale)
			require.Less(t, graph, 2e-4*math.Max(1, scale))
			require.Less(t, llama, 2e-4*math.Max(1, scale))

			saved := filepath.Join(t.TempDir(), "dora.gguf")
			require.NoError(t, inst.Save(saved))
			typ, err := method.AdapterType(saved)
			require.NoError(t, err)
			assert.Equal(t, "dora", typ)
			if arch, _ := env.Base.String("general.architecture"); arch != "llama" {
				return
			}
			// Negative control: q and k magnitudes left in HF's row order.
			st, err := safetensors.ReadFile(filepath.Join(dir, lora.PEFTWeightsFile))
			require.NoError(t, err)
			a, err := lora.Load(saved, env.Base, m.Backend())
			require.NoError(t, err)
			defer a.Close()
			for _, w := range a.Weights() {
				if w.Target == lora.TargetQ || w.Target == lora.TargetK {
					mod := map[lora.Target]string{lora.TargetQ: "q_proj", lora.TargetK: "k_proj"}[w.Target]
					raw := st.Tensors["base_model.model.model.layers."+strconv.Itoa(w.Layer)+".self_attn."+mod+".lora_magnitude_vector"]
					require.NoError(t, w.M.SetFloats(raw.Data))
				}
			}
			bad := maxDiff64(methodtest.GraphLogits(t, m, []model.Hook{a.Hook(1)}, tokens), want)
			t.Logf("without the q/k magnitude permutation: max abs diff %.3g", bad)
			require.Greater(t, bad, 50*graph)
		})
	}
}

// TestPEFTRoundTrip exports an adapter written by ggtune to PEFT and
// imports it back: every tensor is bitwise equal, the scale llama.cpp
// applies is unchanged, and the PEFT files use Hugging Face's names.
func TestPEFTRoundTrip(t *testing.T) {
	_, base := openBase(t)
	for _, tc := range []struct {
		name string
		cfg  func(*lora.Config)
	}{
		{"all targets", func(c *lora.Config) {
			c.Targets = append(c.Targets, lora.TargetOutput, lora.TargetEmbed)
		}},
		{"rslora layers", func(c *lora.Config) { c.Rank, c.Alpha, c.RSLoRA, c.Layers = 4, 16, true, []int{1, 3} }},
		{"dora", func(c *lora.Config) { c.DoRA, c.Targets = true, append(c.Targets, lora.TargetOutput) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := lora.DefaultConfig()
			tc.cfg(&cfg)
			a, err := lora.New(cfg, base, cpu(t))
			require.NoError(t, err)
			defer a.Close()
			randomize(t, a, 2)
			if cfg.DoRA {
				randomizeDoRA(t, a)
			}
			dir := filepath.Join(t.TempDir(), "peft")
			require.NoError(t, a.ExportPEFT(dir, base, "stories260K"))

			typ, err := lora.PEFTType(dir)
			require.NoError(t, err)
			assert.Equal(t, "LORA", typ)
			st, err := safetensors.ReadFile(filepath.Join(dir, lora.PEFTWeightsFile))
			require.NoError(t, err)
			perWeight := 2
			if cfg.DoRA {
				perWeight = 3
				assert.Equal(t, []int{32}, st.Tensors["base_model.model.model.layers.1.self_attn.k_proj.lora_magnitude_vector"].Shape)
			}
			assert.Len(t, st.Tensors, perWeight*len(a.Weights()))
			q := st.Tensors["base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"]
			assert.Equal(t, []int{64, cfg.Rank}, q.Shape)
			assert.Equal(t, []int{cfg.Rank, 64}, st.Tensors["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"].Shape)
			assert.Equal(t, []int{172, cfg.Rank}, st.Tensors["base_model.model.model.layers.1.mlp.gate_proj.lora_B.weight"].Shape)
			if !cfg.DoRA && cfg.Layers == nil {
				assert.Equal(t, []int{cfg.Rank, 512}, st.Tensors["base_model.model.model.embed_tokens.lora_embedding_A"].Shape)
				assert.Equal(t, []int{64, cfg.Rank}, st.Tensors["base_model.model.model.embed_tokens.lora_embedding_B"].Shape)
				assert.Equal(t, []int{512, cfg.Rank}, st.Tensors["base_model.model.lm_head.lora_B.weight"].Shape)
			}
			// q's B in HF order is a row permutation of ggtune's, not equal to it.
			gq, err := a.Weight("blk.1.attn_q.weight").B.Floats()
			require.NoError(t, err)
			assert.NotEqual(t, gq, q.Data)
			assert.ElementsMatch(t, gq, q.Data)
			js, err := os.ReadFile(filepath.Join(dir, lora.PEFTConfigFile))
			require.NoError(t, err)
			var pc map[string]any
			require.NoError(t, json.Unmarshal(js, &pc))
			assert.Equal(t, float64(cfg.Rank), pc["r"])
			assert.Equal(t, float64(cfg.Alpha), pc["lora_alpha"])
			assert.Equal(t, cfg.RSLoRA, pc["use_rslora"])
			assert.Equal(t, cfg.DoRA, pc["use_dora"])

			b, err := lora.ImportPEFT(dir, base, cpu(t))
			require.NoError(t, err)
			defer b.Close()
			assert.Equal(t, a.Scale(), b.Scale())
			assert.Equal(t, a.Config().FileAlpha(), b.Config().FileAlpha())
			assert.Equal(t, a.Config().Layers, b.Config().Layers)
			require.Len(t, b.Weights(), len(a.Weights()))
			assert.Equal(t, cfg.DoRA, b.Config().DoRA)
			for i, w := range a.Weights() {
				assert.Equal(t, w.Base, b.Weights()[i].Base)
				bw := b.Weights()[i]
				want, got := []*binding.Tensor{w.A, w.B}, []*binding.Tensor{bw.A, bw.B}
				if cfg.DoRA {
					want, got = append(want, w.M), append(got, bw.M)
				}
				for j, tt := range want {
					want, err := tt.Floats()
					require.NoError(t, err)
					got, err := got[j].Floats()
					require.NoError(t, err)
					require.Equal(t, want, got, tt.Name())
				}
			}
		})
	}
}

// TestPEFTRefused checks that adapters ggtune cannot represent, and broken
// ones, are refused with an error naming the problem.
func TestPEFTRefused(t *testing.T) {
	_, base := openBase(t)
	hf := hfref.Load(t, base.Path())
	for _, tc := range []struct {
		name    string
		edit    func(cfg map[string]any, ts map[string]safetensors.Tensor)
		is      error
		message string
	}{
		{"modules_to_save", func(c map[string]any, _ map[string]safetensors.Tensor) { c["modules_to_save"] = []string{"lm_head"} },
			lora.ErrPEFTUnsupported, "modules_to_save [lm_head]"},
		{"dora without magnitudes", func(c map[string]any, _ map[string]safetensors.Tensor) { c["use_dora"] = true }, lora.ErrFormat, "lora_magnitude_vector is missing"},
		{"magnitude without use_dora", func(_ map[string]any, ts map[string]safetensors.Tensor) {
			ts["base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"] = safetensors.Tensor{Shape: []int{64}, Data: make([]float32, 64)}
		}, lora.ErrFormat, "use_dora is false"},
		{"dora embedding", func(c map[string]any, ts map[string]safetensors.Tensor) {
			c["use_dora"] = true
			ts["base_model.model.model.embed_tokens.lora_magnitude_vector"] = safetensors.Tensor{Shape: []int{64}, Data: make([]float32, 64)}
		}, lora.ErrPEFTUnsupported, "DoRA on the token embedding"},
		{"saved module tensor", func(_ map[string]any, ts map[string]safetensors.Tensor) {
			ts["base_model.model.lm_head.weight"] = safetensors.Tensor{Shape: []int{1}, Data: []float32{1}}
		}, lora.ErrPEFTUnsupported, "tensor base_model.model.lm_head.weight"},
		{"fan_in_fan_out", func(c map[string]any, _ map[string]safetensors.Tensor) { c["fan_in_fan_out"] = true }, lora.ErrPEFTUnsupported, "fan_in_fan_out"},
		{"rank pattern", func(c map[string]any, _ map[string]safetensors.Tensor) {
			c["rank_pattern"] = map[string]int{"q_proj": 2}
		}, lora.ErrPEFTUnsupported, "rank_pattern"},
		{"ia3", func(c map[string]any, _ map[string]safetensors.Tensor) { c["peft_type"] = "IA3" }, lora.ErrFormat, `peft_type "IA3" is not LORA`},
		{"loha", func(c map[string]any, _ map[string]safetensors.Tensor) { c["peft_type"] = "LOHA" }, lora.ErrPEFTUnsupported, "peft_type LOHA"},
		{"unknown type", func(c map[string]any, _ map[string]safetensors.Tensor) { c["peft_type"] = "NOPE" }, lora.ErrFormat, `peft_type "NOPE"`},
		{"wrong rank", func(c map[string]any, _ map[string]safetensors.Tensor) { c["r"] = 3 }, lora.ErrFormat, "for rank 3"},
		{"missing half", func(_ map[string]any, ts map[string]safetensors.Tensor) {
			delete(ts, "base_model.model.model.layers.2.mlp.up_proj.lora_B.weight")
		}, lora.ErrFormat, "layers.2.mlp.up_proj: one of the two"},
		{"layer past the model", func(_ map[string]any, ts map[string]safetensors.Tensor) {
			ts["base_model.model.model.layers.9.self_attn.v_proj.lora_A.weight"] = ts["base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight"]
			ts["base_model.model.model.layers.9.self_attn.v_proj.lora_B.weight"] = ts["base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"]
		}, lora.ErrFormat, "has no tensor blk.9.attn_v.weight"},
		{"wrong shape", func(_ map[string]any, ts map[string]safetensors.Tensor) {
			ts["base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"] = safetensors.Tensor{Shape: []int{64, 4}, Data: make([]float32, 256)}
		}, lora.ErrFormat, "layers.0.self_attn.k_proj: lora_A [4 64] and lora_B [64 4]"},
		{"nan", func(_ map[string]any, ts map[string]safetensors.Tensor) {
			ts["base_model.model.lm_head.lora_A.weight"].Data[3] = float32(math.NaN())
		}, lora.ErrFormat, "non-finite"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "peft")
			hfref.WriteLoRA(t, dir, hf, 4, 8, false, 1)
			st, err := safetensors.ReadFile(filepath.Join(dir, lora.PEFTWeightsFile))
			require.NoError(t, err)
			js, err := os.ReadFile(filepath.Join(dir, lora.PEFTConfigFile))
			require.NoError(t, err)
			var cfg map[string]any
			require.NoError(t, json.Unmarshal(js, &cfg))
			tc.edit(cfg, st.Tensors)
			require.NoError(t, safetensors.WriteFile(filepath.Join(dir, lora.PEFTWeightsFile), st))
			js, err = json.Marshal(cfg)
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(filepath.Join(dir, lora.PEFTConfigFile), js, 0o644))
			_, err = lora.ImportPEFT(dir, base, cpu(t))
			require.ErrorIs(t, err, tc.is)
			assert.Contains(t, err.Error(), tc.message)
		})
	}
}
