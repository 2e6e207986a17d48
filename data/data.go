// Package data turns training files into fixed-shape token batches, with
// no dependency on the model graph and no cgo.
//
// The pipeline has three stages:
//
//  1. [Read] / [ReadFile] parse a file into [Record]s: plain text, JSONL or a
//     JSON array of "text", "prompt"/"completion", Alpaca or chat records,
//     detected from the content or forced with [Options.Format]. A malformed
//     record is an error naming file:line ([ErrMalformed]), or is skipped and
//     counted with [Options.SkipBad].
//  2. [Build] tokenizes records with a [Tokenizer] (satisfied by
//     *binding.LlamaModel) into [Example]s, each a token sequence with a
//     per-token target flag. [Load] does both stages.
//  3. A [Loader] shuffles examples deterministically by seed, packs them into
//     rows of T tokens (or pads one per row), and yields [Batch]es of B x T
//     tokens, next-token labels, a loss mask, segment ids and positions. Its
//     [Position] (epoch, index) resumes the exact data order.
//
// # Tokens, BOS and EOS
//
// JSON records are tokenized as whole rendered strings with the
// vocabulary's own special-token convention (Tokenize(s, addSpecial=true)):
// BOS is prepended when the vocabulary's AddBOS is set and EOS appended when
// AddEOS is set; a BOS written by a chat template into the text is not
// doubled. Prompt/completion and Alpaca examples always end with EOS (added
// if the tokenizer did not), so the model learns to stop. Chat examples end
// where the template ends: the template's end-of-turn marker, which is
// trained, is the stop signal. Plain text is tokenized as one stream without
// special tokens (EOS appended when AddEOS is set); each window starts with
// BOS when AddBOS is set.
//
// # Which tokens are trained
//
// Prompt/assistant boundaries are found by rendering prefixes: the full
// text is tokenized once, and a boundary at byte offset c of the text falls
// after the longest common prefix of the full tokens and the tokens of
// text[:c]. Completion examples train the tokens after the prompt (EOS
// included); chat examples train each assistant turn's tokens from the end
// of the rendered prefix with the assistant header (addAssistant=true) to the
// end of the conversation rendered through that turn (the content and the
// template's end-of-turn text). [Options.TrainOnPrompt] trains every token.
// The first token of an example is never a target.
//
// # Label convention
//
// In a [Batch], Tokens[i] is the input at flat position i = row*T + t.
// Labels[i] is the token the model must predict from position i: Tokens[i+1]
// when position t+1 of the same row belongs to the same segment and that
// token is a target of its example, and [IgnoreLabel] (-1) otherwise. So the
// last position of every segment, padding, and prompt tokens have no target.
// Mask[i] is 1 where Labels[i] >= 0 and 0 elsewhere. Segments[i] numbers the
// examples of a row 1, 2, ... (0 is padding) and Positions[i] restarts at 0
// with each segment: the model must let position t attend to position u only
// when u <= t and both are in the same segment ([Batch.AttentionMask]).
package data

// Tokenizer is the vocabulary the package needs. *binding.LlamaModel
// satisfies it (binding.Token is int32).
type Tokenizer interface {
	// Tokenize converts text to tokens; addSpecial adds BOS/EOS as the
	// vocabulary asks and parseSpecial recognises special-token text.
	Tokenize(text string, addSpecial, parseSpecial bool) ([]int32, error)
	// BOS is the beginning-of-sequence token, or -1.
	BOS() int32
	// EOS is the end-of-sequence token, or -1.
	EOS() int32
	// AddBOS reports whether sequences start with BOS.
	AddBOS() bool
	// AddEOS reports whether sequences end with EOS.
	AddEOS() bool
	// ChatTemplate is the model's chat template, or "".
	ChatTemplate() string
}

// Chat roles. A record with any other role is dropped ([DropUnknownRole]):
// chat templates render unknown roles differently or not at all.
const (
	// RoleSystem is the system prompt.
	RoleSystem = "system"
	// RoleUser is the user's turn.
	RoleUser = "user"
	// RoleAssistant marks the turns that are trained in chat examples.
	RoleAssistant = "assistant"
	// RoleTool is a tool's answer.
	RoleTool = "tool"
)

// ChatMessage is one turn of a conversation. It has the same fields as
// binding.ChatMessage, so binding.ChatMessage(m) converts it.
type ChatMessage struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// Templater renders messages with a chat template (a template string or a
// built-in name such as "chatml"); addAssistant ends the text with the
// assistant turn's header. binding.ApplyChatTemplate has this behaviour once
// the messages are converted to binding.ChatMessage.
type Templater func(tmpl string, msgs []ChatMessage, addAssistant bool) (string, error)

// Options configure reading and tokenizing a data file. Only Context is
// required.
type Options struct {
	// Format forces a format; FormatAuto (the zero value) detects it.
	Format Format
	// Context is the training sequence length T: plain text is cut into
	// windows of T tokens and longer examples are truncated to T.
	Context int
	// Stride is the distance in tokens between the starts of consecutive
	// plain-text windows, 1 to L where L is T minus one when a BOS is
	// prepended and T otherwise. Zero means L with BOS and L-1 without, so
	// every stream token is a target exactly once; smaller values overlap.
	Stride int
	// MaskOverlap trains, in each plain-text window, only the tokens not
	// already covered by the previous window (the sliding-window evaluation
	// convention), so overlapping windows do not count a token twice.
	MaskOverlap bool
	// TrainOnPrompt trains every token, prompts and non-assistant turns
	// included.
	TrainOnPrompt bool
	// SkipBad skips malformed records (counted in Stats.Skipped) instead of
	// failing.
	SkipBad bool
	// Replace maps placeholders to text in every string field before
	// rendering, for example {"{{name}}": "Ggtune"}; longer keys win.
	Replace map[string]string
	// ParseSpecial lets text, completion and Alpaca data contain special
	// tokens written as text (such as "</s>"). Chat text is always parsed
	// for special tokens, since templates write them.
	ParseSpecial bool
	// ChatTemplate overrides the model's chat template (a template or a
	// built-in name such as "chatml"); needed when the model has none.
	ChatTemplate string
	// Templater renders chat templates; required for chat data.
	Templater Templater
	// AlpacaPromptInput and AlpacaPromptNoInput override the Alpaca prompt
	// templates (defaults [AlpacaPromptInput] and [AlpacaPromptNoInput]).
	AlpacaPromptInput, AlpacaPromptNoInput string
	// MaxLineBytes is the longest JSONL line accepted (default
	// [DefaultMaxLineBytes]); longer lines are malformed.
	MaxLineBytes int
	// MaxBytes bounds the bytes read from one data file (default
	// [DefaultMaxBytes]); a longer input (such as /dev/zero) is an error
	// wrapping [ErrTooLarge] instead of exhausting memory.
	MaxBytes int64
}
