package finetune_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/bottleneck"
	"github.com/ggtune/ggtune/finetune"
	"github.com/ggtune/ggtune/internal/fixture"
	"github.com/ggtune/ggtune/lora"
	"github.com/ggtune/ggtune/method"
	"github.com/ggtune/ggtune/model"
	"github.com/ggtune/ggtune/train"
)

// TestMethodsLowerHeldOutLoss trains every method on the same Shakespeare
// data for the same number of steps and checks the held-out loss.
func TestMethodsLowerHeldOutLoss(t *testing.T) {
	loraPlus := func() method.Config {
		c := lora.DefaultConfig()
		c.PlusRatio = 16
		return &c
	}
	initWith := func(init lora.Init) func() method.Config {
		return func() method.Config {
			c := lora.DefaultConfig()
			c.Init = init
			return &c
		}
	}
	pfeiffer := func() method.Config {
		c := bottleneck.DefaultConfig()
		c.Placement = bottleneck.Pfeiffer
		return &c
	}
	tests := []struct {
		method  string
		lr      float64
		minDrop float64 // required drop of held-out loss
		config  func() method.Config
		name    string
	}{
		{"lora", 3e-3, 0.8, nil, ""},
		{"full", 1e-3, 0.8, nil, ""},
		{"head", 3e-3, 0.05, nil, ""},
		{"prompt", 3e-2, 0.05, nil, ""},
		{"prefix", 1e-2, 0.05, nil, ""},
		{"ptuning", 1e-3, 0.05, nil, ""},
		{"ia3", 3e-2, 1.0, nil, ""},
		{"dora", 3e-3, 0.8, nil, ""},
		{"lntune", 1e-2, 1.0, nil, ""},
		{"bottleneck", 3e-3, 1.2, nil, "houlsby"},
		{"bottleneck", 3e-3, 1.2, pfeiffer, "pfeiffer"},
		{"lora", 1e-3, 0.8, loraPlus, "lora+"},
		{"lora", 1e-3, 0.8, initWith(lora.InitPiSSA), "pissa"},
		{"lora", 1e-3, 0.8, initWith(lora.InitOLoRA), "olora"},
	}
	for _, tc := range tests {
		name := tc.method
		if tc.name != "" {
			name = tc.name
		}
		t.Run(name, func(t *testing.T) {
			j := baseJob(t, tc.method)
			if tc.config != nil {
				j.Config = tc.config()
			}
			j.Train.Steps = 60
			j.Train.Schedule.LR = tc.lr
			switch tc.method {
			case "prompt", "prefix", "ptuning":
				j.Config = softPrompt(t, tc.method, 16)
			}
			before := fileHash(t, j.Model)
			rep, err := finetune.Run(context.Background(), j)
			require.NoError(t, err)
			ev0, ev1 := rep.Result.EvalBefore, rep.Result.EvalAfter
			t.Logf("RESULT %-8s held-out loss %.3f -> %.3f  ppl %.1f -> %.1f  acc %.3f -> %.3f  (%d trainable values)",
				name, ev0.Loss, ev1.Loss, ev0.Perplexity, ev1.Perplexity, ev0.Accuracy, ev1.Accuracy, rep.Params)
			assert.Less(t, ev1.Loss, ev0.Loss-tc.minDrop)
			assert.Equal(t, before, fileHash(t, j.Model), "the base file is unchanged")
			if tc.method == "full" || tc.method == "head" {
				// libllama loads the fine-tuned model.
				m, err := binding.LoadModel(j.Output, binding.ModelParams{})
				require.NoError(t, err)
				m.Close()
			}
		})
	}
}

// mappingTask writes a synthetic exact task: fixed prompts with arbitrary
// one-word answers the base model cannot guess.
func mappingTask(t *testing.T) (path string, pairs [][2]string) {
	names := []string{"Tom", "Lily", "Ben", "Sue", "Max", "Anna", "Sam", "Mia"}
	things := []string{"red", "blue", "green", "big", "small", "happy", "sad", "fast"}
	rng := rand.New(rand.NewPCG(9, 9))
	perm := rng.Perm(len(things))
	path = filepath.Join(t.TempDir(), "task.jsonl")
	var sb strings.Builder
	for i, n := range names {
		p := [2]string{fmt.Sprintf("The secret word of %s is", n), " " + things[perm[i]] + "."}
		pairs = append(pairs, p)
		line, _ := json.Marshal(map[string]string{"prompt": p[0], "completion": p[1]})
		sb.Write(append(line, '\n'))
	}
	require.NoError(t, os.WriteFile(path, []byte(sb.String()), 0o644))
	return path, pairs
}

// exactMatch greedily completes every prompt and counts completions whose
// tokens equal the answer's.
func exactMatch(t *testing.T, m *model.Model, hooks []model.Hook, pairs [][2]string) float64 {
	tok, err := m.Tokenizer()
	require.NoError(t, err)
	hit := 0
	for _, p := range pairs {
		prompt, err := tok.Encode(p[0], true, false)
		require.NoError(t, err)
		full, err := tok.Encode(p[0]+p[1], true, false)
		require.NoError(t, err)
		want := full[len(prompt):]
		s, err := m.NewSession(model.SessionOptions{NCtx: 64, Hooks: hooks})
		require.NoError(t, err)
		res, err := s.Generate(context.Background(), prompt, model.GenerateParams{MaxTokens: len(want), IgnoreEOS: true}, nil)
		s.Close()
		require.NoError(t, err)
		if assert.ObjectsAreEqual(want, res.IDs) {
			hit++
		}
	}
	return float64(hit) / float64(len(pairs))
}

// TestSyntheticTaskExactMatch trains LoRA, prompt tuning and prefix tuning
// on a fixed prompt -> answer mapping the base model scores 0% on.
func TestSyntheticTaskExactMatch(t *testing.T) {
	tests := []struct {
		method string
		lr     float64
		steps  int
		want   float64
	}{
		{"lora", 3e-3, 150, 0.95},
		{"prompt", 3e-2, 300, 0.9},
		{"prefix", 1e-2, 300, 0.9},
	}
	data, pairs := mappingTask(t)
	base := fixture.Path(t, "models/stories260K.gguf")
	m, err := model.Load(base, model.Options{Threads: 2})
	require.NoError(t, err)
	defer m.Close()
	before := exactMatch(t, m, nil, pairs)
	t.Logf("RESULT base exact match %.0f%%", 100*before)
	assert.Less(t, before, 0.2)
	for _, tc := range tests {
		t.Run(tc.method, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out.gguf")
			var mc method.Config = softPrompt(t, "prompt", 16)
			if tc.method == "prefix" {
				mc = softPrompt(t, "prefix", 16)
			}
			if tc.method == "lora" {
				cfg := lora.DefaultConfig()
				cfg.Rank, cfg.Alpha = 8, 16
				mc = &cfg
			}
			j := finetune.Job{Method: tc.method, Config: mc, Model: base, Data: data, Output: out, Context: 24, Batch: 8, Threads: 2, Seed: 1,
				Train: train.Config{Steps: tc.steps, Optimizer: train.DefaultAdamW(), Schedule: train.LRSchedule{Kind: train.Constant, LR: tc.lr, Warmup: 5}}}
			_, err := finetune.Run(context.Background(), j)
			require.NoError(t, err)
			env, err := method.NewEnv(base, m, m.Backend())
			require.NoError(t, err)
			defer env.Close()
			inst, meth, err := method.Open(out, env)
			require.NoError(t, err)
			defer inst.Close()
			require.Equal(t, tc.method, meth.Name(), "the file's adapter.type leads back to its method")
			got := exactMatch(t, m, inst.Hooks(1), pairs)
			t.Logf("RESULT %s exact match %.0f%% after %d steps", tc.method, 100*got, tc.steps)
			assert.GreaterOrEqual(t, got, tc.want)
		})
	}
}
