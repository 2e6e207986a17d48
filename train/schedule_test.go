package train_test

import (
	"math"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/ggtune/ggtune/train"
)

func TestSchedules(t *testing.T) {
	tests := []struct {
		s    train.LRSchedule
		step int
		want float64
	}{
		{train.LRSchedule{Kind: train.Constant, LR: 1, Total: 10}, 7, 1},
		{train.LRSchedule{Kind: train.Constant, LR: 1, Warmup: 3, Total: 10}, 0, 0.25},
		{train.LRSchedule{Kind: train.Constant, LR: 1, Warmup: 3, Total: 10}, 2, 0.75},
		{train.LRSchedule{Kind: train.Linear, LR: 1, Total: 10}, 5, 0.5},
		{train.LRSchedule{Kind: train.Linear, LR: 1, MinLR: 0.1, Total: 10}, 10, 0.1},
		{train.LRSchedule{Kind: train.Cosine, LR: 2, Total: 10}, 5, 1},
		{train.LRSchedule{Kind: train.Cosine, LR: 2, Warmup: 2, Total: 12}, 2, 2},
		{train.LRSchedule{Kind: train.Cosine, LR: 2, Total: 12}, 4, 1 + math.Cos(math.Pi/3)},
	}
	for _, tc := range tests {
		assert.NoError(t, tc.s.Validate())
		assert.InDelta(t, tc.want, tc.s.At(tc.step), 1e-12, "%+v step %d", tc.s, tc.step)
	}
	assert.Error(t, train.LRSchedule{Kind: "step", LR: 1, Total: 1}.Validate())
	assert.Error(t, train.LRSchedule{Kind: train.Cosine, LR: 0, Total: 1}.Validate())
}
