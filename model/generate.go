package model

import (
	"context"
	"fmt"
	"strings"

	"github.com/ggtune/ggtune/binding"
)

// GenerateParams configure generation.
type GenerateParams struct {
	SamplerParams
	MaxTokens int      // tokens to generate (0: until EOS or the context is full)
	Stop      []string // stop when the generated text contains one of these (not included)
	IgnoreEOS bool     // keep going after end-of-generation tokens

	// Text-level options of Model.Generate.
	Chat         bool   // wrap the prompt as a user message in the chat template
	ChatTemplate string // template or built-in name ("" : the model's own)
	System       string // optional system message in chat mode

	// Session options of Model.Generate.
	NCtx     int
	F32Cache bool
	Hooks    []Hook
}

// Stop reasons of a [Result].
const (
	StopEOS     = "eos"     // an end-of-generation token
	StopString  = "stop"    // a stop string
	StopLength  = "length"  // MaxTokens reached
	StopContext = "context" // the KV cache is full
)

// Result is the outcome of a generation.
type Result struct {
	PromptIDs  []int32 `json:"prompt_ids"`
	IDs        []int32 `json:"generated_ids"`
	Text       string  `json:"text"`
	StopReason string  `json:"stop_reason"`
}

// Generate evaluates prompt (token ids, which must include any BOS) and
// samples up to p.MaxTokens tokens, calling onText (if not nil) with each
// piece of generated text as soon as it cannot be part of a stop string.
// The text excludes the end-of-generation token and the stop string. On
// cancellation of ctx it returns what was generated with ctx's error.
func (s *Session) Generate(ctx context.Context, prompt []int32, p GenerateParams, onText func(string) error) (*Result, error) {
	tok, err := s.m.Tokenizer()
	if err != nil {
		return nil, err
	}
	if len(prompt) == 0 {
		return nil, fmt.Errorf("generate: %w: empty prompt (start with BOS)", ErrBadInput)
	}
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("generate: %w", err)
	}
	res := &Result{PromptIDs: append([]int32(nil), prompt...)}
	logits, err := s.Eval(prompt)
	if err != nil {
		return nil, fmt.Errorf("generate: prompt: %w", err)
	}
	sampler := NewSampler(p.SamplerParams)
	history := append([]int32(nil), prompt...)
	var text strings.Builder
	emitted := 0
	emit := func(upto int) error {
		if upto <= emitted {
			return nil
		}
		chunk := text.String()[emitted:upto]
		emitted = upto
		if onText != nil {
			return onText(chunk)
		}
		return nil
	}
	for p.MaxTokens <= 0 || len(res.IDs) < p.MaxTokens {
		if err := ctx.Err(); err != nil {
			res.Text = text.String()[:emitted]
			return res, err
		}
		id := sampler.Sample(logits, history)
		if !p.IgnoreEOS && tok.IsEOG(id) {
			res.StopReason = StopEOS
			break
		}
		res.IDs = append(res.IDs, id)
		history = append(history, id)
		text.WriteString(tok.Piece(id, false))
		if at, hold := findStop(text.String(), p.Stop); at >= 0 {
			full := text.String()[:at]
			text.Reset()
			text.WriteString(full)
			res.StopReason = StopString
			break
		} else if err := emit(text.Len() - hold); err != nil {
			return res, err
		}
		if s.pos >= s.opts.NCtx {
			res.StopReason = StopContext
			break
		}
		if p.MaxTokens > 0 && len(res.IDs) >= p.MaxTokens {
			break
		}
		if logits, err = s.Eval([]int32{id}); err != nil {
			return res, fmt.Errorf("generate: %w", err)
		}
	}
	if res.StopReason == "" {
		res.StopReason = StopLength
	}
	res.Text = text.String()
	return res, emit(text.Len())
}

// findStop returns the index of the earliest stop string in text (-1 if
// none) and, otherwise, the length of the longest suffix of text that
// begins a stop string (text that must be held back).
func findStop(text string, stops []string) (at, hold int) {
	at = -1
	for _, s := range stops {
		if s == "" {
			continue
		}
		if i := strings.Index(text, s); i >= 0 && (at < 0 || i < at) {
			at = i
		}
	}
	if at >= 0 {
		return at, 0
	}
	for _, s := range stops {
		for n := min(len(s)-1, len(text)); n > hold; n-- {
			if strings.HasSuffix(text, s[:n]) {
				hold = n
				break
			}
		}
	}
	return -1, hold
}

// PromptIDs tokenizes a prompt for generation: in chat mode the prompt
// becomes a user message (after an optional system message) formatted
// with the chat template; BOS is added when the vocabulary asks for it
// (and special tokens are parsed in chat mode). An empty prompt without
// chat gives just BOS.
func (m *Model) PromptIDs(prompt string, p GenerateParams) ([]int32, error) {
	tok, err := m.Tokenizer()
	if err != nil {
		return nil, err
	}
	parseSpecial := false
	if p.Chat {
		var msgs []binding.ChatMessage
		if p.System != "" {
			msgs = append(msgs, binding.ChatMessage{Role: "system", Content: p.System})
		}
		msgs = append(msgs, binding.ChatMessage{Role: "user", Content: prompt})
		if prompt, err = tok.ApplyChat(p.ChatTemplate, msgs, true); err != nil {
			return nil, err
		}
		parseSpecial = true
	}
	if prompt == "" {
		if tok.BOS() < 0 {
			return nil, fmt.Errorf("prompt: %w: empty prompt and the vocabulary has no BOS token", ErrBadInput)
		}
		return []int32{tok.BOS()}, nil
	}
	ids, err := tok.Encode(prompt, true, parseSpecial)
	if err != nil {
		return nil, err
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("prompt: %w: %q has no tokens", ErrBadInput, prompt)
	}
	if bos := tok.BOS(); len(ids) > 1 && bos >= 0 && ids[0] == bos && ids[1] == bos {
		ids = ids[1:] // the chat template already wrote BOS
	}
	return ids, nil
}

// Generate tokenizes prompt (see PromptIDs), creates a session with
// p.NCtx and p.Hooks and generates from it (see Session.Generate).
func (m *Model) Generate(ctx context.Context, prompt string, p GenerateParams, onText func(string) error) (*Result, error) {
	ids, err := m.PromptIDs(prompt, p)
	if err != nil {
		return nil, fmt.Errorf("generate: %w", err)
	}
	s, err := m.NewSession(SessionOptions{NCtx: p.NCtx, F32Cache: p.F32Cache, Hooks: p.Hooks})
	if err != nil {
		return nil, fmt.Errorf("generate: %w", err)
	}
	defer s.Close()
	return s.Generate(ctx, ids, p, onText)
}
