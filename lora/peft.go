package lora

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"

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

// ErrPEFTUnsupported reports a PEFT adapter that is valid for PEFT but has
// a feature ggtune cannot represent as a llama.cpp LoRA (modules_to_save,
// fan_in_fan_out, rank or alpha patterns, bias training, DoRA on the
// embedding). It is hfpeft.ErrUnsupported, shared by every method's
// converter.
var ErrPEFTUnsupported = hfpeft.ErrUnsupported

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

// stem is the hfpeft name of the target's weight: its GGUF stem
// (attn_q, ...) or hfpeft.Output/Embed.
func (t Target) stem() string {
	switch t {
	case TargetOutput:
		return hfpeft.Output
	case TargetEmbed:
		return hfpeft.Embed
	}
	return blockTensor[t]
}

// targetOfStem is the inverse of Target.stem.
func targetOfStem(stem string) Target {
	switch stem {
	case hfpeft.Output:
		return TargetOutput
	case hfpeft.Embed:
		return TargetEmbed
	}
	return aliases[stem]
}

// loraParts are the tensor name suffixes of PEFT's LoRA (and DoRA) modules.
var loraParts = []string{"lora_A.weight", "lora_B.weight", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector"}

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
	arch, layout, err := hfpeft.LayoutOf(base)
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
		if w.A0 != nil {
			return fmt.Errorf("export peft: %w: a fresh %s adapter (save and load it first: its file is a LoRA of rank 2r for the original base)", ErrPEFTUnsupported, a.cfg.Init)
		}
		av, err := w.A.Floats()
		if err != nil {
			return fmt.Errorf("export peft: %w", err)
		}
		bv, err := w.B.Floats()
		if err != nil {
			return fmt.Errorf("export peft: %w", err)
		}
		key := hfpeft.Key(w.Target.stem(), w.Layer)
		if w.Embedding() {
			nVocab, nEmbd := int(w.A.Dim(1)), int(w.B.Dim(1))
			tensors[key+".lora_embedding_A"] = safetensors.Tensor{DType: safetensors.F32, Shape: []int{r, nVocab}, Data: transpose(av, nVocab, r)}
			tensors[key+".lora_embedding_B"] = safetensors.Tensor{DType: safetensors.F32, Shape: []int{nEmbd, r}, Data: bv}
		} else {
			in, out := int(w.A.Dim(0)), int(w.B.Dim(1))
			var mv []float32
			if w.M != nil {
				if mv, err = w.M.Floats(); err != nil {
					return fmt.Errorf("export peft: %w", err)
				}
			}
			if h := layout.Heads(w.Target.stem()); h > 0 {
				if bv, err = hfpeft.PermuteRows(bv, r, h, false); err == nil && mv != nil {
					mv, err = hfpeft.PermuteRows(mv, 1, h, false)
				}
				if err != nil {
					return fmt.Errorf("export peft: %s: %w", w.Base, err)
				}
			}
			tensors[key+".lora_A.weight"] = safetensors.Tensor{DType: safetensors.F32, Shape: []int{r, in}, Data: av}
			tensors[key+".lora_B.weight"] = safetensors.Tensor{DType: safetensors.F32, Shape: []int{out, r}, Data: bv}
			if mv != nil {
				tensors[key+".lora_magnitude_vector"] = safetensors.Tensor{DType: safetensors.F32, Shape: []int{out}, Data: mv}
			}
		}
		if m := hfpeft.ModuleName(w.Target.stem()); !seenMod[m] {
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
		LoRADropout: float64(a.cfg.Dropout), TargetModules: tm, UseRSLoRA: a.cfg.RSLoRA, UseDoRA: a.cfg.DoRA, Bias: "none",
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

// ImportPEFT reads a Hugging Face PEFT LoRA or DoRA adapter directory
// (adapter_config.json + adapter_model.safetensors) for the base model
// file base into an adapter on backend: A, B and DoRA's magnitudes keep
// their values, the rows of q and k B matrices (and their magnitudes) are
// permuted into GGUF's layout for llama-family models, the embedding's A
// is transposed into llama.cpp's layout, and rank, lora_alpha and
// use_rslora become the same scale. Every tensor's shape is checked
// against the base weight first. Adapters with modules_to_save,
// fan_in_fan_out, rank/alpha patterns, trained biases or DoRA on the
// embedding are refused with ErrPEFTUnsupported.
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
	case pc.PEFTType == "ADALORA" || pc.PEFTType == "LOHA" || pc.PEFTType == "LOKR":
		return fail(ErrPEFTUnsupported, "peft_type %s: ggtune converts LORA (with DoRA), IA3 and the prompt-learning types", pc.PEFTType)
	case pc.PEFTType != "LORA":
		return fail(ErrFormat, "peft_type %q is not LORA", pc.PEFTType)
	case len(pc.ModulesToSave) > 0:
		return fail(ErrPEFTUnsupported, "modules_to_save %v: fully trained copies of modules are not a LoRA (merge them into the base model with PEFT first)", pc.ModulesToSave)
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
	arch, layout, err := hfpeft.LayoutOf(base)
	if err != nil {
		return nil, fmt.Errorf("import peft: %w", err)
	}
	type pair struct {
		t       Target
		layer   int
		a, b, m *safetensors.Tensor
	}
	pairs := map[string]*pair{}
	for _, key := range st.Names() {
		stem, layer, part, ok := hfpeft.ParseKey(key, loraParts)
		if !ok {
			return fail(ErrPEFTUnsupported, "tensor %s is not a LoRA factor of a known module (a saved module or bias?)", key)
		}
		t := targetOfStem(stem)
		switch {
		case part == "lora_magnitude_vector" && !pc.UseDoRA:
			return fail(ErrFormat, "tensor %s: a DoRA magnitude, but use_dora is false", key)
		case part == "lora_magnitude_vector" && t == TargetEmbed:
			return fail(ErrPEFTUnsupported, "tensor %s: DoRA on the token embedding", key)
		case part != "lora_magnitude_vector" && (t == TargetEmbed) != strings.HasPrefix(part, "lora_embedding_"):
			return fail(ErrFormat, "tensor %s: %s on %s", key, part, hfpeft.ModuleName(stem))
		}
		name := t.TensorName(layer)
		p := pairs[name]
		if p == nil {
			p = &pair{t: t, layer: layer}
			pairs[name] = p
		}
		tt := st.Tensors[key]
		switch part {
		case "lora_A.weight", "lora_embedding_A":
			p.a = &tt
		case "lora_magnitude_vector":
			p.m = &tt
		default:
			p.b = &tt
		}
	}
	if len(pairs) == 0 {
		return fail(ErrFormat, "no LoRA tensors")
	}
	r := pc.R
	cfg := Config{Rank: r, Alpha: float32(pc.LoRAAlpha), Dropout: float32(pc.LoRADropout), RSLoRA: pc.UseRSLoRA, DoRA: pc.UseDoRA, Init: InitKaiming}
	if float64(cfg.Alpha) != pc.LoRAAlpha {
		return fail(ErrPEFTUnsupported, "lora_alpha %v is not a float32", pc.LoRAAlpha)
	}
	names := make([]string, 0, len(pairs))
	for n := range pairs {
		names = append(names, n)
	}
	sort.Strings(names)
	var slots []slot
	data := map[string][3][]float32{}
	seenT := map[Target]bool{}
	layerSet := map[int]bool{}
	for _, name := range names {
		p := pairs[name]
		key := hfpeft.Key(p.t.stem(), p.layer)
		if p.a == nil || p.b == nil {
			return fail(ErrFormat, "%s: one of the two LoRA factors is missing", key)
		}
		if pc.UseDoRA && p.t == TargetEmbed {
			return fail(ErrPEFTUnsupported, "%s: DoRA on the token embedding", key)
		}
		if pc.UseDoRA && p.m == nil {
			return fail(ErrFormat, "%s: use_dora, but the lora_magnitude_vector is missing", key)
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
		var av, bv, mv []float32
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
			if p.m != nil {
				if len(p.m.Shape) != 1 || p.m.Shape[0] != out {
					return fail(ErrFormat, "%s: lora_magnitude_vector %v for a weight of %d output rows", key, p.m.Shape, out)
				}
				mv = p.m.Data
			}
			if h := layout.Heads(p.t.stem()); h > 0 {
				if bv, err = hfpeft.PermuteRows(bv, r, h, true); err == nil && mv != nil {
					mv, err = hfpeft.PermuteRows(mv, 1, h, true)
				}
				if err != nil {
					return fail(ErrFormat, "%s: %v", key, err)
				}
			}
		}
		for _, v := range [][]float32{av, bv, mv} {
			for _, x := range v {
				if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
					return fail(ErrFormat, "%s holds a non-finite value", key)
				}
			}
		}
		slots = append(slots, s)
		data[name] = [3][]float32{av, bv, mv}
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
		if w.M != nil {
			if err := w.M.SetFloats(d[2]); err != nil {
				a.Close()
				return nil, fmt.Errorf("import peft: %w", err)
			}
		}
	}
	if cfg.DoRA {
		if err := a.readBase(base); err != nil {
			a.Close()
			return nil, fmt.Errorf("import peft: %w", err)
		}
	}
	return a, nil
}
