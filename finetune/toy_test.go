package finetune_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/spf13/pflag"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/finetune"
	"github.com/ggtune/ggtune/method"
	"github.com/ggtune/ggtune/model"
	"github.com/ggtune/ggtune/train"
)

// toyMethod is a method that exists only in this file: a learned vector
// added to the last layer's output. It proves that a method plugs into
// finetune and method.Open through the registry alone.
type toyMethod struct{}

type toyConfig struct{ Init float32 }

func (c *toyConfig) AddFlags(fs *pflag.FlagSet) {
	fs.Float32Var(&c.Init, "toy-init", c.Init, "initial value")
}
func (c *toyConfig) Resolve(*binding.GGUFFile) error { return nil }

type toyInstance struct {
	ctx   *binding.Context
	buf   *binding.Buffer
	v     *binding.Tensor
	layer int
	arch  string
}

func (toyMethod) Name() string                      { return "toybias" }
func (toyMethod) Info() method.Info                 { return method.Info{Short: "toy", Output: "toy GGUF", LR: 1e-2} }
func (toyMethod) AdapterTypes() []string            { return []string{"toybias"} }
func (toyMethod) NewConfig() method.Config          { return &toyConfig{} }
func (i *toyInstance) Hooks(s float32) []model.Hook { return []model.Hook{toyHook{i, s}} }
func (i *toyInstance) Close()                       { i.buf.Close(); i.ctx.Close() }

func (i *toyInstance) Groups() ([]train.Group, error) {
	if err := method.SetParams(i.v); err != nil {
		return nil, err
	}
	return train.Groups(i.v), nil
}

func newToy(env *method.Env, vals []float32) (*toyInstance, error) {
	ctx, err := binding.NewGraphContext(1, 1, false)
	if err != nil {
		return nil, err
	}
	i := &toyInstance{ctx: ctx, layer: env.Config.NLayer - 1, arch: env.Config.Arch}
	i.v = ctx.NewTensor(binding.TypeF32, int64(env.Config.NEmbd)).SetName("toy.bias")
	if i.buf, err = env.Backend.AllocContext(ctx); err != nil {
		ctx.Close()
		return nil, err
	}
	if err := i.v.SetFloats(vals); err != nil {
		i.Close()
		return nil, err
	}
	return i, nil
}

func (toyMethod) New(env *method.Env, cfg method.Config) (method.Instance, error) {
	vals := make([]float32, env.Config.NEmbd)
	for k := range vals {
		vals[k] = cfg.(*toyConfig).Init
	}
	return newToy(env, vals)
}

func (toyMethod) Load(path string, env *method.Env) (method.Instance, error) {
	f, err := binding.OpenGGUF(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	vals, err := f.ReadTensorFloats("toy.bias")
	if err != nil {
		return nil, fmt.Errorf("load toy %s: %w", path, err)
	}
	return newToy(env, vals)
}

func (i *toyInstance) Save(path string) error {
	w, err := binding.NewGGUFWriter(1)
	if err != nil {
		return err
	}
	defer w.Close()
	for _, kv := range []binding.KV{{Key: "general.type", Value: "adapter"}, {Key: "general.architecture", Value: i.arch}, {Key: "adapter.type", Value: "toybias"}} {
		if err := w.Set(kv.Key, kv.Value); err != nil {
			return err
		}
	}
	vals, err := i.v.Floats()
	if err != nil {
		return err
	}
	if err := w.AddFloats("toy.bias", binding.TypeF32, []int64{i.v.Dim(0)}, vals); err != nil {
		return err
	}
	return w.WriteFile(path)
}

type toyHook struct {
	i     *toyInstance
	scale float32
}

func (h toyHook) LayerOutput(b *model.Builder, layer int, x *binding.Tensor) *binding.Tensor {
	if layer != h.i.layer {
		return x
	}
	return b.Ctx.Add(x, b.Ctx.Scale(h.i.v, h.scale))
}

func init() { method.Register(toyMethod{}) }

// TestToyMethodThroughRegistry trains, saves and reloads a method that
// only this file knows.
func TestToyMethodThroughRegistry(t *testing.T) {
	j := baseJob(t, "toybias")
	j.Train.Steps = 20
	j.Train.Schedule.LR = 3e-2
	rep, err := finetune.Run(context.Background(), j)
	require.NoError(t, err)
	t.Logf("toy method: held-out loss %.3f -> %.3f (%d values)", rep.Result.EvalBefore.Loss, rep.Result.EvalAfter.Loss, rep.Params)
	assert.Less(t, rep.Result.EvalAfter.Loss, rep.Result.EvalBefore.Loss)

	m, err := model.Load(j.Model, model.Options{Threads: 2})
	require.NoError(t, err)
	defer m.Close()
	env, err := method.NewEnv(j.Model, m, m.Backend())
	require.NoError(t, err)
	defer env.Close()
	inst, meth, err := method.Open(j.Output, env)
	require.NoError(t, err)
	defer inst.Close()
	assert.Equal(t, "toybias", meth.Name())
	ev, err := finetune.Evaluate(m, inst.Hooks(1), j.Val, finetune.EvalOptions{Context: j.Context, Batch: j.Batch, Pack: true, MaxBatches: j.MaxValBatches})
	require.NoError(t, err)
	assert.InDelta(t, rep.Result.EvalAfter.Loss, ev.Loss, 1e-5, "the saved file evaluates like the trained state")
}
