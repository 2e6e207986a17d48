package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/finetune"
	"github.com/ggtune/ggtune/internal/fixture"
	"github.com/ggtune/ggtune/internal/randmodel"
	ggmethod "github.com/ggtune/ggtune/method"
	"github.com/ggtune/ggtune/prompttune"
	"github.com/ggtune/ggtune/train"
)

func init() { register(newBenchWorkerCmd) }

// trainMethods are the methods the training benchmark runs, with the cost
// of one training token in multiples of N FLOPs (N parameters): forward 2N,
// input gradients 2N, weight gradients 2N.
var benchMethods = []struct {
	name  string
	flops float64
}{{"lora", 4}, {"full", 6}, {"prompt", 4}, {"prefix", 4}}

// trainStat is one method's measurement.
type trainStat struct {
	TokS       float64 `json:"tok_s"`
	PeakRSS    int64   `json:"peak_rss_bytes"`
	Efficiency float64 `json:"efficiency"`
}

// trainBenchOpts configures the training benchmark.
type trainBenchOpts struct {
	ctx, batch, threads, steps int
	device                     string
	methods                    []string
	sweep                      []int // contexts of the LoRA sweep
	// maxPlainCtx is the longest context of the sweep measured without
	// activation checkpointing too.
	maxPlainCtx int
	// vocab is the vocabulary GGUF of the 541M shape ("": the default).
	vocab string
}

// defaultBenchVocab returns llama.cpp's 102,400-token deepseek-llm
// vocabulary from the shared test data (fixture.Dir) when it is there, else
// "" (a synthetic vocabulary).
func defaultBenchVocab() string {
	if p := filepath.Join(fixture.Dir(), "vocab", "ggml-vocab-deepseek-llm.gguf"); fileExists(p) {
		return p
	}
	return ""
}

// benchModelSpec is a random model the training benchmark generates.
type benchModelSpec struct {
	name string
	opts randmodel.Options
}

// defaultTrainModels are the real-shape random models of the training
// benchmark: the 86M llama and a 541M qwen2-shaped model with a 102,400-token
// vocabulary (the one of vocabFrom when set), each F32 and Q8_0.
func defaultTrainModels(vocabFrom string) []benchModelSpec {
	var out []benchModelSpec
	for _, typ := range []binding.Type{binding.TypeF32, binding.TypeQ8_0} {
		out = append(out,
			benchModelSpec{fmt.Sprintf("llama-86M-%v", typ), randmodel.Options{NEmbd: 768, NLayer: 12, NHead: 12, NFF: 2048, NVocab: 512, Type: typ, Seed: 1}},
			benchModelSpec{fmt.Sprintf("qwen2-541M-%v", typ), randmodel.Options{Arch: "qwen2", NEmbd: 896, NLayer: 24, NHead: 14, NHeadKV: 2,
				NFF: 4864, NVocab: 102400, Type: typ, Seed: 1, VocabFrom: vocabFrom}})
	}
	return out
}

// benchText writes random text over the model's synthetic vocabulary, enough
// for the benchmark's steps.
func benchText(path string, tokens int) error {
	letters := "etaoinshrdlcumwfgypbvkjxqz"
	r := rand.New(rand.NewPCG(3, 4))
	var b strings.Builder
	for b.Len() < 4*tokens {
		n := 1 + r.IntN(6)
		for i := 0; i < n; i++ {
			b.WriteByte(letters[r.IntN(len(letters))])
		}
		b.WriteByte(' ')
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

// runTrainWorker measures one method in a child process (so that its peak
// RSS is its own) and returns its tokens/s and peak RSS.
// ckpt is the --grad-checkpoint value (auto, on, off).
func runTrainWorker(modelPath, dataPath, method string, ctxLen int, ckpt string, o trainBenchOpts) (trainStat, error) {
	exe, err := os.Executable()
	if err != nil {
		return trainStat{}, err
	}
	args := []string{"bench-worker", "-m", modelPath, "--data", dataPath, "--method", method,
		"--ctx", fmt.Sprint(ctxLen), "--batch", fmt.Sprint(o.batch), "-t", fmt.Sprint(o.threads), "--steps", fmt.Sprint(o.steps), "--grad-checkpoint", ckpt}
	if o.device != "" {
		args = append(args, "--device", o.device)
	}
	cmd := exec.Command(exe, args...)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return trainStat{}, fmt.Errorf("%s on %s: %w", method, filepath.Base(modelPath), err)
	}
	var st trainStat
	if err := json.Unmarshal(out, &st); err != nil {
		return trainStat{}, fmt.Errorf("%s on %s: worker output %q: %w", method, filepath.Base(modelPath), out, err)
	}
	return st, nil
}

// peakRSS returns this process's peak resident set size (VmHWM; the
// rusage of a child would include the parent's at fork time).
func peakRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		var ru syscall.Rusage
		if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
			return ru.Maxrss * 1024
		}
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb int64
			fmt.Sscanf(strings.TrimSpace(v), "%d", &kb)
			return kb * 1024
		}
	}
	return 0
}

// newBenchWorkerCmd is the hidden child of `bench --train`: it trains a few
// steps of one method and prints the median tokens/s after a warm-up.
func newBenchWorkerCmd() *cobra.Command {
	var (
		modelPath, dataPath, method string
		ctxLen, batch, threads      int
		steps                       int
		ckpt, device                string
	)
	cmd := &cobra.Command{
		Use:    "bench-worker",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir, err := os.MkdirTemp("", "ggtune-bench-worker-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(dir)
			var rates []float64
			meth, err := ggmethod.Get(method)
			if err != nil {
				return err
			}
			gc, err := finetune.ParseGradCheckpoint(ckpt)
			if err != nil {
				return err
			}
			cfg := meth.NewConfig()
			if p, ok := cfg.(*prompttune.Config); ok {
				p.NumVirtual, p.Init = 16, prompttune.InitRandom
			}
			j := finetune.Job{Method: meth.Name(), Config: cfg, Model: modelPath, Data: dataPath, Output: filepath.Join(dir, "out.gguf"),
				Context: ctxLen, Batch: batch, Pack: true, Threads: threads, Device: device, Seed: 1, GradCheckpoint: gc,
				Train: train.Config{Steps: steps, GradAccum: 1, Optimizer: train.DefaultAdamW(),
					Schedule: train.LRSchedule{Kind: train.Constant, LR: 1e-5}, Progress: io.Discard,
					OnMetrics: func(m train.Metrics) {
						if m.Kind == "train" {
							rates = append(rates, m.TokensPerSec)
						}
					}}}
			if _, err := finetune.Run(context.Background(), j); err != nil {
				return err
			}
			if len(rates) < 2 {
				return errors.New("bench worker: too few steps")
			}
			rates = rates[1:] // warm-up
			sort.Float64s(rates)
			return json.NewEncoder(cmd.OutOrStdout()).Encode(trainStat{TokS: rates[len(rates)/2], PeakRSS: peakRSS()})
		},
	}
	f := cmd.Flags()
	f.StringVarP(&modelPath, "model", "m", "", "model")
	f.StringVar(&dataPath, "data", "", "text")
	f.StringVar(&method, "method", "lora", "method")
	f.IntVar(&ctxLen, "ctx", 256, "context")
	f.IntVar(&batch, "batch", 1, "batch")
	f.IntVarP(&threads, "threads", "t", 2, "threads")
	f.IntVar(&steps, "steps", 4, "steps")
	f.StringVar(&ckpt, "grad-checkpoint", "auto", "activation checkpointing: auto, on, off")
	f.StringVar(&device, "device", "", deviceUsage)
	return cmd
}

// trainReport is the training benchmark of one model; its JSON form is the
// documented output of `ggtune bench -m MODEL --train --json`.
type trainReport struct {
	PP      float64              `json:"pp_tok_s"`
	TG      float64              `json:"tg_tok_s"`
	LlamaPP float64              `json:"llama_pp_tok_s"`
	LlamaTG float64              `json:"llama_tg_tok_s"`
	Train   map[string]trainStat `json:"train"`
}

// benchTrainModel measures inference and every method on one model.
func benchTrainModel(path, dataPath string, o benchOpts, to trainBenchOpts) (trainReport, error) {
	inf := o
	inf.pp, inf.tg = to.ctx, 16
	rows, err := benchModel(path, inf)
	if err != nil {
		return trainReport{}, err
	}
	rep := trainReport{LlamaPP: rows[0].llama, PP: rows[0].ours, LlamaTG: rows[1].llama, TG: rows[1].ours, Train: map[string]trainStat{}}
	for _, m := range to.methods {
		flops := 0.0
		for _, tm := range benchMethods {
			if tm.name == m {
				flops = tm.flops
			}
		}
		if flops == 0 {
			return rep, fmt.Errorf("--methods: %q is not one of lora, full, prompt, prefix", m)
		}
		st, err := runTrainWorker(path, dataPath, m, to.ctx, "auto", to)
		if err != nil {
			return rep, err
		}
		st.Efficiency = st.TokS * flops / (2 * rep.LlamaPP)
		rep.Train[m] = st
	}
	return rep, nil
}

// benchTrain runs the training benchmark and prints its table (or JSON).
func benchTrain(out io.Writer, models, shapes []string, asJSON bool, o benchOpts, to trainBenchOpts) error {
	if to.ctx < 2 || to.batch < 1 || to.steps < 2 {
		return fmt.Errorf("--ctx %d, --batch %d, --steps %d: want >= 2, >= 1, >= 2", to.ctx, to.batch, to.steps)
	}
	if asJSON && len(models) != 1 {
		return fmt.Errorf("--json needs exactly one -m")
	}
	dir, err := os.MkdirTemp("", "ggtune-bench-train-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	maxCtx := to.ctx
	for _, c := range to.sweep {
		maxCtx = max(maxCtx, c)
	}
	dataPath := filepath.Join(dir, "data.txt")
	if err := benchText(dataPath, (to.steps+2)*to.batch*maxCtx*2); err != nil {
		return err
	}
	if asJSON {
		rep, err := benchTrainModel(models[0], dataPath, o, to)
		if err != nil {
			return err
		}
		return json.NewEncoder(out).Encode(rep)
	}
	if len(models) == 0 {
		vocab := to.vocab
		if vocab == "" {
			vocab = defaultBenchVocab()
		}
		fmt.Fprintf(os.Stderr, "541M vocabulary: %s\n", cmp.Or(vocab, "synthetic (102,400 tokens)"))
		for _, spec := range defaultTrainModels(vocab) {
			if !containsShape(shapes, spec.name) {
				continue
			}
			p := filepath.Join(dir, spec.name+".gguf")
			fmt.Fprintf(os.Stderr, "writing %s\n", p)
			if err := randmodel.Write(p, spec.opts); err != nil {
				return err
			}
			models = append(models, p)
		}
	}
	host, _ := os.Hostname()
	fmt.Fprintf(out, "training benchmark: %s, %s, commit %s, %d threads, ctx %d, batch %d, median of %d steps after a warm-up\n",
		host, binding.SystemInfo(), commitID(), o.threads, to.ctx, to.batch, to.steps-1)
	fmt.Fprintln(out, "efficiency = train tok/s × (4 or 6 for full) / (2 × libllama prompt-eval tok/s)")
	// fixed columns, so that rows print as each model's measurements end
	nameW := len("model")
	for _, p := range models {
		nameW = max(nameW, len(filepath.Base(p)))
	}
	row := func(name, size, method, tokS, rss, pp, eff string) {
		fmt.Fprintf(out, "%*s  %7s  %22s  %11s  %11s  %14s  %10s\n", nameW, name, size, method, tokS, rss, pp, eff)
	}
	row("model", "file MB", "method", "train tok/s", "peak RSS MB", "llama pp tok/s", "efficiency")
	for _, p := range models {
		rep, err := benchTrainModel(p, dataPath, o, to)
		if err != nil {
			return fmt.Errorf("bench %s: %w", p, err)
		}
		name, size := filepath.Base(p), fmt.Sprintf("%.0f", float64(fileSize(p))/1e6)
		for _, m := range to.methods {
			st := rep.Train[m]
			row(name, size, m, fmt.Sprintf("%.1f", st.TokS), fmt.Sprintf("%.0f", float64(st.PeakRSS)/1e6), fmt.Sprintf("%.1f", rep.LlamaPP),
				fmt.Sprintf("%.3f", st.Efficiency))
		}
		for _, c := range to.sweep {
			for _, ck := range []string{"off", "on"} {
				if ck == "off" && c > to.maxPlainCtx {
					continue
				}
				st, err := runTrainWorker(p, dataPath, "lora", c, ck, to)
				if err != nil {
					return err
				}
				row(name, size, fmt.Sprintf("lora ctx %d ckpt %s", c, ck), fmt.Sprintf("%.1f", st.TokS), fmt.Sprintf("%.0f", float64(st.PeakRSS)/1e6), "", "")
			}
		}
	}
	return nil
}

func containsShape(shapes []string, name string) bool {
	for _, s := range shapes {
		if strings.Contains(name, "-"+s+"-") {
			return true
		}
	}
	return false
}

func fileSize(p string) int64 {
	st, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return st.Size()
}

// commitID returns the VCS revision the binary was built from, if known.
func commitID() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				return s.Value[:12]
			}
		}
	}
	if out, err := exec.Command("git", "rev-parse", "--short=12", "HEAD").Output(); err == nil {
		return strings.TrimSpace(string(out))
	}
	return "unknown"
}

// parseSweep parses --sweep: comma-separated contexts, "" for none.
func parseSweep(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		c, err := strconv.Atoi(f)
		if err != nil || c < 2 {
			return nil, fmt.Errorf("%w: --sweep: context %q (want integers >= 2)", errUsage, f)
		}
		out = append(out, c)
	}
	return out, nil
}
