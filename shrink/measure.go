package shrink

import (
	"fmt"
	"math"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/data"
	"github.com/ggtune/ggtune/model"
	"github.com/ggtune/ggtune/train"
)

// runner evaluates one model's full-sequence graph on batches of one shape,
// building the graph once.
type runner struct {
	m     *model.Model
	ctx   *binding.Context
	f     *model.Forward
	alloc *binding.Allocator
	g     *binding.Graph
	rec   *recorder
}

// recorder is a hook that keeps the hidden states a measurement reads: the
// embeddings (the input of block 0), each block's output and each FFN's
// hidden state (the input of the down projection). The tensors are marked
// as graph outputs so that the allocator keeps their values.
type recorder struct {
	hidden, ffn bool
	skip        map[int]bool
	embd        *binding.Tensor
	out         map[int]*binding.Tensor
	act         map[int]*binding.Tensor
}

// Embed implements model.EmbeddingHook.
func (r *recorder) Embed(_ *model.Builder, _, e *binding.Tensor) *binding.Tensor {
	if r.hidden {
		r.embd = e.SetOutput()
	}
	return e
}

// LayerOutput implements model.LayerOutputHook.
func (r *recorder) LayerOutput(_ *model.Builder, layer int, h *binding.Tensor) *binding.Tensor {
	if r.hidden {
		r.out[layer] = h.SetOutput()
	}
	return h
}

// Scale implements model.ScaleHook.
func (r *recorder) Scale(_ *model.Builder, layer int, site model.ScaleSite, x *binding.Tensor) *binding.Tensor {
	if r.ffn && site == model.ScaleFFN {
		r.act[layer] = x.SetOutput()
	}
	return x
}

// SkipLayer implements model.LayerSkipHook.
func (r *recorder) SkipLayer(layer int) bool { return r.skip[layer] }

func newRunner(m *model.Model, batch, tokens int, rec *recorder) (*runner, error) {
	if rec == nil {
		rec = &recorder{}
	}
	rec.out, rec.act = map[int]*binding.Tensor{}, map[int]*binding.Tensor{}
	size := m.GraphSize()
	ctx, err := binding.NewGraphContext(size, size, false)
	if err != nil {
		return nil, err
	}
	r := &runner{m: m, ctx: ctx, rec: rec}
	if err := r.build(batch, tokens); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

func (r *runner) build(batch, tokens int) error {
	f, err := r.m.BuildForward(r.ctx, model.Shape{Batch: batch, Tokens: tokens}, []model.Hook{r.rec})
	if err != nil {
		return err
	}
	r.f = f
	if r.g, err = r.ctx.NewGraph(r.m.GraphSize(), false); err != nil {
		return err
	}
	if err := r.g.BuildForward(f.Logits); err != nil {
		return err
	}
	if r.alloc, err = r.m.Backend().NewAllocator(); err != nil {
		return err
	}
	return r.alloc.Alloc(r.g)
}

// Close frees the graph. It is idempotent.
func (r *runner) Close() {
	if r.alloc != nil {
		r.alloc.Close()
		r.alloc = nil
	}
	if r.ctx != nil {
		r.ctx.Close()
		r.ctx = nil
	}
}

// run computes the batch and returns its logits [B*T][n_vocab].
func (r *runner) run(b train.Batch) ([]float32, error) {
	if err := r.f.SetBatch(b.Tokens, b.Segments); err != nil {
		return nil, err
	}
	if err := r.m.Backend().Compute(r.g); err != nil {
		return nil, err
	}
	return r.f.Logits.Floats()
}

// lossStats accumulates cross-entropy and KL over target positions.
type lossStats struct {
	ce, kl  float64
	targets int
}

func (s lossStats) loss() float64 { return s.ce / float64(max(s.targets, 1)) }
func (s lossStats) meanKL() float64 {
	return s.kl / float64(max(s.targets, 1))
}

// logSoftmax writes the log-probabilities of logits into out (float64).
func logSoftmax(logits []float32, out []float64) {
	mx := math.Inf(-1)
	for _, v := range logits {
		mx = math.Max(mx, float64(v))
	}
	sum := 0.0
	for _, v := range logits {
		sum += math.Exp(float64(v) - mx)
	}
	lse := mx + math.Log(sum)
	for i, v := range logits {
		out[i] = float64(v) - lse
	}
}

// evaluate returns the mean cross-entropy of m on the batches at their
// target positions and, with ref (the original model's runner), the mean
// forward KL(original ‖ m) there.
func evaluate(cur, ref *runner, batches []train.Batch) (lossStats, error) {
	var st lossStats
	nv := cur.m.Config().NVocab
	lp, lq := make([]float64, nv), make([]float64, nv)
	for _, b := range batches {
		q, err := cur.run(b)
		if err != nil {
			return st, err
		}
		var p []float32
		if ref != nil {
			if p, err = ref.run(b); err != nil {
				return st, err
			}
		}
		for i, lab := range b.Targets {
			if lab == data.IgnoreLabel {
				continue
			}
			logSoftmax(q[i*nv:(i+1)*nv], lq)
			st.ce -= lq[lab]
			st.targets++
			if p == nil {
				continue
			}
			logSoftmax(p[i*nv:(i+1)*nv], lp)
			for v := range lp {
				if lp[v] > -80 {
					st.kl += math.Exp(lp[v]) * (lp[v] - lq[v])
				}
			}
		}
	}
	return st, nil
}

// blockInfluence returns ShortGPT's Block Influence of every block of m:
// 1 − the mean over non-padding tokens of the cosine similarity of the
// block's input and output hidden states.
func blockInfluence(m *model.Model, batches []train.Batch) ([]float64, error) {
	if len(batches) == 0 {
		return nil, fmt.Errorf("block influence: no calibration data")
	}
	rec := &recorder{hidden: true}
	r, err := newRunner(m, batches[0].B, batches[0].T, rec)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	nl, ne := m.Config().NLayer, m.Config().NEmbd
	sum := make([]float64, nl)
	n := 0
	for _, b := range batches {
		if _, err := r.run(b); err != nil {
			return nil, err
		}
		in, err := rec.embd.Floats()
		if err != nil {
			return nil, fmt.Errorf("block influence: embeddings: %w", err)
		}
		for l := range nl {
			out, err := rec.out[l].Floats()
			if err != nil {
				return nil, fmt.Errorf("block influence: block %d output: %w", l, err)
			}
			for tok := range b.Tokens {
				if isReal(b, tok) {
					sum[l] += 1 - cosine(in[tok*ne:(tok+1)*ne], out[tok*ne:(tok+1)*ne])
				}
			}
			in = out
		}
		n += realTokens(b)
	}
	for l := range sum {
		sum[l] /= float64(max(n, 1))
	}
	return sum, nil
}

func cosine(a, b []float32) float64 {
	var ab, aa, bb float64
	for i := range a {
		ab += float64(a[i]) * float64(b[i])
		aa += float64(a[i]) * float64(a[i])
		bb += float64(b[i]) * float64(b[i])
	}
	if aa == 0 || bb == 0 {
		return 0
	}
	return ab / math.Sqrt(aa*bb)
}

// skipLoss returns, for every block of m, the increase of the mean
// cross-entropy on the batches when that block is skipped.
func skipLoss(m *model.Model, batches []train.Batch) ([]float64, error) {
	if len(batches) == 0 {
		return nil, fmt.Errorf("loss importance: no calibration data")
	}
	lossWith := func(skip map[int]bool) (float64, error) {
		r, err := newRunner(m, batches[0].B, batches[0].T, &recorder{skip: skip})
		if err != nil {
			return 0, err
		}
		defer r.Close()
		st, err := evaluate(r, nil, batches)
		return st.loss(), err
	}
	base, err := lossWith(nil)
	if err != nil {
		return nil, err
	}
	out := make([]float64, m.Config().NLayer)
	for l := range out {
		v, err := lossWith(map[int]bool{l: true})
		if err != nil {
			return nil, fmt.Errorf("loss importance: block %d: %w", l, err)
		}
		out[l] = v - base
	}
	return out, nil
}

// ffnMagnitude returns, for every block of m, the mean absolute value of
// each FFN channel's activation (the SwiGLU output, the down projection's
// input) over non-padding tokens: Minitron's width criterion.
func ffnMagnitude(m *model.Model, batches []train.Batch) ([][]float64, error) {
	if len(batches) == 0 {
		return nil, fmt.Errorf("ffn importance: no calibration data")
	}
	rec := &recorder{ffn: true}
	r, err := newRunner(m, batches[0].B, batches[0].T, rec)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	nl, nff := m.Config().NLayer, m.Config().NFF
	sum := make([][]float64, nl)
	for l := range sum {
		sum[l] = make([]float64, nff)
	}
	n := 0
	for _, b := range batches {
		if _, err := r.run(b); err != nil {
			return nil, err
		}
		for l := range nl {
			act, err := rec.act[l].Floats()
			if err != nil {
				return nil, fmt.Errorf("ffn importance: block %d: %w", l, err)
			}
			for tok := range b.Tokens {
				if !isReal(b, tok) {
					continue
				}
				for c, v := range act[tok*nff : (tok+1)*nff] {
					sum[l][c] += math.Abs(float64(v))
				}
			}
		}
		n += realTokens(b)
	}
	for l := range sum {
		for c := range sum[l] {
			sum[l][c] /= float64(max(n, 1))
		}
	}
	return sum, nil
}

// isReal reports whether token i of the batch is not padding.
func isReal(b train.Batch, i int) bool { return b.Segments == nil || b.Segments[i] >= 0 }

// realTokens counts the batch's non-padding tokens.
func realTokens(b train.Batch) int {
	n := 0
	for i := range b.Tokens {
		if isReal(b, i) {
			n++
		}
	}
	return n
}
