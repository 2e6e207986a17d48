package binding

/*
#include <stdlib.h>
#include "ggml.h"
#include "ggml-backend.h"
#include "ggml-opt.h"

// ggtune_opt_free_copy frees the context that ggml_opt_alloc keeps for its
// copy of the allocated graph, which ggml_opt_free (at the pinned version)
// forgets. struct ggml_opt_context is private to ggml-opt.cpp; its first
// seven members are pointers: backend_sched, allocated_graph,
// allocated_graph_copy, ctx_static, ctx_cpu, ctx_compute, ctx_copy. The two
// the caller passed in (sched and ctx_compute) are compared first, so a
// changed layout leaks instead of freeing the wrong memory.
static void ggtune_opt_free_copy(ggml_opt_context_t opt, ggml_backend_sched_t sched, struct ggml_context * compute) {
    void ** fields = (void **) opt;
    if (fields[0] != (void *) sched || fields[5] != (void *) compute) {
        return;
    }
    struct ggml_context * copy = (struct ggml_context *) fields[6];
    if (copy != NULL) {
        ggml_free(copy);
        fields[6] = NULL;
    }
}

// ggtune_opt_params fills ggml-opt's parameters for static graphs with
// constant optimizer parameters read from ud (which the caller updates
// before each step).
static struct ggml_opt_params ggtune_opt_params(ggml_backend_sched_t sched, struct ggml_context * ctx,
        struct ggml_tensor * inputs, struct ggml_tensor * outputs, int loss, int period, int optimizer, void * ud) {
    struct ggml_opt_params p = ggml_opt_default_params(sched, (enum ggml_opt_loss_type) loss);
    p.ctx_compute     = ctx;
    p.inputs          = inputs;
    p.outputs         = outputs;
    p.build_type      = GGML_OPT_BUILD_TYPE_OPT;
    p.opt_period      = period;
    p.get_opt_pars    = ggml_opt_get_constant_optimizer_params;
    p.get_opt_pars_ud = ud;
    p.optimizer       = (enum ggml_opt_optimizer_type) optimizer;
    return p;
}
*/
import "C"

import (
	"errors"
	"fmt"
	"math"
	"runtime"
	"unsafe"
)

// LossType selects the quantity ggml-opt minimises from the outputs.
type LossType int

// Loss types of ggml-opt. Mean and Sum reduce the outputs themselves (build
// the loss into the graph); CrossEntropy and MeanSquaredError compare them
// with the labels tensor ([OptContext.Labels]).
const (
	LossMean             LossType = C.GGML_OPT_LOSS_TYPE_MEAN
	LossSum              LossType = C.GGML_OPT_LOSS_TYPE_SUM
	LossCrossEntropy     LossType = C.GGML_OPT_LOSS_TYPE_CROSS_ENTROPY
	LossMeanSquaredError LossType = C.GGML_OPT_LOSS_TYPE_MEAN_SQUARED_ERROR
)

// OptimizerType selects ggml-opt's optimizer.
type OptimizerType int

// Optimizers of ggml-opt.
const (
	OptimizerAdamW OptimizerType = C.GGML_OPT_OPTIMIZER_TYPE_ADAMW
	OptimizerSGD   OptimizerType = C.GGML_OPT_OPTIMIZER_TYPE_SGD
)

// String returns "adamw" or "sgd".
func (t OptimizerType) String() string {
	switch t {
	case OptimizerAdamW:
		return "adamw"
	case OptimizerSGD:
		return "sgd"
	}
	return fmt.Sprintf("optimizer(%d)", int(t))
}

// AdamWParams are the AdamW hyperparameters.
type AdamWParams struct {
	Alpha float32 // learning rate, > 0
	Beta1 float32 // first moment decay, in [0, 1]
	Beta2 float32 // second moment decay, in [0, 1]
	Eps   float32 // >= 0
	WD    float32 // decoupled weight decay, in [0, 1]
}

// SGDParams are the SGD hyperparameters.
type SGDParams struct {
	Alpha float32 // learning rate, > 0
	WD    float32 // weight decay, in [0, 1]
}

// OptimizerParams hold the parameters of both optimizers; the context uses
// those of its [OptimizerType].
type OptimizerParams struct {
	AdamW AdamWParams
	SGD   SGDParams
}

// DefaultOptimizerParams returns ggml-opt's defaults (AdamW alpha 1e-3,
// beta1 0.9, beta2 0.999, eps 1e-8; SGD alpha 1e-3).
func DefaultOptimizerParams() OptimizerParams {
	return optParamsFromC(C.ggml_opt_get_default_optimizer_params(nil))
}

func optParamsFromC(c C.struct_ggml_opt_optimizer_params) OptimizerParams {
	return OptimizerParams{
		AdamW: AdamWParams{
			Alpha: float32(c.adamw.alpha), Beta1: float32(c.adamw.beta1), Beta2: float32(c.adamw.beta2),
			Eps: float32(c.adamw.eps), WD: float32(c.adamw.wd),
		},
		SGD: SGDParams{Alpha: float32(c.sgd.alpha), WD: float32(c.sgd.wd)},
	}
}

func in01(x float32) bool { return x >= 0 && x <= 1 }

// validate mirrors the assertions of ggml_opt_eval.
func (p OptimizerParams) validate(t OptimizerType) error {
	switch t {
	case OptimizerAdamW:
		a := p.AdamW
		if !(a.Alpha > 0) || math.IsInf(float64(a.Alpha), 0) || !in01(a.Beta1) || !in01(a.Beta2) || !(a.Eps >= 0) || !in01(a.WD) {
			return fmt.Errorf("adamw parameters %+v: alpha must be > 0, beta1, beta2 and wd in [0, 1], eps >= 0", a)
		}
	case OptimizerSGD:
		s := p.SGD
		if !(s.Alpha > 0) || math.IsInf(float64(s.Alpha), 0) || !in01(s.WD) {
			return fmt.Errorf("sgd parameters %+v: alpha must be > 0 and wd in [0, 1]", s)
		}
	default:
		return fmt.Errorf("unknown optimizer %d", int(t))
	}
	return nil
}

// OptGraphSize is the node capacity of ggml-opt's static graphs (forward,
// forward+backward and forward+backward+optimizer).
const OptGraphSize = C.GGML_DEFAULT_GRAPH_SIZE

// OptComputeMemory returns a size for [OptParams.Compute] sufficient for a
// forward graph of forwardTensors tensors: ggml-opt builds its three graphs
// and the backward pass in that context.
func OptComputeMemory(forwardTensors int) int64 {
	return 3*GraphOverhead(OptGraphSize, true) + int64(8*forwardTensors+64)*TensorOverhead()
}

// OptParams configure [NewOptContext].
type OptParams struct {
	// Sched runs the graphs. It must not be used for other graphs while the
	// OptContext is in use (ggml-opt keeps its allocation between steps).
	Sched *Sched
	// Compute is the metadata-only context that holds the forward graph
	// from Inputs to Outputs; ggml-opt adds its backward and optimizer
	// graphs to it (see [OptComputeMemory]).
	Compute *Context
	// Inputs is the input tensor, allocated in a backend buffer; its second
	// dimension counts the datapoints of a batch. Outputs is the F32 output;
	// for LossCrossEntropy it is [classes, datapoints].
	Inputs, Outputs *Tensor
	Loss            LossType
	Optimizer       OptimizerType
	// Period is the number of evaluations whose gradients are accumulated
	// before each optimizer step (gradient accumulation); 0 means 1.
	Period int
	// Params are the initial optimizer parameters (see OptContext.SetParams).
	Params OptimizerParams
}

// OptContext is a ggml-opt optimization context with static graphs: each
// step evaluates the forward graph, the backward pass, and every Period
// steps the optimizer update of all parameters ([Tensor.SetParam]) of the
// graph. It is not safe for concurrent use.
type OptContext struct {
	o         C.ggml_opt_context_t
	pars      *C.struct_ggml_opt_optimizer_params // C memory read by ggml-opt at each step
	sched     *Sched
	compute   *Context
	inputs    *Tensor
	outputs   *Tensor
	loss      LossType
	optimizer OptimizerType
	period    int
	ready     bool // Alloc was called and Eval has not consumed it
	allocated bool // ggml-opt holds a scheduler allocation
}

// optTrial builds the loss ggml-opt will build, on a scratch context, and
// the backward pass, to check the graph before ggml-opt sees it. It returns
// the node and tensor counts of the forward+backward graph and the number
// of parameters.
func optTrial(p OptParams) (nodes, tensors, params int, err error) {
	forward := reachable(p.Outputs.t, map[*C.struct_ggml_tensor]bool{})
	scratch, err := NewContext(GraphOverhead(8*forward+256, true)+int64(8*forward+256)*(TensorOverhead()+64), true)
	if err != nil {
		return 0, 0, 0, err
	}
	defer scratch.Close()
	out := p.Outputs
	scale := float32(1)
	if p.Period > 1 {
		scale = 1 / float32(p.Period)
	}
	var loss *Tensor
	switch p.Loss {
	case LossMean:
		loss = scratch.Scale(scratch.Sum(out), scale/float32(out.Elements()))
	case LossSum:
		loss = scratch.Sum(out)
	case LossCrossEntropy:
		if out.Dim(2) != 1 || out.Dim(3) != 1 {
			return 0, 0, 0, fmt.Errorf("%w: cross-entropy outputs must be [classes, datapoints], not %v", ErrShape, out.Shape())
		}
		loss = scratch.Scale(scratch.CrossEntropyLoss(out, scratch.NewTensor(TypeF32, out.Dim(0), out.Dim(1))), scale)
	case LossMeanSquaredError:
		sh := out.Shape()
		labels := scratch.NewTensor(TypeF32, sh[:]...)
		loss = scratch.Scale(scratch.Sum(scratch.Sqr(scratch.Sub(out, labels))), scale/float32(out.Elements()))
	default:
		return 0, 0, 0, fmt.Errorf("unknown loss type %d", int(p.Loss))
	}
	if loss == nil {
		return 0, 0, 0, fmt.Errorf("loss on the outputs: %w", scratch.Err())
	}
	if err := loss.SetLoss(); err != nil {
		return 0, 0, 0, err
	}
	g, err := scratch.NewGraph(8*forward+256, true)
	if err != nil {
		return 0, 0, 0, err
	}
	if err := g.BuildForward(loss); err != nil {
		return 0, 0, 0, err
	}
	for i := 0; i < g.NumNodes(); i++ {
		if C.ggml_graph_node(g.g, C.int(i)).flags&C.GGML_TENSOR_FLAG_PARAM != 0 {
			params++
		}
	}
	sim, err := g.simulateBackward()
	if err != nil {
		return 0, 0, 0, err
	}
	for i := 0; i < g.NumNodes(); i++ {
		node := C.ggml_graph_node(g.g, C.int(i))
		if l, ok := sim.grads[node]; node.flags&C.GGML_TENSOR_FLAG_PARAM != 0 && ok && !l.dense() {
			return 0, 0, 0, fmt.Errorf("%w: the gradient of parameter %q is not contiguous (it is used only through a permute or transpose); insert Cont",
				ErrNoBackward, C.GoString(&node.name[0]))
		}
	}
	if err := g.BuildBackward(scratch); err != nil {
		return 0, 0, 0, err
	}
	return g.NumNodes(), g.countTensors(), params, nil
}

// NewOptContext creates an optimization context. Everything ggml-opt would
// abort on is checked first and returned as an error.
func NewOptContext(p OptParams) (*OptContext, error) {
	fail := func(format string, args ...any) (*OptContext, error) {
		return nil, fmt.Errorf("new opt context: "+format, args...)
	}
	if p.Sched == nil || p.Sched.s == nil {
		return fail("scheduler %w", ErrClosed)
	}
	if p.Compute == nil || p.Compute.c == nil {
		return fail("compute context %w", ErrClosed)
	}
	if !p.Compute.noAlloc {
		return fail("the compute context must hold metadata only (NewContext with noAlloc)")
	}
	if p.Compute.err != nil {
		return fail("%w", p.Compute.err)
	}
	for _, t := range []*Tensor{p.Inputs, p.Outputs} {
		if t == nil || t.t == nil {
			return fail("inputs and outputs are required")
		}
		if t.ctx != nil && t.ctx.c == nil {
			return fail("%s: %w", t, ErrClosed)
		}
	}
	if !p.Inputs.Allocated() || p.Inputs.t.data == nil {
		return fail("inputs %s must be allocated in a backend buffer", p.Inputs)
	}
	if p.Outputs.Type() != TypeF32 {
		return fail("%w: outputs %s must be f32", ErrType, p.Outputs)
	}
	if p.Period == 0 {
		p.Period = 1
	}
	if p.Period < 1 || p.Period > math.MaxInt32 {
		return fail("gradient accumulation period %d must be >= 1", p.Period)
	}
	if err := p.Params.validate(p.Optimizer); err != nil {
		return fail("%w", err)
	}
	seen := map[*C.struct_ggml_tensor]bool{}
	reachable(p.Outputs.t, seen)
	for t := range seen {
		if t.flags&C.GGML_TENSOR_FLAG_LOSS != 0 {
			return fail("the forward graph already has a loss (%q); ggml-opt adds its own", C.GoString(&t.name[0]))
		}
	}
	nodes, tensors, nParams, err := optTrial(p)
	if err != nil {
		return fail("%w", err)
	}
	if nParams == 0 {
		return fail("%w: the graph has no trainable parameter", ErrNoBackward)
	}
	const extra = 16 // predictions, accuracy, loss scaling
	if need := nodes + nParams + extra; need > OptGraphSize {
		return fail("%w: the training graph needs about %d nodes, ggml-opt's static graphs hold %d", ErrOutOfMemory, need, OptGraphSize)
	}
	if need := tensors + 4*nParams + extra; need > p.Sched.graphSize {
		return fail("%w: the training graph has about %d tensors, the scheduler was created for %d", ErrOutOfMemory, need, p.Sched.graphSize)
	}
	if need := 3*GraphOverhead(OptGraphSize, true) + int64(nodes+nParams+extra)*TensorOverhead(); p.Compute.FreeMem() < need {
		return fail("%w: the compute context has %d bytes free, ggml-opt needs about %d (see OptComputeMemory)", ErrOutOfMemory, p.Compute.FreeMem(), need)
	}

	pars := (*C.struct_ggml_opt_optimizer_params)(C.calloc(1, C.size_t(unsafe.Sizeof(C.struct_ggml_opt_optimizer_params{}))))
	if pars == nil {
		return fail("%w", ErrOutOfMemory)
	}
	o := &OptContext{
		pars: pars, sched: p.Sched, compute: p.Compute, inputs: p.Inputs, outputs: p.Outputs,
		loss: p.Loss, optimizer: p.Optimizer, period: p.Period,
	}
	o.storeParams(p.Params)
	cp := C.ggtune_opt_params(p.Sched.s, p.Compute.c, p.Inputs.t, p.Outputs.t, C.int(p.Loss), C.int(p.Period),
		C.int(p.Optimizer), unsafe.Pointer(pars))
	o.o = C.ggml_opt_init(cp)
	if o.o == nil {
		C.free(unsafe.Pointer(pars))
		return fail("ggml-opt failed")
	}
	// The backward pass ggml-opt built lives in the compute context: keep
	// the graph allocator from computing RMS_NORM_BACK and SOFT_MAX_BACK in
	// place of their operands (see Graph.protectInplaceBackward); ggml-opt
	// copies these flags into the graphs it allocates.
	for t := C.ggml_get_first_tensor(p.Compute.c); t != nil; t = C.ggml_get_next_tensor(p.Compute.c, t) {
		if t.op != C.GGML_OP_RMS_NORM_BACK && t.op != C.GGML_OP_SOFT_MAX_BACK {
			continue
		}
		for j := 0; j < C.GGML_MAX_SRC; j++ {
			if src := t.src[j]; src != nil {
				C.ggml_set_output(src)
				if src.view_src != nil {
					C.ggml_set_output(src.view_src)
				}
			}
		}
	}
	setLeakFinalizer(o, (*OptContext).Close)
	return o, nil
}

func (o *OptContext) storeParams(p OptimizerParams) {
	o.pars.adamw.alpha = C.float(p.AdamW.Alpha)
	o.pars.adamw.beta1 = C.float(p.AdamW.Beta1)
	o.pars.adamw.beta2 = C.float(p.AdamW.Beta2)
	o.pars.adamw.eps = C.float(p.AdamW.Eps)
	o.pars.adamw.wd = C.float(p.AdamW.WD)
	o.pars.sgd.alpha = C.float(p.SGD.Alpha)
	o.pars.sgd.wd = C.float(p.SGD.WD)
}

// SetParams sets the optimizer parameters used from the next step on (a
// learning-rate schedule calls it before each step).
func (o *OptContext) SetParams(p OptimizerParams) error {
	if o.o == nil {
		return fmt.Errorf("set optimizer params: %w", ErrClosed)
	}
	if err := p.validate(o.optimizer); err != nil {
		return fmt.Errorf("set optimizer params: %w", err)
	}
	o.storeParams(p)
	return nil
}

// Params returns the current optimizer parameters.
func (o *OptContext) Params() OptimizerParams {
	if o.o == nil {
		return OptimizerParams{}
	}
	return optParamsFromC(*o.pars)
}

// Optimizer returns the context's optimizer.
func (o *OptContext) Optimizer() OptimizerType { return o.optimizer }

// Period returns the gradient accumulation period.
func (o *OptContext) Period() int { return o.period }

// Alloc prepares the next evaluation: forward only, or forward and
// backward (with the optimizer step when it completes a period). It must
// be followed by Eval.
func (o *OptContext) Alloc(backward bool) error {
	if o.o == nil {
		return fmt.Errorf("opt alloc: %w", ErrClosed)
	}
	if o.ready {
		return errors.New("opt alloc: the previous Alloc was not evaluated")
	}
	if o.sched.s == nil {
		return fmt.Errorf("opt alloc: scheduler %w", ErrClosed)
	}
	if o.allocated && o.sched.user != o {
		return errors.New("opt alloc: the scheduler was used for another graph; give the OptContext its own Sched")
	}
	C.ggml_opt_alloc(o.o, C.bool(backward))
	o.sched.user = o
	o.ready, o.allocated = true, true
	return nil
}

// Eval evaluates what Alloc prepared and adds the loss (and, for
// cross-entropy, the predictions and accuracy) to r, which may be nil.
func (o *OptContext) Eval(r *OptResult) error {
	if o.o == nil {
		return fmt.Errorf("opt eval: %w", ErrClosed)
	}
	if !o.ready {
		return errors.New("opt eval: call Alloc first")
	}
	if o.sched.user != o {
		return errors.New("opt eval: the scheduler was used for another graph since Alloc")
	}
	if err := o.Params().validate(o.optimizer); err != nil {
		return fmt.Errorf("opt eval: %w", err)
	}
	var cr C.ggml_opt_result_t
	if r != nil {
		if r.r == nil {
			return fmt.Errorf("opt eval: result %w", ErrClosed)
		}
		key := resultKey{perDatapoint: o.loss != LossSum, pred: o.loss == LossCrossEntropy, period: o.period, batch: o.outputs.Dim(1)}
		if r.used && r.key != key {
			return fmt.Errorf("opt eval: the result holds evaluations of another loss, period or batch size (%+v, not %+v); reset it", r.key, key)
		}
		r.key, r.used = key, true
		cr = r.r
	}
	C.ggml_opt_eval(o.o, cr)
	o.ready = false
	return nil
}

// Step runs one training evaluation: Alloc(true) then Eval(r).
func (o *OptContext) Step(r *OptResult) error {
	if err := o.Alloc(true); err != nil {
		return err
	}
	return o.Eval(r)
}

// Reset zeroes the accumulated gradients and sets the loss gradient to 1;
// with optimizer it also clears the optimizer state (AdamW moments and the
// step count).
func (o *OptContext) Reset(optimizer bool) {
	if o.o != nil {
		C.ggml_opt_reset(o.o, C.bool(optimizer))
	}
}

func (o *OptContext) wrap(t *C.struct_ggml_tensor) *Tensor {
	if o.o == nil || t == nil {
		return nil
	}
	return &Tensor{t: t, ctx: o.compute}
}

// Inputs returns the input tensor.
func (o *OptContext) Inputs() *Tensor { return o.inputs }

// Outputs returns the output tensor of the forward graph.
func (o *OptContext) Outputs() *Tensor { return o.outputs }

// Labels returns the labels tensor (cross-entropy and mean squared error
// losses; nil otherwise), allocated by ggml-opt: set it before each step.
func (o *OptContext) Labels() *Tensor {
	if o.o == nil {
		return nil
	}
	return o.wrap(C.ggml_opt_labels(o.o))
}

// Loss returns the scalar loss tensor of the last evaluation.
func (o *OptContext) Loss() *Tensor {
	if o.o == nil {
		return nil
	}
	return o.wrap(C.ggml_opt_loss(o.o))
}

// Pred returns the I32 predictions (argmax of the outputs) of the last
// evaluation for cross-entropy, or nil.
func (o *OptContext) Pred() *Tensor {
	if o.o == nil {
		return nil
	}
	return o.wrap(C.ggml_opt_pred(o.o))
}

// GradAcc returns the gradient accumulator of the parameter t, or nil (it
// exists when Period > 1).
func (o *OptContext) GradAcc(t *Tensor) *Tensor {
	if o.o == nil || t == nil || t.t == nil {
		return nil
	}
	return o.wrap(C.ggml_opt_grad_acc(o.o, t.t))
}

// Close frees the context (not its scheduler, contexts or tensors). It is
// idempotent.
func (o *OptContext) Close() {
	if o == nil || o.o == nil {
		return
	}
	if o.sched.user == o {
		o.sched.user = nil
		if o.sched.s != nil {
			C.ggml_backend_sched_reset(o.sched.s)
		}
	}
	C.ggtune_opt_free_copy(o.o, o.sched.s, o.compute.c)
	C.ggml_opt_free(o.o)
	C.free(unsafe.Pointer(o.pars))
	o.o, o.pars = nil, nil
	runtime.SetFinalizer(o, nil)
}

type resultKey struct {
	perDatapoint bool
	pred         bool
	period       int
	batch        int64
}

// OptResult accumulates the losses, predictions and accuracy of
// evaluations. It is not safe for concurrent use.
type OptResult struct {
	r    C.ggml_opt_result_t
	key  resultKey
	used bool
}

// NewOptResult creates an empty result.
func NewOptResult() *OptResult {
	r := &OptResult{r: C.ggml_opt_result_init()}
	setLeakFinalizer(r, (*OptResult).Close)
	return r
}

// Reset empties the result.
func (r *OptResult) Reset() {
	if r.r != nil {
		C.ggml_opt_result_reset(r.r)
		r.used = false
	}
}

// NData returns the number of datapoints evaluated.
func (r *OptResult) NData() int64 {
	if r.r == nil {
		return 0
	}
	var n C.int64_t
	C.ggml_opt_result_ndata(r.r, &n)
	return int64(n)
}

// Loss returns the loss over the evaluations (the mean for per-datapoint
// losses, the sum for LossSum) and its uncertainty (NaN with fewer than two
// evaluations).
func (r *OptResult) Loss() (loss, unc float64) {
	if r.r == nil {
		return math.NaN(), math.NaN()
	}
	var l, u C.double
	C.ggml_opt_result_loss(r.r, &l, &u)
	return float64(l), float64(u)
}

// Accuracy returns the fraction of correct predictions (cross-entropy
// loss; NaN otherwise) and its uncertainty.
func (r *OptResult) Accuracy() (acc, unc float64) {
	if r.r == nil {
		return math.NaN(), math.NaN()
	}
	var a, u C.double
	C.ggml_opt_result_accuracy(r.r, &a, &u)
	return float64(a), float64(u)
}

// Pred returns the predictions of every evaluated datapoint (cross-entropy
// loss; empty otherwise).
func (r *OptResult) Pred() []int32 {
	if r.r == nil || !r.used || !r.key.pred {
		return nil
	}
	n := r.NData()
	if n == 0 {
		return nil
	}
	out := make([]int32, n)
	C.ggml_opt_result_pred(r.r, (*C.int32_t)(unsafe.Pointer(&out[0])))
	return out
}

// Close frees the result. It is idempotent.
func (r *OptResult) Close() {
	if r == nil || r.r == nil {
		return
	}
	C.ggml_opt_result_free(r.r)
	r.r = nil
	runtime.SetFinalizer(r, nil)
}
