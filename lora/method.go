package lora

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/pflag"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/method"
	"github.com/ggtune/ggtune/model"
	"github.com/ggtune/ggtune/train"
)

func init() {
	method.Register(loraMethod{})
	method.Register(loraMethod{dora: true})
}

// loraMethod is LoRA in the method registry ("lora", adapter.type "lora"),
// or DoRA ("dora", adapter.type "dora"; also `lora --dora`).
type loraMethod struct{ dora bool }

func (l loraMethod) Name() string {
	if l.dora {
		return "dora"
	}
	return "lora"
}

func (l loraMethod) Info() method.Info {
	if l.dora {
		return method.Info{Short: "DoRA: LoRA with a learned magnitude per output row (weight-decomposed, mergeable)",
			Output: "DoRA adapter GGUF", LR: 2e-4}
	}
	return method.Info{Short: "LoRA: train low-rank adapters on a frozen base (any base type, quantized included)",
		Output: "LoRA adapter GGUF (llama.cpp format)", LR: 2e-4}
}

func (l loraMethod) AdapterTypes() []string { return []string{l.Name()} }

func (l loraMethod) NewConfig() method.Config {
	c := DefaultConfig()
	c.DoRA = l.dora
	return &c
}

func (loraMethod) New(env *method.Env, cfg method.Config) (method.Instance, error) {
	c, ok := cfg.(*Config)
	if !ok {
		return nil, fmt.Errorf("lora: %w: config %T", ErrConfig, cfg)
	}
	cc := *c
	cc.Seed = env.Seed
	a, err := New(cc, env.Base, env.Backend)
	if err != nil {
		return nil, err
	}
	return instance{a.withMeta(env.Meta), env.Base}, nil
}

func (loraMethod) Load(path string, env *method.Env) (method.Instance, error) {
	a, err := Load(path, env.Base, env.Backend)
	if err != nil {
		return nil, err
	}
	return instance{a.withMeta(env.Meta), env.Base}, nil
}

// PEFTTypes implements method.PEFTImporter: "lora" reads PEFT's LORA
// directories, DoRA (use_dora) included; the imported instance is then a
// DoRA adapter.
func (l loraMethod) PEFTTypes() []string {
	if l.dora {
		return nil
	}
	return []string{"LORA"}
}

// ImportPEFT implements method.PEFTImporter.
func (loraMethod) ImportPEFT(dir string, env *method.Env) (method.Instance, error) {
	a, err := ImportPEFT(dir, env.Base, env.Backend)
	if err != nil {
		return nil, err
	}
	return instance{a, env.Base}, nil
}

func (a *Adapter) withMeta(meta map[string]any) *Adapter {
	for k, v := range meta {
		a.Meta[k] = v
	}
	return a
}

// instance adapts an Adapter to method.Instance, method.Merger and
// method.PEFTExporter; base is the base model's header.
type instance struct {
	*Adapter
	base *binding.GGUFFile
}

// ExportPEFT implements method.PEFTExporter.
func (i instance) ExportPEFT(dir, baseModel string) error {
	return i.Adapter.ExportPEFT(dir, i.base, baseModel)
}

func (i instance) Hooks(scale float32) []model.Hook { return []model.Hook{i.Hook(scale)} }

// Groups implements method.Instance: A, B (at PlusRatio times the
// learning rate with LoRA+) and DoRA's magnitudes (without weight decay).
func (i instance) Groups() ([]train.Group, error) {
	if _, err := i.Params(); err != nil {
		return nil, err
	}
	a := train.Group{Name: "lora_a"}
	b := train.Group{Name: "lora_b", LRScale: i.cfg.PlusRatio}
	var noDecay float64
	m := train.Group{Name: "dora_m", WeightDecay: &noDecay}
	for _, w := range i.weights {
		a.Params = append(a.Params, w.A)
		b.Params = append(b.Params, w.B)
		if w.M != nil {
			m.Params = append(m.Params, w.M)
		}
	}
	groups := []train.Group{a, b}
	if len(m.Params) > 0 {
		groups = append(groups, m)
	}
	return groups, nil
}

func (i instance) MergesInto(name string) bool { return i.Weight(name) != nil }

func (i instance) MergeInto(name string, ne []int64, vals []float32, scale float32) error {
	return i.Weight(name).mergeInto(vals, ne, scale, i.Scale())
}

// AddFlags implements method.Config: --rank, --alpha, --dropout,
// --targets, --layers, --init, --rslora.
func (c *Config) AddFlags(fs *pflag.FlagSet) {
	fs.IntVar(&c.Rank, "rank", c.Rank, "LoRA rank r")
	fs.Float32Var(&c.Alpha, "alpha", c.Alpha, "LoRA alpha (the update is scaled by alpha/r, or alpha/sqrt(r) with --rslora)")
	fs.Float32Var(&c.Dropout, "dropout", c.Dropout, "dropout on the LoRA input during training")
	fs.Var((*targetsFlag)(c), "targets", "adapted matrices: comma list of q,k,v,o,gate,up,down,output,embed (or q_proj,... names), or all-linear")
	fs.Var((*layersFlag)(c), "layers", "blocks to adapt: all, a list such as 0,1,4-7, or last:N")
	fs.StringVar((*string)(&c.Init), "init", string(c.Init), "initialisation: kaiming (PEFT's default) or gaussian (A random, B = 0), or pissa or olora (A and B from the SVD or QR of W; saved as a rank-2r LoRA for the original base)")
	fs.BoolVar(&c.RSLoRA, "rslora", c.RSLoRA, "rank-stabilised LoRA: scale by alpha/sqrt(r)")
	if !c.DoRA {
		fs.BoolVar(&c.DoRA, "dora", c.DoRA, "DoRA: also learn a magnitude per output row (the same as ggtune train dora)")
	}
	fs.Float64Var(&c.PlusRatio, "lora-plus-ratio", c.PlusRatio, "LoRA+: train B with this many times A's learning rate (the paper's default is 16; 0: off)")
}

// Resolve implements method.Config: it turns LastLayers into Layers for
// the base model and validates the configuration.
func (c *Config) Resolve(base *binding.GGUFFile) error {
	c.Init = Init(strings.ToLower(string(c.Init)))
	if err := c.Validate(); err != nil {
		return err
	}
	arch, _ := base.String("general.architecture")
	n, ok := base.Uint(arch + ".block_count")
	if !ok {
		return fmt.Errorf("%s: no %s.block_count", base.Path(), arch)
	}
	if c.LastLayers > 0 {
		if c.LastLayers > int(n) {
			return fmt.Errorf("%w: last:%d but the model has %d blocks", ErrConfig, c.LastLayers, n)
		}
		c.Layers = nil
		for l := int(n) - c.LastLayers; l < int(n); l++ {
			c.Layers = append(c.Layers, l)
		}
	}
	for _, l := range c.Layers {
		if l >= int(n) {
			return fmt.Errorf("%w: block %d out of range (the model has blocks 0-%d)", ErrConfig, l, n-1)
		}
	}
	return nil
}

// targetsFlag is --targets.
type targetsFlag Config

func (f *targetsFlag) String() string {
	if len(f.Targets) == len(AllLinear) {
		all := true
		for i, t := range f.Targets {
			all = all && t == AllLinear[i]
		}
		if all {
			return "all-linear"
		}
	}
	s := make([]string, len(f.Targets))
	for i, t := range f.Targets {
		s[i] = string(t)
	}
	return strings.Join(s, ",")
}

func (f *targetsFlag) Set(s string) error {
	ts, err := ParseTargets(s)
	if err != nil {
		return err
	}
	f.Targets = ts
	return nil
}

func (f *targetsFlag) Type() string { return "string" }

// layersFlag is --layers.
type layersFlag Config

func (f *layersFlag) String() string {
	switch {
	case f.LastLayers > 0:
		return "last:" + strconv.Itoa(f.LastLayers)
	case f.Layers == nil:
		return "all"
	}
	s := make([]string, len(f.Layers))
	for i, l := range f.Layers {
		s[i] = strconv.Itoa(l)
	}
	return strings.Join(s, ",")
}

func (f *layersFlag) Set(s string) error {
	layers, last, err := ParseLayers(s)
	if err != nil {
		return err
	}
	f.Layers, f.LastLayers = layers, last
	return nil
}

func (f *layersFlag) Type() string { return "string" }

// ParseLayers parses a block selection: "all" (nil, 0), "last:N" (nil, N)
// or a comma list of block indices and ranges A-B (sorted, deduplicated).
func ParseLayers(s string) (layers []int, last int, err error) {
	s = strings.TrimSpace(strings.ToLower(s))
	if s == "" || s == "all" {
		return nil, 0, nil
	}
	if v, ok := strings.CutPrefix(s, "last:"); ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return nil, 0, fmt.Errorf("%w: layers %q: want last:N with N >= 1", ErrConfig, s)
		}
		return nil, n, nil
	}
	seen := map[int]bool{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		lo, hi, isRange := strings.Cut(part, "-")
		a, errA := strconv.Atoi(lo)
		b, errB := a, error(nil)
		if isRange {
			b, errB = strconv.Atoi(hi)
		}
		if errA != nil || errB != nil || a > b || a < 0 {
			return nil, 0, fmt.Errorf("%w: layers %q: want all, last:N, or block indices and ranges such as 0,1,4-7", ErrConfig, part)
		}
		for l := a; l <= b; l++ {
			if !seen[l] {
				seen[l] = true
				layers = append(layers, l)
			}
		}
	}
	sort.Ints(layers)
	return layers, 0, nil
}
