package train

import (
	"fmt"
	"io"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// progress shows training progress: a progress bar with loss, tokens/s and
// ETA on a terminal, plain lines elsewhere (CI logs).
type progress struct {
	w     io.Writer
	bar   *progressbar.ProgressBar
	total int
	last  time.Time
}

func newProgress(w io.Writer, total, done int) *progress {
	p := &progress{w: w, total: total}
	if w == nil {
		return p
	}
	if f, ok := w.(interface{ Fd() uintptr }); ok && term.IsTerminal(int(f.Fd())) {
		p.bar = progressbar.NewOptions(total,
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetDescription("train"),
			progressbar.OptionShowCount(),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionClearOnFinish(),
			progressbar.OptionThrottle(100*time.Millisecond),
		)
		_ = p.bar.Set(done)
	}
	return p
}

func (p *progress) step(m Metrics) {
	switch {
	case p.w == nil:
	case p.bar != nil:
		p.bar.Describe(fmt.Sprintf("loss %.4f lr %.2e %6.0f tok/s", m.Loss, m.LR, m.TokensPerSec))
		_ = p.bar.Set(m.Step)
	case m.Step == 1 || m.Step == p.total || time.Since(p.last) >= 2*time.Second:
		p.last = time.Now()
		fmt.Fprintf(p.w, "step %d/%d  loss %.4f  lr %.2e  grad-norm %.3f  %.0f tok/s  eta %s\n",
			m.Step, p.total, m.Loss, m.LR, m.GradNorm, m.TokensPerSec, time.Duration(m.ETASec*float64(time.Second)).Round(time.Second))
	}
}

func (p *progress) eval(e Evaluation) {
	if p.w == nil {
		return
	}
	if p.bar != nil {
		_ = p.bar.Clear()
	}
	fmt.Fprintf(p.w, "eval  loss %.4f  ppl %.2f  accuracy %.3f  (%d tokens)\n", e.Loss, e.Perplexity, e.Accuracy, e.Tokens)
}

func (p *progress) finish() {
	if p.bar != nil {
		_ = p.bar.Finish()
	}
}
