package lora

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/internal/atomicfile"
	"github.com/ggtune/ggtune/safetensors"
)

// PEFT's file names in an adapter directory.
const (
	PEFTConfigFile  = "adapter_config.json"
	PEFTWeightsFile = "adapter_model.safetensors"
)

// ErrPEFTUnsupported reports a PEFT adapter that is valid for PEFT but has
// a feature ggtune cannot represent as a llama.cpp LoRA (modules_to_save,
// DoRA, fan_in_fan_out, rank or alpha patterns, bias training).
var ErrPEFTUnsupported = errors.New("unsupported peft adapter")

// peftLoRAConfig is the subset of PEFT's LoraConfig that ggtune writes and
// checks. Fields that change the adapter's meaning are read so that an
// adapter ggtune cannot reproduce is refused instead of silently altered.
type peftLoRAConfig struct {
	PEFTType            string             `json:"peft_type"`
	TaskType            string             `json:"task_type,omitempty"`
	BaseModelNameOrPath *string            `json:"base_model_name_or_path"`
	R                   int                `json:"r"`
	LoRAAlpha           float64            `json:"lora_alpha"`
	LoRADropout         float64            `json:"lora_dropout"`
	TargetModules       json.RawMessage    `json:"target_modules"`
	LayersToTransform   []int              `json:"layers_to_transform"`
	UseRSLoRA           bool               `json:"use_rslora"`
	UseDoRA             bool               `json:"use_dora"`
	FanInFanOut         bool               `json:"fan_in_fan_out"`
	Bias                string             `json:"bias"`
	ModulesToSave       []string           `json:"modules_to_save"`
	RankPattern         map[string]float64 `json:"rank_pattern"`
	AlphaPattern        map[string]float64 `json:"alpha_pattern"`
	InitLoRAWeights     bool               `json:"init_lora_weights"`
	InferenceMode       bool               `json:"inference_mode"`
}

// hfModule maps a per-block target to its Hugging Face module below
// model.layers.N.
var hfModule = map[Target]string{
	TargetQ: "self_attn.q_proj", TargetK: "self_attn.k_proj", TargetV: "self_attn.v_proj",
	TargetO: "self_attn.o_proj", TargetGate: "mlp.gate_proj", TargetUp: "mlp.up_proj",
	TargetDown: "mlp.down_proj",
}

// hfModuleName is the PEFT target_modules entry of a target.
func hfModuleName(t Target) string {
	switch t {
	case TargetOutput:
		return "lm_head"
	case TargetEmbed:
		return "embed_tokens"
	}
	m := hfModule[t]
	return m[strings.LastIndexByte(m, '.')+1:]
}

// hfKey is the module path of one adapted weight in PEFT's state dict.
func hfKey(t Target, layer int) string {
	switch t {
	case TargetOutput:
		return "base_model.model.lm_head"
	case TargetEmbed:
		return "base_model.model.model.embed_tokens"
	}
	return fmt.Sprintf("base_model.model.model.layers.%d.%s", layer, hfModule[t])
}

// parseHFKey splits a PEFT tensor name into its target, block and part
// (lora_A.weight, lora_B.weight, lora_embedding_A, ...).
func parseHFKey(key string) (t Target, layer int, part string, ok bool) {
	rest, found := strings.CutPrefix(key, "base_model.model.")
	if !found {
		return "", 0, "", false
	}
	for _, p := range []string{"lora_A.weight", "lora_B.weight", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector"} {
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
		return TargetOutput, -1, part, true
	case "model.embed_tokens":
		return TargetEmbed, -1, part, true
	}
	var mod string
	if n, err := fmt.Sscanf(rest, "model.layers.%d.%s", &layer, &mod); n != 2 || err != nil || layer < 0 {
		return "", 0, "", false
	}
	for t, m := range hfModule {
		if m == mod {
			return t, layer, part, true
		}
	}
	return "", 0, "", false
}

// ropeLayout says how the GGUF conversion of arch stores the rows of q and
// k: llama-family converters permute each head's rows from Hugging Face's
// split halves to interleaved pairs; qwen2 and qwen3 (NEOX RoPE) keep them.
type ropeLayout struct {
	permute     bool
	nHead, nHKV int
}

func layoutOf(base *binding.GGUFFile) (string, ropeLayout, error) {
	arch, ok := base.String("general.architecture")
	if !ok {
		return "", ropeLayout{}, fmt.Errorf("%s: no general.architecture", base.Path())
	}
	switch arch {
	case "llama", "mistral", "qwen2", "qwen3":
	default:
		return "", ropeLayout{}, fmt.Errorf("%w: architecture %q (PEFT names are known for llama, mistral, qwen2 and qwen3)", ErrPEFTUnsupported, arch)
	}
	l := ropeLayout{permute: arch == "llama" || arch == "mistral"}
	nh, ok := base.Uint(arch + ".attention.head_count")
	if !ok || nh == 0 {
		return "", ropeLayout{}, fmt.Errorf("%s: no scalar %s.attention.head_count", base.Path(), arch)
	}
	nkv, ok := base.Uint(arch + ".attention.head_count_kv")
	if !ok {
		nkv = nh
	}
	l.nHead, l.nHKV = int(nh), int(nkv)
	return arch, l, nil
}

// heads returns the number of heads whose rows t's output holds, or 0 when
// t's rows are not permuted.
func (l ropeLayout) heads(t Target) int {
	switch {
	case !l.permute:
		return 0
	case t == TargetQ:
		return l.nHead
	case t == TargetK:
		return l.nHKV
	}
	return 0
}

// permuteRows reorders the rows of m (rows × cols, row-major) from Hugging
// Face's split-half RoPE layout to GGUF's interleaved one (toGGUF) or back:
// within each of nHead heads of d rows, GGUF row 2i+j is HF row j·d/2+i.
func permuteRows(m []float32, cols, nHead int, toGGUF bool) ([]float32, error) {
	rows := len(m) / cols
	if nHead <= 0 || rows%nHead != 0 || (rows/nHead)%2 != 0 {
		return nil, fmt.Errorf("%w: %d rows do not split into %d heads of even size", ErrFormat, rows, nHead)
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

// transpose returns the cols × rows transpose of m (rows × cols).
func transpose(m []float32, rows, cols int) []float32 {
	out := make([]float32, len(m))
	for r := 0; r < rows; r++ {
		for c := 0; c < cols; c++ {
			out[c*rows+r] = m[r*cols+c]
		}
	}
	return out
}

// ExportPEFT writes the adapter into dir in Hugging Face PEFT's LoRA layout
// for the base model file base: adapter_model.safetensors with
// base_model.model.<module>.lora_A/lora_B.weight (and lora_embedding_A/B
// for the token embedding), the rows of q and k B matrices permuted back to
// Hugging Face's layout for llama-family models, and adapter_config.json
// with r, lora_alpha and use_rslora giving the same scale. baseName is
// recorded as base_model_name_or_path ("" for null).
func (a *Adapter) ExportPEFT(dir string, base *binding.GGUFFile, baseName string) error {
	arch, layout, err := layoutOf(base)
	if err != nil {
		return fmt.Errorf("export peft: %w", err)
	}
	if arch != a.arch {
		return fmt.Errorf("export peft: %w: adapter architecture %q, base model %q", ErrFormat, a.arch, arch)
	}
	r := a.cfg.Rank
	tensors := map[string]safetensors.Tensor{}
	var modules []string
	seenMod := map[string]bool{}
	layers := map[int]bool{}
	perBlock := false
	for _, w := range a.weights {
		av, err := w.A.Floats()
		if err != nil {
			return fmt.Errorf("export peft: %w", err)
		}
		bv, err := w.B.Floats()
		if err != nil {
			return fmt.Errorf("export peft: %w", err)
		}
		key := hfKey(w.Target, w.Layer)
		if w.Embedding() {
			nVocab, nEmbd := int(w.A.Dim(1)), int(w.B.Dim(1))
			tensors[key+".lora_embedding_A"] = safetensors.Tensor{DType: safetensors.F32, Shape: []int{r, nVocab}, Data: transpose(av, nVocab, r)}
			tensors[key+".lora_embedding_B"] = safetensors.Tensor{DType: safetensors.F32, Shape: []int{nEmbd, r}, Data: bv}
		} else {
			in, out := int(w.A.Dim(0)), int(w.B.Dim(1))
			if h := layout.heads(w.Target); h > 0 {
				if bv, err = permuteRows(bv, r, h, false); err != nil {
					return fmt.Errorf("export peft: %s: %w", w.Base, err)
				}
			}
			tensors[key+".lora_A.weight"] = safetensors.Tensor{DType: safetensors.F32, Shape: []int{r, in}, Data: av}
			tensors[key+".lora_B.weight"] = safetensors.Tensor{DType: safetensors.F32, Shape: []int{out, r}, Data: bv}
		}
		if m := hfModuleName(w.Target); !seenMod[m] {
			seenMod[m] = true
			modules = append(modules, m)
		}
		if w.Layer >= 0 {
			perBlock = true
			layers[w.Layer] = true
		}
	}
	sort.Strings(modules)
	tm, err := json.Marshal(modules)
	if err != nil {
		return fmt.Errorf("export peft: %w", err)
	}
	pc := peftLoRAConfig{PEFTType: "LORA", TaskType: "CAUSAL_LM", R: r, LoRAAlpha: float64(a.cfg.Alpha),
		LoRADropout: float64(a.cfg.Dropout), TargetModules: tm, UseRSLoRA: a.cfg.RSLoRA, Bias: "none",
		InitLoRAWeights: true, InferenceMode: true}
	if baseName != "" {
		pc.BaseModelNameOrPath = &baseName
	}
	if perBlock && a.cfg.Layers != nil {
		for l := range layers {
			pc.LayersToTransform = append(pc.LayersToTransform, l)
		}
		sort.Ints(pc.LayersToTransform)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("export peft: %w", err)
	}
	st := &safetensors.File{Metadata: map[string]string{"format": "pt"}, Tensors: tensors}
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

// PEFTType returns the peft_type of the adapter directory dir (for
// example "LORA" or "PROMPT_TUNING").
func PEFTType(dir string) (string, error) {
	js, err := os.ReadFile(filepath.Join(dir, PEFTConfigFile))
	if err != nil {
		return "", fmt.Errorf("peft adapter: %w", err)
	}
	var pc struct {
		PEFTType string `json:"peft_type"`
	}
	if err := json.Unmarshal(js, &pc); err != nil {
		return "", fmt.Errorf("%s: %w: %v", filepath.Join(dir, PEFTConfigFile), ErrFormat, err)
	}
	return pc.PEFTType, nil
}

// ImportPEFT reads a Hugging Face PEFT LoRA adapter directory
// (adapter_config.json + adapter_model.safetensors) for the base model
// file base into an adapter on backend: A and B keep their values, the
// rows of q and k B matrices are permuted into GGUF's layout for
// llama-family models, the embedding's A is transposed into llama.cpp's
// layout, and rank, lora_alpha and use_rslora become the same scale.
// Every tensor's shape is checked against the base weight first. Adapters
// with modules_to_save, DoRA, fan_in_fan_out, rank/alpha patterns or
// trained biases are refused with ErrPEFTUnsupported.
func ImportPEFT(dir string, base *binding.GGUFFile, backend *binding.Backend) (*Adapter, error) {
	cfgPath := filepath.Join(dir, PEFTConfigFile)
	fail := func(err error, format string, args ...any) (*Adapter, error) {
		return nil, fmt.Errorf("import peft %s: %w: %s", dir, err, fmt.Sprintf(format, args...))
	}
	js, err := os.ReadFile(cfgPath)
	if err != nil {
		return nil, fmt.Errorf("import peft: %w", err)
	}
	var pc peftLoRAConfig
	if err := json.Unmarshal(js, &pc); err != nil {
		return fail(ErrFormat, "%s: %v", PEFTConfigFile, err)
	}
	switch {
	case pc.PEFTType == "IA3" || pc.PEFTType == "ADALORA" || pc.PEFTType == "LOHA" || pc.PEFTType == "LOKR":
		return fail(ErrPEFTUnsupported, "peft_type %s: only LORA (and the prompt-learning types) convert today", pc.PEFTType)
	case pc.PEFTType != "LORA":
		return fail(ErrFormat, "peft_type %q is not LORA", pc.PEFTType)
	case len(pc.ModulesToSave) > 0:
		return fail(ErrPEFTUnsupported, "modules_to_save %v: fully trained copies of modules are not a LoRA (merge them into the base model with PEFT first)", pc.ModulesToSave)
	case pc.UseDoRA:
		return fail(ErrPEFTUnsupported, "use_dora: DoRA conversion is not available yet")
	case pc.FanInFanOut:
		return fail(ErrPEFTUnsupported, "fan_in_fan_out (GPT-2 style Conv1D weights)")
	case len(pc.RankPattern) > 0 || len(pc.AlphaPattern) > 0:
		return fail(ErrPEFTUnsupported, "rank_pattern/alpha_pattern: per-module ranks or alphas")
	case pc.Bias != "" && pc.Bias != "none":
		return fail(ErrPEFTUnsupported, "bias %q: trained biases", pc.Bias)
	case pc.R <= 0:
		return fail(ErrFormat, "r %d must be positive", pc.R)
	case !(pc.LoRAAlpha > 0) || math.IsInf(pc.LoRAAlpha, 0):
		return fail(ErrFormat, "lora_alpha %v must be positive", pc.LoRAAlpha)
	}
	st, err := safetensors.ReadFile(filepath.Join(dir, PEFTWeightsFile))
	if err != nil {
		return nil, fmt.Errorf("import peft: %w", err)
	}
	arch, layout, err := layoutOf(base)
	if err != nil {
		return nil, fmt.Errorf("import peft: %w", err)
	}
	type pair struct {
		t     Target
		layer int
		a, b  *safetensors.Tensor
	}
	pairs := map[string]*pair{}
	for _, key := range st.Names() {
		t, layer, part, ok := parseHFKey(key)
		if !ok {
			return fail(ErrPEFTUnsupported, "tensor %s is not a LoRA factor of a known module (a saved module or bias?)", key)
		}
		if part == "lora_magnitude_vector" {
			return fail(ErrPEFTUnsupported, "tensor %s: DoRA conversion is not available yet", key)
		}
		if (t == TargetEmbed) != strings.HasPrefix(part, "lora_embedding_") {
			return fail(ErrFormat, "tensor %s: %s on %s", key, part, hfModuleName(t))
		}
		name := t.TensorName(layer)
		p := pairs[name]
		if p == nil {
			p = &pair{t: t, layer: layer}
			pairs[name] = p
		}
		tt := st.Tensors[key]
		if part == "lora_A.weight" || part == "lora_embedding_A" {
			p.a = &tt
		} else {
			p.b = &tt
		}
	}
	if len(pairs) == 0 {
		return fail(ErrFormat, "no LoRA tensors")
	}
	r := pc.R
	cfg := Config{Rank: r, Alpha: float32(pc.LoRAAlpha), Dropout: float32(pc.LoRADropout), RSLoRA: pc.UseRSLoRA, Init: InitKaiming}
	if float64(cfg.Alpha) != pc.LoRAAlpha {
		return fail(ErrPEFTUnsupported, "lora_alpha %v is not a float32", pc.LoRAAlpha)
	}
	names := make([]string, 0, len(pairs))
	for n := range pairs {
		names = append(names, n)
	}
	sort.Strings(names)
	var slots []slot
	data := map[string][2][]float32{}
	seenT := map[Target]bool{}
	layerSet := map[int]bool{}
	for _, name := range names {
		p := pairs[name]
		key := hfKey(p.t, p.layer)
		if p.a == nil || p.b == nil {
			return fail(ErrFormat, "%s: one of the two LoRA factors is missing", key)
		}
		bi, ok := base.TensorInfo(name)
		if !ok {
			return fail(ErrFormat, "%s: the base model %s has no tensor %s", key, base.Path(), name)
		}
		if len(bi.Shape) != 2 || len(p.a.Shape) != 2 || len(p.b.Shape) != 2 {
			return fail(ErrFormat, "%s: shapes %v/%v for base weight %v", key, p.a.Shape, p.b.Shape, bi.Shape)
		}
		in, out := int(bi.Shape[0]), int(bi.Shape[1]) // ggml [in, out] = PyTorch [out, in]
		s := slot{target: p.t, layer: p.layer, base: name, baseType: bi.Type}
		var av, bv []float32
		if p.t == TargetEmbed {
			// PEFT: A [r, n_vocab], B [n_embd, r]; the base is ggml [n_embd, n_vocab].
			if p.a.Shape[0] != r || p.a.Shape[1] != out || p.b.Shape[0] != in || p.b.Shape[1] != r {
				return fail(ErrFormat, "%s: lora_embedding_A %v and lora_embedding_B %v for rank %d and embedding [%d, %d]", key, p.a.Shape, p.b.Shape, r, out, in)
			}
			s.aShape, s.bShape = [2]int64{int64(r), int64(out)}, [2]int64{int64(r), int64(in)}
			av, bv = transpose(p.a.Data, r, out), p.b.Data
		} else {
			if p.a.Shape[0] != r || p.a.Shape[1] != in || p.b.Shape[0] != out || p.b.Shape[1] != r {
				return fail(ErrFormat, "%s: lora_A %v and lora_B %v for rank %d and weight [%d, %d]", key, p.a.Shape, p.b.Shape, r, out, in)
			}
			s.aShape, s.bShape = [2]int64{int64(in), int64(r)}, [2]int64{int64(r), int64(out)}
			av, bv = p.a.Data, p.b.Data
			if h := layout.heads(p.t); h > 0 {
				if bv, err = permuteRows(bv, r, h, true); err != nil {
					return fail(ErrFormat, "%s: %v", key, err)
				}
			}
		}
		for _, v := range [][]float32{av, bv} {
			for _, x := range v {
				if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
					return fail(ErrFormat, "%s holds a non-finite value", key)
				}
			}
		}
		slots = append(slots, s)
		data[name] = [2][]float32{av, bv}
		if !seenT[p.t] {
			seenT[p.t] = true
			cfg.Targets = append(cfg.Targets, p.t)
		}
		if p.layer >= 0 {
			layerSet[p.layer] = true
		}
	}
	if pc.LayersToTransform != nil {
		for l := range layerSet {
			cfg.Layers = append(cfg.Layers, l)
		}
		sort.Ints(cfg.Layers)
	}
	a, err := alloc(cfg, arch, slots, backend)
	if err != nil {
		return nil, fmt.Errorf("import peft: %w", err)
	}
	for _, w := range a.weights {
		d := data[w.Base]
		if err := w.A.SetFloats(d[0]); err != nil {
			a.Close()
			return nil, fmt.Errorf("import peft: %w", err)
		}
		if err := w.B.SetFloats(d[1]); err != nil {
			a.Close()
			return nil, fmt.Errorf("import peft: %w", err)
		}
	}
	return a, nil
}
