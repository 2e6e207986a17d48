package model

import (
	"fmt"

	"github.com/ggtune/ggtune/binding"
)

// Tokenizer converts text to token ids and back. It is libllama's
// tokenizer, loaded from the model's GGUF file without its weights
// (vocab_only), so ggtune tokenizes exactly as llama.cpp does for every
// vocabulary type libllama supports (SPM, BPE, WPM, ...).
type Tokenizer struct {
	m *binding.LlamaModel
}

// LoadTokenizer loads the vocabulary of a GGUF file.
func LoadTokenizer(path string) (*Tokenizer, error) {
	m, err := binding.LoadModel(path, binding.ModelParams{VocabOnly: true})
	if err != nil {
		return nil, fmt.Errorf("load tokenizer: %w", err)
	}
	return &Tokenizer{m: m}, nil
}

// Close frees the vocabulary. It is idempotent.
func (t *Tokenizer) Close() { t.m.Close() }

// Encode tokenizes text. addSpecial adds BOS/EOS as the vocabulary asks;
// parseSpecial recognises special-token text such as "<|im_start|>".
func (t *Tokenizer) Encode(text string, addSpecial, parseSpecial bool) ([]int32, error) {
	return t.m.Tokenize(text, addSpecial, parseSpecial)
}

// Decode converts ids to text, dropping the BOS/EOS that Encode adds and
// rendering special tokens as text when special is true.
func (t *Tokenizer) Decode(ids []int32, special bool) string {
	return t.m.Detokenize(ids, true, special)
}

// Piece returns the text of one token (partial UTF-8 for byte tokens).
func (t *Tokenizer) Piece(id int32, special bool) string { return t.m.TokenPiece(id, special) }

// NVocab returns the number of tokens.
func (t *Tokenizer) NVocab() int { return t.m.NVocab() }

// BOS returns the beginning-of-sequence token (-1 if none).
func (t *Tokenizer) BOS() int32 { return t.m.BOS() }

// EOS returns the end-of-sequence token (-1 if none).
func (t *Tokenizer) EOS() int32 { return t.m.EOS() }

// AddBOS reports whether the vocabulary asks for BOS before the text.
func (t *Tokenizer) AddBOS() bool { return t.m.AddBOS() }

// AddEOS reports whether the vocabulary asks for EOS after the text.
func (t *Tokenizer) AddEOS() bool { return t.m.AddEOS() }

// IsEOG reports whether id ends generation (EOS, EOT, ...).
func (t *Tokenizer) IsEOG(id int32) bool { return t.m.IsEOG(id) }

// ChatTemplate returns the model's built-in chat template ("" if none).
func (t *Tokenizer) ChatTemplate() string { return t.m.ChatTemplate() }

// ApplyChat formats messages with the model's chat template (or tmpl if
// not empty: a template or a built-in name such as "chatml"), ending with
// the assistant's turn prefix when addAssistant.
func (t *Tokenizer) ApplyChat(tmpl string, msgs []binding.ChatMessage, addAssistant bool) (string, error) {
	if tmpl == "" {
		tmpl = t.ChatTemplate()
	}
	if tmpl == "" {
		return "", fmt.Errorf("chat template: the model has none (pass one, e.g. \"chatml\")")
	}
	return binding.ApplyChatTemplate(tmpl, msgs, addAssistant)
}
