package finetune

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/data"
	"github.com/ggtune/ggtune/method"
	"github.com/ggtune/ggtune/model"
	"github.com/ggtune/ggtune/train"
)

// ErrVocabMismatch reports a teacher whose vocabulary differs from the
// student's: distillation compares their distributions token by token.
var ErrVocabMismatch = errors.New("teacher and student vocabularies differ")

// DefaultTopK is the number of teacher tokens per position kept in a
// teacher cache by default (DistillKit's choice).
const DefaultTopK = 128

// Adapter is an adapter file applied with a scale.
type Adapter struct {
	Path  string
	Scale float32
}

// Distillation turns a Job into knowledge distillation: the job's method
// trains the student (Job.Model) on
//
//	(1−α)·CE(labels) + α·T²·D(teacher‖student)
//
// (Loss). The teacher may be larger, of another architecture of the llama
// family and quantized, with adapters, but must have the student's token
// list (ErrVocabMismatch otherwise). Its predictions are computed in the
// same graph as the student's at every step, or, with CacheDir, once per
// data set as top-k predictions cached on disk and reused by later epochs
// and runs.
type Distillation struct {
	Teacher string // teacher GGUF
	// TeacherAdapters are applied to the teacher, stacked in order.
	TeacherAdapters []Adapter
	// Loss holds α, T, the divergence and β (its Teacher and TopK are
	// filled in by Run).
	Loss train.Distill
	// CacheDir, if set, holds the teacher's top-k predictions (one file
	// per data set, see TopKCache); empty computes them on the fly.
	CacheDir string
	// TopK is the number of teacher tokens per position in the cache (0:
	// DefaultTopK).
	TopK int
}

// teacher is a loaded teacher model with its adapters.
type teacher struct {
	m        *model.Model
	adapters []method.Instance
	hooks    []model.Hook
}

func (t *teacher) Close() {
	for _, a := range t.adapters {
		a.Close()
	}
	if t.m != nil {
		t.m.Close()
	}
}

// CheckVocab returns an error wrapping ErrVocabMismatch, naming both files,
// unless the GGUF files teacher and student have the same token list.
func CheckVocab(teacherPath, studentPath string) error {
	tokens := func(path string) ([]string, error) {
		f, err := binding.OpenGGUF(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		v, ok := f.Get("tokenizer.ggml.tokens")
		list, isList := v.([]string)
		if !ok || !isList {
			return nil, fmt.Errorf("%s: no token list (tokenizer.ggml.tokens)", path)
		}
		return list, nil
	}
	tt, err := tokens(teacherPath)
	if err != nil {
		return fmt.Errorf("teacher: %w", err)
	}
	st, err := tokens(studentPath)
	if err != nil {
		return fmt.Errorf("student: %w", err)
	}
	if len(tt) != len(st) {
		return fmt.Errorf("%w: teacher %s has %d tokens, student %s has %d", ErrVocabMismatch, teacherPath, len(tt), studentPath, len(st))
	}
	for i := range tt {
		if tt[i] != st[i] {
			return fmt.Errorf("%w: token %d is %q in teacher %s and %q in student %s", ErrVocabMismatch, i, tt[i], teacherPath, st[i], studentPath)
		}
	}
	return nil
}

// openTeacher loads the teacher on the student's backend, with its
// adapters, after checking its vocabulary.
func openTeacher(d *Distillation, student string, backend *binding.Backend) (*teacher, error) {
	if err := CheckVocab(d.Teacher, student); err != nil {
		return nil, err
	}
	m, err := model.Load(d.Teacher, model.Options{Backend: backend})
	if err != nil {
		return nil, fmt.Errorf("teacher: %w", err)
	}
	t := &teacher{m: m}
	if len(d.TeacherAdapters) == 0 {
		return t, nil
	}
	env, err := method.NewEnv(d.Teacher, m, backend)
	if err != nil {
		t.Close()
		return nil, err
	}
	defer env.Close()
	for _, a := range d.TeacherAdapters {
		inst, _, err := method.Open(a.Path, env)
		if err != nil {
			t.Close()
			return nil, fmt.Errorf("teacher adapter %s: %w", a.Path, err)
		}
		t.adapters = append(t.adapters, inst)
		t.hooks = append(t.hooks, inst.Hooks(a.Scale)...)
	}
	return t, nil
}

// validate checks the distillation settings before anything is loaded.
func (d *Distillation) validate() error {
	if d.Teacher == "" {
		return fmt.Errorf("%w: distillation without a teacher model", ErrJob)
	}
	if d.TopK < 0 {
		return fmt.Errorf("%w: top-k %d", ErrJob, d.TopK)
	}
	l := d.Loss
	l.TopK = 1
	if err := l.Validate(1 << 30); err != nil {
		return fmt.Errorf("%w: %w", ErrJob, err)
	}
	return nil
}

// settings adds the distillation's settings that exact resume depends on.
func (d *Distillation) settings(s map[string]string) error {
	fp, err := fingerprint(d.Teacher, false)
	if err != nil {
		return err
	}
	s["teacher"] = fp
	for i, a := range d.TeacherAdapters {
		fp, err := fingerprint(a.Path, true)
		if err != nil {
			return err
		}
		s["teacher-adapter-"+strconv.Itoa(i)] = fmt.Sprintf("%s, scale %g", fp, a.Scale)
	}
	l := d.Loss
	s["distill"] = fmt.Sprintf("alpha %g, temperature %g, divergence %s, beta %g, cache %t, top-k %d", l.Alpha, l.Temperature, l.Divergence, l.Beta, d.CacheDir != "", d.topK())
	return nil
}

func (d *Distillation) topK() int {
	if d.TopK == 0 {
		return DefaultTopK
	}
	return d.TopK
}

// weightBytes is the memory of a model's weights.
func weightBytes(m *model.Model) int64 {
	var n int64
	for _, name := range m.WeightNames() {
		if w := m.Weight(name); w != nil {
			n += w.Bytes()
		}
	}
	return n
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// distillRun is a job's teacher side: the teacher on the fly, or the
// top-k caches of the training and validation sets. Its methods accept a
// nil receiver (no distillation).
type distillRun struct {
	d          *Distillation
	teacher    *teacher // on the fly
	tm         *model.Model
	train, val *TopKCache
	teacherMiB float64
}

// cachePath returns the cache file of a data set role (train, val).
func (d *Distillation) cachePath(role string) string {
	return filepath.Join(d.CacheDir, role+".topk")
}

// prepareDistill loads the teacher (on the fly), or opens the caches of ds
// and val, computing the missing ones with the teacher.
func prepareDistill(j *Job, m *model.Model, ds, val *data.Dataset) (*distillRun, error) {
	d := j.Distill
	if d == nil {
		return nil, nil
	}
	r := &distillRun{d: d}
	if d.CacheDir == "" {
		t, err := openTeacher(d, j.Model, m.Backend())
		if err != nil {
			return nil, err
		}
		r.teacher, r.tm = t, t.m
		return r, nil
	}
	if err := CheckVocab(d.Teacher, j.Model); err != nil {
		return nil, err
	}
	var t *teacher // loaded only when a cache must be computed
	defer func() {
		if t != nil {
			t.Close()
		}
	}()
	vocab := m.Config().NVocab
	if d.topK() > vocab {
		return nil, fmt.Errorf("%w: top-k %d exceeds the vocabulary of %d", ErrJob, d.topK(), vocab)
	}
	for _, set := range []struct {
		role  string
		ds    *data.Dataset
		cache **TopKCache
	}{{"train", ds, &r.train}, {"val", val, &r.val}} {
		if set.ds == nil {
			continue
		}
		key, err := newCacheKey(d, set.ds, vocab)
		if err != nil {
			return nil, err
		}
		path := d.cachePath(set.role)
		if _, err := os.Stat(path); err == nil {
			if *set.cache, err = openTopKCache(path, key, set.ds); err != nil {
				return nil, err
			}
			continue
		}
		if t == nil {
			if t, err = openTeacher(d, j.Model, m.Backend()); err != nil {
				return nil, err
			}
			r.teacherMiB = mib(weightBytes(t.m))
		}
		if *set.cache, err = buildTopKCache(path, key, set.ds, t.m, t.hooks, j.Batch, j.Context); err != nil {
			return nil, err
		}
		if w := j.Train.Progress; w != nil {
			fmt.Fprintf(w, "distill: cached the teacher's top-%d for %d %s positions in %s (%d bytes per position)\n",
				key.TopK, key.Positions, set.role, path, (*set.cache).entrySize())
		}
	}
	return r, nil
}

// options returns the engine options of the run.
func (r *distillRun) options() []train.Option {
	if r == nil {
		return nil
	}
	l := r.d.Loss
	if r.teacher != nil {
		l.Teacher = GraphBuilder(r.teacher.m, r.teacher.hooks, 0)
	} else {
		l.TopK = r.d.topK()
	}
	return []train.Option{train.WithDistill(l)}
}

// attacher returns the function that adds the cached teacher predictions
// to the batches of a data set role (nil: none needed).
func (r *distillRun) attacher(role string) func(*data.Batch, *train.Batch) error {
	if r == nil || r.teacher != nil {
		return nil
	}
	c := r.train
	if role == "val" {
		c = r.val
	}
	return c.attach
}

// report writes the memory of teacher, student and the step to the
// job's progress writer.
func (r *distillRun) report(w io.Writer, m *model.Model, eng *train.Engine) {
	if r == nil || w == nil {
		return
	}
	trainBuf, evalBuf := eng.BufferSizes()
	mode := "teacher cached as top-k (not loaded while training)"
	teacherMiB := r.teacherMiB
	if r.teacher != nil {
		mode, teacherMiB = "teacher on the fly, in the same graph", mib(weightBytes(r.teacher.m))
	}
	fmt.Fprintf(w, "distill: %s; weights: teacher %.1f MiB, student %.1f MiB; compute: training step %.1f MiB, evaluation %.1f MiB\n",
		mode, teacherMiB, mib(weightBytes(m)), mib(trainBuf), mib(evalBuf))
}

// Close frees the teacher.
func (r *distillRun) Close() {
	if r != nil && r.teacher != nil {
		r.teacher.Close()
	}
}
