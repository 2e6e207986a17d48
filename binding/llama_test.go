package binding_test

import (
	"encoding/json"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/internal/fixture"
)

// readVocabCases parses llama.cpp's tokenizer test files: inputs separated
// by "\n__ggml_vocab_test__\n" and one line of expected ids per input.
func readVocabCases(t *testing.T, base string) ([]string, [][]binding.Token) {
	t.Helper()
	inp, err := os.ReadFile(base + ".inp")
	require.NoError(t, err)
	out, err := os.ReadFile(base + ".out")
	require.NoError(t, err)
	inputs := strings.Split(string(inp), "\n__ggml_vocab_test__\n")
	if inputs[len(inputs)-1] == "" {
		inputs = inputs[:len(inputs)-1]
	}
	lines := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	require.Len(t, lines, len(inputs), "inputs and expected outputs of %s", base)
	want := make([][]binding.Token, len(lines))
	for i, l := range lines {
		for _, f := range strings.Fields(l) {
			v, err := strconv.Atoi(f)
			require.NoError(t, err)
			want[i] = append(want[i], binding.Token(v))
		}
	}
	return inputs, want
}

func TestTokenizerSuites(t *testing.T) {
	suites := []string{"bert-bge", "deepseek-coder", "deepseek-llm", "falcon", "gpt-2", "llama-spm", "mpt", "phi-3", "refact", "starcoder"}
	total, passed := 0, 0
	for _, name := range suites {
		t.Run(name, func(t *testing.T) {
			path := fixture.Path(t, "vocab/ggml-vocab-"+name+".gguf")
			m, err := binding.LoadModel(path, binding.ModelParams{VocabOnly: true})
			require.NoError(t, err)
			defer m.Close()
			inputs, want := readVocabCases(t, path)
			require.GreaterOrEqual(t, len(inputs), 40)
			for i, in := range inputs {
				got, err := m.Tokenize(in, false, false)
				require.NoError(t, err)
				total++
				if assert.Equal(t, want[i], nilIfEmpty(got), "case %d %q", i, in) {
					passed++
				}
			}
		})
	}
	t.Logf("tokenizer cases: %d/%d", passed, total)
}

func nilIfEmpty(s []binding.Token) []binding.Token {
	if len(s) == 0 {
		return nil
	}
	return s
}

type greedyRef struct {
	IDs  []binding.Token `json:"generated_token_ids"`
	Text string          `json:"text"`
}

func loadGreedy(t *testing.T) greedyRef {
	t.Helper()
	b, err := os.ReadFile(fixture.Path(t, "models/stories260K.greedy.json"))
	require.NoError(t, err)
	var ref greedyRef
	require.NoError(t, json.Unmarshal(b, &ref))
	require.Len(t, ref.IDs, 255)
	return ref
}

func TestLlamaGreedyStories260K(t *testing.T) {
	ref := loadGreedy(t)
	m, err := binding.LoadModel(fixture.Path(t, "models/stories260K.gguf"), binding.ModelParams{})
	require.NoError(t, err)
	defer m.Close()
	ctx, err := binding.NewLlamaContext(m, binding.ContextParams{NCtx: 256, Threads: 2})
	require.NoError(t, err)
	defer ctx.Close()
	s := binding.NewSampler(binding.SamplerParams{})
	defer s.Close()

	tok := m.BOS()
	require.Equal(t, binding.Token(1), tok)
	var got []binding.Token
	for pos := 0; pos < 255; pos++ {
		require.NoError(t, ctx.Decode([]binding.Token{tok}, pos, false))
		tok = s.Sample(ctx, -1)
		got = append(got, tok)
	}
	assert.Equal(t, ref.IDs, got)
}
