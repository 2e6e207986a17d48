package model

import (
	"errors"
	"fmt"
	"math"

	"github.com/ggtune/ggtune/binding"
)

// Validate reports sampling settings that are not numbers in their range:
// a NaN or infinite temperature, top-p or min-p outside [0, 1], negative
// counts. The error wraps ErrBadInput and names the setting.
func (p SamplerParams) Validate() error {
	bad := func(name string, v float32, lo, hi float64) error {
		f := float64(v)
		if math.IsNaN(f) || f < lo || f > hi {
			return fmt.Errorf("%w: %s %v: want a number in [%g, %g]", ErrBadInput, name, v, lo, hi)
		}
		return nil
	}
	for _, err := range []error{
		bad("temperature", p.Temperature, 0, math.MaxFloat32),
		bad("top-p", p.TopP, 0, 1),
		bad("min-p", p.MinP, 0, 1),
		bad("repeat penalty", p.RepeatPenalty, 0, math.MaxFloat32),
	} {
		if err != nil {
			return err
		}
	}
	if p.TopK < 0 || p.RepeatLastN < 0 {
		return fmt.Errorf("%w: top-k %d, repeat-last-n %d: want >= 0", ErrBadInput, p.TopK, p.RepeatLastN)
	}
	return nil
}

// Validate checks the sampling settings and the session's context size
// (0: the model's, else positive).
func (p GenerateParams) Validate() error {
	if err := p.SamplerParams.Validate(); err != nil {
		return err
	}
	if p.NCtx < 0 {
		return fmt.Errorf("%w: context size %d: want a positive size, or 0 for the model's", ErrBadInput, p.NCtx)
	}
	if p.MaxTokens < -1 {
		return fmt.Errorf("%w: %d tokens to generate: want -1 (until EOS), 0 or more", ErrBadInput, p.MaxTokens)
	}
	return nil
}

// ErrIsAdapter reports an adapter file given where a model is expected.
var ErrIsAdapter = errors.New("this is an adapter, not a model")

// refuseAdapter returns an error wrapping ErrIsAdapter when f is an
// adapter or soft prompt (general.type "adapter") rather than a model.
func refuseAdapter(f *binding.GGUFFile) error {
	if t, _ := f.String("general.type"); t == "adapter" {
		kind, _ := f.String("adapter.type")
		flag := "--lora"
		if kind != "lora" {
			flag = "--prompt-adapter"
		}
		return fmt.Errorf("%w (adapter.type %q): give the base model as -m and this file with %s", ErrIsAdapter, kind, flag)
	}
	return nil
}

// Check makes every check of [Load] and of the tokenizer on the model file
// at path without keeping it, so that commands that read a model without
// running it (merge) accept exactly the files that generate accepts.
func Check(path string) error {
	m, err := Load(path, Options{Threads: 1})
	if err != nil {
		return err
	}
	defer m.Close()
	if _, err := m.Tokenizer(); err != nil {
		return fmt.Errorf("model %s: %w", path, err)
	}
	return nil
}

// CheckFinite returns an error naming the first tensor of the GGUF file at
// path that holds a NaN or infinite value.
func CheckFinite(path string) error {
	f, err := binding.OpenGGUF(path)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, ti := range f.Tensors() {
		v, err := f.ReadTensorFloats(ti.Name)
		if err != nil {
			return fmt.Errorf("%s: tensor %s: %w", path, ti.Name, err)
		}
		for i, x := range v {
			if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
				return fmt.Errorf("%w: %s: tensor %s holds %v at element %d", ErrNonFinite, path, ti.Name, x, i)
			}
		}
	}
	return nil
}

// ErrNonFinite reports a tensor holding NaN or infinite values.
var ErrNonFinite = errors.New("non-finite values")
