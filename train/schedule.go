package train

import (
	"fmt"
	"math"
)

// Schedule names a learning-rate schedule.
type Schedule string

// Schedules: the rate warms up linearly over the warmup steps, then stays
// constant, decays linearly, or follows a half cosine down to MinLR.
const (
	Constant Schedule = "constant"
	Linear   Schedule = "linear"
	Cosine   Schedule = "cosine"
)

// LRSchedule computes the learning rate of each optimizer step.
type LRSchedule struct {
	Kind   Schedule
	LR     float64 // peak learning rate
	MinLR  float64 // final rate of linear and cosine decay
	Warmup int     // steps of linear warmup from 0
	Total  int     // total optimizer steps
}

// Validate checks the schedule.
func (s LRSchedule) Validate() error {
	switch s.Kind {
	case Constant, Linear, Cosine:
	default:
		return fmt.Errorf("schedule %q: want constant, linear or cosine", s.Kind)
	}
	if s.LR <= 0 || math.IsNaN(s.LR) || math.IsInf(s.LR, 0) {
		return fmt.Errorf("learning rate %v must be positive", s.LR)
	}
	if s.MinLR < 0 || s.MinLR > s.LR || s.Warmup < 0 || s.Total <= 0 {
		return fmt.Errorf("schedule: min lr %v, warmup %d, total %d", s.MinLR, s.Warmup, s.Total)
	}
	return nil
}

// At returns the learning rate of optimizer step step (0-based).
func (s LRSchedule) At(step int) float64 {
	if step < s.Warmup {
		return s.LR * float64(step+1) / float64(s.Warmup+1)
	}
	if s.Kind == Constant || s.Total <= s.Warmup {
		return s.LR
	}
	p := float64(step-s.Warmup) / float64(s.Total-s.Warmup)
	p = math.Min(math.Max(p, 0), 1)
	switch s.Kind {
	case Linear:
		return s.MinLR + (s.LR-s.MinLR)*(1-p)
	default:
		return s.MinLR + (s.LR-s.MinLR)*0.5*(1+math.Cos(math.Pi*p))
	}
}
