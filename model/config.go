package model

import (
	"errors"
	"fmt"
	"math"

	"github.com/ggtune/ggtune/binding"
)

// ErrUnsupported reports a model whose architecture or layout this package
// cannot run.
var ErrUnsupported = errors.New("unsupported model")

// ErrMissingTensor reports a GGUF file that lacks a tensor the architecture
// needs.
var ErrMissingTensor = errors.New("missing tensor")

// Architectures this package runs. Mistral and Mixtral-free Mistral
// derivatives are stored with the "llama" architecture.
var supportedArchs = map[string]bool{"llama": true, "mistral": true, "qwen2": true, "qwen3": true}

// Config holds a model's hyper-parameters, read from GGUF metadata with the
// same defaults as libllama.
type Config struct {
	Arch      string // general.architecture: llama, mistral, qwen2 or qwen3
	Name      string // general.name
	NEmbd     int    // embedding size
	NLayer    int    // transformer blocks
	NHead     int    // query heads
	NHeadKV   int    // key/value heads (GQA when < NHead)
	HeadDim   int    // key (and query) size per head (attention.key_length)
	HeadDimV  int    // value size per head (attention.value_length)
	NFF       int    // feed-forward hidden size
	NVocab    int    // vocabulary size (rows of token_embd.weight)
	NCtxTrain int    // context_length

	RMSEps float32 // attention.layer_norm_rms_epsilon

	RoPEDim        int     // rotated dimensions per head (rope.dimension_count)
	RoPENeoX       bool    // rotate halves (qwen2, qwen3) instead of adjacent pairs (llama)
	RoPEBase       float32 // rope.freq_base (10000 if absent)
	RoPEFreqScale  float32 // 1 / rope.scaling.factor (1 if absent)
	RoPEScaling    string  // rope.scaling.type: none, linear or yarn
	RoPEOrigCtx    int     // rope.scaling.original_context_length (NCtxTrain if absent)
	RoPEExtFactor  float32 // YaRN extrapolation mix (1 for yarn, else 0)
	RoPEAttnFactor float32 // YaRN magnitude correction (1 unless yarn)
	RoPEBetaFast   float32
	RoPEBetaSlow   float32

	AttnScale  float32 // softmax scale of q·k: 1/sqrt(HeadDim)
	TiedOutput bool    // no output.weight: the output projection reuses token_embd.weight
	QKNorm     bool    // per-head RMSNorm of q and k before RoPE (qwen3)
}

// NEmbdQ returns the size of the concatenated query heads.
func (c Config) NEmbdQ() int { return c.NHead * c.HeadDim }

// NEmbdKV returns the size of the concatenated key heads.
func (c Config) NEmbdKV() int { return c.NHeadKV * c.HeadDim }

// NEmbdVKV returns the size of the concatenated value heads.
func (c Config) NEmbdVKV() int { return c.NHeadKV * c.HeadDimV }

// RoPE returns the rotary embedding parameters for binding.RoPE.
func (c Config) RoPE() binding.RoPEParams {
	mode := binding.RoPENormal
	if c.RoPENeoX {
		mode = binding.RoPENeoX
	}
	return binding.RoPEParams{
		Dims: c.RoPEDim, Mode: mode, NCtxOrig: c.RoPEOrigCtx,
		FreqBase: c.RoPEBase, FreqScale: c.RoPEFreqScale,
		ExtFactor: c.RoPEExtFactor, AttnFactor: c.RoPEAttnFactor,
		BetaFast: c.RoPEBetaFast, BetaSlow: c.RoPEBetaSlow,
	}
}

// ReadConfig reads the hyper-parameters of a GGUF model file. It checks the
// architecture and the shapes that the metadata implies, but not the tensors
// (see [Load]).
func ReadConfig(f *binding.GGUFFile) (Config, error) {
	var c Config
	arch, ok := f.String("general.architecture")
	if !ok {
		return c, fmt.Errorf("%s: %w: no general.architecture", f.Path(), ErrUnsupported)
	}
	if !supportedArchs[arch] {
		return c, fmt.Errorf("%s: %w: architecture %q (supported: llama, mistral, qwen2, qwen3)", f.Path(), ErrUnsupported, arch)
	}
	c.Arch = arch
	c.Name, _ = f.String("general.name")
	key := func(k string) string { return arch + "." + k }
	var errs []error
	req := func(k string) int {
		v, ok := f.Uint(key(k))
		if !ok {
			// Some files store per-layer arrays; the first element is used.
			if arr, isArr := f.Get(key(k)); isArr {
				if n, ok := firstUint(arr); ok {
					return int(n)
				}
			}
			errs = append(errs, fmt.Errorf("missing or invalid key %s", key(k)))
			return 0
		}
		return int(v)
	}
	opt := func(k string, def int) int {
		if _, present := f.Get(key(k)); !present {
			return def
		}
		return req(k)
	}
	optF := func(k string, def float32) float32 {
		if v, ok := f.Float(key(k)); ok {
			return float32(v)
		}
		return def
	}
	c.NCtxTrain = req("context_length")
	c.NEmbd = req("embedding_length")
	c.NLayer = req("block_count")
	c.NFF = req("feed_forward_length")
	c.NHead = req("attention.head_count")
	c.NHeadKV = opt("attention.head_count_kv", c.NHead)
	if eps, ok := f.Float(key("attention.layer_norm_rms_epsilon")); ok {
		c.RMSEps = float32(eps)
	} else {
		errs = append(errs, fmt.Errorf("missing key %s", key("attention.layer_norm_rms_epsilon")))
	}
	if n, ok := f.Uint(key("expert_count")); ok && n > 0 {
		errs = append(errs, fmt.Errorf("%w: mixture-of-experts models (%s = %d)", ErrUnsupported, key("expert_count"), n))
	}
	if err := errors.Join(errs...); err != nil {
		return c, fmt.Errorf("%s: %w", f.Path(), err)
	}
	if c.NEmbd <= 0 || c.NLayer <= 0 || c.NHead <= 0 || c.NHeadKV <= 0 || c.NFF <= 0 {
		return c, fmt.Errorf("%s: %w: invalid sizes n_embd %d n_layer %d n_head %d n_head_kv %d n_ff %d",
			f.Path(), ErrUnsupported, c.NEmbd, c.NLayer, c.NHead, c.NHeadKV, c.NFF)
	}
	if c.NHead%c.NHeadKV != 0 {
		return c, fmt.Errorf("%s: %w: n_head %d is not a multiple of n_head_kv %d", f.Path(), ErrUnsupported, c.NHead, c.NHeadKV)
	}
	if _, explicit := f.Get(key("attention.key_length")); !explicit && c.NEmbd%c.NHead != 0 {
		return c, fmt.Errorf("%s: %w: %s %d does not divide %s %d (and there is no %s)", f.Path(), ErrUnsupported,
			key("attention.head_count"), c.NHead, key("embedding_length"), c.NEmbd, key("attention.key_length"))
	}
	c.HeadDim = opt("attention.key_length", c.NEmbd/c.NHead)
	c.HeadDimV = opt("attention.value_length", c.NEmbd/c.NHead)
	switch {
	case c.HeadDim <= 0:
		return c, fmt.Errorf("%s: %w: %s %d: want a positive head size", f.Path(), ErrUnsupported, key("attention.key_length"), c.HeadDim)
	case c.HeadDim != c.HeadDimV:
		return c, fmt.Errorf("%s: %w: key length %d differs from value length %d", f.Path(), ErrUnsupported, c.HeadDim, c.HeadDimV)
	}
	c.RoPEDim = opt("rope.dimension_count", c.HeadDim)
	if c.RoPEDim != c.HeadDim {
		return c, fmt.Errorf("%s: %w: rope.dimension_count %d differs from the head size %d", f.Path(), ErrUnsupported, c.RoPEDim, c.HeadDim)
	}
	c.RoPENeoX = arch == "qwen2" || arch == "qwen3"
	c.RoPEBase = optF("rope.freq_base", 10000)
	c.RoPEScaling = "linear"
	if s, ok := f.String(key("rope.scaling.type")); ok {
		c.RoPEScaling = s
	}
	factor := optF("rope.scaling.factor", 0)
	if factor == 0 {
		factor = optF("rope.scale_linear", 0)
	}
	c.RoPEFreqScale = 1
	if factor != 0 {
		c.RoPEFreqScale = 1 / factor
	}
	c.RoPEOrigCtx = opt("rope.scaling.original_context_length", c.NCtxTrain)
	if c.RoPEOrigCtx == 0 {
		c.RoPEOrigCtx = c.NCtxTrain
	}
	c.RoPEAttnFactor = 1
	c.RoPEBetaFast, c.RoPEBetaSlow = 32, 1
	switch c.RoPEScaling {
	case "none":
		c.RoPEFreqScale = 1
	case "linear":
	case "yarn":
		// libllama multiplies the attention factor by YaRN's mscale and then
		// divides it out again (ggml's rope applies mscale itself), so it stays 1.
		c.RoPEExtFactor = 1
	default:
		return c, fmt.Errorf("%s: %w: rope scaling type %q", f.Path(), ErrUnsupported, c.RoPEScaling)
	}
	c.RoPEAttnFactor *= optF("rope.scaling.attn_factor", 1)
	c.AttnScale = float32(1 / math.Sqrt(float64(c.HeadDim)))
	return c, nil
}

func firstUint(v any) (uint64, bool) {
	switch a := v.(type) {
	case []uint32:
		if len(a) > 0 {
			return uint64(a[0]), true
		}
	case []int32:
		if len(a) > 0 && a[0] >= 0 {
			return uint64(a[0]), true
		}
	case []uint64:
		if len(a) > 0 {
			return a[0], true
		}
	}
	return 0, false
}
