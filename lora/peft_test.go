package lora_test

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/internal/randmodel"
	"github.com/ggtune/ggtune/lora"
	"github.com/ggtune/ggtune/safetensors"
)

// hfLlama is a plain-Go reference forward pass of a llama-family model in
// Hugging Face's layout (PyTorch [out, in] weights, split-half RoPE), in
// float64. It is the oracle for the PEFT layout: it never sees GGUF's
// interleaved q/k rows.
type hfLlama struct {
	nEmbd, nHead, nHKV, nLayer, nVocab int
	headDim                            int
	eps, ropeBase                      float64
	w                                  map[string][]float64 // HF names, row-major
}

func (m *hfLlama) mat(name string) []float64 { return m.w[name] }

// loadHF reads a GGUF model and converts it to Hugging Face's layout: q and
// k rows un-permuted for llama (not for qwen2/qwen3).
func loadHF(t *testing.T, path string) *hfLlama {
	t.Helper()
	f, err := binding.OpenGGUF(path)
	require.NoError(t, err)
	defer f.Close()
	arch, _ := f.String("general.architecture")
	u := func(k string) int { v, ok := f.Uint(arch + "." + k); require.True(t, ok, k); return int(v) }
	m := &hfLlama{nEmbd: u("embedding_length"), nHead: u("attention.head_count"), nHKV: u("attention.head_count_kv"),
		nLayer: u("block_count"), eps: 1e-5, ropeBase: 10000, w: map[string][]float64{}}
	m.headDim = m.nEmbd / m.nHead
	if v, ok := f.Uint(arch + ".attention.key_length"); ok {
		m.headDim = int(v)
	}
	if v, ok := f.Float(arch + ".attention.layer_norm_rms_epsilon"); ok {
		m.eps = v
	}
	if v, ok := f.Float(arch + ".rope.freq_base"); ok {
		m.ropeBase = v
	}
	read := func(gguf, hf string, heads int) {
		v, err := f.ReadTensorFloats(gguf)
		require.NoError(t, err, gguf)
		ti, _ := f.TensorInfo(gguf)
		out := make([]float64, len(v))
		if heads > 0 && arch == "llama" {
			// GGUF row h·d+2i+j is HF row h·d+j·d/2+i.
			cols := int(ti.Shape[0])
			d := int(ti.Shape[1]) / heads
			for h := 0; h < heads; h++ {
				for i := 0; i < d/2; i++ {
					for j := 0; j < 2; j++ {
						g, hf := h*d+2*i+j, h*d+j*d/2+i
						for c := 0; c < cols; c++ {
							out[hf*cols+c] = float64(v[g*cols+c])
						}
					}
				}
			}
		} else {
			for i, x := range v {
				out[i] = float64(x)
			}
		}
		m.w[hf] = out
	}
	read("token_embd.weight", "model.embed_tokens", 0)
	ti, _ := f.TensorInfo("token_embd.weight")
	m.nVocab = int(ti.Shape[1])
	read("output_norm.weight", "model.norm", 0)
	if _, ok := f.TensorInfo("output.weight"); ok {
		read("output.weight", "lm_head", 0)
	} else {
		m.w["lm_head"] = m.w["model.embed_tokens"]
	}
	for l := 0; l < m.nLayer; l++ {
		p := "model.layers." + itoa(l) + "."
		g := "blk." + itoa(l) + "."
		read(g+"attn_norm.weight", p+"input_layernorm", 0)
		read(g+"ffn_norm.weight", p+"post_attention_layernorm", 0)
		read(g+"attn_q.weight", p+"self_attn.q_proj", m.nHead)
		read(g+"attn_k.weight", p+"self_attn.k_proj", m.nHKV)
		read(g+"attn_v.weight", p+"self_attn.v_proj", 0)
		read(g+"attn_output.weight", p+"self_attn.o_proj", 0)
		read(g+"ffn_gate.weight", p+"mlp.gate_proj", 0)
		read(g+"ffn_up.weight", p+"mlp.up_proj", 0)
		read(g+"ffn_down.weight", p+"mlp.down_proj", 0)
		for _, b := range []string{"q", "k"} { // qwen3: RMSNorm of each head
			if _, ok := f.TensorInfo(g + "attn_" + b + "_norm.weight"); ok {
				read(g+"attn_"+b+"_norm.weight", p+"self_attn."+b+"_norm", 0)
			}
		}
		for _, b := range []string{"q", "k", "v"} {
			if _, ok := f.TensorInfo(g + "attn_" + b + ".bias"); ok {
				read(g+"attn_"+b+".bias", p+"self_attn."+b+"_proj.bias", 0)
			}
		}
	}
	return m
}

func itoa(i int) string { return strconv.Itoa(i) }

// applyPEFT adds scale·B·A of every LoRA pair in the PEFT directory to the
// model's HF-layout weights (W [out, in] += s·B[out, r]·A[r, in]; the
// embedding E [vocab, d] += s·(B[d, r]·A[r, vocab])ᵀ).
func (m *hfLlama) applyPEFT(t *testing.T, dir string) {
	t.Helper()
	js, err := os.ReadFile(filepath.Join(dir, lora.PEFTConfigFile))
	require.NoError(t, err)
	var pc struct {
		R      int     `json:"r"`
		Alpha  float64 `json:"lora_alpha"`
		RSLoRA bool    `json:"use_rslora"`
	}
	require.NoError(t, json.Unmarshal(js, &pc))
	s := pc.Alpha / float64(pc.R)
	if pc.RSLoRA {
		s = pc.Alpha / math.Sqrt(float64(pc.R))
	}
	st, err := safetensors.ReadFile(filepath.Join(dir, lora.PEFTWeightsFile))
	require.NoError(t, err)
	for _, key := range st.Names() {
		mod, ok := strings.CutSuffix(key, ".lora_A.weight")
		emb := false
		if !ok {
			if mod, ok = strings.CutSuffix(key, ".lora_embedding_A"); !ok {
				continue
			}
			emb = true
		}
		a := st.Tensors[key]
		b := st.Tensors[strings.Replace(key, "A", "B", 1)]
		if emb {
			b = st.Tensors[mod+".lora_embedding_B"]
		}
		name := strings.TrimPrefix(mod, "base_model.model.")
		w := m.w[name]
		require.NotNil(t, w, name)
		r := pc.R
		if emb {
			nv, d := a.Shape[1], b.Shape[0]
			for v := 0; v < nv; v++ {
				for e := 0; e < d; e++ {
					var acc float64
					for k := 0; k < r; k++ {
						acc += float64(b.Data[e*r+k]) * float64(a.Data[k*nv+v])
					}
					w[v*d+e] += s * acc
				}
			}
			continue
		}
		out, in := b.Shape[0], a.Shape[1]
		nw := make([]float64, len(w))
		copy(nw, w)
		for o := 0; o < out; o++ {
			for i := 0; i < in; i++ {
				var acc float64
				for k := 0; k < r; k++ {
					acc += float64(b.Data[o*r+k]) * float64(a.Data[k*in+i])
				}
				nw[o*in+i] += s * acc
			}
		}
		m.w[name] = nw
	}
}

func matvec(w []float64, x []float64, out int) []float64 {
	in := len(x)
	y := make([]float64, out)
	for o := 0; o < out; o++ {
		var acc float64
		for i, v := range x {
			acc += w[o*in+i] * v
		}
		y[o] = acc
	}
	return y
}

func (m *hfLlama) rmsnorm(x, w []float64) []float64 {
	var ss float64
	for _, v := range x {
		ss += v * v
	}
	k := 1 / math.Sqrt(ss/float64(len(x))+m.eps)
	y := make([]float64, len(x))
	for i, v := range x {
		y[i] = v * k * w[i]
	}
	return y
}

// headNorm applies RMSNorm with weight w to each head of x in place (no-op
// when w is nil).
func (m *hfLlama) headNorm(x []float64, heads int, w []float64) {
	if w == nil {
		return
	}
	d := len(x) / heads
	for h := 0; h < heads; h++ {
		copy(x[h*d:(h+1)*d], m.rmsnorm(x[h*d:(h+1)*d], w))
	}
}

// rope applies Hugging Face's rotate_half RoPE to each head of x in place.
func (m *hfLlama) rope(x []float64, heads, pos int) {
	d := len(x) / heads
	for h := 0; h < heads; h++ {
		for i := 0; i < d/2; i++ {
			th := float64(pos) * math.Pow(m.ropeBase, -2*float64(i)/float64(d))
			c, s := math.Cos(th), math.Sin(th)
			a, b := x[h*d+i], x[h*d+i+d/2]
			x[h*d+i], x[h*d+i+d/2] = a*c-b*s, b*c+a*s
		}
	}
}

// logits runs the model on tokens and returns every position's logits.
func (m *hfLlama) logits(tokens []int) [][]float64 {
	n, d := m.nEmbd, m.headDim
	kvd := d * m.nHKV
	xs := make([][]float64, len(tokens))
	for p, tok := range tokens {
		xs[p] = append([]float64(nil), m.w["model.embed_tokens"][tok*n:(tok+1)*n]...)
	}
	for l := 0; l < m.nLayer; l++ {
		pre := "model.layers." + itoa(l) + "."
		ks, vs, qs := make([][]float64, len(tokens)), make([][]float64, len(tokens)), make([][]float64, len(tokens))
		for p := range tokens {
			h := m.rmsnorm(xs[p], m.w[pre+"input_layernorm"])
			qs[p] = matvec(m.w[pre+"self_attn.q_proj"], h, d*m.nHead)
			ks[p] = matvec(m.w[pre+"self_attn.k_proj"], h, kvd)
			vs[p] = matvec(m.w[pre+"self_attn.v_proj"], h, kvd)
			for name, v := range map[string][]float64{"q": qs[p], "k": ks[p], "v": vs[p]} {
				if b := m.w[pre+"self_attn."+name+"_proj.bias"]; b != nil {
					for i := range v {
						v[i] += b[i]
					}
				}
			}
			m.headNorm(qs[p], m.nHead, m.w[pre+"self_attn.q_norm"])
			m.headNorm(ks[p], m.nHKV, m.w[pre+"self_attn.k_norm"])
			m.rope(qs[p], m.nHead, p)
			m.rope(ks[p], m.nHKV, p)
		}
		for p := range tokens {
			att := make([]float64, d*m.nHead)
			for h := 0; h < m.nHead; h++ {
				g := h / (m.nHead / m.nHKV)
				sc := make([]float64, p+1)
				mx := math.Inf(-1)
				for j := 0; j <= p; j++ {
					var dot float64
					for i := 0; i < d; i++ {
						dot += qs[p][h*d+i] * ks[j][g*d+i]
					}
					sc[j] = dot / math.Sqrt(float64(d))
					mx = math.Max(mx, sc[j])
				}
				var z float64
				for j := range sc {
					sc[j] = math.Exp(sc[j] - mx)
					z += sc[j]
				}
				for j := range sc {
					for i := 0; i < d; i++ {
						att[h*d+i] += sc[j] / z * vs[j][g*d+i]
					}
				}
			}
			o := matvec(m.w[pre+"self_attn.o_proj"], att, n)
			for i := range o {
				xs[p][i] += o[i]
			}
			h := m.rmsnorm(xs[p], m.w[pre+"post_attention_layernorm"])
			nff := len(m.w[pre+"mlp.gate_proj"]) / n
			gt := matvec(m.w[pre+"mlp.gate_proj"], h, nff)
			up := matvec(m.w[pre+"mlp.up_proj"], h, nff)
			for i := range gt {
				gt[i] = gt[i] / (1 + math.Exp(-gt[i])) * up[i]
			}
			dn := matvec(m.w[pre+"mlp.down_proj"], gt, n)
			for i := range dn {
				xs[p][i] += dn[i]
			}
		}
	}
	out := make([][]float64, len(tokens))
	for p := range tokens {
		out[p] = matvec(m.w["lm_head"], m.rmsnorm(xs[p], m.w["model.norm"]), m.nVocab)
	}
	return out
}

// writePEFT writes a random PEFT LoRA directory for m in Hugging Face's
// layout: every projection of every block, lm_head and embed_tokens.
func writePEFT(t *testing.T, dir string, m *hfLlama, r int, alpha float64, rslora bool, seed uint64) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 3))
	rnd := func(n int, std float64) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(rng.NormFloat64() * std)
		}
		return v
	}
	ts := map[string]safetensors.Tensor{}
	add := func(mod string, out, in int) {
		ts["base_model.model."+mod+".lora_A.weight"] = safetensors.Tensor{DType: safetensors.F32, Shape: []int{r, in}, Data: rnd(r*in, 0.3)}
		ts["base_model.model."+mod+".lora_B.weight"] = safetensors.Tensor{DType: safetensors.F32, Shape: []int{out, r}, Data: rnd(out*r, 0.3)}
	}
	n, kvd, qd := m.nEmbd, m.headDim*m.nHKV, m.headDim*m.nHead
	for l := 0; l < m.nLayer; l++ {
		p := "model.layers." + itoa(l) + "."
		nff := len(m.w[p+"mlp.gate_proj"]) / n
		add(p+"self_attn.q_proj", qd, n)
		add(p+"self_attn.k_proj", kvd, n)
		add(p+"self_attn.v_proj", kvd, n)
		add(p+"self_attn.o_proj", n, qd)
		add(p+"mlp.gate_proj", nff, n)
		add(p+"mlp.up_proj", nff, n)
		add(p+"mlp.down_proj", n, nff)
	}
	add("lm_head", m.nVocab, n)
	ts["base_model.model.model.embed_tokens.lora_embedding_A"] = safetensors.Tensor{DType: safetensors.F32, Shape: []int{r, m.nVocab}, Data: rnd(r*m.nVocab, 0.3)}
	ts["base_model.model.model.embed_tokens.lora_embedding_B"] = safetensors.Tensor{DType: safetensors.F32, Shape: []int{n, r}, Data: rnd(n*r, 0.3)}
	require.NoError(t, os.MkdirAll(dir, 0o755))
	require.NoError(t, safetensors.WriteFile(filepath.Join(dir, lora.PEFTWeightsFile), &safetensors.File{Tensors: ts}))
	cfg := map[string]any{"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha, "use_rslora": rslora,
		"target_modules": []string{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head", "embed_tokens"},
		"bias":           "none", "modules_to_save": nil, "base_model_name_or_path": "test"}
	js, err := json.Marshal(cfg)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, lora.PEFTConfigFile), js, 0o644))
}

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
			hf := loadHF(t, tc.model)
			dir := filepath.Join(t.TempDir(), "peft")
			writePEFT(t, dir, hf, tc.r, tc.alpha, tc.rslora, 11)
			base, err := binding.OpenGGUF(tc.model)
			require.NoError(t, err)
			defer base.Close()
			a, err := lora.ImportPEFT(dir, base, cpu(t))
			require.NoError(t, err)
			defer a.Close()
			out := filepath.Join(t.TempDir(), "imported.gguf")
			require.NoError(t, a.Save(out))

			hf.applyPEFT(t, dir)
			ids := make([]int, len(tokens))
			for i, tok := range tokens {
				ids[i] = int(tok)
			}
			want := hf.logits(ids)
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
					raw := st.Tensors["base_model.model.model.layers."+itoa(w.Layer)+".self_attn."+mod+".lora_B.weight"]
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
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := lora.DefaultConfig()
			tc.cfg(&cfg)
			a, err := lora.New(cfg, base, cpu(t))
			require.NoError(t, err)
			defer a.Close()
			randomize(t, a, 2)
			dir := filepath.Join(t.TempDir(), "peft")
			require.NoError(t, a.ExportPEFT(dir, base, "stories260K"))

			typ, err := lora.PEFTType(dir)
			require.NoError(t, err)
			assert.Equal(t, "LORA", typ)
			st, err := safetensors.ReadFile(filepath.Join(dir, lora.PEFTWeightsFile))
			require.NoError(t, err)
			assert.Len(t, st.Tensors, 2*len(a.Weights()))
			q := st.Tensors["base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"]
			assert.Equal(t, []int{64, cfg.Rank}, q.Shape)
			assert.Equal(t, []int{cfg.Rank, 64}, st.Tensors["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"].Shape)
			assert.Equal(t, []int{172, cfg.Rank}, st.Tensors["base_model.model.model.layers.1.mlp.gate_proj.lora_B.weight"].Shape)
			if cfg.Layers == nil {
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

			b, err := lora.ImportPEFT(dir, base, cpu(t))
			require.NoError(t, err)
			defer b.Close()
			assert.Equal(t, a.Scale(), b.Scale())
			assert.Equal(t, a.Config().FileAlpha(), b.Config().FileAlpha())
			assert.Equal(t, a.Config().Layers, b.Config().Layers)
			require.Len(t, b.Weights(), len(a.Weights()))
			for i, w := range a.Weights() {
				assert.Equal(t, w.Base, b.Weights()[i].Base)
				for j, tt := range []*binding.Tensor{w.A, w.B} {
					want, err := tt.Floats()
					require.NoError(t, err)
					got, err := []*binding.Tensor{b.Weights()[i].A, b.Weights()[i].B}[j].Floats()
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
	hf := loadHF(t, base.Path())
	for _, tc := range []struct {
		name    string
		edit    func(cfg map[string]any, ts map[string]safetensors.Tensor)
		is      error
		message string
	}{
		{"modules_to_save", func(c map[string]any, _ map[string]safetensors.Tensor) { c["modules_to_save"] = []string{"lm_head"} },
			lora.ErrPEFTUnsupported, "modules_to_save [lm_head]"},
		{"dora", func(c map[string]any, _ map[string]safetensors.Tensor) { c["use_dora"] = true }, lora.ErrPEFTUnsupported, "DoRA"},
		{"magnitude vector", func(_ map[string]any, ts map[string]safetensors.Tensor) {
			ts["base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"] = safetensors.Tensor{Shape: []int{64}, Data: make([]float32, 64)}
		}, lora.ErrPEFTUnsupported, "lora_magnitude_vector: DoRA"},
		{"saved module tensor", func(_ map[string]any, ts map[string]safetensors.Tensor) {
			ts["base_model.model.lm_head.weight"] = safetensors.Tensor{Shape: []int{1}, Data: []float32{1}}
		}, lora.ErrPEFTUnsupported, "tensor base_model.model.lm_head.weight"},
		{"fan_in_fan_out", func(c map[string]any, _ map[string]safetensors.Tensor) { c["fan_in_fan_out"] = true }, lora.ErrPEFTUnsupported, "fan_in_fan_out"},
		{"rank pattern", func(c map[string]any, _ map[string]safetensors.Tensor) {
			c["rank_pattern"] = map[string]int{"q_proj": 2}
		}, lora.ErrPEFTUnsupported, "rank_pattern"},
		{"ia3", func(c map[string]any, _ map[string]safetensors.Tensor) { c["peft_type"] = "IA3" }, lora.ErrPEFTUnsupported, "peft_type IA3"},
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
			writePEFT(t, dir, hf, 4, 8, false, 1)
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
