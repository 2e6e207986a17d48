package prompttune

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/internal/atomicfile"
	"github.com/ggtune/ggtune/internal/hfpeft"
	"github.com/ggtune/ggtune/safetensors"
)

// PEFT's file names in an adapter directory.
const (
	PEFTConfigFile  = hfpeft.ConfigFile
	PEFTWeightsFile = hfpeft.WeightsFile
)

// peftConfig is the subset of PEFT's adapter_config.json that ggtune
// writes and reads for prompt-learning methods.
type peftConfig struct {
	PEFTType                 string  `json:"peft_type"`
	TaskType                 string  `json:"task_type"`
	NumVirtualTokens         int     `json:"num_virtual_tokens"`
	TokenDim                 int     `json:"token_dim"`
	NumTransformerSubmodules int     `json:"num_transformer_submodules"`
	NumAttentionHeads        int     `json:"num_attention_heads"`
	NumLayers                int     `json:"num_layers"`
	InferenceMode            bool    `json:"inference_mode"`
	PromptTuningInit         string  `json:"prompt_tuning_init,omitempty"`
	PromptTuningInitText     string  `json:"prompt_tuning_init_text,omitempty"`
	EncoderHiddenSize        int     `json:"encoder_hidden_size,omitempty"`
	EncoderReparamType       string  `json:"encoder_reparameterization_type,omitempty"`
	EncoderNumLayers         int     `json:"encoder_num_layers,omitempty"`
	PrefixProjection         *bool   `json:"prefix_projection,omitempty"`
	BaseModelNameOrPath      *string `json:"base_model_name_or_path"`
}

// ExportPEFT writes the prompt in HF PEFT's layout into dir:
// adapter_model.safetensors with prompt_embeddings and adapter_config.json
// (inference mode). Prompt tuning and P-tuning export the soft prompt
// [n_virtual, n_embd] (the P-tuning encoder is applied and dropped); prefix
// tuning exports [n_virtual, n_layer·2·n_head_kv·head_dim] with, per virtual
// token, layer 0's key, layer 0's value, layer 1's key, ... — PEFT's
// past_key_values layout with num_attention_heads = n_head_kv and
// token_dim = n_head_kv·head_dim (GQA models). Keys are post-RoPE.
func (p *Prompt) ExportPEFT(dir string, baseModel string) error {
	s, c := p.shape, p.cfg
	n := c.NumVirtual
	var width int
	var data []float32
	pc := peftConfig{TaskType: "CAUSAL_LM", NumVirtualTokens: n, NumTransformerSubmodules: 1, NumLayers: s.NLayer, InferenceMode: true}
	if baseModel != "" {
		pc.BaseModelNameOrPath = &baseModel
	}
	switch c.Method {
	case PromptTuning, PTuning:
		sp, err := p.SoftPrompt()
		if err != nil {
			return fmt.Errorf("export peft: %w", err)
		}
		width, data = s.NEmbd, sp // ggml [n_embd, n] by column is row-major [n, n_embd]
		pc.TokenDim, pc.NumAttentionHeads = s.NEmbd, s.NHeadKV
		if c.Method == PromptTuning {
			pc.PEFTType = "PROMPT_TUNING"
			pc.PromptTuningInit = map[Init]string{InitRandom: "RANDOM", InitVocab: "SAMPLE_VOCAB", InitText: "TEXT"}[c.Init]
			pc.PromptTuningInitText = c.InitText
		} else {
			pc.PEFTType = "P_TUNING"
			pc.EncoderReparamType = "MLP"
			if c.Encoder == EncoderLSTM {
				pc.EncoderReparamType, pc.EncoderNumLayers = "LSTM", lstmLayers
			}
			pc.EncoderHiddenSize = c.hidden(s)
		}
	case PrefixTuning:
		if s.HeadDim != s.HeadDimV {
			return fmt.Errorf("export peft: prefix tuning with key size %d != value size %d has no PEFT layout", s.HeadDim, s.HeadDimV)
		}
		keys, values, err := p.PrefixKV()
		if err != nil {
			return fmt.Errorf("export peft: %w", err)
		}
		kv := s.kvK()
		width = s.NLayer * 2 * kv
		data = make([]float32, n*width)
		for j := 0; j < n; j++ {
			for l := 0; l < s.NLayer; l++ {
				copy(data[j*width+(2*l)*kv:], keys[l][j*kv:(j+1)*kv])
				copy(data[j*width+(2*l+1)*kv:], values[l][j*kv:(j+1)*kv])
			}
		}
		f := false
		pc.PEFTType, pc.PrefixProjection = "PREFIX_TUNING", &f
		pc.TokenDim, pc.NumAttentionHeads = kv, s.NHeadKV
		pc.EncoderHiddenSize = c.hidden(s)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("export peft: %w", err)
	}
	st := &safetensors.File{Metadata: map[string]string{"format": "pt"}, Tensors: map[string]safetensors.Tensor{
		"prompt_embeddings": {DType: safetensors.F32, Shape: []int{n, width}, Data: data}}}
	if err := safetensors.WriteFile(filepath.Join(dir, PEFTWeightsFile), st); err != nil {
		return fmt.Errorf("export peft: %w", err)
	}
	js, err := json.MarshalIndent(pc, "", "  ")
	if err != nil {
		return fmt.Errorf("export peft: %w", err)
	}
	if err := atomicfile.WriteBytes(filepath.Join(dir, PEFTConfigFile), append(js, '\n')); err != nil {
		return fmt.Errorf("export peft: %w", err)
	}
	return nil
}

// ImportPEFT reads a PEFT prompt-learning adapter directory (PROMPT_TUNING,
// P_TUNING or PREFIX_TUNING in the layout ExportPEFT writes) for a model of
// shape s. P-tuning adapters become plain prompt tuning (PEFT saves only
// the encoder's output).
func ImportPEFT(dir string, s Shape, backend *binding.Backend) (*Prompt, error) {
	js, err := os.ReadFile(filepath.Join(dir, PEFTConfigFile))
	if err != nil {
		return nil, fmt.Errorf("import peft: %w", err)
	}
	var pc peftConfig
	if err := json.Unmarshal(js, &pc); err != nil {
		return nil, fmt.Errorf("import peft %s: %w: %v", filepath.Join(dir, PEFTConfigFile), ErrFormat, err)
	}
	st, err := safetensors.ReadFile(filepath.Join(dir, PEFTWeightsFile))
	if err != nil {
		return nil, fmt.Errorf("import peft: %w", err)
	}
	emb, ok := st.Tensors["prompt_embeddings"]
	if !ok {
		return nil, fmt.Errorf("import peft %s: %w: no prompt_embeddings", dir, ErrFormat)
	}
	if len(emb.Shape) != 2 || emb.Shape[0] != pc.NumVirtualTokens {
		return nil, fmt.Errorf("import peft %s: %w: prompt_embeddings %v for %d virtual tokens", dir, ErrFormat, emb.Shape, pc.NumVirtualTokens)
	}
	n, width := pc.NumVirtualTokens, emb.Shape[1]
	switch pc.PEFTType {
	case "PROMPT_TUNING", "P_TUNING":
		if width != s.NEmbd {
			return nil, fmt.Errorf("import peft %s: %w: token_dim %d, the model has n_embd %d", dir, ErrFormat, width, s.NEmbd)
		}
		p, err := alloc(Config{Method: PromptTuning, NumVirtual: n, Init: InitRandom}, s, backend)
		if err != nil {
			return nil, fmt.Errorf("import peft: %w", err)
		}
		if err := p.Embeddings.SetFloats(emb.Data); err != nil {
			p.Close()
			return nil, fmt.Errorf("import peft: %w", err)
		}
		return p, nil
	case "PREFIX_TUNING":
		kv := s.kvK()
		if s.HeadDim != s.HeadDimV || width != s.NLayer*2*kv {
			return nil, fmt.Errorf("import peft %s: %w: prefix width %d, the model needs %d", dir, ErrFormat, width, s.NLayer*2*kv)
		}
		p, err := alloc(Config{Method: PrefixTuning, NumVirtual: n, Init: InitRandom}, s, backend)
		if err != nil {
			return nil, fmt.Errorf("import peft: %w", err)
		}
		for l := 0; l < s.NLayer; l++ {
			k := make([]float32, n*kv)
			v := make([]float32, n*kv)
			for j := 0; j < n; j++ {
				copy(k[j*kv:(j+1)*kv], emb.Data[j*width+(2*l)*kv:])
				copy(v[j*kv:(j+1)*kv], emb.Data[j*width+(2*l+1)*kv:])
			}
			if err := p.Keys[l].SetFloats(k); err != nil {
				p.Close()
				return nil, fmt.Errorf("import peft: %w", err)
			}
			if err := p.Values[l].SetFloats(v); err != nil {
				p.Close()
				return nil, fmt.Errorf("import peft: %w", err)
			}
		}
		return p, nil
	}
	return nil, fmt.Errorf("import peft %s: %w: peft_type %q is not a prompt-learning method", dir, ErrFormat, pc.PEFTType)
}
