package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/internal/fixture"
	"github.com/ggtune/ggtune/method"
	"github.com/ggtune/ggtune/train"
)

// ggtune runs the CLI in-process and returns its stdout and stderr.
func ggtune(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	return ggtuneCtx(context.Background(), args...)
}

// ggtuneCtx runs the CLI in-process with a context (cancelled: Ctrl-C).
func ggtuneCtx(ctx context.Context, args ...string) (string, string, error) {
	root := newRootCmd()
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	return out.String(), errb.String(), err
}

// mustGgtune runs the CLI and fails the test on an error.
func mustGgtune(t *testing.T, args ...string) string {
	t.Helper()
	out, stderr, err := ggtune(t, args...)
	require.NoError(t, err, "ggtune %s\nstderr: %s", strings.Join(args, " "), stderr)
	return out
}

// cliFiles are the model and data the CLI tests share.
type cliFiles struct {
	model, train, val, dir string
}

func setup(t *testing.T) cliFiles {
	t.Helper()
	b, err := os.ReadFile(fixture.Path(t, "text/tinyshakespeare.txt"))
	require.NoError(t, err)
	dir := t.TempDir()
	f := cliFiles{model: fixture.Path(t, "models/stories260K.gguf"), train: filepath.Join(dir, "train.txt"),
		val: filepath.Join(dir, "val.txt"), dir: dir}
	require.NoError(t, os.WriteFile(f.train, b[:40000], 0o644))
	require.NoError(t, os.WriteFile(f.val, b[len(b)-6000:], 0o644))
	return f
}

// llama is libllama with a model loaded, the oracle of these tests.
type llama struct {
	m   *binding.LlamaModel
	ctx *binding.LlamaContext
}

func newLlama(t *testing.T, path string, adapter string, scale float32) *llama {
	t.Helper()
	m, err := binding.LoadModel(path, binding.ModelParams{})
	require.NoError(t, err)
	t.Cleanup(m.Close)
	ctx, err := binding.NewLlamaContext(m, binding.ContextParams{NCtx: 128, Threads: 2, F32Cache: true})
	require.NoError(t, err)
	t.Cleanup(ctx.Close)
	if adapter != "" {
		ad, err := m.LoadAdapter(adapter)
		require.NoError(t, err)
		t.Cleanup(ad.Close)
		require.NoError(t, ctx.SetAdapter(ad, scale))
	}
	return &llama{m: m, ctx: ctx}
}

func argmax(v []float32) int32 {
	best := 0
	for i, x := range v {
		if x > v[best] {
			best = i
		}
	}
	return int32(best)
}

// greedy decodes n tokens after prompt.
func (l *llama) greedy(t *testing.T, prompt []int32, n int) []int32 {
	t.Helper()
	l.ctx.ClearMemory()
	require.NoError(t, l.ctx.Decode(prompt, 0, false))
	var out []int32
	for pos := len(prompt); len(out) < n; pos++ {
		logits, err := l.ctx.Logits(-1)
		require.NoError(t, err)
		tok := argmax(logits)
		out = append(out, tok)
		require.NoError(t, l.ctx.Decode([]int32{tok}, pos, false))
	}
	return out
}

// windowLoss returns the summed cross-entropy and correct greedy
// predictions of every next token of a window.
func (l *llama) windowLoss(t *testing.T, w []int32) (float64, int) {
	t.Helper()
	l.ctx.ClearMemory()
	require.NoError(t, l.ctx.Decode(w, 0, true))
	var sum float64
	correct := 0
	for i := 0; i+1 < len(w); i++ {
		logits, err := l.ctx.Logits(i)
		require.NoError(t, err)
		mx := float64(logits[argmax(logits)])
		var z float64
		for _, v := range logits {
			z += math.Exp(float64(v) - mx)
		}
		sum += mx + math.Log(z) - float64(logits[w[i+1]])
		if argmax(logits) == w[i+1] {
			correct++
		}
	}
	return sum, correct
}

type generated struct {
	PromptIDs []int32 `json:"prompt_ids"`
	IDs       []int32 `json:"generated_ids"`
}

func generate(t *testing.T, args ...string) generated {
	t.Helper()
	var g generated
	out := mustGgtune(t, append([]string{"generate", "--temp", "0", "--json", "-p", "Once upon a time", "-t", "2", "-c", "64"}, args...)...)
	require.NoError(t, json.Unmarshal([]byte(out), &g), out)
	return g
}

type evaluation struct {
	Loss, Perplexity, Accuracy float64
	Tokens                     int
}

func TestCLI(t *testing.T) {
	f := setup(t)
	adapter := filepath.Join(f.dir, "out", "adapter.gguf")

	t.Run("train lora", func(t *testing.T) {
		out := mustGgtune(t, "train", "lora", "-m", f.model, "--data", f.train, "--val", f.val, "-o", adapter,
			"--steps", "10", "--ctx", "32", "--batch", "4", "--lr", "5e-3", "--max-val-batches", "4", "-t", "2")
		t.Log(out)
		assert.Contains(t, out, "held-out loss")
		assert.Contains(t, out, "trained lora: 10 steps")
		for _, p := range []string{adapter, filepath.Join(f.dir, "out", "adapter.metrics.jsonl"), filepath.Join(f.dir, "out", "adapter.loss.png")} {
			assert.FileExists(t, p)
		}
		m, err := binding.LoadModel(f.model, binding.ModelParams{})
		require.NoError(t, err)
		defer m.Close()
		ad, err := m.LoadAdapter(adapter)
		require.NoError(t, err, "libllama loads the adapter")
		ad.Close()
	})
	if !assert.FileExists(t, adapter) {
		return
	}

	t.Run("generate --lora matches libllama with the adapter", func(t *testing.T) {
		for _, scale := range []struct {
			arg string
			v   float32
		}{{adapter + ":0.5", 0.5}, {adapter, 1}} {
			g := generate(t, "-m", f.model, "--lora", scale.arg, "-n", "8")
			require.Len(t, g.IDs, 8)
			want := newLlama(t, f.model, adapter, scale.v).greedy(t, g.PromptIDs, 8)
			assert.Equal(t, want, g.IDs, "--lora %s", scale.arg)
		}
		base := generate(t, "-m", f.model, "-n", "8")
		assert.NotEqual(t, generate(t, "-m", f.model, "--lora", adapter, "-n", "8").IDs, base.IDs, "the adapter changes the output")
		assert.Equal(t, base.IDs, generate(t, "-m", f.model, "--lora", adapter+":0", "-n", "8").IDs, "scale 0 is the base")
	})

	t.Run("merge equals the adapter", func(t *testing.T) {
		merged := filepath.Join(f.dir, "merged.gguf")
		out := mustGgtune(t, "merge", "-m", f.model, "--lora", adapter, "-o", merged, "--type", "f32")
		assert.Contains(t, out, "merged into")
		g := generate(t, "-m", f.model, "--lora", adapter, "-n", "16")
		assert.Equal(t, g.IDs, newLlama(t, merged, "", 0).greedy(t, g.PromptIDs, 16), "libllama on the merged file = our graph with the adapter")
	})

	t.Run("eval matches libllama", func(t *testing.T) {
		const ctx, windows = 32, 3
		for _, tc := range []struct {
			name  string
			args  []string
			scale float32
		}{{"base", nil, 0}, {"lora 0.5", []string{"--lora", adapter + ":0.5"}, 0.5}} {
			t.Run(tc.name, func(t *testing.T) {
				args := append([]string{"eval", "-m", f.model, "--data", f.val, "--ctx", "32", "--batch", "1", "--max-batches", "3", "--json", "-t", "2"}, tc.args...)
				var got evaluation
				out := mustGgtune(t, args...)
				require.NoError(t, json.Unmarshal([]byte(out), &got), out)

				adapterPath := ""
				if tc.args != nil {
					adapterPath = adapter
				}
				l := newLlama(t, f.model, adapterPath, tc.scale)
				text, err := os.ReadFile(f.val)
				require.NoError(t, err)
				stream, err := l.m.Tokenize(string(text), false, false)
				require.NoError(t, err)
				var sum float64
				correct, n := 0, 0
				for w := 0; w < windows; w++ {
					win := append([]int32{l.m.BOS()}, stream[w*(ctx-1):(w+1)*(ctx-1)]...)
					s, c := l.windowLoss(t, win)
					sum, correct, n = sum+s, correct+c, n+ctx-1
				}
				assert.Equal(t, n, got.Tokens)
				assert.InDelta(t, sum/float64(n), got.Loss, 1e-3)
				assert.InDelta(t, math.Exp(got.Loss), got.Perplexity, 1e-6*got.Perplexity)
				assert.InDelta(t, float64(correct)/float64(n), got.Accuracy, 1.5/float64(n))
			})
		}
		out := mustGgtune(t, "eval", "-m", f.model, "--data", f.val, "--ctx", "32", "--max-batches", "2", "-t", "2")
		assert.Regexp(t, `^loss \d+\.\d+  perplexity \d+\.\d+  accuracy \d+\.\d+%  \(\d+ tokens\)\n$`, out)
	})

	t.Run("every method through --adapter and merge", func(t *testing.T) {
		for _, tc := range []struct {
			method    string
			flags     []string
			mergeable bool
		}{
			{"ia3", nil, true},
			{"dora", nil, true},
			{"lora", []string{"--dora", "--lora-plus-ratio", "16", "--lr", "2e-3"}, true},
			{"lntune", nil, true},
			{"bottleneck", []string{"--placement", "pfeiffer", "--bottleneck", "8"}, false},
		} {
			t.Run(tc.method, func(t *testing.T) {
				out := filepath.Join(f.dir, tc.method+"-adapter.gguf")
				mustGgtune(t, append([]string{"train", tc.method, "-m", f.model, "--data", f.train, "-o", out, "--steps", "10", "--ctx", "32",
					"--lr", "3e-2", "-t", "2", "--metrics", "none", "--plot", "none"}, tc.flags...)...)
				assert.Contains(t, mustGgtune(t, "info", out, "--no-tensors"), "method ")
				g := generate(t, "-m", f.model, "--adapter", out, "-n", "12")
				evalWith := func(args ...string) float64 {
					var e evaluation
					out := mustGgtune(t, append([]string{"eval", "-m", f.model, "--data", f.val, "--ctx", "32", "--max-batches", "2", "--json", "-t", "2"}, args...)...)
					require.NoError(t, json.Unmarshal([]byte(out), &e))
					return e.Loss
				}
				assert.Less(t, evalWith("--adapter", out), evalWith(), "the adapter lowers the held-out loss")
				merged := filepath.Join(f.dir, tc.method+"-merged.gguf")
				_, _, err := ggtune(t, "merge", "-m", f.model, "--adapter", out, "-o", merged, "--type", "f32")
				if !tc.mergeable {
					require.Error(t, err)
					assert.Contains(t, err.Error(), "cannot be folded")
					return
				}
				require.NoError(t, err)
				assert.Equal(t, g.IDs, newLlama(t, merged, "", 0).greedy(t, g.PromptIDs, 12), "libllama on the merged file = our graph with the adapter")
			})
		}
	})

	t.Run("config equals flags", func(t *testing.T) {
		flags := []string{"-m", f.model, "--data", f.train, "-o", adapter, "--steps", "7", "--lr", "0.003", "--targets", "q,v",
			"--layers", "last:2", "--rslora", "--grad-accum", "2", "--val-split", "0.1", "--schedule", "linear", "--warmup", "2"}
		cfg := filepath.Join(f.dir, "run.yaml")
		require.NoError(t, os.WriteFile(cfg, []byte("model: "+f.model+"\ndata: "+f.train+"\noutput: "+adapter+
			"\nsteps: 7\nlr: 0.003\ntargets: [q, v]\nlayers: last:2\nrslora: true\ngrad_accum: 2\nval-split: 0.1\nschedule: linear\nwarmup: 2\n"), 0o644))
		fromFlags := mustGgtune(t, append([]string{"train", "lora", "--dry-run"}, flags...)...)
		fromFile := mustGgtune(t, "train", "lora", "--dry-run", "--config", cfg)
		assert.Equal(t, fromFlags, fromFile)
		assert.Contains(t, fromFile, "rslora: true")
		assert.Contains(t, fromFile, "targets: q,v")

		override := mustGgtune(t, "train", "lora", "--dry-run", "--config", cfg, "--steps", "9")
		assert.Contains(t, override, "steps: 9\n", "the command line overrides the file")

		epochs := filepath.Join(f.dir, "epochs.yaml")
		require.NoError(t, os.WriteFile(epochs, []byte("epochs: 2\nval: "+f.val+"\n"), 0o644))
		out := mustGgtune(t, append([]string{"train", "lora", "--dry-run", "--config", epochs}, flags...)...)
		assert.Contains(t, out, "steps: 7\n", "--steps on the command line displaces the file's epochs")
		assert.NotContains(t, out, "epochs:")
		assert.Contains(t, out, `val: ""`, "--val-split on the command line displaces the file's val")

		// The printed settings are themselves a valid config.
		again := filepath.Join(f.dir, "again.yaml")
		require.NoError(t, os.WriteFile(again, []byte(fromFile), 0o644))
		assert.Equal(t, fromFile, mustGgtune(t, "train", "lora", "--dry-run", "--config", again))
	})

	t.Run("soft prompt export and import", func(t *testing.T) {
		prompt := filepath.Join(f.dir, "prompt.gguf")
		mustGgtune(t, "train", "prompt", "-m", f.model, "--data", f.train, "-o", prompt, "--steps", "3", "--ctx", "32",
			"--virtual-tokens", "4", "--init", `text:"Once upon a time"`, "-t", "2", "--metrics", "none", "--plot", "none")
		peft := filepath.Join(f.dir, "peft")
		mustGgtune(t, "export-peft", "--prompt-adapter", prompt, "-m", f.model, "-o", peft)
		assert.FileExists(t, filepath.Join(peft, "adapter_model.safetensors"))
		back := filepath.Join(f.dir, "back.gguf")
		mustGgtune(t, "import-peft", peft, "-m", f.model, "-o", back)
		evalWith := func(args ...string) evaluation {
			var e evaluation
			out := mustGgtune(t, append([]string{"eval", "-m", f.model, "--data", f.val, "--ctx", "32", "--max-batches", "2", "--json", "-t", "2"}, args...)...)
			require.NoError(t, json.Unmarshal([]byte(out), &e))
			return e
		}
		a, b := evalWith("--prompt-adapter", prompt), evalWith("--prompt-adapter", back)
		assert.InDelta(t, a.Loss, b.Loss, 1e-4, "the PEFT round trip keeps the prompt")
		assert.NotEqual(t, evalWith().Loss, a.Loss)
		assert.InDelta(t, a.Loss, evalWith("--prompt-adapter", prompt, "--lora", adapter+":0").Loss, 1e-5, "combines with --lora")
	})

	t.Run("errors", func(t *testing.T) {
		unknownType := filepath.Join(f.dir, "frob.gguf")
		w, err := binding.NewGGUFWriter(1)
		require.NoError(t, err)
		for _, kv := range []binding.KV{{Key: "general.type", Value: "adapter"}, {Key: "general.architecture", Value: "llama"}, {Key: "adapter.type", Value: "frobnicate"}} {
			require.NoError(t, w.Set(kv.Key, kv.Value))
		}
		require.NoError(t, w.AddFloats("x", binding.TypeF32, []int64{1}, []float32{0}))
		require.NoError(t, w.WriteFile(unknownType))
		w.Close()
		prompt := filepath.Join(f.dir, "prompt.gguf")
		badCfg := filepath.Join(f.dir, "bad.yaml")
		require.NoError(t, os.WriteFile(badCfg, []byte("model: m.gguf\nrnak: 4\n"), 0o644))
		for _, tc := range []struct {
			name string
			args []string
			want string
		}{
			{"missing data", []string{"train", "lora", "-m", f.model, "-o", adapter}, "--data FILE is required"},
			{"missing model", []string{"eval", "--data", f.val}, "-m MODEL is required"},
			{"bad targets", []string{"train", "lora", "-m", f.model, "--data", f.train, "-o", adapter, "--targets", "q,foo"}, `unknown target "foo"`},
			{"bad layers", []string{"train", "lora", "-m", f.model, "--data", f.train, "-o", adapter, "--layers", "7"}, "out of range"},
			{"steps and epochs", []string{"train", "full", "-m", f.model, "--data", f.train, "-o", adapter, "--steps", "5", "--epochs", "1"}, "exclusive"},
			{"bad schedule", []string{"train", "head", "-m", f.model, "--data", f.train, "-o", adapter, "--schedule", "cubic"}, "want constant, linear or cosine"},
			{"empty init text", []string{"train", "prompt", "-m", f.model, "--data", f.train, "-o", adapter, "--init", "text:"}, "text init without text"},
			{"unknown method", []string{"train", "frob"}, `unknown method "frob"`},
			{"unknown config key", []string{"train", "lora", "--config", badCfg}, `bad.yaml:2: invalid config file: unknown key "rnak"`},
			{"resume without checkpoint", []string{"train", "lora", "-m", f.model, "--data", f.train, "-o", filepath.Join(f.dir, "new.gguf"), "--resume"}, "no checkpoint"},
			{"bad scale", []string{"generate", "-m", f.model, "--lora", adapter + ":abc"}, `scale "abc" is not a number`},
			{"infinite scale", []string{"merge", "-m", f.model, "--lora", adapter + ":inf", "-o", filepath.Join(f.dir, "x.gguf")}, "not a finite number"},
			{"missing adapter", []string{"eval", "-m", f.model, "--data", f.val, "--lora", filepath.Join(f.dir, "none.gguf")}, "none.gguf"},
			{"bad merge type", []string{"merge", "-m", f.model, "--lora", adapter, "-o", filepath.Join(f.dir, "x.gguf"), "--type", "q9"}, `unknown type name "q9"`},
			{"not an adapter", []string{"eval", "-m", f.model, "--data", f.val, "--adapter", f.model}, "not an adapter file"},
			{"unknown adapter type", []string{"generate", "-m", f.model, "--adapter", unknownType}, `unknown adapter type "frobnicate"`},
			{"merge a soft prompt", []string{"merge", "-m", f.model, "--adapter", prompt, "-o", filepath.Join(f.dir, "x.gguf")}, "cannot be folded"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, _, err := ggtune(t, tc.args...)
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.want)
			})
		}
	})
}

func TestInterruptAndResume(t *testing.T) {
	f := setup(t)
	out := filepath.Join(f.dir, "r.gguf")
	args := []string{"train", "lora", "-m", f.model, "--data", f.train, "-o", out, "--ctx", "32", "--batch", "2", "-t", "2", "--lr", "3e-3"}

	// Ctrl-C (a cancelled context) stops before the next step and writes
	// the checkpoint, not the adapter.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, _, err := ggtuneCtx(ctx, append(args, "--steps", "4")...)
	require.ErrorIs(t, err, train.ErrInterrupted)
	assert.Contains(t, err.Error(), "checkpoint written to "+out+".ckpt")
	assert.Contains(t, err.Error(), "--resume")
	assert.FileExists(t, out+".ckpt")
	assert.NoFileExists(t, out)

	mustGgtune(t, append(args, "--steps", "4", "--save-every", "2", "--overwrite")...)
	_, _, err = ggtune(t, append(args, "--steps", "6", "--resume")...)
	require.ErrorIs(t, err, train.ErrResumeMismatch, "a changed --steps breaks exact resume")
	assert.Contains(t, err.Error(), `steps was "4", now "6"`)
	s := mustGgtune(t, append(args, "--steps", "6", "--resume", "--resume-changed", "steps", "--json")...)
	var sum trainSummary
	require.NoError(t, json.Unmarshal([]byte(s), &sum), s)
	assert.Equal(t, 4, sum.ResumedFrom)
	assert.Equal(t, 6, sum.Steps)
	assert.Equal(t, out+".ckpt", sum.Checkpoint)
}

func TestParseScaled(t *testing.T) {
	dir := t.TempDir()
	existing := filepath.Join(dir, "a.gguf")
	require.NoError(t, os.WriteFile(existing, nil, 0o644))
	for _, tc := range []struct {
		in    string
		path  string
		scale float32
		err   string
	}{
		{"a.gguf", "a.gguf", 1, ""},
		{"a.gguf:0.5", "a.gguf", 0.5, ""},
		{"a.gguf:-1", "a.gguf", -1, ""},
		{"dir:x/a.gguf", "dir:x/a.gguf", 1, ""},
		{"dir:x/a.gguf:2", "dir:x/a.gguf", 2, ""},
		{"a.gguf:", "a.gguf:", 1, ""},
		{existing + ":x", "", 0, "is not a number"},
		{"a.gguf:NaN", "", 0, "finite"},
		{"a.gguf:1e50", "", 0, "out of range"},
		{":0.5", "", 0, "no path"},
		{"", "", 0, "empty"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := parseScaled(tc.in)
			if tc.err != "" {
				require.ErrorIs(t, err, errAdapterSpec)
				assert.Contains(t, err.Error(), tc.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, scaledPath{tc.path, tc.scale}, got)
		})
	}
}

// TestTrainVerbsFromRegistry checks that `ggtune train` has one verb per
// registered method, each with its default learning rate and own flags.
func TestTrainVerbsFromRegistry(t *testing.T) {
	help := mustGgtune(t, "train", "--help")
	for _, m := range method.All() {
		assert.Contains(t, help, m.Name(), "ggtune train --help lists %s", m.Name())
		sub := mustGgtune(t, "train", m.Name(), "--help")
		assert.Contains(t, sub, fmt.Sprintf("(default %g)", m.Info().LR), "%s: default learning rate", m.Name())
	}
	for verb, flag := range map[string]string{"lora": "--lora-plus-ratio", "dora": "--rank", "ia3": "--targets",
		"bottleneck": "--placement", "head": "--train-layers", "ptuning": "--encoder"} {
		assert.Contains(t, mustGgtune(t, "train", verb, "--help"), flag, "ggtune train %s has %s", verb, flag)
	}
}
