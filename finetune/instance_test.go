package finetune_test

import (
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/method"
	"github.com/ggtune/ggtune/model"
	"github.com/ggtune/ggtune/train"
)

// methodSetup is a method resolved against a model file: its configuration
// and the weights it trains (nil for adapters).
type methodSetup struct {
	meth      method.Method
	cfg       method.Config
	trainable func(string) bool
}

func resolveMethod(t *testing.T, name, path string) methodSetup {
	t.Helper()
	meth, err := method.Get(name)
	require.NoError(t, err)
	f, err := binding.OpenGGUF(path)
	require.NoError(t, err)
	defer f.Close()
	s := methodSetup{meth: meth, cfg: meth.NewConfig()}
	require.NoError(t, s.cfg.Resolve(f))
	if wt, ok := meth.(method.WeightTrainer); ok {
		s.trainable, err = wt.Trainable(s.cfg, f)
		require.NoError(t, err)
	}
	return s
}

// instance is a method instance on a loaded model, with its parameter
// groups; close frees the three.
type instance struct {
	m      *model.Model
	inst   method.Instance
	groups []train.Group
	params []*binding.Tensor
	close  func()
}

// newInstance loads path with opts (Trainable defaults to the method's)
// and creates the method's instance on it (seed 3).
func (s methodSetup) newInstance(t *testing.T, path string, opts model.Options) instance {
	t.Helper()
	if opts.Trainable == nil {
		opts.Trainable = s.trainable
	}
	m, err := model.Load(path, opts)
	require.NoError(t, err)
	env, err := method.NewEnv(path, m, m.Backend())
	if err != nil {
		m.Close()
		require.NoError(t, err)
	}
	env.Seed = 3
	inst, err := s.meth.New(env, s.cfg)
	if err != nil {
		env.Close()
		m.Close()
		require.NoError(t, err)
	}
	out := instance{m: m, inst: inst, close: func() { inst.Close(); env.Close(); m.Close() }}
	if out.groups, err = inst.Groups(); err != nil {
		out.close()
		require.NoError(t, err)
	}
	for _, g := range out.groups {
		out.params = append(out.params, g.Params...)
	}
	return out
}

// randomBatch is a B×T batch of random tokens and targets in stories260K's
// vocabulary, with every maskEvery-th position carrying no loss and packed
// documents of segLen positions.
func randomBatch(rng *rand.Rand, b, t, maskEvery, segLen int) train.Batch {
	batch := train.Batch{B: b, T: t}
	for i := 0; i < b*t; i++ {
		batch.Tokens = append(batch.Tokens, int32(rng.IntN(500)+3))
		target := int32(rng.IntN(500) + 3)
		if i%maskEvery == 0 {
			target = -1
		}
		batch.Targets = append(batch.Targets, target)
		batch.Segments = append(batch.Segments, int32(1+i/segLen))
	}
	return batch
}
