// Package hfref is the tests' oracle for Hugging Face's layout: a plain-Go
// float64 forward pass of a llama-family model with PyTorch's [out, in]
// weights and split-half RoPE (the GGUF's q/k rows un-permuted), random
// PEFT adapter directories (LoRA, DoRA, IA3) written in that layout, and
// their application to the reference weights as PEFT defines it.
package hfref

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/internal/hfpeft"
	"github.com/ggtune/ggtune/safetensors"
)

// Model is a plain-Go reference forward pass of a llama-family model in
// Hugging Face's layout (PyTorch [out, in] weights, split-half RoPE), in
// float64. It is the oracle for the PEFT layout: it never sees GGUF's
// interleaved q/k rows.
type Model struct {
	NEmbd, NHead, NHKV, NLayer, NVocab int
	HeadDim                            int
	eps, ropeBase                      float64
	// W holds the weights by Hugging Face name (without .weight), row-major.
	W map[string][]float64
}

// Load reads a GGUF model and converts it to Hugging Face's layout: q and
// k rows un-permuted for llama (not for qwen2/qwen3).
func Load(t *testing.T, path string) *Model {
	t.Helper()
	f, err := binding.OpenGGUF(path)
	require.NoError(t, err)
	defer f.Close()
	arch, _ := f.String("general.architecture")
	u := func(k string) int { v, ok := f.Uint(arch + "." + k); require.True(t, ok, k); return int(v) }
	m := &Model{NEmbd: u("embedding_length"), NHead: u("attention.head_count"), NHKV: u("attention.head_count_kv"),
		NLayer: u("block_count"), eps: 1e-5, ropeBase: 10000, W: map[string][]float64{}}
	m.HeadDim = m.NEmbd / m.NHead
	if v, ok := f.Uint(arch + ".attention.key_length"); ok {
		m.HeadDim = int(v)
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
		m.W[hf] = out
	}
	read("token_embd.weight", "model.embed_tokens", 0)
	ti, _ := f.TensorInfo("token_embd.weight")
	m.NVocab = int(ti.Shape[1])
	read("output_norm.weight", "model.norm", 0)
	if _, ok := f.TensorInfo("output.weight"); ok {
		read("output.weight", "lm_head", 0)
	} else {
		m.W["lm_head"] = m.W["model.embed_tokens"]
	}
	for l := 0; l < m.NLayer; l++ {
		p := "model.layers." + itoa(l) + "."
		g := "blk." + itoa(l) + "."
		read(g+"attn_norm.weight", p+"input_layernorm", 0)
		read(g+"ffn_norm.weight", p+"post_attention_layernorm", 0)
		read(g+"attn_q.weight", p+"self_attn.q_proj", m.NHead)
		read(g+"attn_k.weight", p+"self_attn.k_proj", m.NHKV)
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

// ApplyLoRA adds scale·B·A of every LoRA pair in the PEFT directory to the
// model's HF-layout weights (W [out, in] += s·B[out, r]·A[r, in]; the
// embedding E [vocab, d] += s·(B[d, r]·A[r, vocab])ᵀ); with DoRA
// (lora_magnitude_vector) row o of W + s·B·A is then scaled to the
// magnitude m[o] (PEFT's m ⊙ (W + s·B·A)/‖W + s·B·A‖ by rows).
func (m *Model) ApplyLoRA(t *testing.T, dir string) {
	t.Helper()
	js, err := os.ReadFile(filepath.Join(dir, hfpeft.ConfigFile))
	require.NoError(t, err)
	var pc struct {
		R      int     `json:"r"`
		Alpha  float64 `json:"lora_alpha"`
		RSLoRA bool    `json:"use_rslora"`
		DoRA   bool    `json:"use_dora"`
	}
	require.NoError(t, json.Unmarshal(js, &pc))
	s := pc.Alpha / float64(pc.R)
	if pc.RSLoRA {
		s = pc.Alpha / math.Sqrt(float64(pc.R))
	}
	st, err := safetensors.ReadFile(filepath.Join(dir, hfpeft.WeightsFile))
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
		w := m.W[name]
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
		if mag, ok := st.Tensors[mod+".lora_magnitude_vector"]; ok {
			// DoRA: each row of W + s·B·A rescaled to its magnitude.
			require.True(t, pc.DoRA, "%s: magnitude without use_dora", mod)
			for o := 0; o < out; o++ {
				var ss float64
				for _, v := range nw[o*in : (o+1)*in] {
					ss += v * v
				}
				g := float64(mag.Data[o]) / math.Sqrt(ss)
				for i := o * in; i < (o+1)*in; i++ {
					nw[i] *= g
				}
			}
		} else {
			require.False(t, pc.DoRA, "%s: use_dora without a magnitude", mod)
		}
		m.W[name] = nw
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

func (m *Model) rmsnorm(x, w []float64) []float64 {
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
func (m *Model) headNorm(x []float64, heads int, w []float64) {
	if w == nil {
		return
	}
	d := len(x) / heads
	for h := 0; h < heads; h++ {
		copy(x[h*d:(h+1)*d], m.rmsnorm(x[h*d:(h+1)*d], w))
	}
}

// rope applies Hugging Face's rotate_half RoPE to each head of x in place.
func (m *Model) rope(x []float64, heads, pos int) {
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

// Logits runs the model on tokens and returns every position's logits.
func (m *Model) Logits(tokens []int) [][]float64 {
	n, d := m.NEmbd, m.HeadDim
	kvd := d * m.NHKV
	xs := make([][]float64, len(tokens))
	for p, tok := range tokens {
		xs[p] = append([]float64(nil), m.W["model.embed_tokens"][tok*n:(tok+1)*n]...)
	}
	for l := 0; l < m.NLayer; l++ {
		pre := "model.layers." + itoa(l) + "."
		ks, vs, qs := make([][]float64, len(tokens)), make([][]float64, len(tokens)), make([][]float64, len(tokens))
		for p := range tokens {
			h := m.rmsnorm(xs[p], m.W[pre+"input_layernorm"])
			qs[p] = matvec(m.W[pre+"self_attn.q_proj"], h, d*m.NHead)
			ks[p] = matvec(m.W[pre+"self_attn.k_proj"], h, kvd)
			vs[p] = matvec(m.W[pre+"self_attn.v_proj"], h, kvd)
			for name, v := range map[string][]float64{"q": qs[p], "k": ks[p], "v": vs[p]} {
				if b := m.W[pre+"self_attn."+name+"_proj.bias"]; b != nil {
					for i := range v {
						v[i] += b[i]
					}
				}
			}
			m.headNorm(qs[p], m.NHead, m.W[pre+"self_attn.q_norm"])
			m.headNorm(ks[p], m.NHKV, m.W[pre+"self_attn.k_norm"])
			m.rope(qs[p], m.NHead, p)
			m.rope(ks[p], m.NHKV, p)
		}
		for p := range tokens {
			att := make([]float64, d*m.NHead)
			for h := 0; h < m.NHead; h++ {
				g := h / (m.NHead / m.NHKV)
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
			o := matvec(m.W[pre+"self_attn.o_proj"], att, n)
			for i := range o {
				xs[p][i] += o[i]
			}
			h := m.rmsnorm(xs[p], m.W[pre+"post_attention_layernorm"])
			nff := len(m.W[pre+"mlp.gate_proj"]) / n
			gt := matvec(m.W[pre+"mlp.gate_proj"], h, nff)
			up := matvec(m.W[pre+"mlp.up_proj"], h, nff)
			for i := range gt {
				gt[i] = gt[i] / (1 + math.Exp(-gt[i])) * up[i]
			}
			dn := matvec(m.W[pre+"mlp.down_proj"], gt, n)
			for i := range dn {
				xs[p][i] += dn[i]
			}
		}
	}
	out := make([][]float64, len(tokens))
	for p := range tokens {
		out[p] = matvec(m.W["lm_head"], m.rmsnorm(xs[p], m.W["model.norm"]), m.NVocab)
	}
	return out
}

// WriteLoRA writes a random PEFT LoRA directory for m in Hugging Face's
// layout: every projection of every block, lm_head and embed_tokens.
func WriteLoRA(t *testing.T, dir string, m *Model, r int, alpha float64, rslora bool, seed uint64) {
	t.Helper()
	writeLoRA(t, dir, m, r, alpha, rslora, false, seed)
}

// WriteDoRA writes a random PEFT DoRA directory (use_dora, a
// lora_magnitude_vector per module) for m: every projection of every block
// and lm_head (PEFT's DoRA of embeddings differs; ggtune does not convert
// it).
func WriteDoRA(t *testing.T, dir string, m *Model, r int, alpha float64, seed uint64) {
	t.Helper()
	writeLoRA(t, dir, m, r, alpha, false, true, seed)
}

func writeLoRA(t *testing.T, dir string, m *Model, r int, alpha float64, rslora, dora bool, seed uint64) {
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
		if dora {
			mag := rnd(out, 0.5)
			for i := range mag {
				mag[i] = 1 + mag[i]*mag[i]
			}
			ts["base_model.model."+mod+".lora_magnitude_vector"] = safetensors.Tensor{DType: safetensors.F32, Shape: []int{out}, Data: mag}
		}
	}
	n, kvd, qd := m.NEmbd, m.HeadDim*m.NHKV, m.HeadDim*m.NHead
	for l := 0; l < m.NLayer; l++ {
		p := "model.layers." + itoa(l) + "."
		nff := len(m.W[p+"mlp.gate_proj"]) / n
		add(p+"self_attn.q_proj", qd, n)
		add(p+"self_attn.k_proj", kvd, n)
		add(p+"self_attn.v_proj", kvd, n)
		add(p+"self_attn.o_proj", n, qd)
		add(p+"mlp.gate_proj", nff, n)
		add(p+"mlp.up_proj", nff, n)
		add(p+"mlp.down_proj", n, nff)
	}
	add("lm_head", m.NVocab, n)
	modules := []string{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"}
	if !dora {
		ts["base_model.model.model.embed_tokens.lora_embedding_A"] = safetensors.Tensor{DType: safetensors.F32, Shape: []int{r, m.NVocab}, Data: rnd(r*m.NVocab, 0.3)}
		ts["base_model.model.model.embed_tokens.lora_embedding_B"] = safetensors.Tensor{DType: safetensors.F32, Shape: []int{n, r}, Data: rnd(n*r, 0.3)}
		modules = append(modules, "embed_tokens")
	}
	require.NoError(t, os.MkdirAll(dir, 0o755))
	require.NoError(t, safetensors.WriteFile(filepath.Join(dir, hfpeft.WeightsFile), &safetensors.File{Tensors: ts}))
	cfg := map[string]any{"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha, "use_rslora": rslora,
		"use_dora": dora, "target_modules": modules,
		"bias": "none", "modules_to_save": nil, "base_model_name_or_path": "test"}
	js, err := json.Marshal(cfg)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, hfpeft.ConfigFile), js, 0o644))
}

// WriteIA3 writes a random PEFT IA3 directory for m with PEFT's llama
// defaults: target_modules k_proj, v_proj and down_proj, feedforward_modules
// down_proj (ia3_l [out, 1] scales k and v outputs, [1, in] the input of
// down_proj), every vector in [0.5, 1.5).
func WriteIA3(t *testing.T, dir string, m *Model, seed uint64) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 5))
	vec := func(n int) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = 0.5 + rng.Float32()
		}
		return v
	}
	ts := map[string]safetensors.Tensor{}
	kvd := m.HeadDim * m.NHKV
	for l := 0; l < m.NLayer; l++ {
		p := "base_model.model.model.layers." + itoa(l) + "."
		nff := len(m.W["model.layers."+itoa(l)+".mlp.gate_proj"]) / m.NEmbd
		ts[p+"self_attn.k_proj.ia3_l"] = safetensors.Tensor{DType: safetensors.F32, Shape: []int{kvd, 1}, Data: vec(kvd)}
		ts[p+"self_attn.v_proj.ia3_l"] = safetensors.Tensor{DType: safetensors.F32, Shape: []int{kvd, 1}, Data: vec(kvd)}
		ts[p+"mlp.down_proj.ia3_l"] = safetensors.Tensor{DType: safetensors.F32, Shape: []int{1, nff}, Data: vec(nff)}
	}
	require.NoError(t, os.MkdirAll(dir, 0o755))
	require.NoError(t, safetensors.WriteFile(filepath.Join(dir, hfpeft.WeightsFile), &safetensors.File{Tensors: ts}))
	cfg := map[string]any{"peft_type": "IA3", "task_type": "CAUSAL_LM", "target_modules": []string{"k_proj", "v_proj", "down_proj"},
		"feedforward_modules": []string{"down_proj"}, "fan_in_fan_out": false, "modules_to_save": nil, "init_ia3_weights": true,
		"base_model_name_or_path": "test"}
	js, err := json.Marshal(cfg)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, hfpeft.ConfigFile), js, 0o644))
}

// ApplyIA3 folds the IA3 vectors of the PEFT directory into the model's
// HF-layout weights as PEFT's IA3 layers compute them: a vector of shape
// [out, 1] scales the module's output (its rows and bias), one of shape
// [1, in] (a feedforward module) its input (the columns).
func (m *Model) ApplyIA3(t *testing.T, dir string) {
	t.Helper()
	st, err := safetensors.ReadFile(filepath.Join(dir, hfpeft.WeightsFile))
	require.NoError(t, err)
	for _, key := range st.Names() {
		mod, ok := strings.CutSuffix(key, ".ia3_l")
		require.True(t, ok, key)
		name := strings.TrimPrefix(mod, "base_model.model.")
		w := m.W[name]
		require.NotNil(t, w, name)
		l := st.Tensors[key]
		require.Len(t, l.Shape, 2, key)
		if l.Shape[0] == 1 { // feedforward: scale the inputs
			in := l.Shape[1]
			for i := range w {
				w[i] *= float64(l.Data[i%in])
			}
			continue
		}
		in := len(w) / l.Shape[0]
		for i := range w {
			w[i] *= float64(l.Data[i/in])
		}
		if b := m.W[name+".bias"]; b != nil {
			for i := range b {
				b[i] *= float64(l.Data[i])
			}
		}
	}
}
