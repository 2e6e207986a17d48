package main

import (
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/method"
	"github.com/ggtune/ggtune/model"
)

func init() { registerHookFlags(adapterHookFlags) }

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

// adapterSpecs collects PATH[:SCALE] arguments of --adapter and its
// aliases in command-line order (adapters stack in that order).
type adapterSpecs []string

func (a *adapterSpecs) String() string { return strings.Join(*a, ",") }

func (a *adapterSpecs) Set(s string) error {
	*a = append(*a, s)
	return nil
}

func (a *adapterSpecs) Type() string { return "stringArray" }

// addAdapterFlags adds --adapter (repeatable) and its aliases --lora and
// --prompt-adapter to cmd; all three append to specs.
func addAdapterFlags(fs *pflag.FlagSet, specs *adapterSpecs) {
	fs.Var(specs, "adapter", "adapter GGUF of any method (LoRA, IA3, soft prompt, ...) as PATH or PATH:SCALE; repeatable: adapters stack in order, each with its own scale (default 1)")
	fs.Var(specs, "lora", "alias of --adapter")
	fs.Var(specs, "prompt-adapter", "alias of --adapter")
}

// loadedAdapter is an adapter file loaded through the method registry.
type loadedAdapter struct {
	spec   string
	scale  float32
	inst   method.Instance
	method method.Method
}

// loadAdapters loads the adapters named by PATH[:SCALE] specs for the base
// model file basePath (each is checked against it) onto backend,
// dispatching on each file's adapter.type; m (may be nil) is the loaded
// model. The caller closes the instances.
func loadAdapters(specs []string, basePath string, m *model.Model, backend *binding.Backend) ([]loadedAdapter, error) {
	if len(specs) == 0 {
		return nil, nil
	}
	var out []loadedAdapter
	closeAll := func() {
		for _, a := range out {
			a.inst.Close()
		}
	}
	env, err := method.NewEnv(basePath, m, backend)
	if err != nil {
		return nil, err
	}
	defer env.Close()
	for _, spec := range specs {
		sp, err := parseScaled(spec)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("--adapter: %w", err)
		}
		inst, meth, err := method.Open(sp.Path, env)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("--adapter %s: %w", spec, err)
		}
		out = append(out, loadedAdapter{spec: spec, scale: sp.Scale, inst: inst, method: meth})
	}
	return out, nil
}

// adapterHookFlags adds --adapter (and its aliases) to commands that run
// the model; each adapter becomes hooks with its own scale.
func adapterHookFlags(cmd *cobra.Command) func(m *model.Model) ([]model.Hook, func(), error) {
	var specs adapterSpecs
	addAdapterFlags(cmd.Flags(), &specs)
	return func(m *model.Model) ([]model.Hook, func(), error) {
		adapters, err := loadAdapters(specs, m.Path(), m, m.Backend())
		if err != nil {
			return nil, nil, err
		}
		var hooks []model.Hook
		for _, a := range adapters {
			hooks = append(hooks, a.inst.Hooks(a.scale)...)
		}
		return hooks, func() {
			for _, a := range adapters {
				a.inst.Close()
			}
		}, nil
	}
}
