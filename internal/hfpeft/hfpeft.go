// Package hfpeft holds what the Hugging Face PEFT converters of the method
// packages (lora, ia3, prompttune) share: PEFT's file names, the module
// names of llama-family checkpoints, and the row order of q and k that
// llama-family GGUF conversion changes.
package hfpeft

import (
	"errors"
	"fmt"
	"strings"

	"github.com/ggtune/ggtune/binding"
)

// PEFT's file names in an adapter directory.
const (
	ConfigFile  = "adapter_config.json"
	WeightsFile = "adapter_model.safetensors"
)

// ErrUnsupported reports a PEFT adapter that is valid for PEFT but has a
// feature ggtune cannot represent.
var ErrUnsupported = errors.New("unsupported peft adapter")

// ErrLayout reports tensor rows that do not split into the model's heads.
var ErrLayout = errors.New("rows do not fit the attention heads")

// The GGUF names of the weights that have a Hugging Face module: the stem
// of blk.N.<stem>.weight, or the whole name for the two model-level ones.
const (
	Output = "output.weight"
	Embed  = "token_embd.weight"
)

// blockModules maps the GGUF stem of a per-block weight to its Hugging Face
// module below model.layers.N.
var blockModules = map[string]string{
	"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
	"attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
	"ffn_down": "mlp.down_proj",
}

// Key is the module path of the weight stem in block layer (stem Output or
// Embed, layer ignored, for the model-level weights) in PEFT's state dict,
// e.g. base_model.model.model.layers.3.self_attn.q_proj.
func Key(stem string, layer int) string {
	switch stem {
	case Output:
		return "base_model.model.lm_head"
	case Embed:
		return "base_model.model.model.embed_tokens"
	}
	return fmt.Sprintf("base_model.model.model.layers.%d.%s", layer, blockModules[stem])
}

// ModuleName is the target_modules entry of a stem (q_proj, lm_head, ...).
func ModuleName(stem string) string {
	switch stem {
	case Output:
		return "lm_head"
	case Embed:
		return "embed_tokens"
	}
	m := blockModules[stem]
	return m[strings.LastIndexByte(m, '.')+1:]
}

// ParseKey splits a PEFT tensor name into the GGUF stem of its module, its
// block (-1 for Output and Embed) and its part, one of parts (the suffix
// after the module, such as lora_A.weight or ia3_l).
func ParseKey(key string, parts []string) (stem string, layer int, part string, ok bool) {
	rest, found := strings.CutPrefix(key, "base_model.model.")
	if !found {
		return "", 0, "", false
	}
	for _, p := range parts {
		if mod, found := strings.CutSuffix(rest, "."+p); found {
			rest, part = mod, p
			break
		}
	}
	if part == "" {
		return "", 0, "", false
	}
	switch rest {
	case "lm_head":
		return Output, -1, part, true
	case "model.embed_tokens":
		return Embed, -1, part, true
	}
	var mod string
	if n, err := fmt.Sscanf(rest, "model.layers.%d.%s", &layer, &mod); n != 2 || err != nil || layer < 0 {
		return "", 0, "", false
	}
	for s, m := range blockModules {
		if m == mod {
			return s, layer, part, true
		}
	}
	return "", 0, "", false
}

// Layout says how the GGUF conversion of an architecture stores the rows
// of q and k: llama-family converters permute each head's rows from
// Hugging Face's split halves to interleaved pairs; qwen2 and qwen3 (NEOX
// RoPE) keep them.
type Layout struct {
	Permute     bool
	NHead, NHKV int
}

// LayoutOf returns the architecture of the base model file and its layout;
// architectures without known PEFT names are ErrUnsupported.
func LayoutOf(base *binding.GGUFFile) (string, Layout, error) {
	arch, ok := base.String("general.architecture")
	if !ok {
		return "", Layout{}, fmt.Errorf("%s: no general.architecture", base.Path())
	}
	switch arch {
	case "llama", "mistral", "qwen2", "qwen3":
	default:
		return "", Layout{}, fmt.Errorf("%w: architecture %q (PEFT names are known for llama, mistral, qwen2 and qwen3)", ErrUnsupported, arch)
	}
	l := Layout{Permute: arch == "llama" || arch == "mistral"}
	nh, ok := base.Uint(arch + ".attention.head_count")
	if !ok || nh == 0 || nh > 1<<20 {
		return "", Layout{}, fmt.Errorf("%s: no valid scalar %s.attention.head_count", base.Path(), arch)
	}
	nkv, ok := base.Uint(arch + ".attention.head_count_kv")
	if !ok {
		nkv = nh
	}
	if nkv == 0 || nkv > nh {
		return "", Layout{}, fmt.Errorf("%s: %s.attention.head_count_kv %d for %d heads", base.Path(), arch, nkv, nh)
	}
	l.NHead, l.NHKV = int(nh), int(nkv)
	return arch, l, nil
}

// Heads returns the number of heads whose rows the output of the weight
// stem holds when those rows are permuted (attn_q, attn_k of llama-family
// models), or 0 when its rows keep Hugging Face's order.
func (l Layout) Heads(stem string) int {
	switch {
	case !l.Permute:
		return 0
	case stem == "attn_q":
		return l.NHead
	case stem == "attn_k":
		return l.NHKV
	}
	return 0
}

// PermuteRows reorders the rows of m (rows × cols, row-major) from Hugging
// Face's split-half RoPE layout to GGUF's interleaved one (toGGUF) or back:
// within each of nHead heads of d rows, GGUF row 2i+j is HF row j·d/2+i.
func PermuteRows(m []float32, cols, nHead int, toGGUF bool) ([]float32, error) {
	if cols <= 0 || len(m)%cols != 0 {
		return nil, fmt.Errorf("%w: %d values are not rows of %d", ErrLayout, len(m), cols)
	}
	rows := len(m) / cols
	if nHead <= 0 || rows%nHead != 0 || (rows/nHead)%2 != 0 {
		return nil, fmt.Errorf("%w: %d rows do not split into %d heads of even size", ErrLayout, rows, nHead)
	}
	d := rows / nHead
	out := make([]float32, len(m))
	for h := 0; h < nHead; h++ {
		for i := 0; i < d/2; i++ {
			for j := 0; j < 2; j++ {
				g, f := h*d+2*i+j, h*d+j*d/2+i
				if toGGUF {
					copy(out[g*cols:(g+1)*cols], m[f*cols:(f+1)*cols])
				} else {
					copy(out[f*cols:(f+1)*cols], m[g*cols:(g+1)*cols])
				}
			}
		}
	}
	return out, nil
}
