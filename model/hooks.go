package model

import (
	"fmt"
	"math/rand/v2"

	"github.com/ggtune/ggtune/binding"
)

// Hook is a value that changes the model's forward pass at named points. It
// implements any subset of the optional interfaces below (ProjectionHook,
// EmbeddingHook, PromptHook, PrefixKVHook, AttentionOutputHook,
// FFNOutputHook, ScaleHook, NormHook, LayerOutputHook, LayerSkipHook), like http.Flusher. A []Hook is
// applied in order at each point; with no hooks the plain model runs.
type Hook any

// Proj names a linear projection of the model.
type Proj int

// The projections a ProjectionHook sees.
const (
	ProjQ      Proj = iota // attention query, blk.N.attn_q.weight
	ProjK                  // attention key, blk.N.attn_k.weight
	ProjV                  // attention value, blk.N.attn_v.weight
	ProjO                  // attention output, blk.N.attn_output.weight
	ProjGate               // FFN gate, blk.N.ffn_gate.weight
	ProjUp                 // FFN up, blk.N.ffn_up.weight
	ProjDown               // FFN down, blk.N.ffn_down.weight
	ProjOutput             // the LM head, output.weight (layer -1)
)

var projNames = [...]string{"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down", "output"}

// Projs lists every projection in order.
var Projs = []Proj{ProjQ, ProjK, ProjV, ProjO, ProjGate, ProjUp, ProjDown, ProjOutput}

// String returns the GGUF name stem, e.g. "attn_q" or "output".
func (p Proj) String() string {
	if p < 0 || int(p) >= len(projNames) {
		return fmt.Sprintf("proj(%d)", int(p))
	}
	return projNames[p]
}

// WeightName returns the GGUF tensor name of the projection's weight in
// layer (ignored for ProjOutput): "blk.3.attn_q.weight", "output.weight".
// For a model with tied embeddings, ProjOutput's weight is stored as
// token_embd.weight, but adapters still name it output.weight.
func (p Proj) WeightName(layer int) string {
	if p == ProjOutput {
		return "output.weight"
	}
	return fmt.Sprintf("blk.%d.%s.weight", layer, p)
}

// ParseProj returns the projection named by its GGUF stem ("attn_q") or
// its short name: q, k, v, o, gate, up, down, output.
func ParseProj(s string) (Proj, error) {
	short := map[string]Proj{"q": ProjQ, "k": ProjK, "v": ProjV, "o": ProjO, "gate": ProjGate, "up": ProjUp, "down": ProjDown, "output": ProjOutput}
	if p, ok := short[s]; ok {
		return p, nil
	}
	for i, n := range projNames {
		if n == s {
			return Proj(i), nil
		}
	}
	return 0, fmt.Errorf("unknown projection %q (want q, k, v, o, gate, up, down or output)", s)
}

// ProjectionHook changes the result of a linear projection. x is the input
// [n_in, N] and y = W·x [n_out, N] (before any bias), N the number of
// positions in the graph (see [Builder]); it returns y plus its change, of
// y's shape. LoRA returns y + scale·B·(A·x).
type ProjectionHook interface {
	Project(b *Builder, layer int, p Proj, x, y *binding.Tensor) *binding.Tensor
}

// EmbeddingHook changes the token embeddings e [n_embd, N] of the I32
// token ids tokens [N] (for example a LoRA on token_embd.weight).
type EmbeddingHook interface {
	Embed(b *Builder, tokens, e *binding.Tensor) *binding.Tensor
}

// PromptHook supplies a soft prompt: an F32 tensor [n_embd, n_virtual] of
// embeddings placed before every sequence. The virtual positions take the
// RoPE positions right after any prefix (see PrefixKVHook) and the text
// tokens continue after them; the model returns logits and hidden states
// only for the real tokens. Prompt is called once per graph.
type PromptHook interface {
	Prompt(b *Builder) *binding.Tensor
}

// PrefixKVHook supplies extra key and value positions for a layer (prefix
// tuning): k and v are F32 [head_dim, n_head_kv, n_prefix], the same
// n_prefix for every layer. They are visible to every position. Keys are
// used as given, never rotated: they are post-RoPE keys (as in PEFT's
// past_key_values). The prefix occupies positions 0..n_prefix-1, so the
// first token (or virtual token) has position n_prefix. PrefixKV is called
// once per layer and graph, before the layer is built.
type PrefixKVHook interface {
	PrefixKV(b *Builder, layer int) (k, v *binding.Tensor)
}

// AttentionOutputHook changes the attention block's output h [n_embd, N]
// (after the output projection, before the residual add): bottleneck
// adapters.
type AttentionOutputHook interface {
	AfterAttention(b *Builder, layer int, h *binding.Tensor) *binding.Tensor
}

// FFNOutputHook changes the feed-forward block's output h [n_embd, N]
// (after the down projection, before the residual add).
type FFNOutputHook interface {
	AfterFFN(b *Builder, layer int, h *binding.Tensor) *binding.Tensor
}

// ScaleSite names where a ScaleHook applies.
type ScaleSite int

// Scale sites (IA3): the key and value projections' outputs (after bias,
// before RoPE) and the FFN hidden state (the input of the down projection).
const (
	ScaleKey ScaleSite = iota
	ScaleValue
	ScaleFFN
)

// String returns "key", "value" or "ffn".
func (s ScaleSite) String() string {
	switch s {
	case ScaleKey:
		return "key"
	case ScaleValue:
		return "value"
	case ScaleFFN:
		return "ffn"
	}
	return fmt.Sprintf("site(%d)", int(s))
}

// ScaleHook changes x [n, N] at a scale site, typically x * l with a learned
// vector l [n] (IA3).
type ScaleHook interface {
	Scale(b *Builder, layer int, site ScaleSite, x *binding.Tensor) *binding.Tensor
}

// NormHook changes the weight w of an RMSNorm (LN tuning): w is the base
// model's tensor, named as in the file (blk.N.attn_norm.weight,
// blk.N.ffn_norm.weight, blk.N.attn_q_norm.weight, output_norm.weight), and
// the hook returns the weight to use, of the same shape.
type NormHook interface {
	NormWeight(b *Builder, w *binding.Tensor) *binding.Tensor
}

// LayerOutputHook changes a layer's output h [n_embd, N] after the FFN
// residual add (control vectors).
type LayerOutputHook interface {
	LayerOutput(b *Builder, layer int, h *binding.Tensor) *binding.Tensor
}

// LayerSkipHook removes transformer blocks from the forward pass: a layer
// for which SkipLayer returns true passes its input through unchanged (no
// attention, no FFN, no other hook of that layer), as if the block were not
// in the file. Progressive shrinking measures a block's importance this way.
type LayerSkipHook interface {
	SkipLayer(layer int) bool
}

// Builder is what hooks see while a graph is built. Hidden states are 2-D
// [n, N] tensors with one column per position. In a training graph
// (Model.BuildForward) N = Batch*(Virtual+Tokens) and the positions of
// sequence s are the columns s*(Virtual+Tokens) ... (virtual positions
// first); in a generation graph (Session) Batch is 1 and N is the number
// of positions evaluated in this step. After the last layer's attention the
// model may keep only the positions whose outputs are needed, so hooks must
// take N from their input's shape. Hook tensors created in Ctx are graph
// intermediates; parameters must live in the hook's own allocated context.
type Builder struct {
	Ctx     *binding.Context // the graph's context (metadata only)
	Model   *Model
	Batch   int  // sequences in the graph (B)
	Tokens  int  // text tokens per sequence in the graph (T)
	Virtual int  // soft-prompt positions per sequence in the hidden stream (0 in generation steps)
	Prefix  int  // prefix key/value positions visible to every position
	Train   bool // a training graph: hooks apply dropout
	Cached  bool // a generation graph with a KV cache

	hooks  []Hook
	inputs []input
	rng    *rand.Rand
	// blockIn is the residual stream entering each block, in order.
	blockIn []*binding.Tensor
}

type input struct {
	t    *binding.Tensor
	fill func(*binding.Tensor) error
}

// Hooks returns the hook stack the graph is built with.
func (b *Builder) Hooks() []Hook { return b.hooks }

// Config returns the model's configuration.
func (b *Builder) Config() Config { return b.Model.cfg }

// Input creates an input tensor of the graph that fill writes before every
// computation (for example a dropout mask or a constant), and returns it.
func (b *Builder) Input(typ binding.Type, fill func(*binding.Tensor) error, ne ...int64) *binding.Tensor {
	t := b.Ctx.NewTensor(typ, ne...)
	if t == nil {
		return nil
	}
	t.SetInput()
	b.inputs = append(b.inputs, input{t: t, fill: fill})
	return t
}

// Zeros returns an F32 input tensor of shape ne filled with zeros.
func (b *Builder) Zeros(ne ...int64) *binding.Tensor {
	return b.Input(binding.TypeF32, func(t *binding.Tensor) error { return t.Zero() }, ne...)
}

// Dropout returns x with elements zeroed with probability p and the rest
// scaled by 1/(1-p) in training graphs, and x unchanged otherwise. The mask
// is drawn anew before every computation from the graph's seeded generator.
func (b *Builder) Dropout(x *binding.Tensor, p float32) *binding.Tensor {
	if !b.Train || p <= 0 || x == nil {
		return x
	}
	if p >= 1 {
		return b.Ctx.Scale(x, 0)
	}
	keep := 1 / (1 - p)
	sh := x.Shape()
	buf := make([]float32, x.Elements())
	mask := b.Input(binding.TypeF32, func(t *binding.Tensor) error {
		for i := range buf {
			if b.rng.Float32() < p {
				buf[i] = 0
			} else {
				buf[i] = keep
			}
		}
		return t.SetFloats(buf)
	}, sh[:]...)
	return b.Ctx.Mul(x, mask)
}

// Reseed restarts the graph's random generator (dropout masks) from seed,
// so that a computation's masks depend only on seed: a trainer reseeds with
// its step to make resumed runs draw the same masks.
func (b *Builder) Reseed(seed uint64) { b.rng = rand.New(rand.NewPCG(seed, 0x67677475)) }

// fillInputs writes every registered input.
func (b *Builder) fillInputs() error {
	for _, in := range b.inputs {
		if err := in.fill(in.t); err != nil {
			return fmt.Errorf("fill input %s: %w", in.t, err)
		}
	}
	return nil
}

func (b *Builder) project(layer int, p Proj, w, x *binding.Tensor) *binding.Tensor {
	if b.Train && (w.Type() == binding.TypeF16 || w.Type() == binding.TypeBF16) {
		// ggml's CPU backward of mul_mat needs OUT_PROD with the weight, which
		// it lacks for F16 and BF16 (quantized types are supported): training
		// graphs use a transient F32 copy of such frozen weights.
		w = b.Ctx.Cast(w, binding.TypeF32)
	}
	y := b.Ctx.MulMat(w, x)
	for _, h := range b.hooks {
		if ph, ok := h.(ProjectionHook); ok {
			y = ph.Project(b, layer, p, x, y)
		}
	}
	return y
}

func (b *Builder) scale(layer int, site ScaleSite, x *binding.Tensor) *binding.Tensor {
	for _, h := range b.hooks {
		if sh, ok := h.(ScaleHook); ok {
			x = sh.Scale(b, layer, site, x)
		}
	}
	return x
}

func (b *Builder) afterAttention(layer int, x *binding.Tensor) *binding.Tensor {
	for _, h := range b.hooks {
		if ah, ok := h.(AttentionOutputHook); ok {
			x = ah.AfterAttention(b, layer, x)
		}
	}
	return x
}

func (b *Builder) afterFFN(layer int, x *binding.Tensor) *binding.Tensor {
	for _, h := range b.hooks {
		if fh, ok := h.(FFNOutputHook); ok {
			x = fh.AfterFFN(b, layer, x)
		}
	}
	return x
}

func (b *Builder) layerOutput(layer int, x *binding.Tensor) *binding.Tensor {
	for _, h := range b.hooks {
		if lh, ok := h.(LayerOutputHook); ok {
			x = lh.LayerOutput(b, layer, x)
		}
	}
	return x
}

func (b *Builder) skip(layer int) bool {
	for _, h := range b.hooks {
		if sh, ok := h.(LayerSkipHook); ok && sh.SkipLayer(layer) {
			return true
		}
	}
	return false
}

func (b *Builder) embed(tokens, e *binding.Tensor) *binding.Tensor {
	for _, h := range b.hooks {
		if eh, ok := h.(EmbeddingHook); ok {
			e = eh.Embed(b, tokens, e)
		}
	}
	return e
}
