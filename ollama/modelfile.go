// Package ollama prepares ggtune's outputs for Ollama: it checks that an
// adapter fits its base model the way Ollama will need (Ollama itself only
// reports "llama runner process has terminated" for a mismatch) and writes
// a Modelfile (FROM, ADAPTER or a merged model, TEMPLATE, PARAMETER).
//
// Ollama v0.17.4 runs llama-family models (llama, mistral, qwen2, ...)
// through its llama.cpp runner, which loads a LoRA given by ADAPTER. Newer
// architectures (qwen3, gemma3, llama4, ...) run on Ollama's own Go engine,
// which rejects LoRA ("loras are not yet implemented"): for those the
// adapter must be merged into the base model first. Soft prompts (prompt,
// prefix and P-tuning) have no Ollama equivalent.
package ollama

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	otemplate "github.com/ollama/ollama/template"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/lora"
)

// Errors that callers branch on.
var (
	// ErrSoftPrompt: the adapter is a soft prompt, which Ollama cannot use.
	ErrSoftPrompt = errors.New("ollama cannot use soft prompts")
	// ErrMismatch: the adapter does not fit the base model.
	ErrMismatch = errors.New("adapter does not fit the base model")
)

// goEngine lists the architectures that Ollama v0.17.4 runs on its own Go
// engine (fs/ggml.KV.OllamaEngineRequired), where ADAPTER is rejected.
var goEngine = []string{
	"bert", "deepseek2", "deepseekocr", "gemma3", "gemma3n", "gptoss", "gpt-oss", "llama4", "mistral3",
	"mllama", "nemotron_h", "nemotron_h_moe", "nomic-bert", "olmo3", "qwen25vl", "qwen3", "qwen3moe",
	"qwen35", "qwen35moe", "qwen3next", "qwen3vl", "qwen3vlmoe", "glm4moelite", "glmocr", "lfm2", "lfm2moe",
}

// NeedsMerge reports whether Ollama runs arch on its Go engine, which
// cannot apply a LoRA adapter: the Modelfile must use a merged model.
func NeedsMerge(arch string) bool { return slices.Contains(goEngine, arch) }

// Check opens the adapter and base GGUF headers and checks what Ollama
// needs: a LoRA adapter (ErrSoftPrompt for a soft prompt) whose
// architecture equals the base model's and whose every tensor pair fits a
// base weight (ErrMismatch). It returns the base architecture.
func Check(adapterPath, basePath string) (string, error) {
	f, err := binding.OpenGGUF(adapterPath)
	if err != nil {
		return "", err
	}
	typ, _ := f.String("adapter.type")
	gtype, _ := f.String("general.type")
	f.Close()
	switch {
	case gtype != "adapter":
		return "", fmt.Errorf("%s: %w: general.type is %q, not an adapter", adapterPath, ErrMismatch, gtype)
	case typ == "prompt_tuning" || typ == "prefix_tuning" || typ == "p_tuning":
		return "", fmt.Errorf("%s: %w: it is a %s adapter (Ollama's ADAPTER takes only LoRA; use ggtune generate --prompt-adapter)", adapterPath, ErrSoftPrompt, typ)
	case typ != "lora":
		return "", fmt.Errorf("%s: %w: adapter.type %q (Ollama's ADAPTER takes only LoRA)", adapterPath, ErrMismatch, typ)
	}
	base, err := binding.OpenGGUF(basePath)
	if err != nil {
		return "", err
	}
	defer base.Close()
	arch, _ := base.String("general.architecture")
	backend, err := binding.NewCPUBackend(1)
	if err != nil {
		return "", err
	}
	defer backend.Close()
	a, err := lora.Load(adapterPath, base, backend) // checks architecture, names and shapes
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrMismatch, err)
	}
	a.Close()
	return arch, nil
}

// Param is one PARAMETER line.
type Param struct {
	Name, Value string
}

// Modelfile is the content of an Ollama Modelfile.
type Modelfile struct {
	From     string // base model or merged model (a path)
	Adapter  string // LoRA adapter path ("" with a merged model)
	Template string // Ollama (Go) template ("" to let Ollama choose)
	Params   []Param
}

// SamplingParams are PARAMETER lines for the given sampling settings.
func SamplingParams(temperature, topP, minP, repeatPenalty float32, topK, repeatLastN int) []Param {
	f := func(v float32) string { return strconv.FormatFloat(float64(v), 'g', -1, 32) }
	return []Param{{"temperature", f(temperature)}, {"top_k", strconv.Itoa(topK)}, {"top_p", f(topP)},
		{"min_p", f(minP)}, {"repeat_penalty", f(repeatPenalty)}, {"repeat_last_n", strconv.Itoa(repeatLastN)}}
}

// TemplateFor returns the Ollama template matching the base model's
// tokenizer.chat_template (Jinja, matched to Ollama's named templates as
// `ollama create` does), or "" when the model has none.
func TemplateFor(basePath string) (string, error) {
	f, err := binding.OpenGGUF(basePath)
	if err != nil {
		return "", err
	}
	defer f.Close()
	jinja, ok := f.String("tokenizer.chat_template")
	if !ok || jinja == "" {
		return "", nil
	}
	t, err := otemplate.Named(jinja)
	if err != nil {
		return "", fmt.Errorf("%s: no Ollama template matches the chat template: %w", basePath, err)
	}
	return t.Template, nil
}

// String renders the Modelfile. Paths are made absolute so that the file
// works from any directory.
func (m Modelfile) String() string {
	var b strings.Builder
	abs := func(p string) string {
		if a, err := filepath.Abs(p); err == nil {
			return a
		}
		return p
	}
	fmt.Fprintf(&b, "FROM %s\n", abs(m.From))
	if m.Adapter != "" {
		fmt.Fprintf(&b, "ADAPTER %s\n", abs(m.Adapter))
	}
	if m.Template != "" {
		fmt.Fprintf(&b, "TEMPLATE \"\"\"%s\"\"\"\n", m.Template)
	}
	for _, p := range m.Params {
		fmt.Fprintf(&b, "PARAMETER %s %s\n", p.Name, p.Value)
	}
	return b.String()
}
