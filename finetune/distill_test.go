package finetune_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/finetune"
	"github.com/ggtune/ggtune/internal/fixture"
	"github.com/ggtune/ggtune/internal/ggufpatch"
	"github.com/ggtune/ggtune/internal/randmodel"
	"github.com/ggtune/ggtune/method"
	"github.com/ggtune/ggtune/model"
	"github.com/ggtune/ggtune/train"
)

// shakespeareLoRA trains a Shakespeare LoRA on stories260K for steps:
// stories260K with it is a teacher that knows Shakespeare, which the bare
// model does not.
func shakespeareLoRA(t *testing.T, steps int) string {
	t.Helper()
	j := baseJob(t, "lora")
	j.Train.Steps = steps
	rep, err := finetune.Run(context.Background(), j)
	require.NoError(t, err)
	t.Logf("teacher: stories260K + Shakespeare LoRA (%d steps), held-out loss %.3f -> %.3f", steps, rep.Result.EvalBefore.Loss, rep.Result.EvalAfter.Loss)
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
	j.Data, j.Train.Steps = small, 30
	loss := train.DefaultDistill()
	loss.Alpha = alpha
	j.Distill = &finetune.Distillation{Teacher: j.Model, TeacherAdapters: []finetune.Adapter{{Path: adapter, Scale: 1}}, Loss: loss}
	return j
}

// heldOut measures the student written by job j (its adapter over j.Model)
// on j.Val: held-out loss and mean KL(teacher‖student) at T = 1.
func heldOut(t *testing.T, j finetune.Job, teacher *finetune.Distillation) train.Evaluation {
	t.Helper()
	m, err := model.Load(j.Model, model.Options{Threads: 2})
	require.NoError(t, err)
	defer m.Close()
	env, err := method.NewEnv(j.Model, m, m.Backend())
	require.NoError(t, err)
	defer env.Close()
	a, _, err := method.Open(j.Output, env)
	require.NoError(t, err)
	defer a.Close()
	measure := *teacher
	measure.Loss = train.DefaultDistill()
	ev, err := finetune.EvaluateDistillation(m, a.Hooks(1), &measure, j.Val, finetune.EvalOptions{Context: j.Context, Batch: j.Batch, Pack: true, MaxBatches: j.MaxValBatches})
	require.NoError(t, err)
	return ev
}

// TestDistillBeatsHardLabels is the proof: the same student, steps and
// learning rate, trained by distillation (α = 0.5, T = 1, forward KL) ends
// clearly closer to the teacher on held-out text (mean KL) than trained
// on the hard labels alone (a plain job), and its held-out loss is no worse.
func TestDistillBeatsHardLabels(t *testing.T) {
	adapter := shakespeareLoRA(t, 100)
	run := func(distill bool) train.Evaluation {
		j := distillJob(t, adapter, 0.5)
		teacher := j.Distill
		if !distill {
			j.Distill = nil
		}
		rep, err := finetune.Run(context.Background(), j)
		require.NoError(t, err)
		ev := heldOut(t, j, teacher)
		t.Logf("distill %v: held-out loss %.3f -> %.3f, KL(teacher||student) %.3f", distill, rep.Result.EvalBefore.Loss, ev.Loss, ev.Divergence)
		assert.InDelta(t, rep.Result.EvalAfter.Loss, ev.Loss, 1e-4, "the same held-out loss as the job's")
		return ev
	}
	hard, dist := run(false), run(true)
	assert.Less(t, dist.Divergence, 0.85*hard.Divergence, "clearly closer to the teacher")
	assert.LessOrEqual(t, dist.Loss, hard.Loss+0.01, "held-out loss no worse")
}

// sharperTeacher writes stories260K with its output norm doubled: a model
// of the same vocabulary with other (sharper) predictions, made in
// milliseconds.
func sharperTeacher(t *testing.T) string {
	t.Helper()
	base := fixture.Path(t, "models/stories260K.gguf")
	f, err := binding.OpenGGUF(base)
	require.NoError(t, err)
	defer f.Close()
	path := filepath.Join(t.TempDir(), "teacher.gguf")
	require.NoError(t, ggufpatch.Write(base, path, map[string]ggufpatch.Patch{"output_norm.weight": {Type: binding.TypeF32, Values: func() ([]float32, error) {
		v, err := f.ReadTensorFloats("output_norm.weight")
		for i := range v {
			v[i] *= 2
		}
		return v, err
	}}}, nil))
	return path
}

// TestDistillTeacherCache checks the top-k cache: with k = V a cached run
// trains like the teacher on the fly (up to the cache's 1/1024 log-prob
// quantization), a second run reuses the files, and a cache of other
// settings or a damaged one is refused.
func TestDistillTeacherCache(t *testing.T) {
	teacherPath := sharperTeacher(t)
	proto := baseJob(t, "lora")
	b, err := os.ReadFile(proto.Data)
	require.NoError(t, err)
	small, smallVal := filepath.Join(t.TempDir(), "small.txt"), filepath.Join(t.TempDir(), "val.txt")
	require.NoError(t, os.WriteFile(small, b[:4000], 0o644))
	require.NoError(t, os.WriteFile(smallVal, b[len(b)-2500:], 0o644))
	job := func(cache string, temp float64) (finetune.Job, *bytes.Buffer) {
		j := proto
		j.Data, j.Val, j.Output = small, smallVal, filepath.Join(t.TempDir(), "out.gguf")
		j.Train.Steps, j.MaxValBatches = 3, 0
		var progress bytes.Buffer
		j.Train.Progress = &progress
		j.Distill = &finetune.Distillation{Teacher: teacherPath, CacheDir: cache, TopK: 512,
			Loss: train.Distill{Alpha: 0.7, Temperature: temp, Divergence: train.JSD, Beta: 0.3}}
		return j, &progress
	}
	onTheFly, _ := job("", 2)
	ref, err := finetune.Run(context.Background(), onTheFly)
	require.NoError(t, err)

	dir := t.TempDir()
	cached, progress := job(dir, 2)
	rep, err := finetune.Run(context.Background(), cached)
	require.NoError(t, err)
	assert.Contains(t, progress.String(), "cached the teacher's top-512")
	t.Logf("on the fly: loss %.4f, held-out divergence %.4f; cached: %.4f, %.4f", ref.Result.FirstLoss, ref.Result.EvalAfter.Divergence,
		rep.Result.FirstLoss, rep.Result.EvalAfter.Divergence)
	assert.InDelta(t, ref.Result.FirstLoss, rep.Result.FirstLoss, 2e-3)
	assert.InDelta(t, ref.Result.EvalAfter.Divergence, rep.Result.EvalAfter.Divergence, 0.01*ref.Result.EvalAfter.Divergence)
	assert.InDelta(t, ref.Result.EvalAfter.Loss, rep.Result.EvalAfter.Loss, 2e-3)
	trainCache := filepath.Join(dir, "train.topk")
	st, err := os.Stat(trainCache)
	require.NoError(t, err)
	t.Logf("cache %s: %d bytes", trainCache, st.Size())

	again, progress := job(dir, 2)
	_, err = finetune.Run(context.Background(), again)
	require.NoError(t, err)
	assert.NotContains(t, progress.String(), "cached the teacher", "the second run reuses the cache")

	stale, _ := job(dir, 1)
	_, err = finetune.Run(context.Background(), stale)
	require.ErrorIs(t, err, finetune.ErrStaleCache)
	assert.Contains(t, err.Error(), "temperature: cache 2, now 1")

	b, err = os.ReadFile(trainCache)
	require.NoError(t, err)
	b[len(b)/2] ^= 1
	require.NoError(t, os.WriteFile(trainCache, b, 0o644))
	corrupt, _ := job(dir, 2)
	_, err = finetune.Run(context.Background(), corrupt)
	require.ErrorIs(t, err, finetune.ErrCorruptCache)
	assert.Contains(t, err.Error(), trainCache)
}

// TestDistillVocabularyMismatch: a teacher of another vocabulary (another
// size, or one token changed) is refused naming both files.
func TestDistillVocabularyMismatch(t *testing.T) {
	student := fixture.Path(t, "models/stories260K.gguf")
	f, err := binding.OpenGGUF(student)
	require.NoError(t, err)
	v, _ := f.Get("tokenizer.ggml.tokens")
	f.Close()
	tokens := append([]string(nil), v.([]string)...)
	tokens[100] = "<changed>"
	changed := filepath.Join(t.TempDir(), "changed.gguf")
	require.NoError(t, ggufpatch.Write(student, changed, nil, []binding.KV{{Key: "tokenizer.ggml.tokens", Value: tokens}}))
	for _, c := range []struct{ teacher, want string }{
		{fixture.Path(t, "models/llama-2-tiny-random.gguf"), "tokens"},
		{changed, `token 100 is "<changed>"`},
	} {
		err := finetune.CheckVocab(c.teacher, student)
		require.ErrorIs(t, err, finetune.ErrVocabMismatch)
		assert.Contains(t, err.Error(), c.want)
		assert.Contains(t, err.Error(), c.teacher)
		assert.Contains(t, err.Error(), student)
		j := baseJob(t, "lora")
		j.Distill = &finetune.Distillation{Teacher: c.teacher, Loss: train.DefaultDistill()}
		_, err = finetune.Run(context.Background(), j)
		require.ErrorIs(t, err, finetune.ErrVocabMismatch)
	}
}

// TestDistillLargerQuantizedTeacher distils a larger teacher of another
// architecture stored as Q8_0 (random qwen2, 128 wide, 3 blocks) into a
// small random llama of the same vocabulary: the held-out divergence from
// the teacher falls, on the fly and from a top-k cache.
func TestDistillLargerQuantizedTeacher(t *testing.T) {
	dir := t.TempDir()
	student, teacher := filepath.Join(dir, "student.gguf"), filepath.Join(dir, "teacher.gguf")
	require.NoError(t, randmodel.Write(student, randmodel.Options{Seed: 1}))
	require.NoError(t, randmodel.Write(teacher, randmodel.Options{Arch: "qwen2", NEmbd: 128, NLayer: 3, Type: binding.TypeQ8_0, Seed: 2}))
	for _, cache := range []string{"", filepath.Join(dir, "cache")} {
		j := baseJob(t, "lora")
		j.Model, j.Train.Steps, j.MaxValBatches = student, 8, 0
		j.Train.Schedule.LR = 1e-2
		b, err := os.ReadFile(j.Data)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(j.Data, b[:6000], 0o644))
		require.NoError(t, os.WriteFile(j.Val, b[len(b)-3000:], 0o644))
		j.Distill = &finetune.Distillation{Teacher: teacher, CacheDir: cache, TopK: 64,
			Loss: train.Distill{Alpha: 1, Temperature: 1, Divergence: train.KL}}
		rep, err := finetune.Run(context.Background(), j)
		require.NoError(t, err)
		ev0, ev1 := rep.Result.EvalBefore, rep.Result.EvalAfter
		t.Logf("cache %q: held-out KL %.4f -> %.4f", cache, ev0.Divergence, ev1.Divergence)
		assert.Less(t, ev1.Divergence, 0.9*ev0.Divergence)
	}
}
