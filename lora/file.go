package lora

import (
	"errors"
	"fmt"
	"math"
	"strings"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/method"
)

// FormatVersion is the version of ggtune's extra LoRA metadata keys
// (ggtune.lora.*), written so that future readers can check them.
const FormatVersion = 1

// ErrFormat reports a file that is not a valid LoRA adapter.
var ErrFormat = errors.New("invalid lora adapter file")

// Save writes the adapter as a llama.cpp LoRA GGUF (general.type
// "adapter", adapter.type "lora", adapter.lora.alpha, tensors
// <base>.lora_a/.lora_b in F32) with ggtune's settings in extra ggtune.*
// keys and a.Meta. The file is written atomically.
//
// A PiSSA or OLoRA adapter is written as a plain LoRA of rank 2r for the
// original base model (PEFT's conversion): W − s·B₀·A₀ + s·B·A =
// W + s·[B, −B₀]·[A; A₀], so llama.cpp, ggtune merge and --adapter load it
// on the unchanged base.
func (a *Adapter) Save(path string) error {
	w, err := binding.NewGGUFWriter(3 * len(a.weights))
	if err != nil {
		return fmt.Errorf("save lora %s: %w", path, err)
	}
	defer w.Close()
	cfg := a.cfg
	if cfg.residual() {
		cfg.Rank *= 2
		cfg.Alpha, cfg.RSLoRA = a.Scale()*float32(cfg.Rank), false
	}
	targets := make([]string, len(a.cfg.Targets))
	for i, t := range a.cfg.Targets {
		targets[i] = string(t)
	}
	layers := make([]int32, len(a.cfg.Layers))
	for i, l := range a.cfg.Layers {
		layers[i] = int32(l)
	}
	kvs := []binding.KV{
		{Key: "general.type", Value: "adapter"},
		{Key: "general.architecture", Value: a.arch},
		{Key: "adapter.type", Value: a.adapterType()},
		{Key: "adapter.lora.alpha", Value: cfg.FileAlpha()},
		{Key: "ggtune.format_version", Value: uint32(FormatVersion)},
		{Key: "ggtune.lora.rank", Value: uint32(cfg.Rank)},
		{Key: "ggtune.lora.alpha", Value: cfg.Alpha},
		{Key: "ggtune.lora.rslora", Value: cfg.RSLoRA},
		{Key: "ggtune.lora.dropout", Value: cfg.Dropout},
		{Key: "ggtune.lora.init", Value: string(cfg.Init)},
		{Key: "ggtune.lora.seed", Value: cfg.Seed},
		{Key: "ggtune.lora.targets", Value: targets},
		{Key: "ggtune.lora.layers", Value: layers},
		{Key: "ggtune.lora.plus_ratio", Value: cfg.PlusRatio},
	}
	for _, kv := range kvs {
		if err := w.Set(kv.Key, kv.Value); err != nil {
			return fmt.Errorf("save lora %s: %w", path, err)
		}
	}
	for k, v := range a.Meta {
		if !strings.HasPrefix(k, "ggtune.") {
			k = method.MetaPrefix + k
		}
		if err := w.Set(k, v); err != nil {
			return fmt.Errorf("save lora %s: %w", path, err)
		}
	}
	for _, p := range a.weights {
		for _, t := range p.tensors() {
			vals, err := p.fileValues(t)
			if err != nil {
				return fmt.Errorf("save lora %s: %w", path, err)
			}
			for _, v := range vals {
				if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
					return fmt.Errorf("save lora %s: tensor %s holds a non-finite value", path, t.Name())
				}
			}
			shape := []int64{t.Dim(0), t.Dim(1)}
			switch {
			case t == p.M:
				shape = shape[:1]
			case p.A0 != nil && t == p.A:
				shape[1] *= 2
			case p.A0 != nil:
				shape[0] *= 2
			}
			if err := w.AddFloats(t.Name(), binding.TypeF32, shape, vals); err != nil {
				return fmt.Errorf("save lora %s: %w", path, err)
			}
		}
	}
	if err := w.WriteFile(path); err != nil {
		return fmt.Errorf("save lora: %w", err)
	}
	return nil
}

// fileValues returns the values Save writes for t: its own, or for PiSSA
// and OLoRA the rank-2r factors [A; A₀] ([in, 2r]) and [B, −B₀] ([2r, out]).
func (p *Weight) fileValues(t *binding.Tensor) ([]float32, error) {
	vals, err := t.Floats()
	if err != nil || p.A0 == nil {
		return vals, err
	}
	if t == p.A {
		a0, err := p.A0.Floats()
		return append(vals, a0...), err
	}
	b0, err := p.B0.Floats()
	if err != nil {
		return nil, err
	}
	r := int(p.B.Dim(0))
	out := make([]float32, 0, 2*len(vals))
	for o := 0; o < len(vals)/r; o++ {
		out = append(out, vals[o*r:(o+1)*r]...)
		for _, v := range b0[o*r : (o+1)*r] {
			out = append(out, -v)
		}
	}
	return out, nil
}

// adapterType is "dora" for DoRA adapters (which llama.cpp must not load
// as plain LoRA) and "lora" otherwise.
func (a *Adapter) adapterType() string {
	if a.cfg.DoRA {
		return "dora"
	}
	return "lora"
}

// Load reads a LoRA GGUF (written by ggtune or by llama.cpp's converter)
// or a DoRA GGUF (adapter.type "dora", with <base>.dora_m magnitudes)
// into an adapter allocated on backend. If base is not nil the adapter is
// checked against it (architecture, tensor names and shapes); DoRA needs
// the base.
func Load(path string, base *binding.GGUFFile, backend *binding.Backend) (*Adapter, error) {
	f, err := binding.OpenGGUF(path)
	if err != nil {
		return nil, fmt.Errorf("load lora: %w", err)
	}
	defer f.Close()
	fail := func(format string, args ...any) (*Adapter, error) {
		return nil, fmt.Errorf("load lora %s: %w: %s", path, ErrFormat, fmt.Sprintf(format, args...))
	}
	if s, _ := f.String("general.type"); s != "adapter" {
		return fail("general.type is %q, want \"adapter\"", s)
	}
	typ, _ := f.String("adapter.type")
	if typ != "lora" && typ != "dora" {
		return fail("adapter.type is %q, want \"lora\" or \"dora\"", typ)
	}
	dora := typ == "dora"
	if dora && base == nil {
		return fail("a DoRA adapter needs its base model")
	}
	arch, _ := f.String("general.architecture")
	if arch == "" {
		return fail("no general.architecture")
	}
	fileAlpha, _ := f.Float("adapter.lora.alpha")

	type pair struct{ a, b, m *binding.GGUFTensorInfo }
	pairs := map[string]*pair{}
	var names []string
	for i := range f.Tensors() {
		ti := &f.Tensors()[i]
		var baseName string
		var isA, isM bool
		switch {
		case strings.HasSuffix(ti.Name, ".lora_a"):
			baseName, isA = strings.TrimSuffix(ti.Name, ".lora_a"), true
		case strings.HasSuffix(ti.Name, ".lora_b"):
			baseName = strings.TrimSuffix(ti.Name, ".lora_b")
		case dora && strings.HasSuffix(ti.Name, ".dora_m"):
			baseName, isM = strings.TrimSuffix(ti.Name, ".dora_m"), true
		default:
			return fail("unexpected tensor %q", ti.Name)
		}
		if isM && len(ti.Shape) != 1 {
			return fail("tensor %q has shape %v, want a vector", ti.Name, ti.Shape)
		}
		if !isM && len(ti.Shape) != 2 {
			return fail("tensor %q has shape %v, want a matrix", ti.Name, ti.Shape)
		}
		p := pairs[baseName]
		if p == nil {
			p = &pair{}
			pairs[baseName] = p
			names = append(names, baseName)
		}
		switch {
		case isA:
			p.a = ti
		case isM:
			p.m = ti
		default:
			p.b = ti
		}
	}
	if len(pairs) == 0 {
		return fail("no lora tensors")
	}
	cfg := Config{Init: InitKaiming, Dropout: 0, DoRA: dora}
	var slots []slot
	seenTargets := map[Target]bool{}
	for _, name := range names {
		p := pairs[name]
		if p.a == nil || p.b == nil {
			return fail("tensor pair for %q is missing one half", name)
		}
		if dora && (p.m == nil || p.m.Shape[0] != p.b.Shape[1]) {
			return fail("DoRA magnitude %s.dora_m is missing or does not have %d values", name, p.b.Shape[1])
		}
		t, layer, ok := targetOf(name)
		if !ok {
			return fail("cannot adapt %q", name)
		}
		var r int64
		if t == TargetEmbed {
			if p.a.Shape[0] != p.b.Shape[0] {
				return fail("%q: rank of lora_a %d != lora_b %d", name, p.a.Shape[0], p.b.Shape[0])
			}
			r = p.a.Shape[0]
		} else {
			if p.a.Shape[1] != p.b.Shape[0] {
				return fail("%q: lora_a %v and lora_b %v do not chain", name, p.a.Shape, p.b.Shape)
			}
			r = p.a.Shape[1]
		}
		if cfg.Rank == 0 {
			cfg.Rank = int(r)
		} else if int64(cfg.Rank) != r {
			return fail("%q has rank %d, other tensors %d (mixed ranks are not supported)", name, r, cfg.Rank)
		}
		if base != nil {
			bi, ok := base.TensorInfo(name)
			if !ok {
				return fail("base model %s has no tensor %q", base.Path(), name)
			}
			var okShape bool
			if t == TargetEmbed {
				okShape = len(bi.Shape) == 2 && bi.Shape[0] == p.b.Shape[1] && bi.Shape[1] == p.a.Shape[1]
			} else {
				okShape = len(bi.Shape) == 2 && bi.Shape[0] == p.a.Shape[0] && bi.Shape[1] == p.b.Shape[1]
			}
			if !okShape {
				return fail("%q: lora shapes %v/%v do not fit the base weight %v", name, p.a.Shape, p.b.Shape, bi.Shape)
			}
		}
		if !seenTargets[t] {
			seenTargets[t] = true
			cfg.Targets = append(cfg.Targets, t)
		}
		slots = append(slots, slot{target: t, layer: layer, base: name,
			aShape: [2]int64{p.a.Shape[0], p.a.Shape[1]}, bShape: [2]int64{p.b.Shape[0], p.b.Shape[1]}})
	}
	if base != nil {
		if ba, _ := base.String("general.architecture"); ba != arch {
			return fail("adapter architecture %q does not match the base model's %q", arch, ba)
		}
	}
	// The alpha llama.cpp uses; ggtune's own keys restore rsLoRA settings.
	cfg.Alpha = float32(fileAlpha)
	if fileAlpha == 0 {
		cfg.Alpha = float32(cfg.Rank) // llama.cpp: alpha 0 means scale 1
	}
	if v, ok := f.Float("ggtune.lora.alpha"); ok {
		if rs, _ := f.Get("ggtune.lora.rslora"); rs == true {
			cfg.Alpha, cfg.RSLoRA = float32(v), true
		}
	}
	if v, ok := f.Float("ggtune.lora.dropout"); ok {
		cfg.Dropout = float32(v)
	}
	if s, ok := f.String("ggtune.lora.init"); ok && (Init(s) == InitGaussian || Init(s) == InitKaiming) {
		cfg.Init = Init(s)
	}
	if v, ok := f.Float("ggtune.lora.plus_ratio"); ok && v >= 0 {
		cfg.PlusRatio = v
	}
	if v, ok := f.Uint("ggtune.lora.seed"); ok {
		cfg.Seed = v
	}
	if v, ok := f.Get("ggtune.lora.layers"); ok {
		if ls, ok := v.([]int32); ok && len(ls) > 0 {
			for _, l := range ls {
				cfg.Layers = append(cfg.Layers, int(l))
			}
		}
	}
	a, err := alloc(cfg, arch, slots, backend)
	if err != nil {
		return nil, fmt.Errorf("load lora %s: %w", path, err)
	}
	if dora {
		if err := a.readBase(base); err != nil {
			a.Close()
			return nil, fmt.Errorf("load lora %s: %w", path, err)
		}
	}
	for _, w := range a.weights {
		for _, t := range w.tensors() {
			vals, err := f.ReadTensorFloats(t.Name())
			if err == nil {
				err = t.SetFloats(vals)
			}
			if err != nil {
				a.Close()
				return nil, fmt.Errorf("load lora %s: %w", path, err)
			}
		}
	}
	method.ReadMeta(f, a.Meta)
	return a, nil
}

// targetOf maps a base tensor name to its target and block.
func targetOf(name string) (Target, int, bool) {
	switch name {
	case "output.weight":
		return TargetOutput, -1, true
	case "token_embd.weight":
		return TargetEmbed, -1, true
	}
	var layer int
	var infix string
	if n, err := fmt.Sscanf(name, "blk.%d.%s", &layer, &infix); n != 2 || err != nil {
		return "", 0, false
	}
	infix = strings.TrimSuffix(infix, ".weight")
	for t, s := range blockTensor {
		if s == infix {
			return t, layer, true
		}
	}
	return "", 0, false
}
