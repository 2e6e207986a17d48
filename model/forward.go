package model

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/ggtune/ggtune/binding"
)

// ErrBadInput reports a batch that does not fit the graph (wrong length,
// token id outside the vocabulary).
var ErrBadInput = errors.New("invalid input")

// Shape describes a training (full-sequence) graph.
type Shape struct {
	Batch  int    // sequences per graph (B)
	Tokens int    // tokens per sequence (T)
	Train  bool   // hooks apply dropout
	Seed   uint64 // seeds the graph's random inputs (dropout masks)
}

// Forward is a full-sequence graph of the model over a batch of B
// sequences of T tokens, built from differentiable operations only (plain
// softmax attention with a mask, split SwiGLU), so that
// binding.Graph.BuildBackward works when hooks add parameters. Attention is
// causal; SetBatch's segment ids restrict it further (packing, padding).
type Forward struct {
	Builder   *Builder
	Tokens    *binding.Tensor // I32 [T*B], sequence-major
	Positions *binding.Tensor // I32 [(Virtual+T)*B]
	Mask      *binding.Tensor // F32 [Prefix+Virtual+T, Virtual+T, 1, B]
	Hidden    *binding.Tensor // F32 [n_embd, T, B]: final hidden states after the output norm
	Logits    *binding.Tensor // F32 [n_vocab, T, B]
	// BlockInputs is the residual stream entering each transformer block,
	// in graph order: the boundaries of activation checkpointing (see
	// binding.Graph.SetCheckpoints).
	BlockInputs []*binding.Tensor

	outIdx *binding.Tensor
	ids    []int32
	posBuf []int32
	mask   []float32
}

// GraphSize returns a node capacity sufficient for a forward graph of the
// model with a few hooks per projection plus up to 8192 nodes of hook
// sub-graphs such as prompt encoders (multiply by 4 or more for a backward
// pass).
func (m *Model) GraphSize() int { return 160*(m.cfg.NLayer+2) + 8704 }

// BuildForward builds the full-sequence graph in ctx (a metadata-only
// context, see binding.NewGraphContext) with the hook stack hooks.
func (m *Model) BuildForward(ctx *binding.Context, shape Shape, hooks []Hook) (*Forward, error) {
	if shape.Batch <= 0 || shape.Tokens <= 0 {
		return nil, fmt.Errorf("build forward: %w: batch %d x %d tokens", ErrBadInput, shape.Batch, shape.Tokens)
	}
	b := &Builder{Ctx: ctx, Model: m, Batch: shape.Batch, Tokens: shape.Tokens, Train: shape.Train,
		hooks: hooks, rng: rand.New(rand.NewPCG(shape.Seed, 0x67677475))}
	prompt, err := b.prompts()
	if err != nil {
		return nil, fmt.Errorf("build forward: %w", err)
	}
	pks, pvs, np, err := b.prefixes()
	if err != nil {
		return nil, fmt.Errorf("build forward: %w", err)
	}
	if prompt != nil {
		b.Virtual = int(prompt.Dim(1))
	}
	b.Prefix = np
	cfg := &m.cfg
	B, T, P, V := int64(shape.Batch), int64(shape.Tokens), int64(np), int64(b.Virtual)
	S := V + T
	K := P + S
	N := S * B
	ne := int64(cfg.NEmbd)

	f := &Forward{Builder: b}
	f.Tokens = ctx.NewTensor(binding.TypeI32, T*B)
	f.Positions = ctx.NewTensor(binding.TypeI32, N)
	f.Mask = ctx.NewTensor(binding.TypeF32, K, S, 1, B)
	if f.Tokens == nil || f.Positions == nil || f.Mask == nil {
		return nil, fmt.Errorf("build forward: %w", ctx.Err())
	}
	f.Tokens.SetName("tokens").SetInput()
	f.Positions.SetName("positions").SetInput()
	f.Mask.SetName("kq_mask").SetInput()

	x := b.embedTokens(f.Tokens)
	var sel func(*binding.Tensor) *binding.Tensor
	if prompt != nil {
		z := b.Zeros(ne, S, B)
		for r := int64(0); r < B; r++ {
			z = ctx.Acc(z, prompt, z.Stride(1), z.Stride(2), z.Stride(3), r*z.Stride(2))
		}
		z = ctx.Acc(z, ctx.Reshape(x, ne, T, B), z.Stride(1), z.Stride(2), z.Stride(3), V*z.Stride(1))
		x = ctx.Reshape(z, ne, N)
		f.outIdx = ctx.NewTensor(binding.TypeI32, T*B)
		if f.outIdx == nil {
			return nil, fmt.Errorf("build forward: %w", ctx.Err())
		}
		f.outIdx.SetName("out_ids").SetInput()
		sel = func(t *binding.Tensor) *binding.Tensor { return ctx.GetRows(t, f.outIdx) }
	}

	hd, hdv, nh, nkv := int64(cfg.HeadDim), int64(cfg.HeadDimV), int64(cfg.NHead), int64(cfg.NHeadKV)
	withPrefix := func(p, x4 *binding.Tensor) *binding.Tensor {
		// Heads and head dimension merged, so that the copies are 3-D:
		// Vulkan's ACC at this pin handles no fourth dimension.
		w := x4.Dim(0) * x4.Dim(1)
		z := b.Zeros(w, K, B)
		like := ctx.View(z, []int64{w, P, B}, []int64{z.Stride(1), z.Stride(2)}, 0)
		z = ctx.Acc(z, ctx.Repeat(ctx.Reshape(ctx.Cont(p), w, P, 1), like), z.Stride(1), z.Stride(2), z.Stride(3), 0)
		z = ctx.Acc(z, ctx.Reshape(x4, w, x4.Dim(2), B), z.Stride(1), z.Stride(2), z.Stride(3), P*z.Stride(1))
		// ggml's ACC backward reads its gradient with the forward strides, so
		// it must be contiguous: a reshape (whose backward makes its gradient
		// contiguous) shields it from the permutation that follows.
		return ctx.Reshape(z, x4.Dim(0), x4.Dim(1), K, B)
	}
	fuse := m.backend.IsCPU() && !m.plain
	attend := func(il int, q, k, v *binding.Tensor) *binding.Tensor {
		q4 := ctx.Permute(ctx.Reshape(q, hd, nh, S, B), [4]int{0, 2, 1, 3})
		k4 := ctx.Reshape(k, hd, nkv, S, B)
		v4 := ctx.Reshape(v, hdv, nkv, S, B)
		if P > 0 {
			k4 = withPrefix(pks[il], k4)
			v4 = withPrefix(pvs[il], v4)
		}
		o := ctx.Attention(q4, ctx.Permute(k4, [4]int{0, 2, 1, 3}), ctx.Permute(v4, [4]int{0, 2, 1, 3}), f.Mask, cfg.AttnScale, fuse)
		o = ctx.Cont(ctx.Permute(o, [4]int{0, 2, 1, 3}))
		return ctx.Reshape(o, hdv*nh, N)
	}
	hidden := b.blocks(x, f.Positions, attend, sel)
	logits := b.logits(hidden)
	if hidden == nil || logits == nil {
		return nil, fmt.Errorf("build forward: %w", errOr(ctx.Err(), "graph construction failed"))
	}
	f.BlockInputs = b.blockIn
	f.Hidden = ctx.Reshape(hidden, ne, T, B)
	f.Logits = ctx.Reshape(logits, int64(cfg.NVocab), T, B)
	if f.Hidden == nil || f.Logits == nil {
		return nil, fmt.Errorf("build forward: %w", ctx.Err())
	}
	f.Hidden.SetName("hidden").SetOutput()
	f.Logits.SetName("logits").SetOutput()
	return f, nil
}

// checkTokens verifies that every id is in the vocabulary (an id outside
// it would abort ggml's get_rows).
func (m *Model) checkTokens(ids []int32) error {
	nv := int32(m.cfg.NVocab)
	for i, id := range ids {
		if id < 0 || id >= nv {
			return fmt.Errorf("%w: token %d at index %d is outside the vocabulary of %d", ErrBadInput, id, i, nv)
		}
	}
	return nil
}

// SetBatch writes the graph's inputs: tokens holds B sequences of T ids
// (sequence-major). segments is nil (each sequence is one document) or
// holds one id per token: tokens attend only to earlier tokens of the same
// segment and positions restart at each segment (packing); a negative id
// marks padding, which no other token sees (its own outputs are
// meaningless: mask its loss). Soft-prompt and prefix positions are visible
// to every token. It also fills the hooks' inputs (dropout masks), so it
// must be called before every computation of the graph.
func (f *Forward) SetBatch(tokens, segments []int32) error {
	b := f.Builder
	B, T, V, P := b.Batch, b.Tokens, b.Virtual, b.Prefix
	S, K := V+T, P+V+T
	if len(tokens) != B*T {
		return fmt.Errorf("set batch: %w: %d tokens for %d x %d", ErrBadInput, len(tokens), B, T)
	}
	if segments != nil && len(segments) != B*T {
		return fmt.Errorf("set batch: %w: %d segment ids for %d x %d tokens", ErrBadInput, len(segments), B, T)
	}
	if err := b.Model.checkTokens(tokens); err != nil {
		return fmt.Errorf("set batch: %w", err)
	}
	if f.posBuf == nil {
		f.posBuf = make([]int32, S*B)
		f.mask = make([]float32, K*S*B)
	}
	seg := func(r, t int) int32 {
		if segments == nil {
			return 0
		}
		return segments[r*T+t]
	}
	ninf := float32(math.Inf(-1))
	for r := 0; r < B; r++ {
		pos := f.posBuf[r*S : (r+1)*S]
		for i := 0; i < V; i++ {
			pos[i] = int32(P + i)
		}
		count := map[int32]int32{}
		for t := 0; t < T; t++ {
			s := seg(r, t)
			pos[V+t] = int32(P+V) + count[s]
			count[s]++
		}
		mk := f.mask[r*K*S : (r+1)*K*S]
		for i := 0; i < S; i++ {
			row := mk[i*K : (i+1)*K]
			for j := range row {
				row[j] = ninf
			}
			for j := 0; j < P; j++ {
				row[j] = 0
			}
			for j := 0; j < V && (j <= i || i >= V); j++ {
				row[P+j] = 0
			}
			if i < V {
				continue
			}
			ti := i - V
			si := seg(r, ti)
			row[P+V+ti] = 0
			if si < 0 {
				continue
			}
			for tj := 0; tj < ti; tj++ {
				if seg(r, tj) == si {
					row[P+V+tj] = 0
				}
			}
		}
	}
	if err := f.Tokens.SetInts(tokens); err != nil {
		return fmt.Errorf("set batch: %w", err)
	}
	// With every block skipped (LayerSkipHook) no attention reads the
	// positions and the mask, and the graph allocates neither.
	if f.Positions.Allocated() {
		if err := f.Positions.SetInts(f.posBuf); err != nil {
			return fmt.Errorf("set batch: %w", err)
		}
	}
	if f.Mask.Allocated() {
		if err := f.Mask.SetFloats(f.mask); err != nil {
			return fmt.Errorf("set batch: %w", err)
		}
	}
	if f.outIdx != nil {
		if f.ids == nil {
			f.ids = make([]int32, B*T)
			for r := 0; r < B; r++ {
				for t := 0; t < T; t++ {
					f.ids[r*T+t] = int32(r*S + V + t)
				}
			}
		}
		if err := f.outIdx.SetInts(f.ids); err != nil {
			return fmt.Errorf("set batch: %w", err)
		}
	}
	return b.fillInputs()
}

// Logits computes the full-sequence logits of a batch (B x T tokens,
// optional segment ids as in SetBatch) with the hook stack, returning
// B*T*n_vocab values (vocabulary innermost). It builds and frees a graph on
// every call: training loops should keep a Forward instead.
func (m *Model) Logits(shape Shape, tokens, segments []int32, hooks []Hook) ([]float32, error) {
	size := m.GraphSize()
	ctx, err := binding.NewGraphContext(size, size, false)
	if err != nil {
		return nil, err
	}
	defer ctx.Close()
	f, err := m.BuildForward(ctx, shape, hooks)
	if err != nil {
		return nil, err
	}
	g, err := ctx.NewGraph(size, false)
	if err != nil {
		return nil, err
	}
	if err := g.BuildForward(f.Logits); err != nil {
		return nil, err
	}
	alloc, err := m.backend.NewAllocator()
	if err != nil {
		return nil, err
	}
	defer alloc.Close()
	if err := alloc.Alloc(g); err != nil {
		return nil, err
	}
	if err := f.SetBatch(tokens, segments); err != nil {
		return nil, err
	}
	if err := m.backend.Compute(g); err != nil {
		return nil, err
	}
	return f.Logits.Floats()
}
