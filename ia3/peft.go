package ia3

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/internal/atomicfile"
	"github.com/ggtune/ggtune/internal/hfpeft"
	"github.com/ggtune/ggtune/method"
	"github.com/ggtune/ggtune/model"
	"github.com/ggtune/ggtune/safetensors"
)

// peftConfig is the subset of PEFT's IA3Config that ggtune writes and
// checks; fields that change the adapter's meaning are read so that an
// adapter ggtune cannot reproduce is refused instead of altered.
type peftConfig struct {
	PEFTType            string          `json:"peft_type"`
	TaskType            string          `json:"task_type,omitempty"`
	BaseModelNameOrPath *string         `json:"base_model_name_or_path"`
	TargetModules       json.RawMessage `json:"target_modules"`
	FeedforwardModules  json.RawMessage `json:"feedforward_modules"`
	FanInFanOut         bool            `json:"fan_in_fan_out"`
	ModulesToSave       []string        `json:"modules_to_save"`
	InitIA3Weights      bool            `json:"init_ia3_weights"`
	InferenceMode       bool            `json:"inference_mode"`
}

// peftSites maps the GGUF stem of a PEFT IA3 module to its scale site and
// whether PEFT treats it as a feed-forward module (its vector [1, in]
// scales the input) or not ([out, 1] scales the output). ggtune's sites
// are exactly PEFT's llama defaults: k_proj and v_proj outputs and the
// input of down_proj.
var peftSites = map[string]struct {
	site        model.ScaleSite
	feedforward bool
}{
	"attn_k": {model.ScaleKey, false}, "attn_v": {model.ScaleValue, false}, "ffn_down": {model.ScaleFFN, true},
}

// ExportPEFT implements method.PEFTExporter: it writes the adapter into dir
// in PEFT's IA3 layout (adapter_model.safetensors with
// base_model.model.model.layers.N.{self_attn.k_proj,self_attn.v_proj,
// mlp.down_proj}.ia3_l, k and v as [out, 1], down_proj as [1, n_ff]; the
// key vector's entries permuted back to Hugging Face's row order for
// llama-family models) and adapter_config.json with down_proj as the
// feed-forward module. baseName is recorded as base_model_name_or_path
// ("" for null).
func (a *Adapter) ExportPEFT(dir, baseName string) error {
	arch, layout, err := hfpeft.LayoutOf(a.base)
	if err != nil {
		return fmt.Errorf("export peft: %w", err)
	}
	if arch != a.arch {
		return fmt.Errorf("export peft: %w: adapter architecture %q, base model %q", ErrFormat, a.arch, arch)
	}
	tensors := map[string]safetensors.Tensor{}
	var targets []string
	ff := []string{}
	for _, s := range a.cfg.Sites {
		stem := siteWeight[s]
		name := hfpeft.ModuleName(stem)
		targets = append(targets, name)
		if s == model.ScaleFFN {
			ff = append(ff, name)
		}
		for l, t := range a.vecs[s] {
			v, err := t.Floats()
			if err != nil {
				return fmt.Errorf("export peft: %w", err)
			}
			shape := []int{len(v), 1}
			if s == model.ScaleFFN {
				shape = []int{1, len(v)}
			}
			if h := layout.Heads(stem); h > 0 {
				if v, err = hfpeft.PermuteRows(v, 1, h, false); err != nil {
					return fmt.Errorf("export peft: %s: %w", t.Name(), err)
				}
			}
			tensors[hfpeft.Key(stem, l)+".ia3_l"] = safetensors.Tensor{DType: safetensors.F32, Shape: shape, Data: v}
		}
	}
	sort.Strings(targets)
	tm, err := json.Marshal(targets)
	if err != nil {
		return fmt.Errorf("export peft: %w", err)
	}
	fm, err := json.Marshal(ff)
	if err != nil {
		return fmt.Errorf("export peft: %w", err)
	}
	pc := peftConfig{PEFTType: "IA3", TaskType: "CAUSAL_LM", TargetModules: tm, FeedforwardModules: fm, InitIA3Weights: true, InferenceMode: true}
	if baseName != "" {
		pc.BaseModelNameOrPath = &baseName
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("export peft: %w", err)
	}
	st := &safetensors.File{Metadata: map[string]string{"format": "pt"}, Tensors: tensors}
	if err := safetensors.WriteFile(filepath.Join(dir, hfpeft.WeightsFile), st); err != nil {
		return fmt.Errorf("export peft: %w", err)
	}
	js, err := json.MarshalIndent(pc, "", "  ")
	if err != nil {
		return fmt.Errorf("export peft: %w", err)
	}
	if err := atomicfile.WriteBytes(filepath.Join(dir, hfpeft.ConfigFile), append(js, '\n')); err != nil {
		return fmt.Errorf("export peft: %w", err)
	}
	return nil
}

// ImportPEFT reads a Hugging Face PEFT IA3 adapter directory for the base
// model (mc, base) onto backend. The vectors of k_proj and v_proj ([out,
// 1]: PEFT scales their outputs) and of down_proj ([1, n_ff]: PEFT's
// feed-forward module, its input scaled) become the key, value and FFN
// sites; the key vector is permuted into GGUF's row order for
// llama-family models; blocks without a vector keep 1 (no change).
// Vectors on other modules, a k/v vector used as a feed-forward one (or
// down_proj as an output one), modules_to_save and fan_in_fan_out are
// refused with hfpeft.ErrUnsupported.
func ImportPEFT(dir string, mc model.Config, base *binding.GGUFFile, backend *binding.Backend) (*Adapter, error) {
	fail := func(err error, format string, args ...any) (*Adapter, error) {
		return nil, fmt.Errorf("import peft %s: %w: %s", dir, err, fmt.Sprintf(format, args...))
	}
	js, err := os.ReadFile(filepath.Join(dir, hfpeft.ConfigFile))
	if err != nil {
		return nil, fmt.Errorf("import peft: %w", err)
	}
	var pc peftConfig
	if err := json.Unmarshal(js, &pc); err != nil {
		return fail(ErrFormat, "%s: %v", hfpeft.ConfigFile, err)
	}
	switch {
	case pc.PEFTType != "IA3":
		return fail(ErrFormat, "peft_type %q is not IA3", pc.PEFTType)
	case len(pc.ModulesToSave) > 0:
		return fail(hfpeft.ErrUnsupported, "modules_to_save %v: fully trained copies of modules are not IA3 vectors", pc.ModulesToSave)
	case pc.FanInFanOut:
		return fail(hfpeft.ErrUnsupported, "fan_in_fan_out (GPT-2 style Conv1D weights)")
	}
	st, err := safetensors.ReadFile(filepath.Join(dir, hfpeft.WeightsFile))
	if err != nil {
		return nil, fmt.Errorf("import peft: %w", err)
	}
	arch, layout, err := hfpeft.LayoutOf(base)
	if err != nil {
		return nil, fmt.Errorf("import peft: %w", err)
	}
	if arch != mc.Arch {
		return fail(ErrFormat, "base model file architecture %q, loaded model %q", arch, mc.Arch)
	}
	type vec struct {
		site  model.ScaleSite
		layer int
		data  []float32
	}
	var vecs []vec
	used := map[model.ScaleSite]bool{}
	for _, key := range st.Names() {
		stem, layer, _, ok := hfpeft.ParseKey(key, []string{"ia3_l"})
		ps, known := peftSites[stem]
		if !ok || !known {
			return fail(hfpeft.ErrUnsupported, "tensor %s is not an IA3 vector of k_proj, v_proj or down_proj", key)
		}
		if layer >= mc.NLayer {
			return fail(ErrFormat, "tensor %s: the base model has %d blocks", key, mc.NLayer)
		}
		t := st.Tensors[key]
		n := int(siteSize(mc, ps.site))
		want := []int{n, 1}
		if ps.feedforward {
			want = []int{1, n}
		}
		inputVec := len(t.Shape) == 2 && t.Shape[0] == 1 && t.Shape[1] > 1
		outputVec := len(t.Shape) == 2 && t.Shape[1] == 1 && t.Shape[0] > 1
		switch {
		case ps.feedforward && outputVec, !ps.feedforward && inputVec:
			role := "an output scaling (down_proj missing from feedforward_modules)"
			if !ps.feedforward {
				role = "a feed-forward module (its input scaled)"
			}
			return fail(hfpeft.ErrUnsupported, "tensor %s %v: %s as %s; ggtune scales k_proj and v_proj outputs and the input of down_proj", key, t.Shape, hfpeft.ModuleName(stem), role)
		case len(t.Shape) != 2 || t.Shape[0] != want[0] || t.Shape[1] != want[1]:
			return fail(ErrFormat, "tensor %s has shape %v, want %v", key, t.Shape, want)
		}
		data := t.Data
		if h := layout.Heads(stem); h > 0 {
			if data, err = hfpeft.PermuteRows(data, 1, h, true); err != nil {
				return fail(ErrFormat, "%s: %v", key, err)
			}
		}
		for _, x := range data {
			if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
				return fail(ErrFormat, "%s holds a non-finite value", key)
			}
		}
		vecs = append(vecs, vec{ps.site, layer, data})
		used[ps.site] = true
	}
	if len(vecs) == 0 {
		return fail(ErrFormat, "no IA3 vectors")
	}
	var cfg Config
	for _, s := range DefaultConfig().Sites {
		if used[s] {
			cfg.Sites = append(cfg.Sites, s)
		}
	}
	a, err := New(cfg, mc, base, backend)
	if err != nil {
		return nil, fmt.Errorf("import peft: %w", err)
	}
	for _, v := range vecs {
		if err := a.vecs[v.site][v.layer].SetFloats(v.data); err != nil {
			a.Close()
			return nil, fmt.Errorf("import peft: %w", err)
		}
	}
	return a, nil
}

// PEFTTypes implements method.PEFTImporter.
func (ia3Method) PEFTTypes() []string { return []string{"IA3"} }

// ImportPEFT implements method.PEFTImporter.
func (ia3Method) ImportPEFT(dir string, env *method.Env) (method.Instance, error) {
	return ImportPEFT(dir, env.Config, env.Base, env.Backend)
}
