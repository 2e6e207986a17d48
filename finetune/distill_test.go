package finetune_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/finetune"
	"github.com/ggtune/ggtune/train"
)

// shakespeareLoRA trains a Shakespeare LoRA on stories260K for steps:
// stories260K with it is a teacher that knows Shakespeare, which the bare
// model does not.
func shakespeareLoRA(t *testing.T, steps int) string {
	t.Helper()
	j := baseJob(t, "lora")
	j.Val, j.MaxValBatches, j.Train.Steps = "", 0, steps
	_, err := finetune.Run(context.Background(), j)
	require.NoError(t, err)
	return j.Output
}

// distillJob is the student job of the distillation tests: LoRA on the
// first 24 KB of the training text, teacher stories260K + the Shakespeare
// LoRA, on the fly.
func distillJob(t *testing.T, adapter string, alpha float64) finetune.Job {
	j := baseJob(t, "lora")
	b, err := os.ReadFile(j.Data)
	require.NoError(t, err)
	small := filepath.Join(t.TempDir(), "small.txt")
	require.NoError(t, os.WriteFile(small, b[:24000], 0o644))
	j.Data, j.Train.Steps = small, 40
	loss := train.DefaultDistill()
	loss.Alpha = alpha
	j.Distill = &finetune.Distillation{Teacher: j.Model, TeacherAdapters: []finetune.Adapter{{Path: adapter, Scale: 1}}, Loss: loss}
	return j
}

// TestDistillBeatsHardLabels is the proof: the same student, steps and
// learning rate, trained by distillation (α = 0.5, T = 1, forward KL) ends
// clearly closer to the teacher on held-out text (mean KL) than trained
// on the hard labels alone (α = 0), and its held-out loss is no worse.
func TestDistillBeatsHardLabels(t *testing.T) {
	adapter := shakespeareLoRA(t, 150)
	run := func(alpha float64) train.Evaluation {
		rep, err := finetune.Run(context.Background(), distillJob(t, adapter, alpha))
		require.NoError(t, err)
		ev0, ev1 := rep.Result.EvalBefore, rep.Result.EvalAfter
		t.Logf("alpha %.1f: held-out loss %.3f -> %.3f, KL(teacher||student) %.3f -> %.3f", alpha, ev0.Loss, ev1.Loss, ev0.Divergence, ev1.Divergence)
		return *ev1
	}
	hard, dist := run(0), run(0.5)
	assert.Less(t, dist.Divergence, 0.85*hard.Divergence, "clearly closer to the teacher")
	assert.LessOrEqual(t, dist.Loss, hard.Loss+0.01, "held-out loss no worse")
}
