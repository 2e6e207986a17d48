package data_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/data"
	"github.com/ggtune/ggtune/internal/fixture"
)

func TestPlainTextWindows(t *testing.T) {
	m := vocab(t)
	require.True(t, m.AddBOS())
	require.False(t, m.AddEOS())
	path := fixture.Path(t, "text/tinyshakespeare.txt")
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	stream := tokenize(t, m, string(raw), false, false)
	n := len(stream)

	tests := []struct {
		name        string
		ctx, stride int
		mask        bool
	}{
		{"default stride", 64, 0, false},
		{"half overlap", 64, 32, false},
		{"half overlap masked", 64, 32, true},
		{"odd stride masked", 100, 77, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ds, err := data.Load(path, m, data.Options{Context: tc.ctx, Stride: tc.stride, MaskOverlap: tc.mask})
			require.NoError(t, err)
			assert.Equal(t, data.FormatPlain, ds.Format)
			win := tc.ctx - 1 // one position holds BOS
			stride := tc.stride
			if stride == 0 {
				stride = win
			}
			wantWindows := 1 + (n-win+stride-1)/stride
			require.Len(t, ds.Examples, wantWindows)
			times := make([]int, n) // how often each stream token is a target
			for k, ex := range ds.Examples {
				s := k * stride
				e := min(s+win, n)
				want := append([]int32{m.BOS()}, stream[s:e]...)
				require.Equal(t, want, ex.Tokens, "window %d", k)
				require.False(t, ex.Target[0])
				for j := s; j < e; j++ {
					if ex.Target[1+j-s] {
						times[j]++
					}
				}
			}
			cover := make([]int, n) // windows containing each stream token
			for k := range wantWindows {
				for j := k * stride; j < min(k*stride+win, n); j++ {
					cover[j]++
				}
			}
			targets := 0
			for j, c := range times {
				targets += c
				if tc.mask {
					require.Equal(t, 1, c, "stream token %d", j)
				} else {
					require.Equal(t, cover[j], c, "stream token %d", j)
				}
			}
			assert.Equal(t, targets, ds.Stats.Targets)
			if stride == win {
				assert.Equal(t, n, targets)
			}
		})
	}

	_, err = data.Load(path, m, data.Options{Context: 64, Stride: 64})
	assert.ErrorContains(t, err, "stride 64: want 1 to 63")
}

func TestPlainTextWithoutBOS(t *testing.T) {
	m := vocab(t)
	tok := noBOS{m}
	p := writeFile(t, "s.txt", "Once upon a time there was a little girl named Lily. She liked to play outside in the sun.")
	stream := tokenize(t, m, "Once upon a time there was a little girl named Lily. She liked to play outside in the sun.", false, false)
	ds, err := data.Load(p, tok, data.Options{Context: 8})
	require.NoError(t, err)
	// Default stride is 7: windows share one token, so every token but the
	// first is a target exactly once.
	times := make([]int, len(stream))
	for k, ex := range ds.Examples {
		s := 7 * k
		require.Equal(t, stream[s:min(s+8, len(stream))], ex.Tokens)
		for i, tgt := range ex.Target {
			if tgt {
				times[s+i]++
			}
		}
	}
	assert.Equal(t, 0, times[0])
	for j := 1; j < len(stream); j++ {
		assert.Equal(t, 1, times[j], "token %d", j)
	}
}

// noBOS is a vocabulary that does not add BOS.
type noBOS struct{ data.Tokenizer }

func (noBOS) AddBOS() bool { return false }
func (n noBOS) Tokenize(s string, addSpecial, parseSpecial bool) ([]int32, error) {
	return n.Tokenizer.Tokenize(s, false, parseSpecial)
}

func TestTextJSONL(t *testing.T) {
	m := vocab(t)
	for _, name := range []string{"wikisql-train.jsonl", "wikisql-valid.jsonl"} {
		t.Run(name, func(t *testing.T) {
			path := fixture.Path(t, "text/"+name)
			f, err := os.Open(path)
			require.NoError(t, err)
			defer f.Close()
			var texts []string
			sc := bufio.NewScanner(f)
			sc.Buffer(nil, 1<<20)
			for sc.Scan() {
				var rec struct{ Text string }
				require.NoError(t, json.Unmarshal(sc.Bytes(), &rec))
				texts = append(texts, rec.Text)
			}
			require.NoError(t, sc.Err())

			const ctx = 96
			ds, err := data.Load(path, m, data.Options{Context: ctx})
			require.NoError(t, err)
			assert.Equal(t, data.FormatText, ds.Format)
			require.Len(t, ds.Examples, len(texts))
			truncated, tokens := 0, 0
			for i, text := range texts {
				want := tokenize(t, m, text, true, false)
				require.Equal(t, m.BOS(), want[0])
				if len(want) > ctx {
					want = want[:ctx]
					truncated++
				}
				tokens += len(want)
				ex := ds.Examples[i]
				require.Equal(t, want, ex.Tokens, "line %d", i+1)
				assert.Equal(t, i+1, ex.Line)
				assert.Equal(t, len(want)-1, ex.Targets())
				assert.False(t, ex.Target[0])
			}
			assert.Positive(t, truncated)
			assert.Equal(t, truncated, ds.Stats.Truncated)
			assert.Equal(t, tokens, ds.Stats.Tokens)
			assert.Equal(t, tokens-len(texts), ds.Stats.Targets)
			assert.Equal(t, m.EOS(), ds.Pad)
		})
	}
}

func TestCompletion(t *testing.T) {
	m := vocab(t)
	long := strings.Repeat("The cat sat on the mat. ", 20)
	p := writeFile(t, "pc.jsonl", lines(
		`{"prompt": "Q: What color is the sky?\nA:", "completion": " Blue."}`,
		`{"prompt": "", "completion": "Once upon a time"}`,
		`{"prompt": "Tom had a dog.", "completion": " The dog was big."}`,
		`{"prompt": "`+long+`", "completion": " End."}`))
	tests := []struct {
		prompt, completion, targetText string
	}{
		{"Q: What color is the sky?\nA:", " Blue.", " Blue."},
		{"", "Once upon a time", " Once upon a time"}, // the tokenizer's leading space
		{"Tom had a dog.", " The dog was big.", " The dog was big."},
	}
	for _, trainAll := range []bool{false, true} {
		t.Run(fmt.Sprintf("train on prompt %v", trainAll), func(t *testing.T) {
			ds, err := data.Load(p, m, data.Options{Context: 64, TrainOnPrompt: trainAll})
			require.NoError(t, err)
			assert.Equal(t, data.FormatCompletion, ds.Format)
			assert.Equal(t, 1, ds.Stats.Truncated)
			if trainAll {
				require.Len(t, ds.Examples, 4)
				assert.Zero(t, ds.Stats.Dropped)
			} else {
				require.Len(t, ds.Examples, 3)
				assert.Equal(t, 1, ds.Stats.Dropped, "the long prompt leaves no completion token in 64")
			}
			for i, tc := range tests {
				ex := ds.Examples[i]
				want := append(tokenize(t, m, tc.prompt+tc.completion, true, false), m.EOS())
				require.Equal(t, want, ex.Tokens)
				prompt := tokenize(t, m, tc.prompt, true, false)
				require.Equal(t, prompt, want[:len(prompt)], "test case must not merge across the boundary")
				for j, tgt := range ex.Target {
					wantTgt := j >= len(prompt) || (trainAll && j > 0)
					assert.Equal(t, wantTgt, tgt, "example %d token %d", i, j)
				}
				if !trainAll {
					assert.Equal(t, []string{tc.targetText + "</s>"}, targetRuns(m, ex))
				}
			}
		})
	}

	ds, err := data.Load(p, m, data.Options{Context: 512})
	require.NoError(t, err)
	assert.Len(t, ds.Examples, 4)
	assert.Zero(t, ds.Stats.Dropped)
}

func TestAlpacaIdentity(t *testing.T) {
	m := vocab(t)
	path := fixture.Path(t, "text/llamafactory-identity.json")
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	var recs []struct{ Instruction, Input, Output string }
	require.NoError(t, json.Unmarshal(raw, &recs))

	repl := map[string]string{"{{name}}": "Ggtune", "{{author}}": "the ggtune authors"}
	ds, err := data.Load(path, m, data.Options{Context: 512, Replace: repl})
	require.NoError(t, err)
	assert.Equal(t, data.FormatAlpaca, ds.Format)
	require.Len(t, ds.Examples, len(recs))
	assert.Zero(t, ds.Stats.Truncated)

	first := "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n" +
		"### Instruction:\nhi\n\n### Response:\n" +
		"Hello! I am Ggtune, an AI assistant developed by the ggtune authors. How can I assist you today?"
	assert.Equal(t, append(tokenize(t, m, first, true, false), m.EOS()), ds.Examples[0].Tokens)

	for i, r := range recs {
		require.Empty(t, r.Input)
		prompt := "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n" +
			"### Instruction:\n" + r.Instruction + "\n\n### Response:\n"
		output := strings.NewReplacer("{{name}}", "Ggtune", "{{author}}", "the ggtune authors").Replace(r.Output)
		require.NotContains(t, output, "{{")
		ex := ds.Examples[i]
		require.Equal(t, append(tokenize(t, m, prompt+output, true, false), m.EOS()), ex.Tokens, "record %d", i)
		pt := tokenize(t, m, prompt, true, false)
		require.Equal(t, pt, ex.Tokens[:len(pt)])
		assert.Equal(t, len(ex.Tokens)-len(pt), ex.Targets(), "record %d: output tokens and EOS are the targets", i)
		assert.Equal(t, i, rs(ex.Line, raw), "record %d line", i)
	}

	p := writeFile(t, "a.jsonl", lines(`{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}`))
	ds, err = data.Load(p, m, data.Options{Context: 512})
	require.NoError(t, err)
	withInput := "Below is an instruction that describes a task, paired with an input that provides further context. " +
		"Write a response that appropriately completes the request.\n\n" +
		"### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n### Response:\n5"
	assert.Equal(t, append(tokenize(t, m, withInput, true, false), m.EOS()), ds.Examples[0].Tokens)

	ds, err = data.Load(p, m, data.Options{Context: 128, AlpacaPromptInput: "{instruction} ({input}) ="})
	require.NoError(t, err)
	assert.Equal(t, append(tokenize(t, m, "Add the numbers. (2 and 3) =5", true, false), m.EOS()), ds.Examples[0].Tokens)
}

// rs returns the index of the array element whose opening brace is on
// line in raw, counting the elements' opening lines independently.
func rs(line int, raw []byte) int {
	idx := -1
	for i, l := range strings.Split(string(raw), "\n") {
		if strings.TrimSpace(l) == "{" {
			idx++
		}
		if i+1 == line {
			return idx
		}
	}
	return -1
}

func TestChat(t *testing.T) {
	m := vocab(t)
	require.Empty(t, m.ChatTemplate(), "stories260K has no template; the test uses chatml")
	p := writeFile(t, "chat.jsonl", lines(
		`{"messages": [{"role": "system", "content": "You are kind."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye."}]}`,
		`{"messages": [{"role": "user", "content": "Tell me a story"}, {"role": "assistant", "content": "Once upon a time."}]}`,
		`{"messages": [{"role": "user", "content": "Nobody answers"}]}`))
	convs := []struct {
		full    string
		bounds  []string // rendered prefixes at the start and end of each assistant turn
		targets []string
	}{
		{
			full: "<|im_start|>system\nYou are kind.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n" +
				"<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\nGoodbye.<|im_end|>\n",
			bounds: []string{
				"<|im_start|>system\nYou are kind.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
				"<|im_start|>system\nYou are kind.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n",
				"<|im_start|>system\nYou are kind.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n" +
					"<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n",
			},
			targets: []string{"Hello!<|im_end|>\n", "Goodbye.<|im_end|>\n"},
		},
		{
			full:    "<|im_start|>user\nTell me a story<|im_end|>\n<|im_start|>assistant\nOnce upon a time.<|im_end|>\n",
			bounds:  []string{"<|im_start|>user\nTell me a story<|im_end|>\n<|im_start|>assistant\n"},
			targets: []string{"Once upon a time.<|im_end|>\n"},
		},
	}
	opts := data.Options{Context: 256, ChatTemplate: "chatml", Templater: applyTemplate}
	ds, err := data.Load(p, m, opts)
	require.NoError(t, err)
	assert.Equal(t, data.FormatChat, ds.Format)
	require.Len(t, ds.Examples, 2)
	assert.Equal(t, 1, ds.Stats.Dropped, "a conversation without an assistant turn has no target")
	for i, c := range convs {
		ex := ds.Examples[i]
		full := tokenize(t, m, c.full, true, true)
		require.Equal(t, full, ex.Tokens)
		// Boundaries from the hand-rendered prefixes; the full text's
		// last token ends the last turn.
		edges := []int{}
		for _, b := range c.bounds {
			bt := tokenize(t, m, b, true, true)
			require.Equal(t, bt, full[:len(bt)], "prefix must tokenize as a prefix")
			edges = append(edges, len(bt))
		}
		edges = append(edges, len(full))
		want := make([]bool, len(full))
		for k := 0; k < len(edges); k += 2 {
			for j := edges[k]; j < edges[k+1]; j++ {
				want[j] = true
			}
		}
		assert.Equal(t, want, ex.Target, "conversation %d", i)
		assert.Equal(t, c.targets, targetRuns(m, ex))
	}

	opts.TrainOnPrompt = true
	ds, err = data.Load(p, m, opts)
	require.NoError(t, err)
	require.Len(t, ds.Examples, 3)
	for _, ex := range ds.Examples {
		assert.Equal(t, len(ex.Tokens)-1, ex.Targets())
	}
}

func TestChatTemplateErrors(t *testing.T) {
	m := vocab(t)
	p := writeFile(t, "chat.jsonl", lines(`{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}, {"role": "user", "content": "Ok"}, {"role": "assistant", "content": "Bye"}]}`))
	reversed := func(_ string, msgs []data.ChatMessage, add bool) (string, error) {
		var sb strings.Builder
		for i := len(msgs) - 1; i >= 0; i-- {
			sb.WriteString(msgs[i].Role + ": " + msgs[i].Content + "\n")
		}
		if add {
			sb.WriteString("assistant: ")
		}
		return sb.String(), nil
	}
	tests := []struct {
		name    string
		opts    data.Options
		problem string
	}{
		{"no templater", data.Options{ChatTemplate: "chatml"}, "needs Options.Templater"},
		{"model has no template", data.Options{Templater: applyTemplate}, "the model has no chat template"},
		{"unsupported template", data.Options{ChatTemplate: "no-such-template", Templater: applyTemplate}, "template not supported"},
		{"not prefix-stable", data.Options{ChatTemplate: "x", Templater: reversed}, "does not render messages[1] as a prefix"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.Context = 64
			_, err := data.Load(p, m, tc.opts)
			require.ErrorIs(t, err, data.ErrTemplate)
			assert.Contains(t, err.Error(), p+":1: ")
			assert.Contains(t, err.Error(), tc.problem)
		})
	}
}

func TestBuildInMemory(t *testing.T) {
	m := vocab(t)
	rs := &data.RecordSet{Name: "synthetic", Format: data.FormatCompletion, Records: []data.Record{
		{Kind: data.FormatCompletion, Prompt: "2+2=", Completion: "4"},
		{Kind: data.FormatText, Text: "Lily ran."},
	}}
	ds, err := data.Build(rs, m, data.Options{Context: 32})
	require.NoError(t, err)
	require.Len(t, ds.Examples, 2)
	assert.Equal(t, 2, ds.Stats.Records)
	assert.Equal(t, append(tokenize(t, m, "2+2=4", true, false), m.EOS()), ds.Examples[0].Tokens)
	assert.Equal(t, tokenize(t, m, "Lily ran.", true, false), ds.Examples[1].Tokens)

	_, err = data.Build(rs, m, data.Options{Context: 1})
	assert.ErrorContains(t, err, "context length 1")
	_, err = data.Build(&data.RecordSet{Name: "x", Records: []data.Record{{Kind: "yaml", File: "x", Line: 4}}}, m, data.Options{Context: 8})
	assert.ErrorIs(t, err, data.ErrFormat)
	assert.ErrorContains(t, err, "x:4: ")
}
