package lora

import (
	"fmt"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/internal/ggufpatch"
)

// Scaled is an adapter with the user scale it is applied with (the
// effective factor is Scale·alpha/r, as in llama.cpp).
type Scaled struct {
	Adapter *Adapter
	Scale   float32
}

// MergeOptions configure Merge.
type MergeOptions struct {
	// Type, if set, is the element type of every merged matrix (for
	// example binding.TypeF16); otherwise each keeps its base type.
	Type *binding.Type
}

// Merge writes to outPath a copy of the base model basePath with the
// adapters folded into its weights: W' = W + Σ scale·alpha/r·B·A (DoRA
// adapters fold their magnitude in too, see Config.DoRA). Merged
// weights keep their base type (quantized types are re-quantized) unless
// opts.Type is set. The file is written atomically.
func Merge(basePath, outPath string, adapters []Scaled, opts MergeOptions) error {
	base, err := binding.OpenGGUF(basePath)
	if err != nil {
		return fmt.Errorf("merge: %w", err)
	}
	defer base.Close()
	arch, _ := base.String("general.architecture")
	for i, s := range adapters {
		if s.Adapter == nil {
			return fmt.Errorf("merge: adapter %d is nil", i)
		}
		if s.Adapter.Arch() != arch {
			return fmt.Errorf("merge: adapter %d is for %q, the base model is %q", i, s.Adapter.Arch(), arch)
		}
		for _, w := range s.Adapter.Weights() {
			if _, ok := base.TensorInfo(w.Base); !ok {
				return fmt.Errorf("merge: adapter %d adapts %s, which %s lacks", i, w.Base, basePath)
			}
		}
	}
	patches := map[string]ggufpatch.Patch{}
	for _, ti := range base.Tensors() {
		var pairs []Scaled
		for _, s := range adapters {
			if s.Adapter.Weight(ti.Name) != nil {
				pairs = append(pairs, s)
			}
		}
		if len(pairs) == 0 {
			continue
		}
		typ := ti.Type
		if opts.Type != nil {
			typ = *opts.Type
		}
		name, shape := ti.Name, ti.Shape
		patches[ti.Name] = ggufpatch.Patch{Type: typ, Values: func() ([]float32, error) {
			vals, err := base.ReadTensorFloats(name)
			if err != nil {
				return nil, err
			}
			for _, s := range pairs {
				if err := s.Adapter.Weight(name).mergeInto(vals, shape, s.Scale, s.Adapter.Scale()); err != nil {
					return nil, fmt.Errorf("merge %s: %w", name, err)
				}
			}
			return vals, nil
		}}
	}
	if err := ggufpatch.Write(basePath, outPath, patches, nil); err != nil {
		return fmt.Errorf("merge: %w", err)
	}
	return nil
}

// mergeInto folds the pair at user scale u (and alpha/r = s) into the
// weight values vals: W + u·s·B·A, or for DoRA (the hook's formula, with
// the norms of the base weight) W + u·(m/‖W₀ + s·B·A‖ ⊙ (W + s·B·A) − W).
func (p *Weight) mergeInto(vals []float32, shape []int64, u, s float32) error {
	if p.A0 != nil {
		if err := addDelta(vals, shape, &Weight{A: p.A0, B: p.B0}, -u*s); err != nil {
			return err
		}
	}
	if p.M == nil {
		return addDelta(vals, shape, p, u*s)
	}
	m, err := p.M.Floats()
	if err != nil {
		return err
	}
	n := p.rowNorms(s)
	if len(n) != len(m) || len(shape) != 2 || shape[1] != int64(len(m)) {
		return fmt.Errorf("dora: magnitude of %d values for a weight of shape %v", len(m), shape)
	}
	v := append([]float32(nil), vals...)
	if err := addDelta(v, shape, p, s); err != nil {
		return err
	}
	n0 := shape[0]
	for o := range m {
		g := m[o] / max(n[o], 1e-12)
		for i := int64(o) * n0; i < int64(o+1)*n0; i++ {
			vals[i] += u * (g*v[i] - vals[i])
		}
	}
	return nil
}

// addDelta adds scale·B·A to the base weight values (ggml layout: row o of
// W holds the n_in inputs of output o).
func addDelta(wv []float32, shape []int64, p *Weight, scale float32) error {
	av, err := p.A.Floats()
	if err != nil {
		return err
	}
	bv, err := p.B.Floats()
	if err != nil {
		return err
	}
	if len(shape) != 2 {
		return fmt.Errorf("base weight shape %v is not a matrix", shape)
	}
	n0, n1 := shape[0], shape[1]
	if p.Embedding() {
		// W [n_embd, n_vocab]; A [r, n_vocab]; B [r, n_embd]:
		// W[v][e] += scale · Σ_k B[e][k]·A[v][k].
		r := p.A.Dim(0)
		for v := int64(0); v < n1; v++ {
			arow := av[v*r : (v+1)*r]
			for e := int64(0); e < n0; e++ {
				brow := bv[e*r : (e+1)*r]
				var s float32
				for k := range arow {
					s += brow[k] * arow[k]
				}
				wv[v*n0+e] += scale * s
			}
		}
		return nil
	}
	// W [in, out]; A [in, r]; B [r, out]: W[o][i] += scale · Σ_k B[o][k]·A[k][i].
	r := p.A.Dim(1)
	for o := int64(0); o < n1; o++ {
		row := wv[o*n0 : (o+1)*n0]
		for k := int64(0); k < r; k++ {
			c := scale * bv[o*r+k]
			if c == 0 {
				continue
			}
			arow := av[k*n0 : (k+1)*n0]
			for i := range row {
				row[i] += c * arow[i]
			}
		}
	}
	return nil
}
