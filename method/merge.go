package method

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/internal/ggufpatch"
)

// Scaled is an instance with the user scale it is applied with.
type Scaled struct {
	Instance Instance
	Scale    float32
	// Name labels the instance in errors (its file).
	Name string
}

// MergeOptions configure Merge.
type MergeOptions struct {
	// Type, if set, is the element type of every merged tensor; otherwise
	// each keeps its base type (quantized ones are re-quantized).
	Type *binding.Type
}

// Merge writes to outPath a copy of the base model basePath with the
// instances folded into its weights, in order. Every instance must
// implement Merger (ErrUnsupported names the one that does not). The file
// is written atomically.
func Merge(basePath, outPath string, instances []Scaled, opts MergeOptions) error {
	base, err := binding.OpenGGUF(basePath)
	if err != nil {
		return fmt.Errorf("merge: %w", err)
	}
	defer base.Close()
	mergers := make([]Merger, len(instances))
	for i, s := range instances {
		mg, ok := s.Instance.(Merger)
		if !ok {
			return fmt.Errorf("merge: %s: %w: it cannot be folded into the base weights (apply it with --adapter instead)", s.Name, ErrUnsupported)
		}
		mergers[i] = mg
	}
	patches := map[string]ggufpatch.Patch{}
	for _, ti := range base.Tensors() {
		var touching []int
		for i, mg := range mergers {
			if mg.MergesInto(ti.Name) {
				touching = append(touching, i)
			}
		}
		if len(touching) == 0 {
			continue
		}
		typ := ti.Type
		if opts.Type != nil {
			typ = *opts.Type
		}
		name, shape := ti.Name, ti.Shape
		// Values runs while the file is written, one tensor at a time.
		patches[name] = ggufpatch.Patch{Type: typ, Values: func() ([]float32, error) {
			vals, err := base.ReadTensorFloats(name)
			if err != nil {
				return nil, err
			}
			for _, i := range touching {
				if err := mergers[i].MergeInto(name, shape, vals, instances[i].Scale); err != nil {
					return nil, fmt.Errorf("merge %s into %s: %w", instances[i].Name, name, err)
				}
			}
			return vals, nil
		}}
	}
	if len(patches) == 0 {
		return fmt.Errorf("merge: the adapters change no tensor of %s", basePath)
	}
	if err := ggufpatch.Write(basePath, outPath, patches, nil); err != nil {
		return fmt.Errorf("merge: %w", err)
	}
	return nil
}

// ImportPEFT reads the PEFT adapter directory dir with the method that
// imports its adapter_config.json's peft_type.
func ImportPEFT(dir string, env *Env) (Instance, Method, error) {
	b, err := os.ReadFile(filepath.Join(dir, "adapter_config.json"))
	if err != nil {
		return nil, nil, fmt.Errorf("import peft: %w", err)
	}
	var cfg struct {
		PEFTType string `json:"peft_type"`
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		return nil, nil, fmt.Errorf("import peft: %s: %w", filepath.Join(dir, "adapter_config.json"), err)
	}
	var known []string
	for _, m := range All() {
		imp, ok := m.(PEFTImporter)
		if !ok {
			continue
		}
		for _, t := range imp.PEFTTypes() {
			if t == cfg.PEFTType {
				inst, err := imp.ImportPEFT(dir, env)
				return inst, m, err
			}
			known = append(known, t)
		}
	}
	return nil, nil, fmt.Errorf("import peft %s: %w: peft_type %q (ggtune imports %v)", dir, ErrUnsupported, cfg.PEFTType, known)
}
