// Package bottleneck implements bottleneck adapters (Houlsby et al. 2019)
// with AdapterHub's placements: a small residual MLP
// h + W_up·act(W_down·h + b_down) + b_up inserted after the attention block
// and after the FFN (Houlsby, swish) or after the FFN only (Pfeiffer,
// ReLU), with a bottleneck of n_embd/reduction. W_up starts at zero, so an
// untrained adapter changes nothing. The activation makes it non-linear:
// it cannot be merged, and ggtune's graph runs it.
package bottleneck

import (
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"strings"

	"github.com/spf13/pflag"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/method"
	"github.com/ggtune/ggtune/model"
	"github.com/ggtune/ggtune/train"
)

func init() { method.Register(bnMethod{}) }

// AdapterType is the adapter.type of bottleneck adapter files.
const AdapterType = "bottleneck"

// FormatVersion is the version of the ggtune.bottleneck.* keys.
const FormatVersion = 1

// Errors.
var (
	// ErrConfig reports an invalid configuration.
	ErrConfig = errors.New("invalid bottleneck config")
	// ErrFormat reports a file that is not a valid bottleneck adapter.
	ErrFormat = errors.New("invalid bottleneck adapter file")
)

// Placements (AdapterHub's names).
const (
	// Houlsby adds adapters after attention and after the FFN, with swish
	// (AdapterHub's DoubleSeqBnConfig).
	Houlsby = "houlsby"
	// Pfeiffer adds one adapter after the FFN, with ReLU (SeqBnConfig).
	Pfeiffer = "pfeiffer"
)

// Config configures bottleneck adapters.
type Config struct {
	Placement string `yaml:"placement" json:"placement"`
	// Reduction sets the bottleneck to n_embd/Reduction (AdapterHub's
	// reduction_factor, default 16) unless Bottleneck is set.
	Reduction  int    `yaml:"reduction" json:"reduction_factor"`
	Bottleneck int    `yaml:"bottleneck" json:"bottleneck,omitempty"`
	Seed       uint64 `yaml:"seed" json:"seed"`
}

// DefaultConfig returns the Houlsby placement with reduction factor 16.
func DefaultConfig() Config { return Config{Placement: Houlsby, Reduction: 16} }

// AddFlags implements method.Config: --placement, --reduction, --bottleneck.
func (c *Config) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.Placement, "placement", c.Placement, "houlsby (after attention and after the FFN, swish) or pfeiffer (after the FFN, relu)")
	fs.IntVar(&c.Reduction, "reduction", c.Reduction, "bottleneck size n_embd/N (AdapterHub's reduction factor)")
	fs.IntVar(&c.Bottleneck, "bottleneck", c.Bottleneck, "bottleneck size (overrides --reduction; 0: use --reduction)")
}

// Resolve implements method.Config.
func (c *Config) Resolve(*binding.GGUFFile) error {
	c.Placement = strings.ToLower(c.Placement)
	switch {
	case c.Placement != Houlsby && c.Placement != Pfeiffer:
		return fmt.Errorf("%w: placement %q (want houlsby or pfeiffer)", ErrConfig, c.Placement)
	case c.Bottleneck < 0 || (c.Bottleneck == 0 && c.Reduction <= 0):
		return fmt.Errorf("%w: bottleneck %d, reduction %d (want a positive bottleneck or reduction)", ErrConfig, c.Bottleneck, c.Reduction)
	}
	return nil
}

func (c Config) size(nEmbd int) int {
	if c.Bottleneck > 0 {
		return c.Bottleneck
	}
	return max(1, nEmbd/c.Reduction)
}

// sites returns the adapter sites of the placement.
func (c Config) sites() []string {
	if c.Placement == Pfeiffer {
		return []string{"ffn"}
	}
	return []string{"attn", "ffn"}
}

// module is one adapter: W_down [n_embd, m], b_down [m], W_up [m, n_embd],
// b_up [n_embd].
type module struct{ down, downB, up, upB *binding.Tensor }

func (m module) tensors() []*binding.Tensor { return []*binding.Tensor{m.down, m.downB, m.up, m.upB} }

// Adapter holds the bottleneck modules of every block. Not safe for
// concurrent use; Close frees it.
type Adapter struct {
	cfg     Config
	arch    string
	modules map[string][]module // by site, per block
	ctx     *binding.Context
	buf     *binding.Buffer
	// Meta holds extra metadata saved with the adapter.
	Meta map[string]any
}

func alloc(cfg Config, mc model.Config, backend *binding.Backend) (*Adapter, error) {
	if err := cfg.Resolve(nil); err != nil {
		return nil, err
	}
	sites := cfg.sites()
	ctx, err := binding.NewGraphContext(4*len(sites)*mc.NLayer+1, 1, false)
	if err != nil {
		return nil, fmt.Errorf("new bottleneck: %w", err)
	}
	a := &Adapter{cfg: cfg, arch: mc.Arch, modules: map[string][]module{}, ctx: ctx, Meta: map[string]any{}}
	d, m := int64(mc.NEmbd), int64(cfg.size(mc.NEmbd))
	for _, s := range sites {
		for l := 0; l < mc.NLayer; l++ {
			p := fmt.Sprintf("blk.%d.adapter_%s.", l, s)
			a.modules[s] = append(a.modules[s], module{
				down:  ctx.NewTensor(binding.TypeF32, d, m).SetName(p + "down.weight"),
				downB: ctx.NewTensor(binding.TypeF32, m).SetName(p + "down.bias"),
				up:    ctx.NewTensor(binding.TypeF32, m, d).SetName(p + "up.weight"),
				upB:   ctx.NewTensor(binding.TypeF32, d).SetName(p + "up.bias"),
			})
		}
	}
	if ctx.Err() != nil {
		ctx.Close()
		return nil, fmt.Errorf("new bottleneck: %w", ctx.Err())
	}
	if a.buf, err = backend.AllocContext(ctx); err != nil {
		ctx.Close()
		return nil, fmt.Errorf("new bottleneck: %w", err)
	}
	return a, nil
}

// New creates adapters for a model: W_down Kaiming-uniform, everything
// else zero (the adapter starts as the identity).
func New(cfg Config, mc model.Config, backend *binding.Backend) (*Adapter, error) {
	a, err := alloc(cfg, mc, backend)
	if err != nil {
		return nil, err
	}
	for _, t := range a.Tensors() {
		v := make([]float32, t.Elements())
		if strings.HasSuffix(t.Name(), "down.weight") {
			h := fnv.New64a()
			h.Write([]byte(t.Name()))
			rng := rand.New(rand.NewPCG(cfg.Seed, h.Sum64()))
			bound := 1 / math.Sqrt(float64(t.Dim(0)))
			for i := range v {
				v[i] = float32((rng.Float64()*2 - 1) * bound)
			}
		}
		if err := t.SetFloats(v); err != nil {
			a.Close()
			return nil, err
		}
	}
	return a, nil
}

// Config returns the adapter's configuration.
func (a *Adapter) Config() Config { return a.cfg }

// Tensors returns every tensor, by site, block and module order.
func (a *Adapter) Tensors() []*binding.Tensor {
	var out []*binding.Tensor
	for _, s := range a.cfg.sites() {
		for _, m := range a.modules[s] {
			out = append(out, m.tensors()...)
		}
	}
	return out
}

// Close frees the adapter. It is idempotent.
func (a *Adapter) Close() {
	if a == nil {
		return
	}
	a.buf.Close()
	a.ctx.Close()
}

// Hooks implements method.Instance: h + scale·(W_up·act(W_down·h + b_down) + b_up).
func (a *Adapter) Hooks(scale float32) []model.Hook { return []model.Hook{&hook{a: a, scale: scale}} }

// Groups implements method.Instance: biases take no weight decay.
func (a *Adapter) Groups() ([]train.Group, error) {
	ts := a.Tensors()
	if err := method.SetParams(ts...); err != nil {
		return nil, err
	}
	var noDecay float64
	w := train.Group{Name: "weights"}
	b := train.Group{Name: "biases", WeightDecay: &noDecay}
	for _, t := range ts {
		if strings.HasSuffix(t.Name(), ".bias") {
			b.Params = append(b.Params, t)
		} else {
			w.Params = append(w.Params, t)
		}
	}
	return []train.Group{w, b}, nil
}

type hook struct {
	a     *Adapter
	scale float32
}

func (h *hook) apply(b *model.Builder, site string, layer int, x *binding.Tensor) *binding.Tensor {
	ms := h.a.modules[site]
	if layer < 0 || layer >= len(ms) {
		return x
	}
	m, c := ms[layer], b.Ctx
	z := c.Add(c.MulMat(m.down, x), m.downB)
	if h.a.cfg.Placement == Pfeiffer {
		z = c.ReLU(z)
	} else {
		z = c.SiLU(z)
	}
	out := c.Add(c.MulMat(m.up, z), m.upB)
	if h.scale != 1 {
		out = c.Scale(out, h.scale)
	}
	return c.Add(x, out)
}

// AfterAttention implements model.AttentionOutputHook.
func (h *hook) AfterAttention(b *model.Builder, layer int, x *binding.Tensor) *binding.Tensor {
	return h.apply(b, "attn", layer, x)
}

// AfterFFN implements model.FFNOutputHook.
func (h *hook) AfterFFN(b *model.Builder, layer int, x *binding.Tensor) *binding.Tensor {
	return h.apply(b, "ffn", layer, x)
}

// Save writes the adapter (general.type "adapter", adapter.type
// "bottleneck", versioned ggtune.bottleneck.* keys, F32 tensors
// blk.N.adapter_{attn,ffn}.{down,up}.{weight,bias}). The file is written
// atomically.
func (a *Adapter) Save(path string) error {
	ts := a.Tensors()
	w, err := binding.NewGGUFWriter(len(ts))
	if err != nil {
		return fmt.Errorf("save bottleneck %s: %w", path, err)
	}
	defer w.Close()
	kvs := []binding.KV{
		{Key: "general.type", Value: "adapter"},
		{Key: "general.architecture", Value: a.arch},
		{Key: "adapter.type", Value: AdapterType},
		{Key: "ggtune.bottleneck.format_version", Value: uint32(FormatVersion)},
		{Key: "ggtune.bottleneck.placement", Value: a.cfg.Placement},
		{Key: "ggtune.bottleneck.size", Value: uint32(a.modules["ffn"][0].downB.Dim(0))},
		{Key: "ggtune.bottleneck.seed", Value: a.cfg.Seed},
	}
	kvs = append(kvs, method.MetaKVs(a.Meta)...)
	for _, kv := range kvs {
		if err := w.Set(kv.Key, kv.Value); err != nil {
			return fmt.Errorf("save bottleneck %s: %w", path, err)
		}
	}
	for _, t := range ts {
		v, err := t.Floats()
		if err != nil {
			return fmt.Errorf("save bottleneck %s: %w", path, err)
		}
		for _, x := range v {
			if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
				return fmt.Errorf("save bottleneck %s: tensor %s holds a non-finite value", path, t.Name())
			}
		}
		shape := []int64{t.Dim(0), t.Dim(1)}
		if strings.HasSuffix(t.Name(), ".bias") {
			shape = shape[:1]
		}
		if err := w.AddFloats(t.Name(), binding.TypeF32, shape, v); err != nil {
			return fmt.Errorf("save bottleneck %s: %w", path, err)
		}
	}
	if err := w.WriteFile(path); err != nil {
		return fmt.Errorf("save bottleneck: %w", err)
	}
	return nil
}

// Load reads a bottleneck adapter for a model of configuration mc.
func Load(path string, mc model.Config, backend *binding.Backend) (*Adapter, error) {
	f, err := binding.OpenGGUF(path)
	if err != nil {
		return nil, fmt.Errorf("load bottleneck: %w", err)
	}
	defer f.Close()
	fail := func(format string, args ...any) (*Adapter, error) {
		return nil, fmt.Errorf("load bottleneck %s: %w: %s", path, ErrFormat, fmt.Sprintf(format, args...))
	}
	if s, _ := f.String("adapter.type"); s != AdapterType {
		return fail("adapter.type is %q, want %q", s, AdapterType)
	}
	if v, ok := f.Uint("ggtune.bottleneck.format_version"); !ok || v > FormatVersion {
		return fail("ggtune.bottleneck.format_version %d (this ggtune reads up to %d)", v, FormatVersion)
	}
	if arch, _ := f.String("general.architecture"); arch != mc.Arch {
		return fail("adapter architecture %q does not match the base model's %q", arch, mc.Arch)
	}
	cfg := Config{Reduction: 16}
	cfg.Placement, _ = f.String("ggtune.bottleneck.placement")
	size, _ := f.Uint("ggtune.bottleneck.size")
	cfg.Bottleneck = int(size)
	cfg.Seed, _ = f.Uint("ggtune.bottleneck.seed")
	if err := cfg.Resolve(nil); err != nil || size == 0 {
		return fail("placement %q, size %d", cfg.Placement, size)
	}
	a, err := alloc(cfg, mc, backend)
	if err != nil {
		return nil, err
	}
	ts := a.Tensors()
	if len(f.Tensors()) != len(ts) {
		a.Close()
		return fail("%d tensors, want %d for %s adapters on %d blocks", len(f.Tensors()), len(ts), cfg.Placement, mc.NLayer)
	}
	for _, t := range ts {
		ti, ok := f.TensorInfo(t.Name())
		if !ok || ti.Elements() != t.Elements() || ti.Shape[0] != t.Dim(0) {
			a.Close()
			return fail("tensor %s missing or not of shape %v", t.Name(), t.Shape())
		}
		v, err := f.ReadTensorFloats(t.Name())
		if err == nil {
			err = t.SetFloats(v)
		}
		if err != nil {
			a.Close()
			return nil, fmt.Errorf("load bottleneck %s: %w", path, err)
		}
	}
	method.ReadMeta(f, a.Meta)
	return a, nil
}

// bnMethod is bottleneck adapters in the method registry.
type bnMethod struct{}

func (bnMethod) Name() string { return "bottleneck" }
func (bnMethod) Info() method.Info {
	return method.Info{Short: "Bottleneck adapters (Houlsby/Pfeiffer): small residual MLPs after attention and/or the FFN",
		Output: "bottleneck adapter GGUF", LR: 3e-4}
}
func (bnMethod) AdapterTypes() []string   { return []string{AdapterType} }
func (bnMethod) NewConfig() method.Config { c := DefaultConfig(); return &c }

func (bnMethod) New(env *method.Env, cfg method.Config) (method.Instance, error) {
	c, ok := cfg.(*Config)
	if !ok {
		return nil, fmt.Errorf("bottleneck: %w: config %T", ErrConfig, cfg)
	}
	cc := *c
	cc.Seed = env.Seed
	a, err := New(cc, env.Config, env.Backend)
	if err != nil {
		return nil, err
	}
	for k, v := range env.Meta {
		a.Meta[k] = v
	}
	return a, nil
}

func (bnMethod) Load(path string, env *method.Env) (method.Instance, error) {
	return Load(path, env.Config, env.Backend)
}
