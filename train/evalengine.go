package train

import (
	"errors"
	"fmt"

	"github.com/ggtune/ggtune/binding"
)

// ErrEvalOnly reports a training call on an engine made by NewEvalEngine.
var ErrEvalOnly = errors.New("engine was built for evaluation only")

// NewEvalEngine builds only the evaluation graph for b×t batches of the
// model described by builder: an engine for Eval and Evaluate that needs no
// trainable parameters and allocates no gradients or optimizer state.
// Accumulate returns ErrEvalOnly. With WithDistill, Eval also measures the
// divergence from the teacher.
func NewEvalEngine(builder Builder, backend *binding.Backend, b, t int, opts ...Option) (*Engine, error) {
	if b <= 0 || t <= 0 {
		return nil, fmt.Errorf("new eval engine: batch %dx%d", b, t)
	}
	e := &Engine{b: b, t: t, vocab: builder.VocabSize(), backend: backend}
	builder, err := e.applyOptions(builder, opts)
	if err != nil {
		return nil, fmt.Errorf("new eval engine: %w", err)
	}
	if err := e.buildEval(builder); err != nil {
		e.Close()
		return nil, err
	}
	return e, nil
}
