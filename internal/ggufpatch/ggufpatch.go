// Package ggufpatch writes a copy of a GGUF model with some tensors
// replaced: the common step of saving a fine-tuned model and of merging
// adapters into a base.
package ggufpatch

import (
	"fmt"

	"github.com/ggtune/ggtune/binding"
)

// Patch gives the new values of one tensor: Values returns them in float32
// (same element count as the original) while the file is written, one
// tensor at a time; they are stored as Type.
type Patch struct {
	Values func() ([]float32, error)
	Type   binding.Type
}

// Write copies the GGUF file at base to out, metadata and tensors in the
// same order, with the tensors named in patches replaced (converted to
// their patch's Type) and extra metadata set. The file is written
// atomically and streamed: tensors are read, patched and written one at a
// time.
func Write(base, out string, patches map[string]Patch, extra []binding.KV) error {
	f, err := binding.OpenGGUF(base)
	if err != nil {
		return err
	}
	defer f.Close()
	for name := range patches {
		if _, ok := f.TensorInfo(name); !ok {
			return fmt.Errorf("write %s: %s has no tensor %s", out, base, name)
		}
	}
	w, err := binding.NewGGUFWriter(len(f.Tensors()))
	if err != nil {
		return fmt.Errorf("write %s: %w", out, err)
	}
	defer w.Close()
	for _, kv := range append(f.KVs(), extra...) {
		if err := w.Set(kv.Key, kv.Value); err != nil {
			return fmt.Errorf("write %s: key %s: %w", out, kv.Key, err)
		}
	}
	for _, ti := range f.Tensors() {
		p, ok := patches[ti.Name]
		if !ok {
			name := ti.Name
			if err := w.AddTensorFunc(ti.Name, ti.Type, ti.Shape, func() ([]byte, error) { return f.ReadTensor(name) }); err != nil {
				return fmt.Errorf("write %s: %w", out, err)
			}
			continue
		}
		if err := w.AddFloatsFunc(ti.Name, p.Type, ti.Shape, p.Values); err != nil {
			return fmt.Errorf("write %s: %w", out, err)
		}
	}
	if err := w.WriteFile(out); err != nil {
		return fmt.Errorf("write %s: %w", out, err)
	}
	return nil
}
