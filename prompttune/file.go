package prompttune

import (
	"errors"
	"fmt"
	"math"

	"github.com/ggtune/ggtune/binding"
)

// FormatVersion versions the soft-prompt GGUF keys (adapter.prompt.*).
const FormatVersion = 1

// ErrFormat reports a file that is not a valid soft-prompt adapter.
var ErrFormat = errors.New("invalid soft-prompt file")

// linear applies y = W·x + b to the columns of x ([in, n] row-major by
// column), W in ggml layout [in, out].
func linear(w, b []float32, in, out int, x []float32, n int) []float32 {
	y := make([]float32, out*n)
	for j := 0; j < n; j++ {
		xc := x[j*in : (j+1)*in]
		for o := 0; o < out; o++ {
			row := w[o*in : (o+1)*in]
			s := b[o]
			for i, v := range row {
				s += v * xc[i]
			}
			y[j*out+o] = s
		}
	}
	return y
}

func (p *Prompt) values() ([][]float32, error) {
	var out [][]float32
	for _, t := range append([]*binding.Tensor{p.Embeddings}, p.Encoder...) {
		v, err := t.Floats()
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

// SoftPrompt returns the embeddings placed before the text, [n_embd,
// n_virtual] by column: the learned embeddings (prompt tuning) or the
// encoder's output (P-tuning). It is an error for prefix tuning.
func (p *Prompt) SoftPrompt() ([]float32, error) {
	switch p.cfg.Method {
	case PromptTuning:
		return p.Embeddings.Floats()
	case PTuning:
		v, err := p.values()
		if err != nil {
			return nil, err
		}
		d, h, n := p.shape.NEmbd, p.cfg.hidden(p.shape), p.cfg.NumVirtual
		if p.cfg.Encoder == EncoderLSTM {
			return lstmEncode(v, d, h, n), nil
		}
		relu := func(x []float32) []float32 {
			for i := range x {
				x[i] = float32(math.Max(float64(x[i]), 0))
			}
			return x
		}
		x := relu(linear(v[1], v[2], d, h, v[0], n))
		x = relu(linear(v[3], v[4], h, h, x, n))
		return linear(v[5], v[6], h, d, x, n), nil
	}
	return nil, fmt.Errorf("soft prompt: %s has no prompt embeddings", p.cfg.Method)
}

// lstmEncode evaluates P-tuning's LSTM encoder in Go: v holds the input
// embeddings, then (w_ih, w_hh, bias) per layer and direction, then the
// head's two linear layers.
func lstmEncode(v [][]float32, d, h, n int) []float32 {
	sig := func(x float32) float32 { return float32(1 / (1 + math.Exp(-float64(x)))) }
	th := func(x float32) float32 { return float32(math.Tanh(float64(x))) }
	x, in := v[0], d
	next := 1
	for l := 0; l < lstmLayers; l++ {
		out := make([]float32, 2*h*n)
		for dir := 0; dir < 2; dir++ {
			wih, whh, bias := v[next], v[next+1], v[next+2]
			next += 3
			gx := linear(wih, bias, in, 4*h, x, n)
			hp, cp := make([]float32, h), make([]float32, h)
			zero := make([]float32, 4*h)
			for k := 0; k < n; k++ {
				t := k
				if dir == 1 {
					t = n - 1 - k
				}
				g := linear(whh, zero, h, 4*h, hp, 1)
				for i := range g {
					g[i] += gx[t*4*h+i]
				}
				hn, cn := make([]float32, h), make([]float32, h)
				for j := 0; j < h; j++ {
					cn[j] = sig(g[h+j])*cp[j] + sig(g[j])*th(g[2*h+j])
					hn[j] = sig(g[3*h+j]) * th(cn[j])
				}
				hp, cp = hn, cn
				copy(out[t*2*h+dir*h:], hn)
			}
		}
		x, in = out, 2*h
	}
	y := linear(v[next], v[next+1], 2*h, 2*h, x, n)
	for i := range y {
		y[i] = float32(math.Max(float64(y[i]), 0))
	}
	return linear(v[next+2], v[next+3], 2*h, d, y, n)
}

// PrefixKV returns prefix tuning's keys and values of every layer, each
// [head_dim, n_head_kv, n_virtual] in ggml order (reparameterisation
// applied).
func (p *Prompt) PrefixKV() (keys, values [][]float32, err error) {
	if p.cfg.Method != PrefixTuning {
		return nil, nil, fmt.Errorf("prefix: %s has no prefix", p.cfg.Method)
	}
	s, n := p.shape, p.cfg.NumVirtual
	if !p.cfg.Reparam {
		for l := range p.Keys {
			k, err := p.Keys[l].Floats()
			if err != nil {
				return nil, nil, err
			}
			v, err := p.Values[l].Floats()
			if err != nil {
				return nil, nil, err
			}
			keys, values = append(keys, k), append(values, v)
		}
		return keys, values, nil
	}
	v, err := p.values()
	if err != nil {
		return nil, nil, err
	}
	d, h, per := s.NEmbd, p.cfg.hidden(s), s.kvK()+s.kvV()
	x := linear(v[1], v[2], d, h, v[0], n)
	for i := range x {
		x[i] = float32(math.Tanh(float64(x[i])))
	}
	all := linear(v[3], v[4], h, s.NLayer*per, x, n)
	rows := s.NLayer * per
	for l := 0; l < s.NLayer; l++ {
		k := make([]float32, s.kvK()*n)
		val := make([]float32, s.kvV()*n)
		for j := 0; j < n; j++ {
			col := all[j*rows+l*per : j*rows+(l+1)*per]
			copy(k[j*s.kvK():(j+1)*s.kvK()], col[:s.kvK()])
			copy(val[j*s.kvV():(j+1)*s.kvV()], col[s.kvK():])
		}
		keys, values = append(keys, k), append(values, val)
	}
	return keys, values, nil
}

// Save writes the prompt as a GGUF adapter (general.type "adapter",
// adapter.type the method, adapter.prompt.* keys): the trainable tensors,
// so training can continue, and the exported form that inference needs
// (prompt.embeddings, or blk.N.prefix_k/v), written atomically.
func (p *Prompt) Save(path string) error {
	w, err := binding.NewGGUFWriter(len(p.Tensors()) + 2*p.shape.NLayer + 2)
	if err != nil {
		return fmt.Errorf("save soft prompt %s: %w", path, err)
	}
	defer w.Close()
	s, c := p.shape, p.cfg
	for _, kv := range []binding.KV{
		{Key: "general.type", Value: "adapter"},
		{Key: "general.architecture", Value: s.Arch},
		{Key: "adapter.type", Value: string(c.Method)},
		{Key: "adapter.prompt.version", Value: uint32(FormatVersion)},
		{Key: "adapter.prompt.num_virtual_tokens", Value: uint32(c.NumVirtual)},
		{Key: "adapter.prompt.init", Value: string(c.Init)},
		{Key: "adapter.prompt.init_text", Value: c.InitText},
		{Key: "adapter.prompt.n_embd", Value: uint32(s.NEmbd)},
		{Key: "adapter.prompt.n_layer", Value: uint32(s.NLayer)},
		{Key: "adapter.prompt.n_head_kv", Value: uint32(s.NHeadKV)},
		{Key: "adapter.prompt.head_dim", Value: uint32(s.HeadDim)},
		{Key: "adapter.prompt.head_dim_v", Value: uint32(s.HeadDimV)},
		{Key: "adapter.prompt.encoder_hidden", Value: uint32(c.hidden(s))},
		{Key: "adapter.prompt.reparam", Value: c.Reparam},
		{Key: "adapter.prompt.encoder", Value: c.Encoder},
		{Key: "adapter.prompt.seed", Value: c.Seed},
	} {
		if err := w.Set(kv.Key, kv.Value); err != nil {
			return fmt.Errorf("save soft prompt %s: %w", path, err)
		}
	}
	add := func(name string, shape []int64, vals []float32) error {
		for _, v := range vals {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return fmt.Errorf("tensor %s holds a non-finite value", name)
			}
		}
		return w.AddFloats(name, binding.TypeF32, shape, vals)
	}
	for _, t := range p.Tensors() {
		v, err := t.Floats()
		if err != nil {
			return fmt.Errorf("save soft prompt %s: %w", path, err)
		}
		sh := t.Shape()
		if err := add(t.Name(), sh[:ndims(t)], v); err != nil {
			return fmt.Errorf("save soft prompt %s: %w", path, err)
		}
	}
	n := int64(c.NumVirtual)
	switch {
	case c.Method == PTuning:
		sp, err := p.SoftPrompt()
		if err == nil {
			err = add("prompt.embeddings", []int64{int64(s.NEmbd), n}, sp)
		}
		if err != nil {
			return fmt.Errorf("save soft prompt %s: %w", path, err)
		}
	case c.Method == PrefixTuning && c.Reparam:
		keys, values, err := p.PrefixKV()
		if err != nil {
			return fmt.Errorf("save soft prompt %s: %w", path, err)
		}
		for l := range keys {
			if err := add(fmt.Sprintf("blk.%d.prefix_k", l), []int64{int64(s.HeadDim), int64(s.NHeadKV), n}, keys[l]); err != nil {
				return fmt.Errorf("save soft prompt %s: %w", path, err)
			}
			if err := add(fmt.Sprintf("blk.%d.prefix_v", l), []int64{int64(s.HeadDimV), int64(s.NHeadKV), n}, values[l]); err != nil {
				return fmt.Errorf("save soft prompt %s: %w", path, err)
			}
		}
	}
	if err := w.WriteFile(path); err != nil {
		return fmt.Errorf("save soft prompt: %w", err)
	}
	return nil
}

func ndims(t *binding.Tensor) int {
	n := 4
	for n > 1 && t.Dim(n-1) == 1 {
		n--
	}
	return n
}

// Load reads a soft-prompt adapter written by Save for a model of the given
// shape (its architecture and sizes must match) onto backend, in its
// trainable form.
func Load(path string, s Shape, backend *binding.Backend) (*Prompt, error) {
	f, err := binding.OpenGGUF(path)
	if err != nil {
		return nil, fmt.Errorf("load soft prompt: %w", err)
	}
	defer f.Close()
	fail := func(format string, args ...any) (*Prompt, error) {
		return nil, fmt.Errorf("load soft prompt %s: %w: %s", path, ErrFormat, fmt.Sprintf(format, args...))
	}
	if t, _ := f.String("general.type"); t != "adapter" {
		return fail("general.type is %q, want \"adapter\"", t)
	}
	at, _ := f.String("adapter.type")
	method, err := ParseMethod(at)
	if err != nil {
		return fail("adapter.type %q is not a soft prompt", at)
	}
	if v, _ := f.Uint("adapter.prompt.version"); v != FormatVersion {
		return fail("adapter.prompt.version %d, this reader knows %d", v, FormatVersion)
	}
	arch, _ := f.String("general.architecture")
	if arch != s.Arch {
		return fail("made for architecture %q, the model is %q", arch, s.Arch)
	}
	u := func(key string) int {
		v, _ := f.Uint(key)
		return int(v)
	}
	for key, want := range map[string]int{"adapter.prompt.n_embd": s.NEmbd, "adapter.prompt.n_layer": s.NLayer,
		"adapter.prompt.n_head_kv": s.NHeadKV, "adapter.prompt.head_dim": s.HeadDim} {
		if got := u(key); got != want {
			return fail("%s is %d, the model has %d", key, got, want)
		}
	}
	cfg := Config{Method: method, NumVirtual: u("adapter.prompt.num_virtual_tokens"), EncoderHidden: u("adapter.prompt.encoder_hidden")}
	if v, ok := f.String("adapter.prompt.init"); ok {
		cfg.Init = Init(v)
	}
	cfg.InitText, _ = f.String("adapter.prompt.init_text")
	cfg.Encoder, _ = f.String("adapter.prompt.encoder")
	if v, ok := f.Get("adapter.prompt.reparam"); ok {
		cfg.Reparam, _ = v.(bool)
	}
	if v, ok := f.Uint("adapter.prompt.seed"); ok {
		cfg.Seed = v
	}
	p, err := alloc(cfg, s, backend)
	if err != nil {
		return nil, fmt.Errorf("load soft prompt %s: %w", path, err)
	}
	for _, t := range p.Tensors() {
		ti, ok := f.TensorInfo(t.Name())
		if !ok {
			p.Close()
			return fail("no tensor %s", t.Name())
		}
		if ti.Elements() != t.Elements() {
			p.Close()
			return fail("tensor %s has %d values, want %d", t.Name(), ti.Elements(), t.Elements())
		}
		v, err := f.ReadTensorFloats(t.Name())
		if err == nil {
			err = t.SetFloats(v)
		}
		if err != nil {
			p.Close()
			return nil, fmt.Errorf("load soft prompt %s: %w", path, err)
		}
	}
	return p, nil
}
