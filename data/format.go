package data

import (
	"fmt"
	"strings"
)

// Format names a data-file layout.
type Format string

// The supported formats. [FormatAuto] detects the format from the content
// (see [Read]).
const (
	// FormatAuto detects the format from the file's content.
	FormatAuto Format = ""
	// FormatPlain is raw text, tokenized as one stream and cut into windows
	// of the context length.
	FormatPlain Format = "plain"
	// FormatText is JSON records {"text": "..."}: one document each, every
	// token trained.
	FormatText Format = "text"
	// FormatCompletion is JSON records {"prompt": "...", "completion": "..."}:
	// the prompt and completion are concatenated verbatim (no separator is
	// inserted) and only the completion is trained.
	FormatCompletion Format = "completion"
	// FormatAlpaca is JSON records {"instruction", "input", "output"}: the
	// prompt is rendered with [AlpacaPromptInput] or [AlpacaPromptNoInput]
	// and "output" is the completion.
	FormatAlpaca Format = "alpaca"
	// FormatChat is JSON records {"messages": [{"role", "content"}, ...]}
	// rendered with a chat template; only assistant turns are trained.
	FormatChat Format = "chat"
)

// Default Alpaca prompt templates (the alpaca-lora variant of Stanford
// Alpaca's, with a newline after "### Response:"). "{instruction}" and
// "{input}" are replaced by the record's fields in one pass; the output is
// appended directly after the rendered prompt, followed by EOS.
const (
	// AlpacaPromptInput renders records with a non-empty "input".
	AlpacaPromptInput = "Below is an instruction that describes a task, paired with an input that provides further context. " +
		"Write a response that appropriately completes the request.\n\n" +
		"### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
	// AlpacaPromptNoInput renders records whose "input" is missing or empty.
	AlpacaPromptNoInput = "Below is an instruction that describes a task. " +
		"Write a response that appropriately completes the request.\n\n" +
		"### Instruction:\n{instruction}\n\n### Response:\n"
)

// ParseFormat converts a user-facing name ("auto", "plain", "text",
// "completion", "alpaca", "chat"; "" means auto; "txt" is accepted for plain
// and "prompt-completion" for completion) to a Format.
func ParseFormat(s string) (Format, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "auto":
		return FormatAuto, nil
	case "plain", "txt":
		return FormatPlain, nil
	case "text":
		return FormatText, nil
	case "completion", "prompt-completion":
		return FormatCompletion, nil
	case "alpaca":
		return FormatAlpaca, nil
	case "chat":
		return FormatChat, nil
	}
	return FormatAuto, fmt.Errorf("%w %q (want auto, plain, text, completion, alpaca or chat)", ErrFormat, s)
}

// String returns the format's name ("auto" for FormatAuto).
func (f Format) String() string {
	if f == FormatAuto {
		return "auto"
	}
	return string(f)
}
