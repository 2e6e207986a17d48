// Package lora implements LoRA adapters (Hu et al. 2021) for ggtune models:
// configuration with HF PEFT's defaults, trainable low-rank tensors that
// plug into the model graph's projection hooks, llama.cpp's LoRA GGUF file
// format (which llama.cpp and Ollama load), and merging into a full model.
package lora

import (
	"errors"
	"fmt"
	"math"
	"strings"
)

// Target names a weight matrix that LoRA can adapt.
type Target string

// The targets. Their GGUF tensor names are blk.N.attn_q.weight and so on;
// TargetOutput is output.weight and TargetEmbed is token_embd.weight.
const (
	TargetQ      Target = "q"
	TargetK      Target = "k"
	TargetV      Target = "v"
	TargetO      Target = "o"
	TargetGate   Target = "gate"
	TargetUp     Target = "up"
	TargetDown   Target = "down"
	TargetOutput Target = "output"
	TargetEmbed  Target = "embed"
)

// AllLinear are the attention and feed-forward projections of every block
// (PEFT's "all-linear" without the output head).
var AllLinear = []Target{TargetQ, TargetK, TargetV, TargetO, TargetGate, TargetUp, TargetDown}

// aliases maps PEFT and llama.cpp spellings to targets.
var aliases = map[string]Target{
	"q": TargetQ, "q_proj": TargetQ, "attn_q": TargetQ,
	"k": TargetK, "k_proj": TargetK, "attn_k": TargetK,
	"v": TargetV, "v_proj": TargetV, "attn_v": TargetV,
	"o": TargetO, "o_proj": TargetO, "attn_output": TargetO,
	"gate": TargetGate, "gate_proj": TargetGate, "ffn_gate": TargetGate,
	"up": TargetUp, "up_proj": TargetUp, "ffn_up": TargetUp,
	"down": TargetDown, "down_proj": TargetDown, "ffn_down": TargetDown,
	"output": TargetOutput, "lm_head": TargetOutput,
	"embed": TargetEmbed, "embed_tokens": TargetEmbed, "token_embd": TargetEmbed,
}

// blockTensor is the GGUF tensor infix of each per-block target.
var blockTensor = map[Target]string{
	TargetQ: "attn_q", TargetK: "attn_k", TargetV: "attn_v", TargetO: "attn_output",
	TargetGate: "ffn_gate", TargetUp: "ffn_up", TargetDown: "ffn_down",
}

// ParseTargets parses a comma-separated list such as "q,v" or
// "q_proj,v_proj"; "all-linear" (or "all") expands to AllLinear.
func ParseTargets(s string) ([]Target, error) {
	var out []Target
	seen := map[Target]bool{}
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(strings.ToLower(f))
		if f == "" {
			continue
		}
		var ts []Target
		if f == "all-linear" || f == "all" {
			ts = AllLinear
		} else if t, ok := aliases[f]; ok {
			ts = []Target{t}
		} else {
			return nil, fmt.Errorf("%w: unknown target %q (want q,k,v,o,gate,up,down,output,embed or all-linear)", ErrConfig, f)
		}
		for _, t := range ts {
			if !seen[t] {
				seen[t] = true
				out = append(out, t)
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no targets in %q", ErrConfig, s)
	}
	return out, nil
}

// TensorName returns the GGUF name of the target's weight in block layer
// (layer is ignored for output and embed).
func (t Target) TensorName(layer int) string {
	switch t {
	case TargetOutput:
		return "output.weight"
	case TargetEmbed:
		return "token_embd.weight"
	}
	return fmt.Sprintf("blk.%d.%s.weight", layer, blockTensor[t])
}

// PerBlock reports whether the target exists once per transformer block.
func (t Target) PerBlock() bool { _, ok := blockTensor[t]; return ok }

// Init selects how the A matrices are initialised (B always starts at zero,
// so an untrained adapter changes nothing).
type Init string

// Initialisations, as in HF PEFT.
const (
	// InitKaiming is PEFT's default: A ~ Kaiming-uniform(a=√5), i.e.
	// U(-1/√in, 1/√in).
	InitKaiming Init = "kaiming"
	// InitGaussian draws A ~ N(0, 1/r).
	InitGaussian Init = "gaussian"
)

// Config configures a LoRA adapter. The zero value is not valid: start from
// DefaultConfig.
type Config struct {
	Rank    int      `yaml:"rank" json:"rank"`
	Alpha   float32  `yaml:"alpha" json:"alpha"`
	Dropout float32  `yaml:"dropout" json:"dropout"`
	Targets []Target `yaml:"targets" json:"targets"`
	// Layers restricts per-block targets to these block indices (nil: all).
	Layers []int `yaml:"layers" json:"layers"`
	// LastLayers, if positive, selects the last N blocks instead; Resolve
	// turns it into Layers for a base model.
	LastLayers int  `yaml:"last_layers" json:"last_layers,omitempty"`
	Init       Init `yaml:"init" json:"init"`
	// RSLoRA scales by alpha/√rank instead of alpha/rank.
	RSLoRA bool `yaml:"rslora" json:"rslora"`
	// DoRA adds a learned magnitude per output row (Liu et al. 2024, PEFT's
	// use_dora): y = m/‖W + s·B·A‖ ⊙ (W + s·B·A)·x, the norm not
	// differentiated through.
	DoRA bool `yaml:"dora" json:"use_dora"`
	// PlusRatio, if positive, trains B with PlusRatio times A's learning
	// rate (LoRA+, Hayou et al. 2024; the paper's default is 16).
	PlusRatio float64 `yaml:"lora_plus_ratio" json:"lora_plus_ratio,omitempty"`
	Seed      uint64  `yaml:"seed" json:"seed"`
}

// ErrConfig reports an invalid configuration.
var ErrConfig = errors.New("invalid lora config")

// DefaultConfig returns PEFT's defaults: r=8, alpha=8, no dropout,
// Kaiming-uniform A, B=0, on the attention and feed-forward projections.
func DefaultConfig() Config {
	return Config{Rank: 8, Alpha: 8, Targets: append([]Target(nil), AllLinear...), Init: InitKaiming}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	switch {
	case c.Rank <= 0:
		return fmt.Errorf("%w: rank %d must be positive", ErrConfig, c.Rank)
	case c.Alpha <= 0 || math.IsNaN(float64(c.Alpha)) || math.IsInf(float64(c.Alpha), 0):
		return fmt.Errorf("%w: alpha %v must be positive", ErrConfig, c.Alpha)
	case c.Dropout < 0 || c.Dropout >= 1:
		return fmt.Errorf("%w: dropout %v must be in [0, 1)", ErrConfig, c.Dropout)
	case len(c.Targets) == 0:
		return fmt.Errorf("%w: no targets", ErrConfig)
	case c.Init != InitKaiming && c.Init != InitGaussian && c.Init != "" && !c.residual():
		return fmt.Errorf("%w: init %q (want kaiming, gaussian, pissa or olora)", ErrConfig, c.Init)
	case c.residual() && c.DoRA:
		return fmt.Errorf("%w: %s initialisation does not combine with DoRA", ErrConfig, c.Init)
	case c.PlusRatio < 0 || math.IsNaN(c.PlusRatio) || math.IsInf(c.PlusRatio, 0):
		return fmt.Errorf("%w: LoRA+ ratio %v (want a positive number, or 0 for plain LoRA)", ErrConfig, c.PlusRatio)
	}
	for _, t := range c.Targets {
		if _, ok := aliases[string(t)]; !ok {
			return fmt.Errorf("%w: unknown target %q", ErrConfig, t)
		}
		if (c.DoRA || c.residual()) && aliases[string(t)] == TargetEmbed {
			return fmt.Errorf("%w: DoRA and PiSSA/OLoRA do not adapt the token embedding (drop embed from the targets)", ErrConfig)
		}
	}
	for _, l := range c.Layers {
		if l < 0 {
			return fmt.Errorf("%w: negative layer %d", ErrConfig, l)
		}
	}
	return nil
}

// Scale returns the factor applied to B·A·x: alpha/r, or alpha/√r with RSLoRA.
func (c Config) Scale() float32 {
	if c.RSLoRA {
		return c.Alpha / float32(math.Sqrt(float64(c.Rank)))
	}
	return c.Alpha / float32(c.Rank)
}

// FileAlpha is the alpha written to adapter.lora.alpha: llama.cpp scales
// by FileAlpha/r, so RSLoRA stores alpha·√r to get the same alpha/√r.
func (c Config) FileAlpha() float32 { return c.Scale() * float32(c.Rank) }

func (c Config) layerSelected(l int) bool {
	if c.Layers == nil {
		return true
	}
	for _, x := range c.Layers {
		if x == l {
			return true
		}
	}
	return false
}
