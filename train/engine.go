// Package train is ggtune's training engine, shared by every method (LoRA,
// full and head-only fine-tuning, soft prompts): forward + masked
// cross-entropy + backward with gradient accumulation, AdamW with
// in-graph global gradient-norm clipping, learning-rate schedules,
// evaluation, checkpoints, metrics and progress.
//
// The engine knows nothing about the method it trains: it sees a Builder
// that builds the model's forward graph (with the method's hooks), and the
// list of trainable F32 tensors.
package train

import (
	"errors"
	"fmt"
	"math"

	"github.com/ggtune/ggtune/binding"
)

// Forward is a built forward pass for a B×T batch.
type Forward interface {
	// Logits returns the output logits, [n_vocab, T, B] (F32).
	Logits() *binding.Tensor
	// SetBatch fills the graph's inputs (after allocation): tokens and
	// segment ids, B*T each, sequence-major.
	SetBatch(tokens, segments []int32) error
}

// Reseeder is implemented by forwards with random inputs (dropout masks):
// the engine reseeds them before every training computation with a value
// derived from the optimizer step and micro batch, so that a run resumed
// from a checkpoint draws the same masks as an uninterrupted one.
type Reseeder interface {
	Reseed(seed uint64)
}

// Checkpointer is implemented by forwards that support activation
// checkpointing. Checkpoints returns the boundaries between which the
// backward pass recomputes activations instead of keeping them (each
// transformer block's input, in graph order), or nil to keep every
// activation; see binding.Graph.SetCheckpoints.
type Checkpointer interface {
	Checkpoints() []*binding.Tensor
}

// GraphSizer is implemented by builders that know how many nodes their
// forward graph needs; the engine then sizes its training graph (forward
// and backward) from it instead of a fixed default.
type GraphSizer interface {
	GraphSize() int
}

// Builder builds forward graphs of the model being trained.
type Builder interface {
	// BuildForward adds the forward pass for a B×T batch to ctx. train
	// selects training behaviour (e.g. dropout).
	BuildForward(ctx *binding.Context, b, t int, train bool) (Forward, error)
	// VocabSize returns the number of logits per position.
	VocabSize() int
}

// Batch is one B×T training batch. Targets[i] is the token to predict at
// position i, or -1 where no loss is taken; Segments[i] identifies the
// packed document of position i (attention never crosses segments).
type Batch struct {
	B, T     int
	Tokens   []int32
	Targets  []int32
	Segments []int32
	// Teacher is the teacher's top-k prediction at every position, for an
	// engine distilling from precomputed predictions (Distill.TopK).
	Teacher *TeacherTopK
}

// Validate checks the batch's sizes and target range.
func (b Batch) Validate(vocab int) error {
	n := b.B * b.T
	if b.B <= 0 || b.T <= 0 || len(b.Tokens) != n || len(b.Targets) != n || (b.Segments != nil && len(b.Segments) != n) {
		return fmt.Errorf("batch %dx%d: tokens %d, targets %d, segments %d", b.B, b.T, len(b.Tokens), len(b.Targets), len(b.Segments))
	}
	for i, t := range b.Targets {
		if t < -1 || int(t) >= vocab {
			return fmt.Errorf("batch: target %d at %d is outside the vocabulary of %d", t, i, vocab)
		}
	}
	return nil
}

// LossTokens returns the number of positions that carry a loss.
func (b Batch) LossTokens() int {
	n := 0
	for _, t := range b.Targets {
		if t >= 0 {
			n++
		}
	}
	return n
}

// AdamW holds the optimizer's hyper-parameters.
type AdamW struct {
	Beta1, Beta2, Eps, WeightDecay float64
	// MaxGradNorm clips the global gradient norm (0 disables).
	MaxGradNorm float64
}

// DefaultAdamW returns PyTorch's AdamW defaults with clipping at 1.
func DefaultAdamW() AdamW {
	return AdamW{Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0, MaxGradNorm: 1}
}

// ErrNoLossTokens reports a batch without any position to learn from.
var ErrNoLossTokens = errors.New("batch has no loss tokens")

// ErrDiverged reports a non-finite loss, gradient norm or parameter: the
// run has diverged and its parameters must not be saved as a result.
var ErrDiverged = errors.New("training diverged")

// Group is a set of trainable tensors that share optimizer settings
// (PyTorch's parameter groups): LoRA+ gives B a larger learning rate, and
// norms, biases and DoRA magnitudes usually take no weight decay.
type Group struct {
	Name   string
	Params []*binding.Tensor
	// LRScale multiplies the scheduled learning rate; 0 means 1.
	LRScale float64
	// WeightDecay overrides AdamW.WeightDecay for this group when not nil.
	WeightDecay *float64
}

// Groups wraps tensors in a single group with the optimizer's settings.
func Groups(params ...*binding.Tensor) []Group { return []Group{{Name: "all", Params: params}} }

// StepStats describes one optimizer step.
type StepStats struct {
	// Loss is the mean loss over all loss tokens of the step's micro batches.
	Loss float64
	// LossTokens is the number of positions that carried loss.
	LossTokens int
	// GradNorm is the global gradient norm before clipping.
	GradNorm float64
}

// Engine computes losses, gradients and optimizer steps for fixed-shape
// batches. It owns its graphs, optimizer state and compute memory; the
// trainable tensors stay owned by the caller. Not safe for concurrent use.
//
// Gradients accumulate as sums over loss tokens: a step's gradient is that
// of the mean loss over every loss token of all its micro batches, however
// unevenly the tokens are spread over them.
type Engine struct {
	b, t, vocab int
	backend     *binding.Backend
	groups      []Group
	params      []*binding.Tensor
	groupOf     []int // group index of each parameter
	opt         AdamW

	state    *binding.Context // grad accumulators, moments, loss seed
	stateBuf *binding.Buffer
	accs     []*binding.Tensor
	ms, vs   []*binding.Tensor
	seed     *binding.Tensor

	trainCtx   *binding.Context
	trainGraph *binding.Graph
	trainAlloc *binding.Allocator
	trainFwd   Forward
	trainIn    lossInputs

	evalCtx   *binding.Context
	evalGraph *binding.Graph
	evalAlloc *binding.Allocator
	evalFwd   Forward
	evalIn    lossInputs

	normCtx   *binding.Context
	normGraph *binding.Graph
	normAlloc *binding.Allocator
	normSq    *binding.Tensor // Σ‖acc‖²

	optCtx   *binding.Context
	optGraph *binding.Graph
	optAlloc *binding.Allocator
	adamPars []*binding.Tensor // one per group
	factor   *binding.Tensor   // clip / loss tokens
	paramSq  []*binding.Tensor // ‖p‖² after the update, per parameter

	distill *Distill // nil: plain cross entropy

	step        int
	accumulated int     // micro batches since the last step
	lossSum     float64 // summed loss since the last step
	lossTokens  int     // loss tokens since the last step
}

// lossInputs are the graph tensors of the masked cross-entropy loss,
// computed from integer targets by binding's fused kernel: no one-hot
// labels, and the accuracy counted in the graph.
type lossInputs struct {
	targets *binding.Tensor // I32 [B*T], -1 where no loss is taken
	// rows and mask replace targets on a device backend (the loss from
	// ggml's own operations; see binding.SparseTargets).
	rows, mask *binding.Tensor
	lossSum    *binding.Tensor // Σ loss over the loss tokens
	correct    *binding.Tensor // loss tokens whose argmax is the target
	divSum     *binding.Tensor // Σ divergence from the teacher (distillation)
	distill    *distillInputs  // the teacher's side (distillation)
	// loss is what the backward pass differentiates (training graphs):
	// Σ logits ⊙ stopgrad(∂lossSum/∂logits), whose gradient is that of lossSum.
	loss *binding.Tensor
	// order lists the outputs in the order the graph must be built (so that
	// the chunks of a chunked loss are computed one after the other).
	order []*binding.Tensor
	// chunks is the number of chunks of positions of the loss.
	chunks int
}

// chunkElems bounds the vocabulary-sized tensors of one chunk of positions
// (8M elements, 32 MiB of F32): past twice that, the head and the loss are
// computed in equal chunks. A variable for tests.
var chunkElems int64 = 8 << 20

// plainHead returns the frozen output weight W and the hidden states h when
// logits are exactly W·h (no hook or bias on the output layer, W no
// parameter), else nils.
func plainHead(logits *binding.Tensor) (w, h *binding.Tensor) {
	for logits != nil && (logits.Op() == "RESHAPE" || logits.Op() == "VIEW") {
		logits = logits.Src(0)
	}
	if logits == nil || logits.Op() != "MUL_MAT" {
		return nil, nil
	}
	w, h = logits.Src(0), logits.Src(1)
	frozen := func(t *binding.Tensor) bool { return t.Op() == "NONE" && !t.IsParam() }
	if !(frozen(w) || (w.Op() == "CPY" && frozen(w.Src(0)))) {
		return nil, nil
	}
	if h.Dim(2) != 1 || h.Dim(3) != 1 || !h.Contiguous() || h.Type() != binding.TypeF32 {
		return nil, nil
	}
	return w, h
}

// defaultGraphSize is the node capacity of the forward graph when the
// builder does not say (see GraphSizer).
const defaultGraphSize = 1 << 14

// graphSizes returns the node capacities of the evaluation graph and of the
// training graph (forward, loss, backward, and the forward nodes that
// activation checkpointing recomputes: about six times as many).
func graphSizes(builder Builder) (eval, training int) {
	n := defaultGraphSize
	if gs, ok := builder.(GraphSizer); ok && gs.GraphSize() > 0 {
		n = gs.GraphSize()
	}
	n += 64 // the loss
	return n, 7 * n
}

// NewEngine builds the training, evaluation and optimizer graphs for b×t
// batches of the model described by builder, training the tensors of groups.
// Options change the objective (WithDistill).
func NewEngine(builder Builder, groups []Group, backend *binding.Backend, b, t int, opt AdamW, opts ...Option) (*Engine, error) {
	if b <= 0 || t <= 0 {
		return nil, fmt.Errorf("new engine: batch %dx%d", b, t)
	}
	e := &Engine{b: b, t: t, vocab: builder.VocabSize(), backend: backend, groups: groups, opt: opt}
	builder, err := e.applyOptions(builder, opts)
	if err != nil {
		return nil, fmt.Errorf("new engine: %w", err)
	}
	seen := map[*binding.Tensor]bool{}
	for gi, g := range groups {
		if g.LRScale < 0 || math.IsNaN(g.LRScale) || math.IsInf(g.LRScale, 0) {
			return nil, fmt.Errorf("new engine: group %q: learning-rate scale %v", g.Name, g.LRScale)
		}
		if g.WeightDecay != nil && (*g.WeightDecay < 0 || math.IsNaN(*g.WeightDecay)) {
			return nil, fmt.Errorf("new engine: group %q: weight decay %v", g.Name, *g.WeightDecay)
		}
		for _, p := range g.Params {
			if p == nil || seen[p] {
				return nil, fmt.Errorf("new engine: group %q: a parameter is nil or in two groups", g.Name)
			}
			seen[p] = true
			e.params = append(e.params, p)
			e.groupOf = append(e.groupOf, gi)
		}
	}
	if len(e.params) == 0 {
		return nil, fmt.Errorf("new engine: no trainable parameters")
	}
	if err := e.initState(); err != nil {
		e.Close()
		return nil, err
	}
	if err := e.buildTrain(builder); err != nil {
		e.Close()
		return nil, err
	}
	if err := e.buildEval(builder); err != nil {
		e.Close()
		return nil, err
	}
	if err := e.buildOpt(); err != nil {
		e.Close()
		return nil, err
	}
	binding.Logger().Debug("training engine", "batch", b, "tokens", t, "params", len(e.params),
		"train_buffer_mib", e.trainAlloc.BufferSize()>>20, "eval_buffer_mib", e.evalAlloc.BufferSize()>>20,
		"state_mib", e.stateBuf.Size()>>20)
	return e, nil
}

// portable reports whether the engine's graphs run on a device other than
// the CPU, and so are built from operations every backend has.
func (e *Engine) portable() bool { return !e.backend.IsCPU() }

func (e *Engine) initState() error {
	for _, p := range e.params {
		if p.Type() != binding.TypeF32 || !p.IsParam() || !p.Allocated() {
			return fmt.Errorf("new engine: parameter %s must be an allocated f32 tensor marked as a parameter", p)
		}
	}
	ctx, err := binding.NewGraphContext(3*len(e.params)+4, 1, false)
	if err != nil {
		return fmt.Errorf("new engine: %w", err)
	}
	e.state = ctx
	for _, p := range e.params {
		sh := p.Shape()
		e.accs = append(e.accs, ctx.NewTensor(binding.TypeF32, sh[:]...).SetName(p.Name()+".grad"))
		e.ms = append(e.ms, ctx.NewTensor(binding.TypeF32, sh[:]...).SetName(p.Name()+".adam_m"))
		e.vs = append(e.vs, ctx.NewTensor(binding.TypeF32, sh[:]...).SetName(p.Name()+".adam_v"))
	}
	e.seed = ctx.NewTensor(binding.TypeF32, 1).SetName("loss_seed")
	if ctx.Err() != nil {
		return fmt.Errorf("new engine: %w", ctx.Err())
	}
	if e.stateBuf, err = e.backend.AllocContext(ctx); err != nil {
		return fmt.Errorf("new engine: optimizer state: %w", err)
	}
	e.stateBuf.Clear(0)
	return e.seed.SetFloats([]float32{1})
}

// buildLoss adds the summed cross entropy over the logits. When the output
// layer is a plain frozen product and the logits of the batch are large, it
// computes the head and the loss in chunks of positions, and each chunk's
// gradient with respect to the hidden states right away (dh = Wᵀ·∂loss/∂z),
// so that only one chunk's vocabulary-sized tensors exist at a time: the
// training loss is then Σ h ⊙ stopgrad(dh).
func (e *Engine) buildLoss(ctx *binding.Context, fwd Forward, training bool) lossInputs {
	n := int64(e.b * e.t)
	var in lossInputs
	if e.portable() && e.distill == nil {
		in.rows = ctx.NewTensor(binding.TypeI32, n)
		in.mask = ctx.NewTensor(binding.TypeF32, n)
		if ctx.Err() != nil {
			return in
		}
		in.rows.SetName("target_rows").SetInput()
		in.mask.SetName("target_mask").SetInput()
	} else {
		if in.targets = ctx.NewTensor(binding.TypeI32, n); ctx.Err() != nil {
			return in
		}
		in.targets.SetName("targets").SetInput()
	}
	if e.distill != nil {
		if err := e.buildTeacher(ctx, &in); err != nil {
			ctx.Fail(err)
			return in
		}
	}
	chunk := n
	w, h := plainHead(fwd.Logits())
	if w != nil && h.Dim(1) == n && int64(e.vocab)*n > 2*chunkElems {
		// equal chunks of a multiple of 16 positions
		k := (int64(e.vocab)*n + chunkElems - 1) / chunkElems
		chunk = max(16, ((n+k-1)/k+15)/16*16)
	}
	if chunk >= n {
		logits := ctx.Reshape(fwd.Logits(), int64(e.vocab), n)
		ce := e.lossChunk(ctx, &in, logits, 0, n, training)
		in.lossSum = ctx.Sum(ce.loss)
		in.correct = ctx.Sum(ce.correct)
		in.order = []*binding.Tensor{in.lossSum, in.correct}
		if ce.div != nil {
			in.divSum = ctx.Sum(ce.div)
			in.order = append(in.order, in.divSum)
		}
		if training {
			in.loss = ctx.Sum(ctx.Mul(logits, ce.grad))
			in.order = append(in.order, in.loss)
		}
		in.chunks = 1
	} else {
		add := func(acc, x *binding.Tensor) *binding.Tensor {
			if acc == nil {
				return x
			}
			return ctx.Add(acc, x)
		}
		for c0 := int64(0); c0 < n && ctx.Err() == nil; c0 += chunk {
			m := min(chunk, n-c0)
			in.chunks++
			hc := ctx.View(h, []int64{h.Dim(0), m}, []int64{h.Stride(1)}, c0*h.Stride(1))
			ce := e.lossChunk(ctx, &in, ctx.MulMat(w, hc), c0, m, training)
			in.lossSum = add(in.lossSum, ctx.Sum(ce.loss))
			in.correct = add(in.correct, ctx.Sum(ce.correct))
			in.order = append(in.order, in.lossSum, in.correct)
			if ce.div != nil {
				in.divSum = add(in.divSum, ctx.Sum(ce.div))
				in.order = append(in.order, in.divSum)
			}
			if training {
				// ∂loss/∂h of the chunk, from operands that need no gradient
				g := ce.grad
				if e.portable() {
					// the rewrite's transposes on a device want it contiguous;
					// on the CPU, ggtune's GEMM reads the strided rows
					g = ctx.Cont(g)
				}
				dh := ctx.OutProd(w, ctx.Transpose(g))
				in.loss = add(in.loss, ctx.Sum(ctx.Mul(hc, dh)))
				in.order = append(in.order, in.loss)
			}
		}
	}
	if ctx.Err() != nil {
		return in
	}
	in.lossSum.SetName("loss_sum").SetOutput()
	in.correct.SetName("correct").SetOutput()
	if in.divSum != nil {
		in.divSum.SetName("divergence_sum").SetOutput()
	}
	if in.loss != nil {
		in.loss.SetName("loss").SetOutput()
	}
	return in
}

func (e *Engine) buildTrain(builder Builder) error {
	_, size := graphSizes(builder)
	ctx, err := binding.NewGraphContext(size, size, true)
	if err != nil {
		return fmt.Errorf("new engine: %w", err)
	}
	e.trainCtx = ctx
	if e.trainFwd, err = builder.BuildForward(ctx, e.b, e.t, true); err != nil {
		return fmt.Errorf("new engine: training graph: %w", err)
	}
	e.trainIn = e.buildLoss(ctx, e.trainFwd, true)
	if ctx.Err() != nil {
		return fmt.Errorf("new engine: training loss: %w", ctx.Err())
	}
	if err := e.trainIn.loss.SetLoss(); err != nil {
		return fmt.Errorf("new engine: %w", err)
	}
	if e.trainGraph, err = ctx.NewGraph(size, true); err != nil {
		return fmt.Errorf("new engine: %w", err)
	}
	e.trainGraph.SetPortable(e.portable())
	for _, t := range e.trainIn.order {
		if err := e.trainGraph.BuildForward(t); err != nil {
			return fmt.Errorf("new engine: %w", err)
		}
	}
	if c, ok := e.trainFwd.(Checkpointer); ok {
		e.trainGraph.SetCheckpoints(c.Checkpoints())
	}
	accs := map[*binding.Tensor]*binding.Tensor{e.trainIn.loss: e.seed}
	for i, p := range e.params {
		accs[p] = e.accs[i]
	}
	if err := e.trainGraph.BuildBackwardAccumulate(ctx, accs); err != nil {
		return fmt.Errorf("new engine: %w", err)
	}
	if e.trainAlloc, err = e.backend.NewAllocator(); err != nil {
		return fmt.Errorf("new engine: %w", err)
	}
	if err := e.trainAlloc.Alloc(e.trainGraph); err != nil {
		return fmt.Errorf("new engine: training graph: %w", err)
	}
	return nil
}

func (e *Engine) buildEval(builder Builder) error {
	size, _ := graphSizes(builder)
	ctx, err := binding.NewGraphContext(size, size, false)
	if err != nil {
		return fmt.Errorf("new engine: %w", err)
	}
	e.evalCtx = ctx
	if e.evalFwd, err = builder.BuildForward(ctx, e.b, e.t, false); err != nil {
		return fmt.Errorf("new engine: evaluation graph: %w", err)
	}
	e.evalIn = e.buildLoss(ctx, e.evalFwd, false)
	if ctx.Err() != nil {
		return fmt.Errorf("new engine: evaluation loss: %w", ctx.Err())
	}
	if e.evalGraph, err = ctx.NewGraph(size, false); err != nil {
		return fmt.Errorf("new engine: %w", err)
	}
	for _, t := range e.evalIn.order {
		if err := e.evalGraph.BuildForward(t); err != nil {
			return fmt.Errorf("new engine: %w", err)
		}
	}
	if e.evalAlloc, err = e.backend.NewAllocator(); err != nil {
		return fmt.Errorf("new engine: %w", err)
	}
	if err := e.evalAlloc.Alloc(e.evalGraph); err != nil {
		return fmt.Errorf("new engine: evaluation graph: %w", err)
	}
	return nil
}

// buildOpt builds the optimizer graphs: one for the global gradient norm,
// and one that scales every accumulated gradient by a factor (the clipping
// factor over the step's loss tokens), applies AdamW with the parameter's
// group settings, and measures every updated parameter.
func (e *Engine) buildOpt() error {
	n := len(e.params)
	ctx, err := binding.NewGraphContext(4*n+8, 4*n+8, false)
	if err != nil {
		return fmt.Errorf("new engine: %w", err)
	}
	e.normCtx = ctx
	for _, acc := range e.accs {
		var s *binding.Tensor
		if e.portable() {
			s = ctx.Sum(ctx.Sqr(acc))
		} else {
			s = ctx.SumSquares(acc) // one pass, no temporary of the accumulator's size
		}
		if e.normSq == nil {
			e.normSq = s
		} else {
			e.normSq = ctx.Add(e.normSq, s)
		}
	}
	if ctx.Err() != nil {
		return fmt.Errorf("new engine: gradient norm: %w", ctx.Err())
	}
	e.normSq.SetName("grad_norm_sq").SetOutput()
	if e.normGraph, err = ctx.NewGraph(4*n+8, false); err != nil {
		return fmt.Errorf("new engine: %w", err)
	}
	if err := e.normGraph.BuildForward(e.normSq); err != nil {
		return fmt.Errorf("new engine: gradient norm: %w", err)
	}
	if e.normAlloc, err = e.backend.NewAllocator(); err != nil {
		return fmt.Errorf("new engine: %w", err)
	}
	if err := e.normAlloc.Alloc(e.normGraph); err != nil {
		return fmt.Errorf("new engine: gradient norm: %w", err)
	}

	size := 8*n + 2*len(e.groups) + 8
	if ctx, err = binding.NewGraphContext(size, size, false); err != nil {
		return fmt.Errorf("new engine: %w", err)
	}
	e.optCtx = ctx
	for _, g := range e.groups {
		e.adamPars = append(e.adamPars, ctx.NewTensor(binding.TypeF32, 7).SetName("adamw_params."+g.Name).SetInput())
	}
	e.factor = ctx.NewTensor(binding.TypeF32, 1).SetName("grad_factor").SetInput()
	if e.optGraph, err = ctx.NewGraph(size, false); err != nil {
		return fmt.Errorf("new engine: %w", err)
	}
	for i, p := range e.params {
		var sq *binding.Tensor
		if e.portable() {
			g := ctx.Mul(e.accs[i], e.factor)
			step := ctx.OptStepAdamW(p, g, e.ms[i], e.vs[i], e.adamPars[e.groupOf[i]])
			sq = ctx.Sum(ctx.Sqr(step))
		} else {
			// scaling, AdamW, the finiteness check and zeroing the
			// accumulator in one pass over the values (memory-bound)
			sq = ctx.AdamWStep(p, e.accs[i], e.ms[i], e.vs[i], e.adamPars[e.groupOf[i]], e.factor)
		}
		if ctx.Err() != nil {
			return fmt.Errorf("new engine: optimizer graph: %w", ctx.Err())
		}
		sq.SetOutput()
		e.paramSq = append(e.paramSq, sq)
		if err := e.optGraph.BuildForward(sq); err != nil {
			return fmt.Errorf("new engine: optimizer graph: %w", err)
		}
	}
	if e.optAlloc, err = e.backend.NewAllocator(); err != nil {
		return fmt.Errorf("new engine: %w", err)
	}
	if err := e.optAlloc.Alloc(e.optGraph); err != nil {
		return fmt.Errorf("new engine: optimizer graph: %w", err)
	}
	return nil
}

func (e *Engine) setLossInputs(in lossInputs, fwd Forward, batch Batch) (int, error) {
	if batch.B != e.b || batch.T != e.t {
		return 0, fmt.Errorf("batch %dx%d, engine built for %dx%d", batch.B, batch.T, e.b, e.t)
	}
	if err := batch.Validate(e.vocab); err != nil {
		return 0, err
	}
	ntok := batch.LossTokens()
	if ntok == 0 {
		return 0, ErrNoLossTokens
	}
	segs := batch.Segments
	if segs == nil {
		segs = make([]int32, len(batch.Tokens))
	}
	if err := fwd.SetBatch(batch.Tokens, segs); err != nil {
		return 0, err
	}
	if in.rows == nil {
		if err := in.targets.SetInts(batch.Targets); err != nil {
			return 0, err
		}
	} else {
		rows, mask := binding.SparseTargets(batch.Targets)
		if err := in.rows.SetInts(rows); err != nil {
			return 0, err
		}
		if err := in.mask.SetFloats(mask); err != nil {
			return 0, err
		}
	}
	if in.distill != nil {
		if err := e.setTeacher(in.distill, batch, segs); err != nil {
			return 0, err
		}
	}
	return ntok, nil
}

// Accumulate runs the forward and backward pass of one micro batch, adding
// the gradient of its summed loss to the accumulators, and returns the
// batch's mean loss over its loss tokens.
func (e *Engine) Accumulate(batch Batch) (float64, error) {
	if e.trainGraph == nil {
		return 0, fmt.Errorf("train step: %w", ErrEvalOnly)
	}
	if r, ok := e.trainFwd.(Reseeder); ok {
		r.Reseed(uint64(e.step)<<20 | uint64(e.accumulated))
	}
	ntok, err := e.setLossInputs(e.trainIn, e.trainFwd, batch)
	if err != nil {
		return 0, fmt.Errorf("train step: %w", err)
	}
	if err := e.backend.Compute(e.trainGraph); err != nil {
		return 0, fmt.Errorf("train step: %w", err)
	}
	e.accumulated++
	v, err := e.trainIn.lossSum.Floats()
	if err != nil {
		return 0, fmt.Errorf("train step: %w", err)
	}
	sum := float64(v[0])
	if math.IsNaN(sum) || math.IsInf(sum, 0) {
		return sum, fmt.Errorf("train step %d: %w: loss is %v", e.step+1, ErrDiverged, sum)
	}
	e.lossSum += sum
	e.lossTokens += ntok
	return sum / float64(ntok), nil
}

// Step applies one AdamW step with learning rate lr (times each group's
// scale) to the gradients accumulated since the last step, clears them, and
// reports the step's mean loss and gradient norm. A non-finite gradient norm
// leaves the parameters untouched and returns ErrDiverged; so does an update
// that makes a parameter non-finite (the parameters are then spoilt: reload
// them from the last checkpoint).
func (e *Engine) Step(lr float64) (StepStats, error) {
	if e.accumulated == 0 || e.lossTokens == 0 {
		return StepStats{}, fmt.Errorf("optimizer step: no gradients accumulated")
	}
	st := StepStats{Loss: e.lossSum / float64(e.lossTokens), LossTokens: e.lossTokens}
	if err := e.backend.Compute(e.normGraph); err != nil {
		return st, fmt.Errorf("optimizer step: %w", err)
	}
	sq, err := e.normSq.Floats()
	if err != nil {
		return st, fmt.Errorf("optimizer step: %w", err)
	}
	// The accumulators hold gradients of summed losses; the step's gradient
	// is their sum over the loss tokens.
	inv := 1 / float64(e.lossTokens)
	st.GradNorm = math.Sqrt(float64(sq[0])) * inv
	if math.IsNaN(st.GradNorm) || math.IsInf(st.GradNorm, 0) {
		return st, fmt.Errorf("optimizer step %d: %w: gradient norm is %v", e.step+1, ErrDiverged, st.GradNorm)
	}
	clip := 1.0
	if o := e.opt.MaxGradNorm; o > 0 && st.GradNorm > o {
		clip = o / (st.GradNorm + 1e-6)
	}
	e.step++
	t := float64(e.step)
	o := e.opt
	for gi, g := range e.groups {
		glr, wd := lr, o.WeightDecay
		if g.LRScale > 0 {
			glr *= g.LRScale
		}
		if g.WeightDecay != nil {
			wd = *g.WeightDecay
		}
		par := []float32{float32(glr), float32(o.Beta1), float32(o.Beta2), float32(o.Eps), float32(wd),
			float32(1 / (1 - math.Pow(o.Beta1, t))), float32(1 / (1 - math.Pow(o.Beta2, t)))}
		if err := e.adamPars[gi].SetFloats(par); err != nil {
			return st, fmt.Errorf("optimizer step: %w", err)
		}
	}
	if err := e.factor.SetFloats([]float32{float32(clip * inv)}); err != nil {
		return st, fmt.Errorf("optimizer step: %w", err)
	}
	if err := e.backend.Compute(e.optGraph); err != nil {
		return st, fmt.Errorf("optimizer step: %w", err)
	}
	for i, sq := range e.paramSq {
		v, err := sq.Floats()
		if err != nil {
			return st, fmt.Errorf("optimizer step: %w", err)
		}
		if f := float64(v[0]); math.IsNaN(f) || math.IsInf(f, 0) {
			return st, fmt.Errorf("optimizer step %d: %w: parameter %s is not finite after the update (learning rate %g)",
				e.step, ErrDiverged, e.params[i].Name(), lr)
		}
	}
	if e.portable() { // the CPU's fused step zeroed them
		for _, acc := range e.accs {
			if err := acc.Zero(); err != nil {
				return st, fmt.Errorf("optimizer step: %w", err)
			}
		}
	}
	e.accumulated, e.lossSum, e.lossTokens = 0, 0, 0
	return st, nil
}

// EvalResult is the outcome of evaluating one batch.
type EvalResult struct {
	LossSum float64 // summed over loss tokens
	Tokens  int     // loss tokens
	Correct int     // loss tokens whose argmax logit is the target
	// DivSum is the divergence from the teacher summed over loss tokens
	// (distillation engines only).
	DivSum float64
}

// Eval computes the loss and token accuracy of a batch without changing
// anything.
func (e *Engine) Eval(batch Batch) (EvalResult, error) {
	ntok, err := e.setLossInputs(e.evalIn, e.evalFwd, batch)
	if err != nil {
		return EvalResult{}, fmt.Errorf("eval: %w", err)
	}
	if err := e.backend.Compute(e.evalGraph); err != nil {
		return EvalResult{}, fmt.Errorf("eval: %w", err)
	}
	lv, err := e.evalIn.lossSum.Floats()
	if err != nil {
		return EvalResult{}, fmt.Errorf("eval: %w", err)
	}
	cv, err := e.evalIn.correct.Floats()
	if err != nil {
		return EvalResult{}, fmt.Errorf("eval: %w", err)
	}
	res := EvalResult{LossSum: float64(lv[0]), Tokens: ntok, Correct: int(cv[0] + 0.5)}
	if e.evalIn.divSum != nil {
		dv, err := e.evalIn.divSum.Floats()
		if err != nil {
			return EvalResult{}, fmt.Errorf("eval: %w", err)
		}
		res.DivSum = float64(dv[0])
	}
	return res, nil
}

// StepCount returns the number of optimizer steps taken.
func (e *Engine) StepCount() int { return e.step }

// Params returns the trainable tensors of every group, in order.
func (e *Engine) Params() []*binding.Tensor { return e.params }

// Close frees the engine's graphs and state (not the parameters). It is
// idempotent.
func (e *Engine) Close() {
	for _, a := range []*binding.Allocator{e.trainAlloc, e.evalAlloc, e.normAlloc, e.optAlloc} {
		a.Close()
	}
	for _, c := range []*binding.Context{e.trainCtx, e.evalCtx, e.normCtx, e.optCtx} {
		if c != nil {
			c.Close()
		}
	}
	e.stateBuf.Close()
	if e.state != nil {
		e.state.Close()
	}
}

// Placement reports where the operations of the training graph run (see
// binding.Placement): on a device backend, which fell back to the CPU.
// Empty on the CPU backend, where every operation runs on the CPU.
func (e *Engine) Placement() binding.Placement {
	if e.trainAlloc == nil {
		return binding.Placement{}
	}
	return e.trainAlloc.Placement()
}
