// Package prompttune adapts a frozen model by learning continuous prompts
// instead of weights, with HF PEFT's semantics: prompt tuning (learned
// embeddings before the tokens), P-tuning (the embeddings come from a
// trained MLP prompt encoder) and prefix tuning (learned keys and values
// before the sequence in every layer's attention, optionally
// reparameterised by an MLP). All three plug into the model graph's hooks
// and train with package train.
package prompttune

import (
	"errors"
	"fmt"
)

// Method names a soft-prompt method; it is also the adapter.type written
// to files.
type Method string

// The methods.
const (
	PromptTuning Method = "prompt_tuning"
	PTuning      Method = "p_tuning"
	PrefixTuning Method = "prefix_tuning"
)

// ParseMethod accepts "prompt", "prefix", "ptuning" and the full names.
func ParseMethod(s string) (Method, error) {
	switch s {
	case "prompt", "prompt_tuning", "prompt-tuning":
		return PromptTuning, nil
	case "ptuning", "p_tuning", "p-tuning":
		return PTuning, nil
	case "prefix", "prefix_tuning", "prefix-tuning":
		return PrefixTuning, nil
	}
	return "", fmt.Errorf("%w: unknown method %q (want prompt, ptuning or prefix)", ErrConfig, s)
}

// Init selects how the virtual tokens start.
type Init string

// Initialisations. InitRandom draws N(0, σ²) with σ the standard deviation
// of the model's token embeddings (PEFT draws N(0, 1), which is far off the
// scale of most models' embeddings). InitVocab copies the embeddings of
// random vocabulary tokens; InitText those of a text's tokens (repeated or
// truncated to the number of virtual tokens). Prefix tuning without
// reparameterisation initialises keys and values randomly, and with
// reparameterisation its input embeddings follow Init.
const (
	InitRandom Init = "random"
	InitVocab  Init = "vocab"
	InitText   Init = "text"
)

// Config configures a soft prompt.
type Config struct {
	Method     Method `yaml:"method" json:"method"`
	NumVirtual int    `yaml:"virtual_tokens" json:"num_virtual_tokens"`
	Init       Init   `yaml:"init" json:"init"`
	InitText   string `yaml:"init_text" json:"init_text,omitempty"`
	// EncoderHidden is the hidden size of P-tuning's MLP prompt encoder and
	// of prefix tuning's reparameterisation (0: n_embd).
	EncoderHidden int `yaml:"encoder_hidden" json:"encoder_hidden,omitempty"`
	// Encoder is P-tuning's prompt encoder: "mlp" (the default) or "lstm"
	// (PEFT's two-layer bidirectional LSTM followed by an MLP head).
	Encoder string `yaml:"encoder" json:"encoder_reparameterization_type,omitempty"`
	// Reparam enables prefix tuning's Embedding-Linear-Tanh-Linear
	// reparameterisation (dropped at export).
	Reparam bool   `yaml:"reparam" json:"prefix_projection,omitempty"`
	Seed    uint64 `yaml:"seed" json:"seed"`
}

// P-tuning prompt encoders.
const (
	EncoderMLP  = "mlp"
	EncoderLSTM = "lstm"
)

// lstmLayers is the depth of P-tuning's LSTM encoder (PEFT's default).
const lstmLayers = 2

// ErrConfig reports an invalid configuration.
var ErrConfig = errors.New("invalid soft-prompt config")

// Validate checks the configuration.
func (c Config) Validate() error {
	switch c.Method {
	case PromptTuning, PTuning, PrefixTuning:
	default:
		return fmt.Errorf("%w: method %q", ErrConfig, c.Method)
	}
	if c.NumVirtual <= 0 || c.NumVirtual > 4096 {
		return fmt.Errorf("%w: %d virtual tokens (want 1..4096)", ErrConfig, c.NumVirtual)
	}
	switch c.Init {
	case InitRandom, InitVocab, "":
	case InitText:
		if c.InitText == "" {
			return fmt.Errorf("%w: text init without text", ErrConfig)
		}
	default:
		return fmt.Errorf("%w: init %q (want random, vocab or text)", ErrConfig, c.Init)
	}
	switch c.Encoder {
	case "", EncoderMLP, EncoderLSTM:
	default:
		return fmt.Errorf("%w: encoder %q (want mlp or lstm)", ErrConfig, c.Encoder)
	}
	if c.EncoderHidden < 0 {
		return fmt.Errorf("%w: encoder hidden size %d", ErrConfig, c.EncoderHidden)
	}
	return nil
}
