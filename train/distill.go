package train

import (
	"errors"
	"fmt"
	"math"
	"strings"

	"github.com/ggtune/ggtune/binding"
)

// Divergence names the divergence D of a distillation objective.
type Divergence string

// The divergences of Distill.
const (
	// KL is the forward KL(teacher‖student), Hinton's distillation (the default).
	KL Divergence = "kl"
	// ReverseKL is KL(student‖teacher), mode-seeking.
	ReverseKL Divergence = "reverse-kl"
	// JSD is GKD's generalized Jensen-Shannon divergence
	// β·KL(p‖m) + (1−β)·KL(q‖m), m = β·p + (1−β)·q (β = 0: forward KL,
	// β = 1: reverse KL).
	JSD Divergence = "jsd"
)

// ParseDivergence parses kl, reverse-kl or jsd (case-insensitive).
func ParseDivergence(s string) (Divergence, error) {
	switch d := Divergence(strings.ToLower(s)); d {
	case KL, ReverseKL, JSD:
		return d, nil
	}
	return "", fmt.Errorf("%w: divergence %q (want kl, reverse-kl or jsd)", ErrDistill, s)
}

// ErrDistill reports invalid distillation settings or teacher inputs.
var ErrDistill = errors.New("invalid distillation")

// Distill makes the engine's objective a distillation from a teacher
// (see WithDistill): per loss token
//
//	(1−α)·CE(labels) + α·T²·D(teacher‖student) at temperature T.
//
// The teacher is either a second model whose forward pass runs in the
// same graph (Teacher) or precomputed top-k predictions carried by every
// batch (Batch.Teacher, TopK ids per position).
type Distill struct {
	Alpha       float64    // weight of the divergence, in [0, 1]
	Temperature float64    // T > 0 of both distributions
	Divergence  Divergence // KL (default), ReverseKL or JSD
	Beta        float64    // β of JSD, in [0, 1]
	// Teacher builds the teacher's forward graph (no training behaviour,
	// no parameters), over the same vocabulary as the student; nil when
	// batches carry the teacher's top-k.
	Teacher Builder
	// TopK is the number of teacher tokens per position in Batch.Teacher
	// (used when Teacher is nil).
	TopK int
}

// DefaultDistill returns the usual LLM setting: α = 0.5, T = 1, forward KL
// (β = 0.5 for JSD).
func DefaultDistill() Distill {
	return Distill{Alpha: 0.5, Temperature: 1, Divergence: KL, Beta: 0.5}
}

// Validate checks the settings against a student vocabulary of vocab.
func (d Distill) Validate(vocab int) error {
	switch {
	case !(d.Alpha >= 0 && d.Alpha <= 1):
		return fmt.Errorf("%w: alpha %v (want [0, 1])", ErrDistill, d.Alpha)
	case !(d.Temperature > 0) || math.IsInf(d.Temperature, 0):
		return fmt.Errorf("%w: temperature %v (want > 0)", ErrDistill, d.Temperature)
	case !(d.Beta >= 0 && d.Beta <= 1):
		return fmt.Errorf("%w: beta %v (want [0, 1])", ErrDistill, d.Beta)
	case d.Teacher == nil && (d.TopK < 1 || d.TopK > vocab):
		return fmt.Errorf("%w: top-k %d with a vocabulary of %d (want 1..%d, or a teacher model)", ErrDistill, d.TopK, vocab, vocab)
	case d.Teacher != nil && d.Teacher.VocabSize() != vocab:
		return fmt.Errorf("%w: the teacher has %d logits per position, the student %d", ErrDistill, d.Teacher.VocabSize(), vocab)
	}
	if _, err := ParseDivergence(string(d.Divergence)); err != nil {
		return err
	}
	return nil
}

func (d Distill) kernelParams() []float32 {
	div := map[Divergence]binding.Divergence{KL: binding.DivKL, ReverseKL: binding.DivReverseKL, JSD: binding.DivJSD}[d.Divergence]
	return []float32{float32(d.Alpha), float32(d.Temperature), float32(div), float32(d.Beta)}
}

// TeacherTopK is a teacher's sparse prediction for a B×T batch: at each
// position i, IDs[i*K:(i+1)*K] are K distinct token ids and
// LogProbs[i*(K+1):(i+1)*(K+1)] their log-probabilities at the
// distillation temperature followed by the log of the rest of the mass
// (the tail). Positions without a loss token may hold anything in range.
type TeacherTopK struct {
	K        int
	IDs      []int32
	LogProbs []float32
}

// Option is an optional setting of NewEngine and NewEvalEngine.
type Option func(*Engine)

// WithDistill trains (and evaluates) with the distillation objective d
// instead of plain cross entropy. Training losses are then the objective;
// evaluations report the cross entropy as Loss and the mean divergence D.
func WithDistill(d Distill) Option {
	return func(e *Engine) { e.distill = &d }
}

// distillInputs are the graph tensors of a distillation loss.
type distillInputs struct {
	params   *binding.Tensor // F32 [4]
	teacher  Forward         // on the fly
	tw, th   *binding.Tensor // the teacher's plain head, when it has one
	tlogits  *binding.Tensor // [V, N], on the fly
	ids, lps *binding.Tensor // top-k inputs
}

// teacherSized adds the teacher's graph nodes to the student builder's.
type teacherSized struct {
	Builder
	teacher Builder
}

// GraphSize implements GraphSizer.
func (b teacherSized) GraphSize() int {
	n := 0
	for _, x := range []Builder{b.Builder, b.teacher} {
		if gs, ok := x.(GraphSizer); ok && gs.GraphSize() > 0 {
			n += gs.GraphSize()
		} else {
			n += defaultGraphSize
		}
	}
	return n
}

// applyOptions applies opts and checks them; it returns the builder whose
// graph size covers everything built per step.
func (e *Engine) applyOptions(builder Builder, opts []Option) (Builder, error) {
	for _, o := range opts {
		o(e)
	}
	if e.distill == nil {
		return builder, nil
	}
	if err := e.distill.Validate(e.vocab); err != nil {
		return nil, err
	}
	if e.distill.Teacher != nil {
		return teacherSized{Builder: builder, teacher: e.distill.Teacher}, nil
	}
	return builder, nil
}

// buildTeacher adds the teacher's side of the loss: its forward pass (on
// the fly) or the top-k inputs, and the kernel's parameters.
func (e *Engine) buildTeacher(ctx *binding.Context, in *lossInputs) error {
	n := int64(e.b * e.t)
	di := &distillInputs{params: ctx.NewTensor(binding.TypeF32, 4)}
	in.distill = di
	if d := e.distill; d.Teacher != nil {
		f, err := d.Teacher.BuildForward(ctx, e.b, e.t, false)
		if err != nil {
			return fmt.Errorf("teacher graph: %w", err)
		}
		di.teacher = f
		if l := f.Logits(); l == nil || l.Elements() != int64(e.vocab)*n {
			return fmt.Errorf("%w: the teacher's logits are not [%d, %d]", ErrDistill, e.vocab, n)
		}
		if w, h := plainHead(f.Logits()); w != nil && h.Dim(1) == n {
			di.tw, di.th = w, h
		} else {
			di.tlogits = ctx.Reshape(f.Logits(), int64(e.vocab), n)
		}
	} else {
		di.ids = ctx.NewTensor(binding.TypeI32, int64(d.TopK), n)
		di.lps = ctx.NewTensor(binding.TypeF32, int64(d.TopK+1), n)
		if ctx.Err() == nil {
			di.ids.SetName("teacher_ids").SetInput()
			di.lps.SetName("teacher_logprobs").SetInput()
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	di.params.SetName("distill_params").SetInput()
	return nil
}

// chunkLoss is the loss of positions [c0, c0+m) from their logits.
type chunkLoss struct {
	grad, loss, correct, div *binding.Tensor
}

// lossChunk computes the loss of positions [c0, c0+m) with logits [V, m]:
// cross entropy, or the distillation objective.
func (e *Engine) lossChunk(ctx *binding.Context, in *lossInputs, logits *binding.Tensor, c0, m int64, training bool) chunkLoss {
	// the chunk's positions of a per-position input (4-byte elements)
	chunk := func(x *binding.Tensor) *binding.Tensor {
		if m == int64(e.b*e.t) {
			return x
		}
		return ctx.View(x, []int64{m}, nil, c0*4)
	}
	di := in.distill
	if di == nil && in.rows != nil {
		ce := ctx.SparseCrossEntropyOps(logits, chunk(in.rows), chunk(in.mask))
		return chunkLoss{grad: ce.Grad, loss: ce.Loss, correct: ce.Correct}
	}
	tc := chunk(in.targets)
	if di == nil {
		ce := ctx.SparseCrossEntropy(logits, tc)
		return chunkLoss{grad: ce.Grad, loss: ce.Loss, correct: ce.Correct}
	}
	var tch binding.DistillTeacher
	cols := func(x *binding.Tensor) *binding.Tensor {
		if m == int64(e.b*e.t) {
			return x
		}
		return ctx.View(x, []int64{x.Dim(0), m}, []int64{x.Stride(1)}, c0*x.Stride(1))
	}
	switch {
	case di.tw != nil:
		tch.Logits = ctx.MulMat(di.tw, cols(di.th))
	case di.tlogits != nil:
		tch.Logits = cols(di.tlogits)
	default:
		tch.IDs, tch.LogProbs = cols(di.ids), cols(di.lps)
	}
	d := ctx.Distill(logits, tc, di.params, tch)
	cl := chunkLoss{grad: d.Grad, loss: d.CE, correct: d.Correct, div: d.Div}
	if training {
		cl.loss = d.Loss
	}
	return cl
}

// setTeacher fills the teacher's inputs for batch (tokens and segments as
// given to the student).
func (e *Engine) setTeacher(di *distillInputs, batch Batch, segs []int32) error {
	if err := di.params.SetFloats(e.distill.kernelParams()); err != nil {
		return err
	}
	if di.teacher != nil {
		if err := di.teacher.SetBatch(batch.Tokens, segs); err != nil {
			return fmt.Errorf("teacher: %w", err)
		}
		return nil
	}
	tk, k, n := batch.Teacher, e.distill.TopK, e.b*e.t
	switch {
	case tk == nil:
		return fmt.Errorf("%w: the batch carries no teacher top-k", ErrDistill)
	case tk.K != k || len(tk.IDs) != k*n || len(tk.LogProbs) != (k+1)*n:
		return fmt.Errorf("%w: teacher top-%d with %d ids and %d log-probabilities for %d positions (want top-%d)", ErrDistill, tk.K, len(tk.IDs), len(tk.LogProbs), n, k)
	}
	for i, id := range tk.IDs {
		if id < 0 || int(id) >= e.vocab {
			return fmt.Errorf("%w: teacher token %d at position %d is outside the vocabulary of %d", ErrDistill, id, i/k, e.vocab)
		}
	}
	for i, lp := range tk.LogProbs {
		if math.IsNaN(float64(lp)) || lp > 1e-3 {
			return fmt.Errorf("%w: teacher log-probability %v at position %d", ErrDistill, lp, i/(k+1))
		}
	}
	if err := di.ids.SetInts(tk.IDs); err != nil {
		return err
	}
	return di.lps.SetFloats(tk.LogProbs)
}

// BufferSizes returns the bytes of the training and evaluation graphs'
// compute buffers (activations, logits and gradients; 0 for a graph not
// built).
func (e *Engine) BufferSizes() (training, eval int64) {
	if e.trainAlloc != nil {
		training = e.trainAlloc.BufferSize()
	}
	if e.evalAlloc != nil {
		eval = e.evalAlloc.BufferSize()
	}
	return training, eval
}
