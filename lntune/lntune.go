// Package lntune implements LN tuning (Zhao et al. 2023, PEFT's LN_TUNING):
// only the weights of the model's RMSNorms train. The trained weights are
// saved as a small adapter GGUF that replaces the base model's norms
// through the model's NormHook, and merge into a plain GGUF model.
package lntune

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"

	"github.com/spf13/pflag"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/method"
	"github.com/ggtune/ggtune/model"
	"github.com/ggtune/ggtune/train"
)

func init() { method.Register(lnMethod{}) }

// AdapterType is the adapter.type of LN-tuning files.
const AdapterType = "ln_tuning"

// FormatVersion is the version of the ggtune.lntune.* keys.
const FormatVersion = 1

// ErrFormat reports a file that is not a valid LN-tuning adapter.
var ErrFormat = errors.New("invalid ln-tuning adapter file")

// Config configures LN tuning (it has no settings: every norm trains).
type Config struct{}

// AddFlags implements method.Config.
func (*Config) AddFlags(*pflag.FlagSet) {}

// Resolve implements method.Config.
func (*Config) Resolve(*binding.GGUFFile) error { return nil }

// Adapter holds trained copies of the base model's norm weights. Not safe
// for concurrent use; Close frees it.
type Adapter struct {
	arch    string
	weights map[string]*binding.Tensor // by base tensor name
	names   []string
	ctx     *binding.Context
	buf     *binding.Buffer
	// Meta holds extra metadata saved with the adapter.
	Meta map[string]any
}

// isNorm reports whether a base tensor is an RMSNorm weight.
func isNorm(name string) bool { return strings.HasSuffix(name, "_norm.weight") }

func alloc(arch string, shapes map[string][]int64, backend *binding.Backend) (*Adapter, error) {
	if len(shapes) == 0 {
		return nil, fmt.Errorf("new ln tuning: the model has no norm weights")
	}
	ctx, err := binding.NewGraphContext(len(shapes)+1, 1, false)
	if err != nil {
		return nil, fmt.Errorf("new ln tuning: %w", err)
	}
	a := &Adapter{arch: arch, weights: map[string]*binding.Tensor{}, ctx: ctx, Meta: map[string]any{}}
	for name, sh := range shapes {
		a.names = append(a.names, name)
		a.weights[name] = ctx.NewTensor(binding.TypeF32, sh...).SetName(name)
	}
	sort.Strings(a.names)
	if ctx.Err() != nil {
		ctx.Close()
		return nil, fmt.Errorf("new ln tuning: %w", ctx.Err())
	}
	if a.buf, err = backend.AllocContext(ctx); err != nil {
		ctx.Close()
		return nil, fmt.Errorf("new ln tuning: %w", err)
	}
	return a, nil
}

// New copies every norm weight of the base model file base (an untrained
// adapter changes nothing).
func New(base *binding.GGUFFile, backend *binding.Backend) (*Adapter, error) {
	arch, _ := base.String("general.architecture")
	shapes := map[string][]int64{}
	for _, ti := range base.Tensors() {
		if isNorm(ti.Name) {
			shapes[ti.Name] = ti.Shape
		}
	}
	a, err := alloc(arch, shapes, backend)
	if err != nil {
		return nil, err
	}
	for _, name := range a.names {
		v, err := base.ReadTensorFloats(name)
		if err == nil {
			err = a.weights[name].SetFloats(v)
		}
		if err != nil {
			a.Close()
			return nil, fmt.Errorf("new ln tuning: %w", err)
		}
	}
	return a, nil
}

// Tensors returns the trained norm weights, sorted by name.
func (a *Adapter) Tensors() []*binding.Tensor {
	out := make([]*binding.Tensor, len(a.names))
	for i, n := range a.names {
		out[i] = a.weights[n]
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

// Hooks implements method.Instance: at scale u each norm weight is
// w + u·(w' − w).
func (a *Adapter) Hooks(scale float32) []model.Hook { return []model.Hook{&hook{a: a, scale: scale}} }

// Groups implements method.Instance: the norms take no weight decay.
func (a *Adapter) Groups() ([]train.Group, error) {
	ts := a.Tensors()
	if err := method.SetParams(ts...); err != nil {
		return nil, err
	}
	var noDecay float64
	return []train.Group{{Name: "norms", Params: ts, WeightDecay: &noDecay}}, nil
}

type hook struct {
	a     *Adapter
	scale float32
}

// NormWeight implements model.NormHook.
func (h *hook) NormWeight(b *model.Builder, w *binding.Tensor) *binding.Tensor {
	t := h.a.weights[w.Name()]
	if t == nil {
		return w
	}
	if h.scale == 1 {
		return t
	}
	c := b.Ctx
	if w.Type() != binding.TypeF32 {
		w = c.Cast(w, binding.TypeF32)
	}
	return c.Add(w, c.Scale(c.Sub(t, w), h.scale))
}

// MergesInto implements method.Merger.
func (a *Adapter) MergesInto(name string) bool { return a.weights[name] != nil }

// MergeInto implements method.Merger: w + scale·(w' − w).
func (a *Adapter) MergeInto(name string, _ []int64, vals []float32, scale float32) error {
	v, err := a.weights[name].Floats()
	if err != nil {
		return err
	}
	if len(v) != len(vals) {
		return fmt.Errorf("%s: %d values, the base has %d", name, len(v), len(vals))
	}
	for i := range vals {
		vals[i] += scale * (v[i] - vals[i])
	}
	return nil
}

// Save writes the adapter (general.type "adapter", adapter.type
// "ln_tuning", the norm weights under their base names, F32). The file is
// written atomically.
func (a *Adapter) Save(path string) error {
	w, err := binding.NewGGUFWriter(len(a.names))
	if err != nil {
		return fmt.Errorf("save ln tuning %s: %w", path, err)
	}
	defer w.Close()
	kvs := []binding.KV{
		{Key: "general.type", Value: "adapter"},
		{Key: "general.architecture", Value: a.arch},
		{Key: "adapter.type", Value: AdapterType},
		{Key: "ggtune.lntune.format_version", Value: uint32(FormatVersion)},
	}
	kvs = append(kvs, method.MetaKVs(a.Meta)...)
	for _, kv := range kvs {
		if err := w.Set(kv.Key, kv.Value); err != nil {
			return fmt.Errorf("save ln tuning %s: %w", path, err)
		}
	}
	for _, t := range a.Tensors() {
		v, err := t.Floats()
		if err != nil {
			return fmt.Errorf("save ln tuning %s: %w", path, err)
		}
		for _, x := range v {
			if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
				return fmt.Errorf("save ln tuning %s: tensor %s holds a non-finite value", path, t.Name())
			}
		}
		sh := t.Shape()
		if err := w.AddFloats(t.Name(), binding.TypeF32, sh[:ndims(t)], v); err != nil {
			return fmt.Errorf("save ln tuning %s: %w", path, err)
		}
	}
	if err := w.WriteFile(path); err != nil {
		return fmt.Errorf("save ln tuning: %w", err)
	}
	return nil
}

func ndims(t *binding.Tensor) int {
	n := 1
	for i := 1; i < 4; i++ {
		if t.Dim(i) > 1 {
			n = i + 1
		}
	}
	return n
}

// Load reads an LN-tuning adapter for the base model file base.
func Load(path string, base *binding.GGUFFile, backend *binding.Backend) (*Adapter, error) {
	f, err := binding.OpenGGUF(path)
	if err != nil {
		return nil, fmt.Errorf("load ln tuning: %w", err)
	}
	defer f.Close()
	fail := func(format string, args ...any) (*Adapter, error) {
		return nil, fmt.Errorf("load ln tuning %s: %w: %s", path, ErrFormat, fmt.Sprintf(format, args...))
	}
	if s, _ := f.String("adapter.type"); s != AdapterType {
		return fail("adapter.type is %q, want %q", s, AdapterType)
	}
	if v, ok := f.Uint("ggtune.lntune.format_version"); !ok || v > FormatVersion {
		return fail("ggtune.lntune.format_version %d (this ggtune reads up to %d)", v, FormatVersion)
	}
	arch, _ := f.String("general.architecture")
	if ba, _ := base.String("general.architecture"); ba != arch {
		return fail("adapter architecture %q does not match the base model's %q", arch, ba)
	}
	shapes := map[string][]int64{}
	for _, ti := range f.Tensors() {
		bi, ok := base.TensorInfo(ti.Name)
		if !isNorm(ti.Name) || !ok || fmt.Sprint(bi.Shape) != fmt.Sprint(ti.Shape) {
			return fail("tensor %s %v is not a norm weight of the base model", ti.Name, ti.Shape)
		}
		shapes[ti.Name] = ti.Shape
	}
	a, err := alloc(arch, shapes, backend)
	if err != nil {
		return nil, fmt.Errorf("load ln tuning %s: %w", path, err)
	}
	for _, name := range a.names {
		v, err := f.ReadTensorFloats(name)
		if err == nil {
			err = a.weights[name].SetFloats(v)
		}
		if err != nil {
			a.Close()
			return nil, fmt.Errorf("load ln tuning %s: %w", path, err)
		}
	}
	method.ReadMeta(f, a.Meta)
	return a, nil
}

// lnMethod is LN tuning in the method registry.
type lnMethod struct{}

func (lnMethod) Name() string { return "lntune" }
func (lnMethod) Info() method.Info {
	return method.Info{Short: "LN tuning: train only the RMSNorm weights (a small, mergeable adapter)", Output: "LN-tuning adapter GGUF", LR: 1e-3}
}
func (lnMethod) AdapterTypes() []string   { return []string{AdapterType} }
func (lnMethod) NewConfig() method.Config { return &Config{} }

func (lnMethod) New(env *method.Env, _ method.Config) (method.Instance, error) {
	a, err := New(env.Base, env.Backend)
	if err != nil {
		return nil, err
	}
	for k, v := range env.Meta {
		a.Meta[k] = v
	}
	return a, nil
}

func (lnMethod) Load(path string, env *method.Env) (method.Instance, error) {
	return Load(path, env.Base, env.Backend)
}
