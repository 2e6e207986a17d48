package prompttune

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/internal/atomicfile"
)

// PEFT's file names in an adapter directory.
const (
	PEFTConfigFile  = "adapter_config.json"
	PEFTWeightsFile = "adapter_model.safetensors"
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
	st, err := encodeSafetensors(map[string]stTensor{"prompt_embeddings": {shape: []int64{int64(n), int64(width)}, data: data}})
	if err != nil {
		return fmt.Errorf("export peft: %w", err)
	}
	if err := atomicfile.WriteBytes(filepath.Join(dir, PEFTWeightsFile), st); err != nil {
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
	raw, err := os.ReadFile(filepath.Join(dir, PEFTWeightsFile))
	if err != nil {
		return nil, fmt.Errorf("import peft: %w", err)
	}
	tensors, err := decodeSafetensors(raw)
	if err != nil {
		return nil, fmt.Errorf("import peft %s: %w", filepath.Join(dir, PEFTWeightsFile), err)
	}
	emb, ok := tensors["prompt_embeddings"]
	if !ok {
		return nil, fmt.Errorf("import peft %s: %w: no prompt_embeddings", dir, ErrFormat)
	}
	if len(emb.shape) != 2 || int(emb.shape[0]) != pc.NumVirtualTokens {
		return nil, fmt.Errorf("import peft %s: %w: prompt_embeddings %v for %d virtual tokens", dir, ErrFormat, emb.shape, pc.NumVirtualTokens)
	}
	n, width := pc.NumVirtualTokens, int(emb.shape[1])
	switch pc.PEFTType {
	case "PROMPT_TUNING", "P_TUNING":
		if width != s.NEmbd {
			return nil, fmt.Errorf("import peft %s: %w: token_dim %d, the model has n_embd %d", dir, ErrFormat, width, s.NEmbd)
		}
		p, err := alloc(Config{Method: PromptTuning, NumVirtual: n, Init: InitRandom}, s, backend)
		if err != nil {
			return nil, fmt.Errorf("import peft: %w", err)
		}
		if err := p.Embeddings.SetFloats(emb.data); err != nil {
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
				copy(k[j*kv:(j+1)*kv], emb.data[j*width+(2*l)*kv:])
				copy(v[j*kv:(j+1)*kv], emb.data[j*width+(2*l+1)*kv:])
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

type stTensor struct {
	shape []int64
	data  []float32
}

type stHeader struct {
	DType   string   `json:"dtype"`
	Shape   []int64  `json:"shape"`
	Offsets [2]int64 `json:"data_offsets"`
}

// encodeSafetensors writes F32 tensors in the safetensors format: an 8-byte
// little-endian header size, a JSON header padded to 8 bytes, the data.
func encodeSafetensors(ts map[string]stTensor) ([]byte, error) {
	names := make([]string, 0, len(ts))
	for k := range ts {
		names = append(names, k)
	}
	sort.Strings(names)
	header := map[string]any{"__metadata__": map[string]string{"format": "pt"}}
	var body bytes.Buffer
	for _, name := range names {
		t := ts[name]
		start := int64(body.Len())
		if err := binary.Write(&body, binary.LittleEndian, t.data); err != nil {
			return nil, err
		}
		header[name] = stHeader{DType: "F32", Shape: t.shape, Offsets: [2]int64{start, int64(body.Len())}}
	}
	hj, err := json.Marshal(header)
	if err != nil {
		return nil, err
	}
	for len(hj)%8 != 0 {
		hj = append(hj, ' ')
	}
	out := binary.LittleEndian.AppendUint64(nil, uint64(len(hj)))
	out = append(out, hj...)
	return append(out, body.Bytes()...), nil
}

// decodeSafetensors reads F32, F16 and BF16 tensors from a safetensors file.
func decodeSafetensors(b []byte) (map[string]stTensor, error) {
	if len(b) < 8 {
		return nil, fmt.Errorf("%w: safetensors file of %d bytes", ErrFormat, len(b))
	}
	n := binary.LittleEndian.Uint64(b)
	if n > uint64(len(b)-8) {
		return nil, fmt.Errorf("%w: safetensors header of %d bytes exceeds the file", ErrFormat, n)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b[8:8+n], &raw); err != nil {
		return nil, fmt.Errorf("%w: safetensors header: %v", ErrFormat, err)
	}
	data := b[8+n:]
	out := map[string]stTensor{}
	for name, msg := range raw {
		if name == "__metadata__" {
			continue
		}
		var h stHeader
		if err := json.Unmarshal(msg, &h); err != nil {
			return nil, fmt.Errorf("%w: tensor %s: %v", ErrFormat, name, err)
		}
		typ, ok := map[string]binding.Type{"F32": binding.TypeF32, "F16": binding.TypeF16, "BF16": binding.TypeBF16}[h.DType]
		if !ok {
			return nil, fmt.Errorf("%w: tensor %s has dtype %s (want F32, F16 or BF16)", ErrFormat, name, h.DType)
		}
		count := int64(1)
		for _, d := range h.Shape {
			if d < 0 || (d > 0 && count > int64(len(data))/d) {
				return nil, fmt.Errorf("%w: tensor %s has shape %v for %d bytes of data", ErrFormat, name, h.Shape, len(data))
			}
			count *= d
		}
		start, end := h.Offsets[0], h.Offsets[1]
		if start < 0 || end < start || end > int64(len(data)) || end-start != count*typ.BlockBytes() {
			return nil, fmt.Errorf("%w: tensor %s has offsets %v for %d %s values", ErrFormat, name, h.Offsets, count, h.DType)
		}
		vals, err := binding.DecodeFloats(typ, data[start:end], count)
		if err != nil {
			return nil, fmt.Errorf("%w: tensor %s: %v", ErrFormat, name, err)
		}
		out[name] = stTensor{shape: h.Shape, data: vals}
	}
	return out, nil
}
