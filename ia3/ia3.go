// Package ia3 implements IA3 (Liu et al. 2022, "Infused Adapter by
// Inhibiting and Amplifying Inner Activations") with HF PEFT's semantics:
// learned vectors, initialised to 1, scale the key and value projections'
// outputs and the FFN's hidden activation (the input of the down
// projection). The vectors fold into the base weights (W_k and W_v rows,
// W_down columns), so an IA3 adapter merges into a plain GGUF model.
package ia3

import (
	"errors"
	"fmt"
	"math"
	"strings"

	"github.com/spf13/pflag"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/method"
	"github.com/ggtune/ggtune/model"
	"github.com/ggtune/ggtune/train"
)

func init() { method.Register(ia3Method{}) }

// FormatVersion is the version of the ggtune.ia3.* keys.
const FormatVersion = 1

// AdapterType is the adapter.type of IA3 files.
const AdapterType = "ia3"

// Errors.
var (
	// ErrConfig reports an invalid configuration.
	ErrConfig = errors.New("invalid ia3 config")
	// ErrFormat reports a file that is not a valid IA3 adapter.
	ErrFormat = errors.New("invalid ia3 adapter file")
)

// sites maps target names (and PEFT's module names) to scale sites.
var sites = map[string]model.ScaleSite{
	"k": model.ScaleKey, "k_proj": model.ScaleKey,
	"v": model.ScaleValue, "v_proj": model.ScaleValue,
	"down": model.ScaleFFN, "down_proj": model.ScaleFFN, "ffn": model.ScaleFFN,
}

// siteWeight is the base weight each site folds into.
var siteWeight = map[model.ScaleSite]string{model.ScaleKey: "attn_k", model.ScaleValue: "attn_v", model.ScaleFFN: "ffn_down"}

// Config configures IA3.
type Config struct {
	// Sites are the scaled activations; PEFT's llama defaults are key,
	// value and the FFN hidden state (k_proj, v_proj, down_proj).
	Sites []model.ScaleSite `yaml:"targets" json:"targets"`
}

// DefaultConfig returns PEFT's defaults for llama models.
func DefaultConfig() Config {
	return Config{Sites: []model.ScaleSite{model.ScaleKey, model.ScaleValue, model.ScaleFFN}}
}

// AddFlags implements method.Config: --targets.
func (c *Config) AddFlags(fs *pflag.FlagSet) {
	fs.Var((*sitesFlag)(c), "targets", "scaled activations: comma list of k, v, down (k_proj, v_proj, down_proj)")
}

// Resolve implements method.Config.
func (c *Config) Resolve(*binding.GGUFFile) error {
	if len(c.Sites) == 0 {
		return fmt.Errorf("%w: no targets", ErrConfig)
	}
	return nil
}

type sitesFlag Config

func (f *sitesFlag) String() string {
	names := map[model.ScaleSite]string{model.ScaleKey: "k", model.ScaleValue: "v", model.ScaleFFN: "down"}
	s := make([]string, len(f.Sites))
	for i, x := range f.Sites {
		s[i] = names[x]
	}
	return strings.Join(s, ",")
}

func (f *sitesFlag) Set(s string) error {
	var out []model.ScaleSite
	seen := map[model.ScaleSite]bool{}
	for _, p := range strings.Split(s, ",") {
		p = strings.TrimSpace(strings.ToLower(p))
		if p == "" {
			continue
		}
		site, ok := sites[p]
		if !ok {
			return fmt.Errorf("%w: unknown target %q (want k, v or down)", ErrConfig, p)
		}
		if !seen[site] {
			seen[site] = true
			out = append(out, site)
		}
	}
	f.Sites = out
	return nil
}

func (f *sitesFlag) Type() string { return "string" }

// Adapter holds IA3 vectors in one backend buffer. Not safe for concurrent
// use; Close frees it.
type Adapter struct {
	cfg  Config
	arch string
	// vecs[site][layer] is the vector of a site in a block.
	vecs  map[model.ScaleSite][]*binding.Tensor
	kNorm bool // the base normalises keys after the projection (qwen3)
	// base is the base model's header (owned by the caller) that PEFT
	// export reads the layout from.
	base *binding.GGUFFile
	ctx  *binding.Context
	buf  *binding.Buffer
	// Meta holds extra metadata saved with the adapter.
	Meta map[string]any
}

// tensorName is the GGUF name of a vector: blk.N.attn_k.ia3_l.
func tensorName(site model.ScaleSite, layer int) string {
	return fmt.Sprintf("blk.%d.%s.ia3_l", layer, siteWeight[site])
}

func siteSize(c model.Config, s model.ScaleSite) int64 {
	switch s {
	case model.ScaleKey:
		return int64(c.NEmbdKV())
	case model.ScaleValue:
		return int64(c.NEmbdVKV())
	}
	return int64(c.NFF)
}

func alloc(cfg Config, mc model.Config, base *binding.GGUFFile, backend *binding.Backend) (*Adapter, error) {
	ctx, err := binding.NewGraphContext(len(cfg.Sites)*mc.NLayer+1, 1, false)
	if err != nil {
		return nil, fmt.Errorf("new ia3: %w", err)
	}
	a := &Adapter{cfg: cfg, arch: mc.Arch, vecs: map[model.ScaleSite][]*binding.Tensor{}, base: base, ctx: ctx, Meta: map[string]any{}}
	_, a.kNorm = base.TensorInfo("blk.0.attn_k_norm.weight")
	for _, s := range cfg.Sites {
		for l := 0; l < mc.NLayer; l++ {
			a.vecs[s] = append(a.vecs[s], ctx.NewTensor(binding.TypeF32, siteSize(mc, s)).SetName(tensorName(s, l)))
		}
	}
	if ctx.Err() != nil {
		ctx.Close()
		return nil, fmt.Errorf("new ia3: %w", ctx.Err())
	}
	if a.buf, err = backend.AllocContext(ctx); err != nil {
		ctx.Close()
		return nil, fmt.Errorf("new ia3: %w", err)
	}
	return a, nil
}

// New creates an adapter for the base model with every vector at 1 (an
// untrained adapter changes nothing).
func New(cfg Config, mc model.Config, base *binding.GGUFFile, backend *binding.Backend) (*Adapter, error) {
	if err := cfg.Resolve(base); err != nil {
		return nil, err
	}
	a, err := alloc(cfg, mc, base, backend)
	if err != nil {
		return nil, err
	}
	for _, t := range a.Tensors() {
		ones := make([]float32, t.Elements())
		for i := range ones {
			ones[i] = 1
		}
		if err := t.SetFloats(ones); err != nil {
			a.Close()
			return nil, err
		}
	}
	return a, nil
}

// Tensors returns every vector, by site and block.
func (a *Adapter) Tensors() []*binding.Tensor {
	var out []*binding.Tensor
	for _, s := range a.cfg.Sites {
		out = append(out, a.vecs[s]...)
	}
	return out
}

// Config returns the adapter's configuration.
func (a *Adapter) Config() Config { return a.cfg }

// Close frees the adapter's tensors. It is idempotent.
func (a *Adapter) Close() {
	if a == nil {
		return
	}
	a.buf.Close()
	a.ctx.Close()
}

// Hooks implements method.Instance: x ⊙ (1 + scale·(l − 1)), which is
// x ⊙ l at scale 1.
func (a *Adapter) Hooks(scale float32) []model.Hook { return []model.Hook{&hook{a: a, scale: scale}} }

// Groups implements method.Instance.
func (a *Adapter) Groups() ([]train.Group, error) {
	ts := a.Tensors()
	if err := method.SetParams(ts...); err != nil {
		return nil, err
	}
	return train.Groups(ts...), nil
}

type hook struct {
	a     *Adapter
	scale float32
}

// Scale implements model.ScaleHook.
func (h *hook) Scale(b *model.Builder, layer int, site model.ScaleSite, x *binding.Tensor) *binding.Tensor {
	vs := h.a.vecs[site]
	if layer < 0 || layer >= len(vs) {
		return x
	}
	c := b.Ctx
	y := c.Mul(x, vs[layer])
	if h.scale == 1 {
		return y
	}
	return c.Add(x, c.Scale(c.Sub(y, x), h.scale))
}

// target returns the site and block of a base tensor the adapter folds
// into, and whether it is a bias.
func (a *Adapter) target(name string) (model.ScaleSite, int, bool, bool) {
	var layer int
	var rest string
	if n, _ := fmt.Sscanf(name, "blk.%d.%s", &layer, &rest); n != 2 {
		return 0, 0, false, false
	}
	for _, s := range a.cfg.Sites {
		if layer >= len(a.vecs[s]) {
			continue
		}
		switch rest {
		case siteWeight[s] + ".weight":
			return s, layer, false, true
		case siteWeight[s] + ".bias":
			if s != model.ScaleFFN { // the down bias is added after the scaled input
				return s, layer, true, true
			}
		}
	}
	return 0, 0, false, false
}

// MergesInto implements method.Merger.
func (a *Adapter) MergesInto(name string) bool { _, _, _, ok := a.target(name); return ok }

// MergeInto implements method.Merger: the rows of W_k and W_v (and their
// biases) and the columns of W_down are multiplied by 1 + scale·(l − 1).
func (a *Adapter) MergeInto(name string, ne []int64, vals []float32, scale float32) error {
	site, layer, bias, ok := a.target(name)
	if !ok {
		return fmt.Errorf("ia3 does not adapt %s", name)
	}
	if site == model.ScaleKey && a.kNorm {
		return fmt.Errorf("%w: IA3 on keys cannot be merged into a model that normalises keys (attn_k_norm)", method.ErrUnsupported)
	}
	l, err := a.vecs[site][layer].Floats()
	if err != nil {
		return err
	}
	f := make([]float32, len(l))
	for i, v := range l {
		f[i] = 1 + scale*(v-1)
	}
	switch {
	case bias:
		if len(vals) != len(f) {
			return fmt.Errorf("bias of %d values for a vector of %d", len(vals), len(f))
		}
		for i := range vals {
			vals[i] *= f[i]
		}
	case len(ne) != 2:
		return fmt.Errorf("shape %v is not a matrix", ne)
	case site == model.ScaleFFN: // W [n_ff, n_embd]: scale the inputs
		if ne[0] != int64(len(f)) {
			return fmt.Errorf("shape %v does not fit a vector of %d", ne, len(f))
		}
		for o := int64(0); o < ne[1]; o++ {
			row := vals[o*ne[0] : (o+1)*ne[0]]
			for i := range row {
				row[i] *= f[i]
			}
		}
	default: // W [n_embd, n_out]: scale the outputs
		if ne[1] != int64(len(f)) {
			return fmt.Errorf("shape %v does not fit a vector of %d", ne, len(f))
		}
		for o := int64(0); o < ne[1]; o++ {
			row := vals[o*ne[0] : (o+1)*ne[0]]
			for i := range row {
				row[i] *= f[o]
			}
		}
	}
	return nil
}

// Save writes the adapter as a GGUF (general.type "adapter", adapter.type
// "ia3", versioned ggtune.ia3.* keys, F32 vectors blk.N.<weight>.ia3_l).
// The file is written atomically.
func (a *Adapter) Save(path string) error {
	ts := a.Tensors()
	w, err := binding.NewGGUFWriter(len(ts))
	if err != nil {
		return fmt.Errorf("save ia3 %s: %w", path, err)
	}
	defer w.Close()
	kvs := []binding.KV{
		{Key: "general.type", Value: "adapter"},
		{Key: "general.architecture", Value: a.arch},
		{Key: "adapter.type", Value: AdapterType},
		{Key: "ggtune.ia3.format_version", Value: uint32(FormatVersion)},
		{Key: "ggtune.ia3.targets", Value: strings.Split((*sitesFlag)(&a.cfg).String(), ",")},
	}
	kvs = append(kvs, method.MetaKVs(a.Meta)...)
	for _, kv := range kvs {
		if err := w.Set(kv.Key, kv.Value); err != nil {
			return fmt.Errorf("save ia3 %s: %w", path, err)
		}
	}
	for _, t := range ts {
		vals, err := t.Floats()
		if err != nil {
			return fmt.Errorf("save ia3 %s: %w", path, err)
		}
		for _, v := range vals {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return fmt.Errorf("save ia3 %s: tensor %s holds a non-finite value", path, t.Name())
			}
		}
		if err := w.AddFloats(t.Name(), binding.TypeF32, []int64{t.Dim(0)}, vals); err != nil {
			return fmt.Errorf("save ia3 %s: %w", path, err)
		}
	}
	if err := w.WriteFile(path); err != nil {
		return fmt.Errorf("save ia3: %w", err)
	}
	return nil
}

// Load reads an IA3 adapter for the base model (mc, base) onto backend.
func Load(path string, mc model.Config, base *binding.GGUFFile, backend *binding.Backend) (*Adapter, error) {
	f, err := binding.OpenGGUF(path)
	if err != nil {
		return nil, fmt.Errorf("load ia3: %w", err)
	}
	defer f.Close()
	fail := func(format string, args ...any) (*Adapter, error) {
		return nil, fmt.Errorf("load ia3 %s: %w: %s", path, ErrFormat, fmt.Sprintf(format, args...))
	}
	if s, _ := f.String("adapter.type"); s != AdapterType {
		return fail("adapter.type is %q, want %q", s, AdapterType)
	}
	if v, ok := f.Uint("ggtune.ia3.format_version"); !ok || v > FormatVersion {
		return fail("ggtune.ia3.format_version %d (this ggtune reads up to %d)", v, FormatVersion)
	}
	if arch, _ := f.String("general.architecture"); arch != mc.Arch {
		return fail("adapter architecture %q does not match the base model's %q", arch, mc.Arch)
	}
	var cfg Config
	names, _ := f.Get("ggtune.ia3.targets")
	list, _ := names.([]string)
	if err := (*sitesFlag)(&cfg).Set(strings.Join(list, ",")); err != nil || len(cfg.Sites) == 0 {
		return fail("ggtune.ia3.targets %v", names)
	}
	a, err := alloc(cfg, mc, base, backend)
	if err != nil {
		return nil, err
	}
	for _, t := range a.Tensors() {
		ti, ok := f.TensorInfo(t.Name())
		if !ok || len(ti.Shape) != 1 || ti.Shape[0] != t.Dim(0) {
			a.Close()
			return fail("tensor %s missing or not of shape [%d] (the base model has that size)", t.Name(), t.Dim(0))
		}
		vals, err := f.ReadTensorFloats(t.Name())
		if err == nil {
			err = t.SetFloats(vals)
		}
		if err != nil {
			a.Close()
			return nil, fmt.Errorf("load ia3 %s: %w", path, err)
		}
	}
	if n := len(f.Tensors()); n != len(a.Tensors()) {
		a.Close()
		return fail("%d tensors, want %d", n, len(a.Tensors()))
	}
	method.ReadMeta(f, a.Meta)
	return a, nil
}

// ia3Method is IA3 in the method registry.
type ia3Method struct{}

func (ia3Method) Name() string { return "ia3" }
func (ia3Method) Info() method.Info {
	return method.Info{Short: "IA3: learn vectors that scale keys, values and the FFN hidden state (mergeable)",
		Output: "IA3 adapter GGUF", LR: 3e-3}
}
func (ia3Method) AdapterTypes() []string   { return []string{AdapterType} }
func (ia3Method) NewConfig() method.Config { c := DefaultConfig(); return &c }

func (ia3Method) New(env *method.Env, cfg method.Config) (method.Instance, error) {
	c, ok := cfg.(*Config)
	if !ok {
		return nil, fmt.Errorf("ia3: %w: config %T", ErrConfig, cfg)
	}
	a, err := New(*c, env.Config, env.Base, env.Backend)
	if err != nil {
		return nil, err
	}
	for k, v := range env.Meta {
		a.Meta[k] = v
	}
	return a, nil
}

func (ia3Method) Load(path string, env *method.Env) (method.Instance, error) {
	return Load(path, env.Config, env.Base, env.Backend)
}
