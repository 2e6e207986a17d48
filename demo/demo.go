// Package demo is ggtune's main job on an embedded default: it trains a
// tiny base model from scratch (full training) on public-domain text that
// the pinned llama.cpp module ships (War and Peace), caches it, LoRA-tunes
// it on Shakespeare, shows the held-out loss falling and samples before and
// after, writes the adapter GGUF and the loss plot, and checks that
// libllama loads the adapter and agrees with ggtune's graph.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/finetune"
	"github.com/ggtune/ggtune/internal/randmodel"
	"github.com/ggtune/ggtune/lora"
	"github.com/ggtune/ggtune/model"
	"github.com/ggtune/ggtune/train"
)

// Options configure the demo. Zero values take the defaults.
type Options struct {
	BaseText string // text the base model is trained on (War and Peace)
	TuneText string // text the adapter is trained on (Shakespeare)
	CacheDir string // where the trained base model is kept
	OutDir   string // adapter, metrics and plot
	Threads  int
	// BaseSteps and TuneSteps are the optimizer steps of the two phases.
	BaseSteps, TuneSteps int
	// Log receives the progress and the report (os.Stdout by default).
	Log io.Writer
}

// Report is what the demo measured.
type Report struct {
	BasePath, AdapterPath, PlotPath string
	BaseLoss                        [2]float64 // base training loss, first and last step
	HeldOut                         [2]float64 // held-out Shakespeare loss before and after LoRA
	SampleBefore, SampleAfter       string
	LlamaMaxDiff                    float64 // max |logits| difference, libllama vs ggtune, with the adapter
}

// Texts in the pinned ollama module (reached through third_party/ollama).
const (
	defaultBaseText = "third_party/ollama/tokenizer/testdata/war-and-peace.txt"
	defaultTuneText = "third_party/ollama/integration/testdata/shakespeare.txt"
	samplePrompt    = "KING HENRY:"
)

func (o *Options) defaults() error {
	if o.BaseText == "" {
		o.BaseText = defaultBaseText
	}
	if o.TuneText == "" {
		o.TuneText = defaultTuneText
	}
	for _, p := range []string{o.BaseText, o.TuneText} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("demo: %w (run `make deps` in the repository, or pass the text files)", err)
		}
	}
	if o.CacheDir == "" {
		dir, err := os.UserCacheDir()
		if err != nil {
			dir = os.TempDir()
		}
		o.CacheDir = filepath.Join(dir, "ggtune")
	}
	if o.OutDir == "" {
		o.OutDir = "out"
	}
	if o.BaseSteps == 0 {
		o.BaseSteps = 500
	}
	if o.TuneSteps == 0 {
		o.TuneSteps = 120
	}
	if o.Log == nil {
		o.Log = os.Stdout
	}
	for _, d := range []string{o.CacheDir, o.OutDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("demo: %w", err)
		}
	}
	return nil
}

// Run runs the demo.
func Run(ctx context.Context, o Options) (*Report, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	rep := &Report{
		BasePath:    filepath.Join(o.CacheDir, fmt.Sprintf("demo-base-%d.gguf", o.BaseSteps)),
		AdapterPath: filepath.Join(o.OutDir, "demo-lora.gguf"),
		PlotPath:    filepath.Join(o.OutDir, "demo-lora.loss.png"),
	}
	w := o.Log
	start := time.Now()
	if err := trainBase(ctx, o, rep); err != nil {
		return nil, err
	}
	held, tune, err := splitText(o.TuneText, o.OutDir)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(w, "\n== sample from the base model (prompt %q) ==\n", samplePrompt)
	if rep.SampleBefore, err = sample(ctx, rep.BasePath, "", o.Threads); err != nil {
		return nil, err
	}
	fmt.Fprintln(w, rep.SampleBefore)

	fmt.Fprintf(w, "\n== LoRA fine-tuning on Shakespeare (%d steps) ==\n", o.TuneSteps)
	cfg := lora.DefaultConfig()
	cfg.Rank, cfg.Alpha = 8, 16
	job := finetune.Job{
		Method: "lora", Config: &cfg, Model: rep.BasePath, Data: tune, Val: held, Output: rep.AdapterPath,
		Context: 128, Batch: 8, Pack: true, Threads: o.Threads, Seed: 1, MaxValBatches: 8,
		Train: train.Config{Steps: o.TuneSteps, Optimizer: train.DefaultAdamW(), EvalEvery: o.TuneSteps / 4,
			Schedule:    train.LRSchedule{Kind: train.Cosine, LR: 3e-3, MinLR: 3e-4, Warmup: 10},
			MetricsPath: filepath.Join(o.OutDir, "demo-lora.metrics.jsonl"), PlotPath: rep.PlotPath, Progress: w},
	}
	res, err := finetune.Run(ctx, job)
	if err != nil {
		return nil, err
	}
	rep.HeldOut = [2]float64{res.Result.EvalBefore.Loss, res.Result.EvalAfter.Loss}

	fmt.Fprintf(w, "\n== sample with the adapter ==\n")
	if rep.SampleAfter, err = sample(ctx, rep.BasePath, rep.AdapterPath, o.Threads); err != nil {
		return nil, err
	}
	fmt.Fprintln(w, rep.SampleAfter)
	if rep.LlamaMaxDiff, err = checkWithLlama(rep.BasePath, rep.AdapterPath, o.Threads); err != nil {
		return nil, err
	}
	fmt.Fprintf(w, "\n== summary (%s) ==\n", time.Since(start).Round(time.Second))
	fmt.Fprintf(w, "base model:        %s (training loss %.3f -> %.3f)\n", rep.BasePath, rep.BaseLoss[0], rep.BaseLoss[1])
	fmt.Fprintf(w, "held-out loss:     %.3f -> %.3f (perplexity %.1f -> %.1f)\n", rep.HeldOut[0], rep.HeldOut[1], math.Exp(rep.HeldOut[0]), math.Exp(rep.HeldOut[1]))
	fmt.Fprintf(w, "adapter:           %s (%d trainable values)\n", rep.AdapterPath, res.Params)
	fmt.Fprintf(w, "loss plot:         %s\n", rep.PlotPath)
	fmt.Fprintf(w, "libllama check:    adapter loads; max |logit difference| vs ggtune = %.2e\n", rep.LlamaMaxDiff)
	fmt.Fprintf(w, "try it:            ggtune generate -m %s --lora %s -p %q -n 200\n", rep.BasePath, rep.AdapterPath, samplePrompt)
	return rep, nil
}

// trainBase trains the base model from a random initialisation unless a
// cached one exists.
func trainBase(ctx context.Context, o Options, rep *Report) error {
	w := o.Log
	if _, err := os.Stat(rep.BasePath); err == nil {
		fmt.Fprintf(w, "== base model: %s (cached) ==\n", rep.BasePath)
		return nil
	}
	fmt.Fprintf(w, "== training a tiny base model from scratch on %s (%d steps) ==\n", filepath.Base(o.BaseText), o.BaseSteps)
	init := filepath.Join(o.CacheDir, "demo-init.gguf")
	if err := randmodel.Write(init, randmodel.Options{NEmbd: 128, NLayer: 4, NHead: 4, NFF: 384, NVocab: 512, NCtx: 512, Untied: true, Seed: 7}); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer os.Remove(init)
	tmp := rep.BasePath + ".partial"
	job := finetune.Job{
		Method: "full", Model: init, Data: o.BaseText, Output: tmp,
		Context: 128, Batch: 8, Pack: true, Threads: o.Threads, Seed: 1,
		Train: train.Config{Steps: o.BaseSteps, Optimizer: train.AdamW{Beta1: 0.9, Beta2: 0.99, Eps: 1e-8, WeightDecay: 0.01, MaxGradNorm: 1},
			Schedule: train.LRSchedule{Kind: train.Cosine, LR: 3e-3, MinLR: 3e-4, Warmup: 20},
			Progress: w, Checkpoint: filepath.Join(o.CacheDir, "demo-base.ckpt")},
	}
	res, err := finetune.Run(ctx, job)
	if err != nil {
		return err
	}
	rep.BaseLoss = [2]float64{res.Result.FirstLoss, res.Result.LastLoss}
	return os.Rename(tmp, rep.BasePath)
}

// splitText writes the last tenth of the text as held-out data and the rest
// as training data.
func splitText(path, dir string) (held, tune string, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", "", fmt.Errorf("demo: %w", err)
	}
	cut := len(b) * 9 / 10
	if i := strings.LastIndexByte(string(b[:cut]), '\n'); i > 0 {
		cut = i + 1
	}
	held, tune = filepath.Join(dir, "shakespeare.heldout.txt"), filepath.Join(dir, "shakespeare.train.txt")
	if err := os.WriteFile(tune, b[:cut], 0o644); err != nil {
		return "", "", fmt.Errorf("demo: %w", err)
	}
	if err := os.WriteFile(held, b[cut:], 0o644); err != nil {
		return "", "", fmt.Errorf("demo: %w", err)
	}
	return held, tune, nil
}

// sample generates 120 tokens (temperature 0.7, fixed seed) from the base
// model, with the adapter when one is given.
func sample(ctx context.Context, base, adapter string, threads int) (string, error) {
	m, err := model.Load(base, model.Options{Threads: threads})
	if err != nil {
		return "", err
	}
	defer m.Close()
	var hooks []model.Hook
	if adapter != "" {
		f, err := binding.OpenGGUF(base)
		if err != nil {
			return "", err
		}
		defer f.Close()
		a, err := lora.Load(adapter, f, m.Backend())
		if err != nil {
			return "", err
		}
		defer a.Close()
		hooks = append(hooks, a.Hook(1))
	}
	p := model.GenerateParams{SamplerParams: model.SamplerParams{Temperature: 0.7, Seed: 42}, MaxTokens: 120, Hooks: hooks, NCtx: 256}
	res, err := m.Generate(ctx, samplePrompt, p, nil)
	if err != nil {
		return "", err
	}
	return samplePrompt + res.Text, nil
}

// checkWithLlama loads the adapter with libllama and compares its logits
// with ggtune's graph on a fixed text.
func checkWithLlama(base, adapter string, threads int) (float64, error) {
	lm, err := binding.LoadModel(base, binding.ModelParams{})
	if err != nil {
		return 0, err
	}
	defer lm.Close()
	ad, err := lm.LoadAdapter(adapter)
	if err != nil {
		return 0, fmt.Errorf("demo: libllama rejects the adapter: %w", err)
	}
	defer ad.Close()
	toks, err := lm.Tokenize("Now is the winter of our discontent", true, false)
	if err != nil {
		return 0, err
	}
	lctx, err := binding.NewLlamaContext(lm, binding.ContextParams{NCtx: 64, Threads: threads, F32Cache: true})
	if err != nil {
		return 0, err
	}
	defer lctx.Close()
	if err := lctx.SetAdapter(ad, 1); err != nil {
		return 0, err
	}
	if err := lctx.Decode(toks, 0, true); err != nil {
		return 0, err
	}
	m, err := model.Load(base, model.Options{Threads: threads})
	if err != nil {
		return 0, err
	}
	defer m.Close()
	f, err := binding.OpenGGUF(base)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	a, err := lora.Load(adapter, f, m.Backend())
	if err != nil {
		return 0, err
	}
	defer a.Close()
	ours, err := m.Logits(model.Shape{Batch: 1, Tokens: len(toks)}, toks, nil, []model.Hook{a.Hook(1)})
	if err != nil {
		return 0, err
	}
	nv := m.Config().NVocab
	var d float64
	for i := range toks {
		want, err := lctx.Logits(i)
		if err != nil {
			return 0, err
		}
		for k := 0; k < nv; k++ {
			d = math.Max(d, math.Abs(float64(want[k]-ours[i*nv+k])))
		}
	}
	if d > 1e-3 {
		return d, errors.New("demo: libllama's logits with the adapter differ from ggtune's")
	}
	return d, nil
}
