package prompttune

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/model"
)

// Shape is what a soft prompt needs to know of its base model.
type Shape struct {
	Arch     string
	NEmbd    int
	NLayer   int
	NHeadKV  int
	HeadDim  int
	HeadDimV int
}

// ShapeOf returns the shape of a model's configuration.
func ShapeOf(c model.Config) Shape {
	return Shape{Arch: c.Arch, NEmbd: c.NEmbd, NLayer: c.NLayer, NHeadKV: c.NHeadKV, HeadDim: c.HeadDim, HeadDimV: c.HeadDimV}
}

func (s Shape) kvK() int { return s.NHeadKV * s.HeadDim }
func (s Shape) kvV() int { return s.NHeadKV * s.HeadDimV }

// Prompt is a trainable soft prompt whose tensors live in one backend
// buffer. Not safe for concurrent use; Close frees it.
type Prompt struct {
	cfg   Config
	shape Shape
	ctx   *binding.Context
	buf   *binding.Buffer

	// Embeddings [n_embd, n_virtual]: the soft prompt (prompt tuning), the
	// encoder's input (P-tuning) or the reparameterisation's input (prefix).
	Embeddings *binding.Tensor
	// Encoder holds an MLP's weights and biases as W1,b1,W2,b2[,W3,b3]:
	// P-tuning's Linear-ReLU-Linear-ReLU-Linear, or prefix tuning's
	// Linear-Tanh-Linear reparameterisation.
	Encoder []*binding.Tensor
	// Keys and Values are prefix tuning's per-layer [head_dim, n_head_kv,
	// n_virtual] tensors (without reparameterisation).
	Keys, Values []*binding.Tensor
}

// Config returns the prompt's configuration.
func (p *Prompt) Config() Config { return p.cfg }

// Shape returns the base model shape the prompt was made for.
func (p *Prompt) Shape() Shape { return p.shape }

func (c Config) hidden(s Shape) int {
	if c.EncoderHidden > 0 {
		return c.EncoderHidden
	}
	return s.NEmbd
}

// alloc creates the prompt's tensors (uninitialised) on backend.
func alloc(cfg Config, s Shape, backend *binding.Backend) (*Prompt, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ctx, err := binding.NewGraphContext(2*s.NLayer+32, 1, false)
	if err != nil {
		return nil, fmt.Errorf("new soft prompt: %w", err)
	}
	p := &Prompt{cfg: cfg, shape: s, ctx: ctx}
	n, d, h := int64(cfg.NumVirtual), int64(s.NEmbd), int64(cfg.hidden(s))
	linear := func(name string, in, out int64) {
		p.Encoder = append(p.Encoder,
			ctx.NewTensor(binding.TypeF32, in, out).SetName(name+".weight"),
			ctx.NewTensor(binding.TypeF32, out).SetName(name+".bias"))
	}
	switch {
	case cfg.Method == PromptTuning:
		p.Embeddings = ctx.NewTensor(binding.TypeF32, d, n).SetName("prompt.embeddings")
	case cfg.Method == PTuning && cfg.Encoder == EncoderLSTM:
		p.Embeddings = ctx.NewTensor(binding.TypeF32, d, n).SetName("ptuning.embeddings")
		for l := 0; l < lstmLayers; l++ {
			in := d
			if l > 0 {
				in = 2 * h
			}
			for _, dir := range []string{"f", "b"} {
				name := fmt.Sprintf("ptuning.lstm.%d%s", l, dir)
				p.Encoder = append(p.Encoder,
					ctx.NewTensor(binding.TypeF32, in, 4*h).SetName(name+".w_ih"),
					ctx.NewTensor(binding.TypeF32, h, 4*h).SetName(name+".w_hh"),
					ctx.NewTensor(binding.TypeF32, 4*h).SetName(name+".bias"))
			}
		}
		linear("ptuning.head.0", 2*h, 2*h)
		linear("ptuning.head.2", 2*h, d)
	case cfg.Method == PTuning:
		p.Embeddings = ctx.NewTensor(binding.TypeF32, d, n).SetName("ptuning.embeddings")
		linear("ptuning.mlp.0", d, h)
		linear("ptuning.mlp.2", h, h)
		linear("ptuning.mlp.4", h, d)
	case cfg.Reparam:
		p.Embeddings = ctx.NewTensor(binding.TypeF32, d, n).SetName("prefix.embeddings")
		linear("prefix.mlp.0", d, h)
		linear("prefix.mlp.2", h, int64(s.NLayer*(s.kvK()+s.kvV())))
	default:
		for l := 0; l < s.NLayer; l++ {
			p.Keys = append(p.Keys, ctx.NewTensor(binding.TypeF32, int64(s.HeadDim), int64(s.NHeadKV), n).SetName(fmt.Sprintf("blk.%d.prefix_k", l)))
			p.Values = append(p.Values, ctx.NewTensor(binding.TypeF32, int64(s.HeadDimV), int64(s.NHeadKV), n).SetName(fmt.Sprintf("blk.%d.prefix_v", l)))
		}
	}
	if ctx.Err() != nil {
		ctx.Close()
		return nil, fmt.Errorf("new soft prompt: %w", ctx.Err())
	}
	if p.buf, err = backend.AllocContext(ctx); err != nil {
		ctx.Close()
		return nil, fmt.Errorf("new soft prompt: %w", err)
	}
	return p, nil
}

// Tensors returns every tensor of the prompt (all are trainable).
func (p *Prompt) Tensors() []*binding.Tensor {
	var out []*binding.Tensor
	if p.Embeddings != nil {
		out = append(out, p.Embeddings)
	}
	out = append(out, p.Encoder...)
	out = append(out, p.Keys...)
	return append(out, p.Values...)
}

// Params marks the prompt's tensors as graph parameters and returns them.
func (p *Prompt) Params() ([]*binding.Tensor, error) {
	ts := p.Tensors()
	for _, t := range ts {
		if !t.IsParam() {
			if err := t.SetParam(); err != nil {
				return nil, err
			}
		}
	}
	return ts, nil
}

// Close frees the prompt's tensors. It is idempotent.
func (p *Prompt) Close() {
	if p == nil {
		return
	}
	p.buf.Close()
	p.ctx.Close()
}

// New creates a soft prompt for the model and initialises it per cfg. The
// model's token embeddings are read from its file for the vocab and text
// initialisations and for the scale of random ones.
func New(cfg Config, m *model.Model, backend *binding.Backend) (*Prompt, error) {
	if cfg.Init == "" {
		cfg.Init = InitRandom
	}
	p, err := alloc(cfg, ShapeOf(m.Config()), backend)
	if err != nil {
		return nil, err
	}
	if err := p.init(m); err != nil {
		p.Close()
		return nil, fmt.Errorf("new soft prompt: %w", err)
	}
	return p, nil
}

func (p *Prompt) init(m *model.Model) error {
	f, err := binding.OpenGGUF(m.Path())
	if err != nil {
		return err
	}
	defer f.Close()
	const embd = "token_embd.weight"
	d := p.shape.NEmbd
	nVocab, std, err := rowStats(f, embd, d)
	if err != nil {
		return err
	}
	rng := rand.New(rand.NewPCG(p.cfg.Seed, 0x70726f6d7074))
	normal := func(t *binding.Tensor, s float64) error {
		v := make([]float32, t.Elements())
		for i := range v {
			v[i] = float32(rng.NormFloat64() * s)
		}
		return t.SetFloats(v)
	}
	if p.Embeddings != nil {
		n := p.cfg.NumVirtual
		vals := make([]float32, n*d)
		var ids []int32
		switch p.cfg.Init {
		case InitVocab:
			for i := 0; i < n; i++ {
				ids = append(ids, int32(rng.IntN(nVocab)))
			}
		case InitText:
			tok, err := m.Tokenizer()
			if err != nil {
				return err
			}
			text, err := tok.Encode(p.cfg.InitText, false, false)
			if err != nil {
				return err
			}
			if len(text) == 0 {
				return fmt.Errorf("%w: init text %q has no tokens", ErrConfig, p.cfg.InitText)
			}
			for i := 0; i < n; i++ {
				ids = append(ids, text[i%len(text)])
			}
		}
		if ids == nil {
			for i := range vals {
				vals[i] = float32(rng.NormFloat64() * std)
			}
		}
		for i, id := range ids {
			row, err := f.ReadTensorRows(embd, int64(id), 1) // checks the row's range
			if err != nil {
				return err
			}
			copy(vals[i*d:(i+1)*d], row)
		}
		if err := p.Embeddings.SetFloats(vals); err != nil {
			return err
		}
	}
	// PyTorch's defaults: U(-1/√in, 1/√in) for linear layers (by their
	// input size) and U(-1/√h, 1/√h) for every LSTM tensor.
	bound := 0.0
	for _, t := range p.Encoder {
		switch {
		case strings.Contains(t.Name(), ".lstm."):
			bound = 1 / math.Sqrt(float64(p.cfg.hidden(p.shape)))
		case t.Dim(1) > 1: // a linear weight; its bias follows with the same bound
			bound = 1 / math.Sqrt(float64(t.Dim(0)))
		}
		v := make([]float32, t.Elements())
		for j := range v {
			v[j] = float32((rng.Float64()*2 - 1) * bound)
		}
		if err := t.SetFloats(v); err != nil {
			return err
		}
	}
	for l := range p.Keys {
		if err := normal(p.Keys[l], std); err != nil {
			return err
		}
		if err := normal(p.Values[l], std); err != nil {
			return err
		}
	}
	return nil
}

// rowStats returns the number of rows of d values of the named tensor and
// the standard deviation of all its values, reading it a few thousand rows
// at a time (a 152k-token embedding is 0.5 GiB in F32).
func rowStats(f *binding.GGUFFile, name string, d int) (rows int, std float64, err error) {
	ti, ok := f.TensorInfo(name)
	if !ok || len(ti.Shape) == 0 || ti.Shape[0] != int64(d) {
		return 0, 0, fmt.Errorf("%s in %s: %w: want rows of %d values", name, f.Path(), binding.ErrShape, d)
	}
	n := ti.Elements() / int64(d)
	var s, s2 float64
	for r := int64(0); r < n; r += 4096 {
		v, err := f.ReadTensorRows(name, r, min(4096, n-r))
		if err != nil {
			return 0, 0, err
		}
		for _, x := range v {
			s += float64(x)
			s2 += float64(x) * float64(x)
		}
	}
	m := float64(n) * float64(d)
	return int(n), math.Sqrt(math.Max(s2/m-(s/m)*(s/m), 1e-12)), nil
}
