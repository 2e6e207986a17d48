package lora

import (
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"sort"

	"github.com/ggtune/ggtune/binding"
)

// Weight is the LoRA pair of one base weight matrix.
type Weight struct {
	Target Target
	Layer  int    // block index, -1 for output and embed
	Base   string // GGUF name of the adapted weight
	// A and B are the low-rank factors in llama.cpp's layout: for a weight
	// with ggml shape [in, out], A is [in, r] and B is [r, out]; for the
	// token embedding ([n_embd, n_vocab]) A is [r, n_vocab] and B [r, n_embd].
	A, B *binding.Tensor
	// M is DoRA's magnitude [out] (nil without DoRA).
	M *binding.Tensor
	// A0 and B0 are the frozen initial factors of PiSSA and OLoRA (nil
	// otherwise): the model runs W − s·B0·A0 + s·B·A.
	A0, B0 *binding.Tensor
	// base holds the base weight's F32 values for DoRA's row norms.
	base []float32
	// frozen, if set, holds DoRA's row norms fixed (see FreezeNorms).
	frozen []float32
}

// Embedding reports whether the pair adapts the token embedding.
func (w *Weight) Embedding() bool { return w.Target == TargetEmbed }

// Adapter is a LoRA adapter whose tensors live in one backend buffer. It is
// not safe for concurrent use; Close frees its memory.
type Adapter struct {
	cfg     Config
	arch    string
	weights []*Weight
	byBase  map[string]*Weight
	ctx     *binding.Context
	buf     *binding.Buffer
	// Meta holds extra metadata saved with the adapter (training settings).
	Meta map[string]any
}

// slot describes one weight to adapt before its tensors exist.
type slot struct {
	target   Target
	layer    int
	base     string
	aShape   [2]int64
	bShape   [2]int64
	fanIn    int64
	baseType binding.Type
}

// plan lists the weights cfg adapts in the base model described by f.
func plan(cfg Config, f *binding.GGUFFile) (string, []slot, error) {
	arch, ok := f.String("general.architecture")
	if !ok {
		return "", nil, fmt.Errorf("%s: no general.architecture", f.Path())
	}
	nLayer, ok := f.Uint(arch + ".block_count")
	if !ok {
		return "", nil, fmt.Errorf("%s: no %s.block_count", f.Path(), arch)
	}
	for _, l := range cfg.Layers {
		if uint64(l) >= nLayer {
			return "", nil, fmt.Errorf("%w: layer %d but the model has %d blocks", ErrConfig, l, nLayer)
		}
	}
	r := int64(cfg.Rank)
	var out []slot
	add := func(t Target, layer int) error {
		name := t.TensorName(layer)
		ti, ok := f.TensorInfo(name)
		if !ok {
			if t == TargetOutput {
				return fmt.Errorf("%w: target output: the model has no output.weight (its output is tied to token_embd; target embed instead)", ErrConfig)
			}
			return fmt.Errorf("%w: target %s: the model has no tensor %s", ErrConfig, t, name)
		}
		if len(ti.Shape) != 2 {
			return fmt.Errorf("%w: target %s: tensor %s has shape %v, want a matrix", ErrConfig, t, name, ti.Shape)
		}
		in, outDim := ti.Shape[0], ti.Shape[1]
		s := slot{target: t, layer: layer, base: name, baseType: ti.Type}
		if t == TargetEmbed {
			s.aShape, s.bShape, s.fanIn = [2]int64{r, outDim}, [2]int64{r, in}, outDim
		} else {
			s.aShape, s.bShape, s.fanIn = [2]int64{in, r}, [2]int64{r, outDim}, in
		}
		out = append(out, s)
		return nil
	}
	for _, t := range cfg.Targets {
		t = aliases[string(t)]
		if !t.PerBlock() {
			if err := add(t, -1); err != nil {
				return "", nil, err
			}
			continue
		}
		for l := 0; l < int(nLayer); l++ {
			if cfg.layerSelected(l) {
				if err := add(t, l); err != nil {
					return "", nil, err
				}
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].base < out[j].base })
	return arch, out, nil
}

// New creates an adapter for the base model file f with cfg, allocated on
// backend and initialised as PEFT does (A random, B zero).
func New(cfg Config, f *binding.GGUFFile, backend *binding.Backend) (*Adapter, error) {
	if cfg.Init == "" {
		cfg.Init = InitKaiming
	}
	if err := cfg.Resolve(f); err != nil {
		return nil, err
	}
	arch, slots, err := plan(cfg, f)
	if err != nil {
		return nil, fmt.Errorf("new lora: %w", err)
	}
	a, err := alloc(cfg, arch, slots, backend)
	if err != nil {
		return nil, err
	}
	for _, w := range a.weights {
		if err := a.initWeight(w); err != nil {
			a.Close()
			return nil, err
		}
	}
	if cfg.residual() {
		if err := a.readBase(f); err != nil {
			a.Close()
			return nil, err
		}
		for _, w := range a.weights {
			err := w.initResidual(cfg.Init, w.base, a.Scale())
			w.base = nil
			if err != nil {
				a.Close()
				return nil, fmt.Errorf("new lora: %w", err)
			}
		}
	}
	if cfg.DoRA {
		if err := a.readBase(f); err != nil {
			a.Close()
			return nil, err
		}
		// B = 0, so the magnitude starts at the row norms of W.
		for _, w := range a.weights {
			if err := w.M.SetFloats(w.rowNorms(a.Scale())); err != nil {
				a.Close()
				return nil, err
			}
		}
	}
	return a, nil
}

// readBase keeps the F32 values of every adapted base weight (DoRA's norms
// need them).
func (a *Adapter) readBase(f *binding.GGUFFile) error {
	if f == nil {
		return fmt.Errorf("%w: a DoRA adapter needs its base model", ErrConfig)
	}
	for _, w := range a.weights {
		v, err := f.ReadTensorFloats(w.Base)
		if err != nil {
			return fmt.Errorf("dora: %w", err)
		}
		w.base = v
	}
	return nil
}

// rowNorms returns ‖W_o + scale·(B·A)_o‖ for every output row o, from the
// base values and the current A and B.
func (w *Weight) rowNorms(scale float32) []float32 {
	if w.frozen != nil {
		return append([]float32(nil), w.frozen...)
	}
	v := append([]float32(nil), w.base...)
	if err := addDelta(v, []int64{w.A.Dim(0), w.B.Dim(1)}, w, scale); err != nil {
		return nil
	}
	return rowNormsOf(v, w.A.Dim(0))
}

// rowNormsOf returns the Euclidean norm of every row of n0 values.
func rowNormsOf(v []float32, n0 int64) []float32 {
	out := make([]float32, int64(len(v))/n0)
	for o := range out {
		var s float64
		for _, x := range v[int64(o)*n0 : int64(o+1)*n0] {
			s += float64(x) * float64(x)
		}
		out[o] = float32(math.Sqrt(s))
	}
	return out
}

func alloc(cfg Config, arch string, slots []slot, backend *binding.Backend) (*Adapter, error) {
	if len(slots) == 0 {
		return nil, fmt.Errorf("new lora: %w: nothing to adapt", ErrConfig)
	}
	ctx, err := binding.NewGraphContext(5*len(slots)+4, 1, false)
	if err != nil {
		return nil, fmt.Errorf("new lora: %w", err)
	}
	a := &Adapter{cfg: cfg, arch: arch, byBase: map[string]*Weight{}, ctx: ctx, Meta: map[string]any{}}
	for _, s := range slots {
		w := &Weight{Target: s.target, Layer: s.layer, Base: s.base}
		w.A = ctx.NewTensor(binding.TypeF32, s.aShape[0], s.aShape[1])
		w.B = ctx.NewTensor(binding.TypeF32, s.bShape[0], s.bShape[1])
		if ctx.Err() != nil {
			ctx.Close()
			return nil, fmt.Errorf("new lora: %w", ctx.Err())
		}
		w.A.SetName(s.base + ".lora_a")
		w.B.SetName(s.base + ".lora_b")
		if cfg.residual() {
			w.A0 = ctx.NewTensor(binding.TypeF32, s.aShape[0], s.aShape[1]).SetName(s.base + ".lora_a0")
			w.B0 = ctx.NewTensor(binding.TypeF32, s.bShape[0], s.bShape[1]).SetName(s.base + ".lora_b0")
		}
		if cfg.DoRA {
			w.M = ctx.NewTensor(binding.TypeF32, s.bShape[1]).SetName(s.base + ".dora_m")
			if ctx.Err() != nil {
				ctx.Close()
				return nil, fmt.Errorf("new lora: %w", ctx.Err())
			}
		}
		a.weights = append(a.weights, w)
		a.byBase[s.base] = w
	}
	buf, err := backend.AllocContext(ctx)
	if err != nil {
		ctx.Close()
		return nil, fmt.Errorf("new lora: %w", err)
	}
	a.buf = buf
	return a, nil
}

// initWeight draws A and zeroes B (for the embedding, PEFT's layout is
// swapped: A zero and B normal; llama.cpp's file layout stores them so
// that the same rule "one factor zero" keeps the adapter a no-op).
func (a *Adapter) initWeight(w *Weight) error {
	if a.cfg.residual() {
		return nil // initResidual sets A and B from the base weight
	}
	h := fnv.New64a()
	h.Write([]byte(w.Base))
	rng := rand.New(rand.NewPCG(a.cfg.Seed, h.Sum64()))
	if w.Embedding() {
		if err := w.A.Zero(); err != nil {
			return err
		}
		vals := make([]float32, w.B.Elements())
		for i := range vals {
			vals[i] = float32(rng.NormFloat64())
		}
		return w.B.SetFloats(vals)
	}
	vals := make([]float32, w.A.Elements())
	switch a.cfg.Init {
	case InitGaussian:
		std := 1 / float64(a.cfg.Rank)
		for i := range vals {
			vals[i] = float32(rng.NormFloat64() * std)
		}
	default:
		bound := 1 / math.Sqrt(float64(w.A.Dim(0)))
		for i := range vals {
			vals[i] = float32((rng.Float64()*2 - 1) * bound)
		}
	}
	if err := w.A.SetFloats(vals); err != nil {
		return err
	}
	return w.B.Zero()
}

// FreezeNorms computes DoRA's row norms ‖W + s·B·A‖ from the current A
// and B once and keeps them, instead of recomputing them before every
// graph computation: for inference, where A and B no longer change, and
// for checking gradients (the norms are not differentiated through). It
// has no effect without DoRA. An adapter with frozen norms must not train
// further.
func (a *Adapter) FreezeNorms() {
	for _, w := range a.weights {
		if w.M != nil {
			w.frozen = nil
			w.frozen = w.rowNorms(a.Scale())
		}
	}
}

// Config returns the adapter's configuration.
func (a *Adapter) Config() Config { return a.cfg }

// Arch returns the base model architecture the adapter was made for.
func (a *Adapter) Arch() string { return a.arch }

// Weights returns the adapter's pairs, sorted by base tensor name.
func (a *Adapter) Weights() []*Weight { return a.weights }

// Weight returns the pair for the base tensor name, or nil.
func (a *Adapter) Weight(base string) *Weight { return a.byBase[base] }

// Scale returns alpha/r (or alpha/√r with RSLoRA).
func (a *Adapter) Scale() float32 { return a.cfg.Scale() }

// Params returns every trainable tensor (A and B of each pair, and DoRA's
// magnitudes) and marks them as graph parameters.
func (a *Adapter) Params() ([]*binding.Tensor, error) {
	out := make([]*binding.Tensor, 0, 3*len(a.weights))
	for _, w := range a.weights {
		for _, t := range w.tensors() {
			if !t.IsParam() {
				if err := t.SetParam(); err != nil {
					return nil, err
				}
			}
			out = append(out, t)
		}
	}
	return out, nil
}

// tensors returns A, B and (with DoRA) M.
func (w *Weight) tensors() []*binding.Tensor {
	if w.M != nil {
		return []*binding.Tensor{w.A, w.B, w.M}
	}
	return []*binding.Tensor{w.A, w.B}
}

// Close frees the adapter's tensors. It is idempotent.
func (a *Adapter) Close() {
	if a == nil {
		return
	}
	a.buf.Close()
	a.ctx.Close()
}
