package prompttune

import (
	"fmt"
	"strings"

	"github.com/spf13/pflag"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/method"
	"github.com/ggtune/ggtune/model"
	"github.com/ggtune/ggtune/train"
)

func init() {
	method.Register(softPrompt{name: "prompt", kind: PromptTuning, peft: []string{"PROMPT_TUNING", "P_TUNING"}, info: method.Info{
		Short: "Prompt tuning: learn virtual token embeddings before the input", Output: "soft-prompt GGUF", LR: 3e-2}})
	method.Register(softPrompt{name: "prefix", kind: PrefixTuning, peft: []string{"PREFIX_TUNING"}, info: method.Info{
		Short: "Prefix tuning: learn per-layer keys and values before the sequence", Output: "soft-prompt GGUF", LR: 1e-2}})
	method.Register(softPrompt{name: "ptuning", kind: PTuning, info: method.Info{
		Short: "P-tuning: learn virtual tokens produced by an MLP prompt encoder", Output: "soft-prompt GGUF", LR: 1e-3}})
}

// softPrompt is one soft-prompt kind in the method registry; its
// adapter.type is the kind.
type softPrompt struct {
	name string
	kind Method
	peft []string // PEFT peft_type values it imports
	info method.Info
}

func (s softPrompt) Name() string           { return s.name }
func (s softPrompt) Info() method.Info      { return s.info }
func (s softPrompt) AdapterTypes() []string { return []string{string(s.kind)} }
func (s softPrompt) PEFTTypes() []string    { return s.peft }
func (s softPrompt) NewConfig() method.Config {
	c := &Config{Method: s.kind, NumVirtual: 20, Init: InitRandom}
	if s.kind == PTuning {
		c.Encoder = EncoderMLP
	}
	return c
}

func (s softPrompt) New(env *method.Env, cfg method.Config) (method.Instance, error) {
	c, ok := cfg.(*Config)
	if !ok || env.Model == nil {
		return nil, fmt.Errorf("%s: %w: config %T, model %v", s.name, ErrConfig, cfg, env.Model != nil)
	}
	cc := *c
	cc.Method, cc.Seed = s.kind, env.Seed
	p, err := New(cc, env.Model, env.Backend)
	if err != nil {
		return nil, err
	}
	return instance{p}, nil
}

func (s softPrompt) Load(path string, env *method.Env) (method.Instance, error) {
	p, err := Load(path, ShapeOf(env.Config), env.Backend)
	if err != nil {
		return nil, err
	}
	return instance{p}, nil
}

func (s softPrompt) ImportPEFT(dir string, env *method.Env) (method.Instance, error) {
	p, err := ImportPEFT(dir, ShapeOf(env.Config), env.Backend)
	if err != nil {
		return nil, err
	}
	return instance{p}, nil
}

// instance adapts a Prompt to method.Instance (and method.PEFTExporter).
type instance struct{ *Prompt }

func (i instance) Hooks(float32) []model.Hook { return []model.Hook{i.Hook()} }

func (i instance) Groups() ([]train.Group, error) {
	params, err := i.Params()
	if err != nil {
		return nil, err
	}
	return train.Groups(params...), nil
}

// AddFlags implements method.Config: --virtual-tokens, --init, and
// --encoder-hidden, --encoder (P-tuning) and --reparam (prefix tuning).
func (c *Config) AddFlags(fs *pflag.FlagSet) {
	fs.IntVar(&c.NumVirtual, "virtual-tokens", c.NumVirtual, "number of virtual tokens")
	fs.Var((*initFlag)(c), "init", `virtual-token initialisation: random, vocab (embeddings of random tokens) or text:"..." (embeddings of a text)`)
	if c.Method != PromptTuning {
		fs.IntVar(&c.EncoderHidden, "encoder-hidden", c.EncoderHidden, "hidden size of the prompt encoder / reparameterisation MLP (0: n_embd)")
	}
	if c.Method == PTuning {
		fs.StringVar(&c.Encoder, "encoder", c.Encoder, "prompt encoder: mlp (Linear-ReLU-Linear-ReLU-Linear) or lstm (2-layer bidirectional LSTM + MLP head)")
	}
	if c.Method == PrefixTuning {
		fs.BoolVar(&c.Reparam, "reparam", c.Reparam, "reparameterise the prefix with an MLP during training (dropped in the saved file)")
	}
}

// Resolve implements method.Config (it validates).
func (c *Config) Resolve(*binding.GGUFFile) error {
	if err := c.Validate(); err != nil {
		return fmt.Errorf("%w (--virtual-tokens, --init random|vocab|text:\"...\")", err)
	}
	return nil
}

// initFlag is --init: random, vocab or text:"...".
type initFlag Config

func (f *initFlag) String() string {
	if f.Init == InitText {
		return "text:" + f.InitText
	}
	return string(f.Init)
}

func (f *initFlag) Set(s string) error {
	switch s = strings.TrimSpace(s); {
	case strings.HasPrefix(s, "text:"), strings.HasPrefix(s, "text="):
		f.Init, f.InitText = InitText, unquote(s[len("text:"):])
	default:
		f.Init, f.InitText = Init(strings.ToLower(s)), ""
	}
	return nil
}

func (f *initFlag) Type() string { return "string" }

// unquote strips one pair of matching quotes.
func unquote(s string) string {
	if len(s) >= 2 && (s[0] == '"' || s[0] == '\'') && s[len(s)-1] == s[0] {
		return s[1 : len(s)-1]
	}
	return s
}
