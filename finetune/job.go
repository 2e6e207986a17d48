// Package finetune runs a fine-tuning job end to end: it loads a GGUF model,
// builds the method's trainable tensors (LoRA, full, head-only, or a soft
// prompt), reads and batches the data, trains with package train, and
// writes the result (an adapter GGUF, a full model GGUF, or a soft-prompt
// GGUF). The CLI's `ggtune train` is a thin layer over Run.
package finetune

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/data"
	"github.com/ggtune/ggtune/internal/ggufpatch"
	"github.com/ggtune/ggtune/lora"
	"github.com/ggtune/ggtune/model"
	"github.com/ggtune/ggtune/prompttune"
	"github.com/ggtune/ggtune/train"
)

// Method names a fine-tuning method.
type Method string

// The methods.
const (
	LoRA    Method = "lora"    // low-rank adapters on a frozen base (any base type)
	Full    Method = "full"    // every weight, as F32
	Head    Method = "head"    // the output layer (and optionally the last blocks)
	Prompt  Method = "prompt"  // prompt tuning
	Prefix  Method = "prefix"  // prefix tuning
	PTuning Method = "ptuning" // P-tuning
)

// ParseMethod validates a method name.
func ParseMethod(s string) (Method, error) {
	switch m := Method(strings.ToLower(s)); m {
	case LoRA, Full, Head, Prompt, Prefix, PTuning:
		return m, nil
	}
	return "", fmt.Errorf("%w: unknown method %q (want lora, full, head, prompt, prefix or ptuning)", ErrJob, s)
}

// ErrJob reports an invalid job description.
var ErrJob = errors.New("invalid job")

// Job describes one fine-tuning run.
type Job struct {
	Method Method
	Model  string // base GGUF
	Data   string // training data file
	Val    string // validation data file (optional)
	// ValSplit holds out this fraction of Data for validation when Val is
	// empty (0: no validation).
	ValSplit float64
	Output   string // adapter, model or soft-prompt GGUF to write

	Context int  // tokens per sequence (T)
	Batch   int  // sequences per micro batch (B)
	Pack    bool // pack short examples into full rows
	Threads int
	Seed    uint64
	// MaxValBatches bounds the validation batches per evaluation (0: all).
	MaxValBatches int

	DataOptions data.Options // Context and Templater are filled in
	LoRA        lora.Config
	Prompt      prompttune.Config
	// TrainLayers adds the last N transformer blocks to head-only training.
	TrainLayers int
	// InitFrom continues training an existing LoRA adapter or soft prompt
	// (a GGUF written by ggtune) instead of a fresh one; its file's
	// configuration replaces LoRA or Prompt.
	InitFrom string
	Train    train.Config
}

// Report is the outcome of a job.
type Report struct {
	Result     train.Result
	Output     string
	Params     int64 // trainable values
	Examples   int   // training examples
	ValBatches int
}

// templater renders chat messages with libllama's template engine.
func templater(tmpl string, msgs []data.ChatMessage, addAssistant bool) (string, error) {
	bm := make([]binding.ChatMessage, len(msgs))
	for i, m := range msgs {
		bm[i] = binding.ChatMessage(m)
	}
	return binding.ApplyChatTemplate(tmpl, bm, addAssistant)
}

// method is what Run needs from a training method.
type method struct {
	hooks  []model.Hook
	params []*binding.Tensor
	nvals  int64
	save   func(path string) error
	close  func()
}

func (j *Job) validate() error {
	switch {
	case j.Model == "":
		return fmt.Errorf("%w: no model", ErrJob)
	case j.Data == "":
		return fmt.Errorf("%w: no training data", ErrJob)
	case j.Output == "":
		return fmt.Errorf("%w: no output file", ErrJob)
	case j.Context < 2 || j.Batch < 1:
		return fmt.Errorf("%w: context %d and batch %d (want >= 2 and >= 1)", ErrJob, j.Context, j.Batch)
	case j.ValSplit < 0 || j.ValSplit >= 1:
		return fmt.Errorf("%w: validation split %v (want [0, 1))", ErrJob, j.ValSplit)
	}
	_, err := ParseMethod(string(j.Method))
	return err
}

// Run executes the job. Cancelling ctx stops training after the current
// step and writes a checkpoint (train.ErrInterrupted is returned).
func Run(ctx context.Context, j Job) (*Report, error) {
	if err := j.validate(); err != nil {
		return nil, err
	}
	if j.Train.Checkpoint == "" {
		j.Train.Checkpoint = j.Output + ".ckpt"
	}
	if err := j.checkFiles(j.Train); err != nil {
		return nil, err
	}
	settings, err := j.settings()
	if err != nil {
		return nil, err
	}
	for k, v := range j.Train.Settings {
		settings[k] = v
	}
	j.Train.Settings = settings
	trainable, err := trainableWeights(j)
	if err != nil {
		return nil, err
	}
	m, err := model.Load(j.Model, model.Options{Threads: j.Threads, Trainable: trainable})
	if err != nil {
		return nil, err
	}
	defer m.Close()
	tok, err := m.Tokenizer()
	if err != nil {
		return nil, err
	}
	opts := j.DataOptions
	opts.Context, opts.Templater = j.Context, templater
	ds, err := data.Load(j.Data, tokenizer{tok}, opts)
	if err != nil {
		return nil, err
	}
	var val *data.Dataset
	switch {
	case j.Val != "":
		if val, err = data.Load(j.Val, tokenizer{tok}, opts); err != nil {
			return nil, err
		}
	case j.ValSplit > 0:
		if ds, val, err = ds.Split(j.ValSplit, j.Seed); err != nil {
			return nil, err
		}
	}
	meth, err := newMethod(j, m)
	if err != nil {
		return nil, err
	}
	defer meth.close()

	src, err := newSource(ds, j)
	if err != nil {
		return nil, err
	}
	valBatches, err := batches(val, j)
	if err != nil {
		return nil, err
	}
	eng, err := train.NewEngine(GraphBuilder(m, meth.hooks, j.Seed), train.Groups(meth.params...), m.Backend(), j.Batch, j.Context, j.Train.Optimizer)
	if err != nil {
		return nil, err
	}
	defer eng.Close()
	cfg := j.Train
	res, err := train.Run(ctx, eng, src, valBatches, cfg)
	rep := &Report{Result: res, Output: j.Output, Params: meth.nvals, Examples: ds.Len(), ValBatches: len(valBatches)}
	if err != nil {
		return rep, err
	}
	rep.Output, err = saveResult(meth.save, j.Output, cfg.Checkpoint)
	return rep, err
}

// newSource makes the endless, shuffled training stream.
func newSource(ds *data.Dataset, j Job) (*loaderSource, error) {
	cfg := data.LoaderConfig{Batch: j.Batch, Context: j.Context, Pack: j.Pack, Shuffle: true, Seed: j.Seed}
	l, err := data.NewLoader(ds, cfg)
	if err != nil {
		return nil, err
	}
	cfg.Epochs = 1
	one, err := data.NewLoader(ds, cfg)
	if err != nil {
		return nil, err
	}
	return &loaderSource{l: l, perEpoch: one.Steps(), examples: ds.Len()}, nil
}

// batches returns one pass over a validation set (nil for none).
func batches(ds *data.Dataset, j Job) ([]train.Batch, error) {
	if ds == nil {
		return nil, nil
	}
	l, err := data.NewLoader(ds, data.LoaderConfig{Batch: j.Batch, Context: j.Context, Pack: j.Pack, Epochs: 1})
	if err != nil {
		return nil, err
	}
	var out []train.Batch
	for j.MaxValBatches <= 0 || len(out) < j.MaxValBatches {
		b, err := l.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		out = append(out, toTrainBatch(b))
	}
	return out, nil
}

// trainableWeights selects the base weights that full and head-only
// training load as F32 parameters.
func trainableWeights(j Job) (func(string) bool, error) {
	switch j.Method {
	case Full:
		return func(string) bool { return true }, nil
	case Head:
		f, err := binding.OpenGGUF(j.Model)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		cfg, err := model.ReadConfig(f)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", j.Model, err)
		}
		if j.TrainLayers < 0 || j.TrainLayers > cfg.NLayer {
			return nil, fmt.Errorf("%w: train the last %d of %d layers", ErrJob, j.TrainLayers, cfg.NLayer)
		}
		first := cfg.NLayer - j.TrainLayers
		return func(name string) bool {
			if name == "output.weight" || name == "output_norm.weight" || (cfg.TiedOutput && name == "token_embd.weight") {
				return true
			}
			var l int
			var rest string
			if n, _ := fmt.Sscanf(name, "blk.%d.%s", &l, &rest); n == 2 {
				return l >= first
			}
			return false
		}, nil
	}
	return nil, nil
}

func newMethod(j Job, m *model.Model) (*method, error) {
	switch j.Method {
	case LoRA:
		f, err := binding.OpenGGUF(j.Model)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		cfg := j.LoRA
		cfg.Seed = j.Seed
		var a *lora.Adapter
		if j.InitFrom != "" {
			a, err = lora.Load(j.InitFrom, f, m.Backend())
		} else {
			a, err = lora.New(cfg, f, m.Backend())
		}
		if err != nil {
			return nil, err
		}
		params, err := a.Params()
		if err != nil {
			a.Close()
			return nil, err
		}
		a.Meta["base_model"] = baseName(j.Model)
		a.Meta["data"] = baseName(j.Data)
		return &method{hooks: []model.Hook{a.Hook(1)}, params: params, nvals: a.NumParams(), save: a.Save, close: a.Close}, nil
	case Prompt, Prefix, PTuning:
		cfg := j.Prompt
		cfg.Method = map[Method]prompttune.Method{Prompt: prompttune.PromptTuning, Prefix: prompttune.PrefixTuning, PTuning: prompttune.PTuning}[j.Method]
		cfg.Seed = j.Seed
		var p *prompttune.Prompt
		var err error
		if j.InitFrom != "" {
			p, err = prompttune.Load(j.InitFrom, prompttune.ShapeOf(m.Config()), m.Backend())
			if err == nil && p.Config().Method != cfg.Method {
				p.Close()
				err = fmt.Errorf("%w: %s holds a %s prompt, the job trains %s", ErrJob, j.InitFrom, p.Config().Method, cfg.Method)
			}
		} else {
			p, err = prompttune.New(cfg, m, m.Backend())
		}
		if err != nil {
			return nil, err
		}
		params, err := p.Params()
		if err != nil {
			p.Close()
			return nil, err
		}
		return &method{hooks: []model.Hook{p.Hook()}, params: params, nvals: p.NumParams(), save: p.Save, close: p.Close}, nil
	default:
		params := m.Trainable()
		if len(params) == 0 {
			return nil, fmt.Errorf("%w: no trainable weights", ErrJob)
		}
		var n int64
		for _, p := range params {
			if err := p.SetParam(); err != nil {
				return nil, err
			}
			n += p.Elements()
		}
		return &method{params: params, nvals: n, save: func(path string) error { return SaveModel(m, j.Model, path) }, close: func() {}}, nil
	}
}

func baseName(path string) string {
	if i := strings.LastIndexAny(path, `/\`); i >= 0 {
		return path[i+1:]
	}
	return path
}

// SaveModel writes the model with its trainable (fine-tuned) weights to
// path, copying everything else from the base file; trained weights are
// stored as F32.
func SaveModel(m *model.Model, base, path string) error {
	patches := map[string]ggufpatch.Patch{}
	for _, t := range m.Trainable() {
		patches[t.Name()] = ggufpatch.Patch{Values: t.Floats, Type: binding.TypeF32}
	}
	if err := ggufpatch.Write(base, path, patches, nil); err != nil {
		return fmt.Errorf("save model: %w", err)
	}
	return nil
}
