package main

import (
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/lora"
	"github.com/ggtune/ggtune/model"
	"github.com/ggtune/ggtune/prompttune"
)

func init() {
	registerHookFlags(loraHookFlags)
	registerHookFlags(promptHookFlags)
}

// errAdapterSpec reports a malformed PATH[:SCALE] argument.
var errAdapterSpec = errors.New("invalid adapter argument")

// scaledPath is an adapter file with the scale it is applied with.
type scaledPath struct {
	Path  string
	Scale float32
}

// parseScaled parses "PATH[:SCALE]". The text after the last ':' is a scale
// only if it is a number; otherwise the whole argument is the path (so paths
// may contain ':'). A missing file whose name looks like PATH:BADSCALE, with
// PATH an existing file, is reported as a bad scale.
func parseScaled(s string) (scaledPath, error) {
	if s == "" {
		return scaledPath{}, fmt.Errorf("%w: empty path", errAdapterSpec)
	}
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return scaledPath{Path: s, Scale: 1}, nil
	}
	path, tail := s[:i], s[i+1:]
	v, err := strconv.ParseFloat(tail, 32)
	switch {
	case err == nil && (math.IsNaN(v) || math.IsInf(v, 0)):
		return scaledPath{}, fmt.Errorf("%w: %q: scale %q is not a finite number", errAdapterSpec, s, tail)
	case err == nil && path == "":
		return scaledPath{}, fmt.Errorf("%w: %q: no path before the scale", errAdapterSpec, s)
	case err == nil:
		return scaledPath{Path: path, Scale: float32(v)}, nil
	case errors.Is(err, strconv.ErrRange):
		return scaledPath{}, fmt.Errorf("%w: %q: scale %q is out of range", errAdapterSpec, s, tail)
	}
	if _, statErr := os.Stat(s); statErr != nil && path != "" {
		if _, e := os.Stat(path); e == nil {
			return scaledPath{}, fmt.Errorf("%w: %q: scale %q is not a number (want PATH[:SCALE], e.g. %s:0.5)", errAdapterSpec, s, tail, path)
		}
	}
	return scaledPath{Path: s, Scale: 1}, nil
}

// loadLoRAs loads the adapters named by PATH[:SCALE] specs for the base
// model file basePath (each is checked against it) onto backend. The
// caller closes the adapters.
func loadLoRAs(specs []string, basePath string, backend *binding.Backend) ([]lora.Scaled, error) {
	var out []lora.Scaled
	closeAll := func() {
		for _, s := range out {
			s.Adapter.Close()
		}
	}
	if len(specs) == 0 {
		return nil, nil
	}
	base, err := binding.OpenGGUF(basePath)
	if err != nil {
		return nil, err
	}
	defer base.Close()
	for _, spec := range specs {
		sp, err := parseScaled(spec)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("--lora: %w", err)
		}
		a, err := lora.Load(sp.Path, base, backend)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("--lora %s: %w", spec, err)
		}
		out = append(out, lora.Scaled{Adapter: a, Scale: sp.Scale})
	}
	return out, nil
}

// loraHookFlags adds --lora (repeatable PATH[:SCALE]) to commands that run
// the model; each adapter becomes a hook with its own scale, so several
// adapters apply at once.
func loraHookFlags(cmd *cobra.Command) func(m *model.Model) ([]model.Hook, func(), error) {
	var specs []string
	cmd.Flags().StringArrayVar(&specs, "lora", nil,
		"LoRA adapter GGUF to apply, as PATH or PATH:SCALE (repeatable: adapters stack, each with its own scale; default scale 1)")
	return func(m *model.Model) ([]model.Hook, func(), error) {
		adapters, err := loadLoRAs(specs, m.Path(), m.Backend())
		if err != nil {
			return nil, nil, err
		}
		hooks := make([]model.Hook, len(adapters))
		for i, s := range adapters {
			hooks[i] = s.Adapter.Hook(s.Scale)
		}
		return hooks, func() {
			for _, s := range adapters {
				s.Adapter.Close()
			}
		}, nil
	}
}

// promptHookFlags adds --prompt-adapter (a soft-prompt GGUF written by
// `ggtune train prompt|prefix|ptuning` or `ggtune import-peft`) to commands
// that run the model; it combines with --lora.
func promptHookFlags(cmd *cobra.Command) func(m *model.Model) ([]model.Hook, func(), error) {
	var path string
	cmd.Flags().StringVar(&path, "prompt-adapter", "",
		"soft-prompt adapter GGUF (prompt, prefix or P-tuning) to apply; combines with --lora")
	return func(m *model.Model) ([]model.Hook, func(), error) {
		if path == "" {
			return nil, nil, nil
		}
		p, err := prompttune.Load(path, prompttune.ShapeOf(m.Config()), m.Backend())
		if err != nil {
			return nil, nil, fmt.Errorf("--prompt-adapter: %w", err)
		}
		return []model.Hook{p.Hook()}, p.Close, nil
	}
}
