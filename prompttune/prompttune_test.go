package prompttune_test

import (
	"math"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/finetune"
	"github.com/ggtune/ggtune/internal/fixture"
	"github.com/ggtune/ggtune/model"
	"github.com/ggtune/ggtune/prompttune"
	"github.com/ggtune/ggtune/train"
)

func loadModel(t *testing.T) *model.Model {
	t.Helper()
	m, err := model.Load(fixture.Path(t, "models/stories260K.gguf"), model.Options{Threads: 2})
	require.NoError(t, err)
	t.Cleanup(m.Close)
	return m
}

var toks = []int32{1, 403, 17, 260, 5, 88, 301, 44, 99}

func maxDiff(a, b []float32) float64 {
	var d float64
	for i := range a {
		d = math.Max(d, math.Abs(float64(a[i]-b[i])))
	}
	return d
}

// TestPromptTuningMatchesLlamaEmbeddings decodes the soft prompt through
// libllama as an embeddings batch followed by the text tokens.
func TestPromptTuningMatchesLlamaEmbeddings(t *testing.T) {
	m := loadModel(t)
	for _, cfg := range []prompttune.Config{
		{Method: prompttune.PromptTuning},
		{Method: prompttune.PTuning},
		{Method: prompttune.PTuning, Encoder: prompttune.EncoderLSTM, EncoderHidden: 24},
	} {
		t.Run(string(cfg.Method)+"-"+cfg.Encoder, func(t *testing.T) {
			cfg.NumVirtual, cfg.Init, cfg.Seed = 5, prompttune.InitVocab, 3
			p, err := prompttune.New(cfg, m, m.Backend())
			require.NoError(t, err)
			defer p.Close()
			ours, err := m.Logits(model.Shape{Batch: 1, Tokens: len(toks)}, toks, nil, []model.Hook{p.Hook()})
			require.NoError(t, err)
			sp, err := p.SoftPrompt()
			require.NoError(t, err)

			lm, err := binding.LoadModel(m.Path(), binding.ModelParams{})
			require.NoError(t, err)
			defer lm.Close()
			lctx, err := binding.NewLlamaContext(lm, binding.ContextParams{NCtx: 64, Threads: 2, F32Cache: true})
			require.NoError(t, err)
			defer lctx.Close()
			require.NoError(t, lctx.DecodeEmbeddings(sp, 0))
			require.NoError(t, lctx.Decode(toks, 5, true))
			nv := m.Config().NVocab
			var want []float32
			for i := range toks {
				l, err := lctx.Logits(i)
				require.NoError(t, err)
				want = append(want, l...)
			}
			require.Len(t, ours, len(toks)*nv)
			d := maxDiff(ours, want)
			t.Logf("max |ggtune - libllama| = %.2e", d)
			assert.LessOrEqual(t, d, 1e-4)
		})
	}
}

// gradCheck compares the engine's gradient of every parameter with central
// differences of the evaluation loss at a few elements.
func gradCheck(t *testing.T, m *model.Model, p *prompttune.Prompt) {
	t.Helper()
	params, err := p.Params()
	require.NoError(t, err)
	opt := train.AdamW{Beta1: 0, Beta2: 0, Eps: 1e30}
	e, err := train.NewEngine(finetune.GraphBuilder(m, []model.Hook{p.Hook()}, 1), train.Groups(params...), m.Backend(), 2, 6, opt)
	require.NoError(t, err)
	defer e.Close()
	rng := rand.New(rand.NewPCG(4, 5))
	batch := train.Batch{B: 2, T: 6}
	for i := 0; i < 12; i++ {
		batch.Tokens = append(batch.Tokens, int32(rng.IntN(500)+3))
		batch.Targets = append(batch.Targets, int32(rng.IntN(500)+3))
	}
	saved := make([][]float32, len(params))
	for i, q := range params {
		saved[i], err = q.Floats()
		require.NoError(t, err)
	}
	_, err = e.Accumulate(batch)
	require.NoError(t, err)
	_, err = e.Step(1e30) // with beta1 = beta2 = 0 and a huge eps the update is the gradient
	require.NoError(t, err)
	grads := make([][]float32, len(params))
	for i, q := range params {
		after, err := q.Floats()
		require.NoError(t, err)
		grads[i] = make([]float32, len(after))
		for k := range after {
			grads[i][k] = saved[i][k] - after[k]
		}
		require.NoError(t, q.SetFloats(saved[i]))
	}
	loss := func() float64 {
		r, err := e.Eval(batch)
		require.NoError(t, err)
		return r.LossSum / float64(r.Tokens)
	}
	for i, q := range params {
		for _, k := range []int{0, len(saved[i]) / 3, len(saved[i]) - 1} {
			w := append([]float32(nil), saved[i]...)
			central := func(h float32) float64 {
				w[k] = saved[i][k] + h
				require.NoError(t, q.SetFloats(w))
				lp := loss()
				w[k] = saved[i][k] - h
				require.NoError(t, q.SetFloats(w))
				lm := loss()
				require.NoError(t, q.SetFloats(saved[i]))
				return (lp - lm) / (2 * float64(h))
			}
			// Richardson extrapolation cancels the h² error of central differences.
			fd := (4*central(1e-2) - central(2e-2)) / 3
			assert.InDelta(t, fd, float64(grads[i][k]), 2e-3+2e-2*math.Abs(fd), "%s[%d]", q.Name(), k)
		}
	}
}

func TestGradientsMatchFiniteDifferences(t *testing.T) {
	m := loadModel(t)
	for _, cfg := range []prompttune.Config{
		{Method: prompttune.PromptTuning, NumVirtual: 3, Init: prompttune.InitRandom},
		{Method: prompttune.PTuning, NumVirtual: 3, EncoderHidden: 16},
		{Method: prompttune.PTuning, NumVirtual: 3, EncoderHidden: 8, Encoder: prompttune.EncoderLSTM},
		{Method: prompttune.PrefixTuning, NumVirtual: 3},
		{Method: prompttune.PrefixTuning, NumVirtual: 3, Reparam: true, EncoderHidden: 16},
	} {
		name := string(cfg.Method) + "-" + cfg.Encoder
		if cfg.Reparam {
			name += "-reparam"
		}
		t.Run(name, func(t *testing.T) {
			p, err := prompttune.New(cfg, m, m.Backend())
			require.NoError(t, err)
			defer p.Close()
			gradCheck(t, m, p)
		})
	}
}

func TestSaveLoadAndPEFTRoundTrip(t *testing.T) {
	m := loadModel(t)
	shape := prompttune.ShapeOf(m.Config())
	for _, cfg := range []prompttune.Config{
		{Method: prompttune.PromptTuning, NumVirtual: 4, Init: prompttune.InitText, InitText: "Once upon a time"},
		{Method: prompttune.PTuning, NumVirtual: 4, EncoderHidden: 32},
		{Method: prompttune.PTuning, NumVirtual: 4, EncoderHidden: 16, Encoder: prompttune.EncoderLSTM},
		{Method: prompttune.PrefixTuning, NumVirtual: 4},
		{Method: prompttune.PrefixTuning, NumVirtual: 4, Reparam: true, EncoderHidden: 32},
	} {
		t.Run(string(cfg.Method), func(t *testing.T) {
			p, err := prompttune.New(cfg, m, m.Backend())
			require.NoError(t, err)
			defer p.Close()
			want, err := m.Logits(model.Shape{Batch: 1, Tokens: len(toks)}, toks, nil, []model.Hook{p.Hook()})
			require.NoError(t, err)
			dir := t.TempDir()
			path := filepath.Join(dir, "p.gguf")
			require.NoError(t, p.Save(path))
			q, err := prompttune.Load(path, shape, m.Backend())
			require.NoError(t, err)
			defer q.Close()
			assert.Equal(t, p.Config().Method, q.Config().Method)
			got, err := m.Logits(model.Shape{Batch: 1, Tokens: len(toks)}, toks, nil, []model.Hook{q.Hook()})
			require.NoError(t, err)
			assert.Zero(t, maxDiff(want, got), "reloaded prompt gives identical logits")

			peft := filepath.Join(dir, "peft")
			require.NoError(t, p.ExportPEFT(peft, "stories260K"))
			r, err := prompttune.ImportPEFT(peft, shape, m.Backend())
			require.NoError(t, err)
			defer r.Close()
			got, err = m.Logits(model.Shape{Batch: 1, Tokens: len(toks)}, toks, nil, []model.Hook{r.Hook()})
			require.NoError(t, err)
			assert.Less(t, maxDiff(want, got), 1e-4, "PEFT export drops the encoder but keeps the prompt")
		})
	}
}

func TestConfigErrors(t *testing.T) {
	m := loadModel(t)
	for _, cfg := range []prompttune.Config{
		{Method: "soft", NumVirtual: 4},
		{Method: prompttune.PromptTuning, NumVirtual: 0},
		{Method: prompttune.PromptTuning, NumVirtual: 4, Init: prompttune.InitText},
		{Method: prompttune.PromptTuning, NumVirtual: 4, Init: "zeros"},
	} {
		_, err := prompttune.New(cfg, m, m.Backend())
		assert.ErrorIs(t, err, prompttune.ErrConfig, "%+v", cfg)
	}
	_, err := prompttune.Load(m.Path(), prompttune.ShapeOf(m.Config()), m.Backend())
	assert.ErrorIs(t, err, prompttune.ErrFormat)
}
