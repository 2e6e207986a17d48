package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/internal/fixture"
	"github.com/ggtune/ggtune/internal/randmodel"
	"github.com/ggtune/ggtune/model"
)

func init() { register(newBenchCmd) }

type benchOpts struct {
	threads, pp, tg, reps int
	device                string // ggtune's graph (libllama stays on the CPU)
}

func newBenchCmd() *cobra.Command {
	var (
		models  []string
		o       benchOpts
		noRand  bool
		doTrain bool
		asJSON  bool
		to      trainBenchOpts
		shapes  []string
		sweep   string
	)
	cmd := &cobra.Command{
		Use:   "bench [-m MODEL ...]",
		Short: "Compare prompt processing and generation speed of ggtune's graph with libllama",
		Long: "Measure prompt processing (pp: one batch of -p tokens) and generation (tg: -n tokens one at\n" +
			"a time from an empty cache) in tokens/s, with ggtune's graph and with libllama, on the same\n" +
			"model, threads and context, and print the ratios (best of -r runs each). Without -m it runs\n" +
			"stories260K (if the test data is present) and an 86M-parameter random llama (n_embd 768,\n" +
			"12 layers, 12 heads, n_ff 2048) in F32 and Q8_0, written to a temporary directory.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			to.threads, to.device = o.threads, o.device
			var err error
			if to.sweep, err = parseSweep(sweep); err != nil {
				return err
			}
			if doTrain {
				return benchTrain(out, models, shapes, asJSON, o, to)
			}
			if asJSON {
				return fmt.Errorf("--json needs --train")
			}
			if len(models) == 0 {
				if p := filepath.Join(fixture.Dir(), "models", "stories260K.gguf"); fileExists(p) {
					models = append(models, p)
				}
				if !noRand {
					dir, err := os.MkdirTemp("", "ggtune-bench-")
					if err != nil {
						return err
					}
					defer os.RemoveAll(dir)
					for _, typ := range []binding.Type{binding.TypeF32, binding.TypeQ8_0} {
						p := filepath.Join(dir, fmt.Sprintf("random-86M-%v.gguf", typ))
						fmt.Fprintf(os.Stderr, "writing %s\n", p)
						err := randmodel.Write(p, randmodel.Options{NEmbd: 768, NLayer: 12, NHead: 12, NFF: 2048, NVocab: 512, Type: typ, Seed: 1})
						if err != nil {
							return err
						}
						models = append(models, p)
					}
				}
			}
			w := tabwriter.NewWriter(out, 0, 2, 2, ' ', tabwriter.AlignRight)
			fmt.Fprintf(out, "threads %d, pp %d tokens, tg %d tokens, best of %d\n", o.threads, o.pp, o.tg, o.reps)
			fmt.Fprintln(w, "model\ttest\tlibllama t/s\tggtune t/s\tratio\t")
			for _, p := range models {
				rows, err := benchModel(p, o)
				if err != nil {
					return fmt.Errorf("bench %s: %w", p, err)
				}
				for _, r := range rows {
					fmt.Fprintf(w, "%s\t%s\t%.1f\t%.1f\t%.3f\t\n", filepath.Base(p), r.test, r.llama, r.ours, r.ours/r.llama)
				}
				w.Flush()
			}
			return w.Flush()
		},
	}
	f := cmd.Flags()
	f.StringArrayVarP(&models, "model", "m", nil, "model GGUF file (repeatable)")
	f.IntVarP(&o.threads, "threads", "t", runtime.NumCPU(), "CPU threads")
	f.StringVar(&o.device, "device", "", deviceUsage+"; libllama's numbers stay on the CPU")
	f.IntVarP(&o.pp, "n-prompt", "p", 128, "prompt tokens")
	f.IntVarP(&o.tg, "n-gen", "n", 64, "generated tokens")
	f.IntVarP(&o.reps, "repetitions", "r", 5, "runs of each test (the best counts)")
	f.BoolVar(&noRand, "no-random", false, "without -m: skip the random 86M models")
	f.BoolVar(&doTrain, "train", false, "benchmark training: tokens/s, peak RSS and efficiency against libllama's prompt eval per method")
	f.BoolVar(&asJSON, "json", false, "with --train and one -m: print one JSON object")
	f.IntVar(&to.ctx, "ctx", 256, "with --train: tokens per sequence")
	f.IntVar(&to.batch, "batch", 1, "with --train: sequences per step")
	f.IntVar(&to.steps, "steps", 5, "with --train: optimizer steps per measurement (the first is a warm-up)")
	f.StringSliceVar(&to.methods, "methods", []string{"lora", "full", "prompt", "prefix"}, "with --train: methods to measure")
	f.StringVar(&sweep, "sweep", "128,256,512,1024,4096", "with --train: contexts of the LoRA context sweep, each with activation checkpointing on and off (\"\": none)")
	f.StringVar(&to.vocab, "vocab", "", "with --train and no -m: vocabulary GGUF of the 541M shape (default: llama.cpp's deepseek-llm vocabulary from the shared test data when present, else synthetic)")
	f.IntVar(&to.maxPlainCtx, "sweep-plain-max", 1024, "with --train: longest context of the sweep also measured without activation checkpointing")
	f.StringSliceVar(&shapes, "shapes", []string{"86M", "541M"}, "with --train and no -m: random model shapes to generate (86M, 541M)")
	return cmd
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

type benchRow struct {
	test        string
	llama, ours float64
}

// bestPair runs a and b alternately reps times (after a warm-up of each),
// so that both see the same machine load, and returns the best rates of n
// tokens per second.
func bestPair(reps, n int, a, b func() error) (float64, float64, error) {
	var ra, rb []float64
	for i := 0; i <= reps; i++ {
		for j, f := range []func() error{a, b} {
			start := time.Now()
			if err := f(); err != nil {
				return 0, 0, err
			}
			if i == 0 {
				continue
			}
			rate := float64(n) / time.Since(start).Seconds()
			if j == 0 {
				ra = append(ra, rate)
			} else {
				rb = append(rb, rate)
			}
		}
	}
	sort.Float64s(ra)
	sort.Float64s(rb)
	return ra[len(ra)-1], rb[len(rb)-1], nil
}

func benchModel(path string, o benchOpts) ([]benchRow, error) {
	nctx := o.pp + o.tg
	m, err := model.Load(path, model.Options{Threads: o.threads, Device: o.device})
	if err != nil {
		return nil, err
	}
	defer m.Close()
	nv := m.Config().NVocab
	r := rand.New(rand.NewPCG(1, 2))
	prompt := make([]int32, o.pp)
	for i := range prompt {
		prompt[i] = int32(r.IntN(nv))
	}
	s, err := m.NewSession(model.SessionOptions{NCtx: nctx, NBatch: o.pp})
	if err != nil {
		return nil, err
	}
	defer s.Close()

	lm, err := binding.LoadModel(path, binding.ModelParams{})
	if err != nil {
		return nil, err
	}
	defer lm.Close()
	lc, err := binding.NewLlamaContext(lm, binding.ContextParams{NCtx: nctx, NBatch: o.pp, Threads: o.threads})
	if err != nil {
		return nil, err
	}
	defer lc.Close()

	ppL, ppO, err := bestPair(o.reps, o.pp, func() error {
		lc.ClearMemory()
		return lc.Decode(prompt, 0, false)
	}, func() error {
		s.Reset()
		_, err := s.Eval(prompt)
		return err
	})
	if err != nil {
		return nil, err
	}
	tgL, tgO, err := bestPair(o.reps, o.tg, func() error {
		lc.ClearMemory()
		for i := 0; i < o.tg; i++ {
			if err := lc.Decode(prompt[i%o.pp:i%o.pp+1], i, false); err != nil {
				return err
			}
			if _, err := lc.Logits(-1); err != nil {
				return err
			}
		}
		return nil
	}, func() error {
		s.Reset()
		for i := 0; i < o.tg; i++ {
			if _, err := s.Eval(prompt[i%o.pp : i%o.pp+1]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	rows := []benchRow{{fmt.Sprintf("pp%d", o.pp), ppL, ppO}, {fmt.Sprintf("tg%d", o.tg), tgL, tgO}}
	return rows, nil
}
