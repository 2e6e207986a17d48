package data_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/data"
	"github.com/ggtune/ggtune/internal/fixture"
)

// vocab loads the stories260K tokenizer (vocabulary only).
func vocab(t *testing.T) *binding.LlamaModel {
	t.Helper()
	m, err := binding.LoadModel(fixture.Path(t, "models/stories260K.gguf"), binding.ModelParams{VocabOnly: true})
	require.NoError(t, err)
	t.Cleanup(m.Close)
	return m
}

// applyTemplate adapts binding.ApplyChatTemplate to data.Templater.
func applyTemplate(tmpl string, msgs []data.ChatMessage, addAssistant bool) (string, error) {
	bm := make([]binding.ChatMessage, len(msgs))
	for i, m := range msgs {
		bm[i] = binding.ChatMessage(m)
	}
	return binding.ApplyChatTemplate(tmpl, bm, addAssistant)
}

// writeFile writes content to name in a fresh temporary directory.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(p, []byte(content), 0o644))
	return p
}

// lines joins JSONL lines with newlines and a trailing newline.
func lines(ls ...string) string { return strings.Join(ls, "\n") + "\n" }

// tokenize is the tokenizer's own output, the oracle for token ids.
func tokenize(t *testing.T, m *binding.LlamaModel, s string, addSpecial, parseSpecial bool) []int32 {
	t.Helper()
	toks, err := m.Tokenize(s, addSpecial, parseSpecial)
	require.NoError(t, err)
	return toks
}

// pieces renders tokens as text, token by token.
func pieces(m *binding.LlamaModel, toks []int32) string {
	var sb strings.Builder
	for _, tok := range toks {
		sb.WriteString(m.TokenPiece(tok, true))
	}
	return sb.String()
}

// targetRuns returns the text of each maximal run of target tokens.
func targetRuns(m *binding.LlamaModel, ex data.Example) []string {
	var runs []string
	for i := 0; i < len(ex.Tokens); i++ {
		if !ex.Target[i] {
			continue
		}
		j := i
		for j < len(ex.Tokens) && ex.Target[j] {
			j++
		}
		runs = append(runs, pieces(m, ex.Tokens[i:j]))
		i = j
	}
	return runs
}
