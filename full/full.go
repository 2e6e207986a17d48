// Package full provides full fine-tuning (every weight) and head-only
// fine-tuning (the output layer, optionally with the last blocks) as
// registered methods: the selected base weights are loaded as F32
// parameters and the result is a complete GGUF model that libllama loads.
package full

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/pflag"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/internal/ggufpatch"
	"github.com/ggtune/ggtune/method"
	"github.com/ggtune/ggtune/model"
	"github.com/ggtune/ggtune/train"
)

func init() {
	method.Register(fullMethod{})
	method.Register(headMethod{})
}

// ErrConfig reports an invalid configuration.
var ErrConfig = errors.New("invalid full fine-tuning config")

// Config configures full fine-tuning (it has no settings).
type Config struct{}

// AddFlags implements method.Config.
func (*Config) AddFlags(*pflag.FlagSet) {}

// Resolve implements method.Config.
func (*Config) Resolve(*binding.GGUFFile) error { return nil }

// HeadConfig configures head-only fine-tuning.
type HeadConfig struct {
	// TrainLayers adds the last N transformer blocks to the output layer.
	TrainLayers int `yaml:"train_layers" json:"train_layers"`
}

// AddFlags implements method.Config: --train-layers last:N.
func (c *HeadConfig) AddFlags(fs *pflag.FlagSet) {
	fs.Var((*lastFlag)(&c.TrainLayers), "train-layers", "also train the last N transformer blocks: last:N (or N)")
}

// Resolve implements method.Config: TrainLayers must fit the model.
func (c *HeadConfig) Resolve(base *binding.GGUFFile) error {
	cfg, err := model.ReadConfig(base)
	if err != nil {
		return fmt.Errorf("%s: %w", base.Path(), err)
	}
	if c.TrainLayers < 0 || c.TrainLayers > cfg.NLayer {
		return fmt.Errorf("%w: train the last %d of %d layers", ErrConfig, c.TrainLayers, cfg.NLayer)
	}
	return nil
}

// lastFlag parses "last:N" or "N" (N >= 0).
type lastFlag int

func (f *lastFlag) String() string { return "last:" + strconv.Itoa(int(*f)) }

func (f *lastFlag) Set(s string) error {
	v := strings.TrimPrefix(strings.TrimSpace(strings.ToLower(s)), "last:")
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return fmt.Errorf("%q: want last:N with N >= 0", s)
	}
	*f = lastFlag(n)
	return nil
}

func (f *lastFlag) Type() string { return "string" }

type fullMethod struct{}

func (fullMethod) Name() string { return "full" }
func (fullMethod) Info() method.Info {
	return method.Info{Short: "Full fine-tuning: train every weight (as F32)", Output: "full model GGUF", LR: 5e-5}
}
func (fullMethod) AdapterTypes() []string   { return nil }
func (fullMethod) NewConfig() method.Config { return &Config{} }
func (fullMethod) Trainable(method.Config, *binding.GGUFFile) (func(string) bool, error) {
	return func(string) bool { return true }, nil
}
func (fullMethod) New(env *method.Env, _ method.Config) (method.Instance, error) {
	return newInstance(env)
}
func (fullMethod) Load(path string, _ *method.Env) (method.Instance, error) {
	return nil, fmt.Errorf("%s: %w: a full fine-tune is a model, load it with -m", path, method.ErrUnsupported)
}

type headMethod struct{}

func (headMethod) Name() string { return "head" }
func (headMethod) Info() method.Info {
	return method.Info{Short: "Head-only fine-tuning: train the output layer (and optionally the last blocks)", Output: "full model GGUF", LR: 1e-4}
}
func (headMethod) AdapterTypes() []string   { return nil }
func (headMethod) NewConfig() method.Config { return &HeadConfig{} }

// Trainable selects the output layer and norm (the token embedding when
// the output is tied to it) and the last TrainLayers blocks.
func (headMethod) Trainable(cfg method.Config, base *binding.GGUFFile) (func(string) bool, error) {
	c, ok := cfg.(*HeadConfig)
	if !ok {
		return nil, fmt.Errorf("head: %w: config %T", ErrConfig, cfg)
	}
	if err := c.Resolve(base); err != nil {
		return nil, err
	}
	mc, err := model.ReadConfig(base)
	if err != nil {
		return nil, err
	}
	first := mc.NLayer - c.TrainLayers
	return func(name string) bool {
		if name == "output.weight" || name == "output_norm.weight" || (mc.TiedOutput && name == "token_embd.weight") {
			return true
		}
		var l int
		var rest string
		if n, _ := fmt.Sscanf(name, "blk.%d.%s", &l, &rest); n == 2 {
			return l >= first
		}
		return false
	}, nil
}
func (headMethod) New(env *method.Env, _ method.Config) (method.Instance, error) {
	return newInstance(env)
}
func (headMethod) Load(path string, _ *method.Env) (method.Instance, error) {
	return nil, fmt.Errorf("%s: %w: a head fine-tune is a model, load it with -m", path, method.ErrUnsupported)
}

// instance trains the model's trainable weights in place.
type instance struct {
	m    *model.Model
	base string
}

func newInstance(env *method.Env) (method.Instance, error) {
	if env.Model == nil || len(env.Model.Trainable()) == 0 {
		return nil, fmt.Errorf("%w: no trainable weights", ErrConfig)
	}
	if err := method.SetParams(env.Model.Trainable()...); err != nil {
		return nil, err
	}
	return &instance{m: env.Model, base: env.BasePath}, nil
}

// Hooks implements method.Instance: the weights are the model's own.
func (*instance) Hooks(float32) []model.Hook { return nil }

// Groups implements method.Instance.
func (i *instance) Groups() ([]train.Group, error) { return train.Groups(i.m.Trainable()...), nil }

// Save implements method.Instance (see SaveModel).
func (i *instance) Save(path string) error { return SaveModel(i.m, i.base, path) }

// Close implements method.Instance; the weights belong to the model.
func (*instance) Close() {}

// SaveModel writes the model with its trainable (fine-tuned) weights to
// path, copying everything else from the base file; trained weights are
// stored as F32.
func SaveModel(m *model.Model, base, path string) error {
	patches := map[string]ggufpatch.Patch{}
	for _, t := range m.Trainable() {
		patches[t.Name()] = ggufpatch.Patch{Values: t.Floats, Type: binding.TypeF32}
	}
	if err := ggufpatch.Write(base, path, patches, nil); err != nil {
		return fmt.Errorf("save model: %w", err)
	}
	return nil
}
