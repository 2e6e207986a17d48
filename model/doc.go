// Package model runs llama-family transformers (llama and the Mistral
// models stored as llama, qwen2 with QKV biases, qwen3 with per-head q/k
// RMSNorm; NeoX RoPE for qwen2/3) as ggml graphs built in Go, with the same
// operations as libllama so that logits match it (to about 1e-5 for F32
// weights, often bitwise).
//
// # Loading
//
// [Load] reads the [Config] from GGUF metadata (with libllama's defaults),
// checks every tensor's presence, shape and type, and keeps the weights in
// their stored type (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K to
// Q6_K) in backend memory; with the CPU backend the file is mapped and the
// tensors point into it, so there is no copy and no dequantized weight.
// Options.Trainable loads selected weights as F32 copies that a trainer can
// mark as parameters (full or partial fine-tuning). The [Tokenizer] is
// libllama's, loaded from the same file without weights (vocab_only).
//
// # Graphs
//
// [Model.BuildForward] builds the full-sequence graph for a batch of B
// sequences of T tokens: logits [n_vocab, T, B] and final hidden states
// [n_embd, T, B]. It uses only operations ggml can differentiate (plain
// softmax attention with an input mask, split SwiGLU, ACC instead of
// CONCAT), so binding.Graph.BuildBackward works with parameters in hooks.
// Forward.SetBatch validates the token ids and writes positions and the
// causal mask; per-token segment ids pack several documents in one row
// (no attention across segments, positions restart) and mark padding.
//
// [Model.NewSession] evaluates one sequence with a KV cache (F16 by default
// like libllama, or F32): a prompt in one batch, then a token per step. Its
// graphs and compute buffers are kept and reused; keys and values are
// written with set_rows at input indices, and the cache view is padded to
// 256 positions, so a graph is rebuilt only every 256 tokens.
// [Session.Generate] samples (greedy, temperature, top-k, top-p, min-p,
// repetition penalty, seed; [Sampler]) and stops on end-of-generation
// tokens, stop strings or a token limit, streaming text to a callback;
// [Model.Generate] adds tokenization and chat templates.
//
// # Hooks
//
// Adapters and prompt methods change the forward pass through hooks,
// without editing this package. A [Hook] is any value; it implements only
// the optional interfaces it needs. A []Hook is applied in order at each
// point, and the same hooks act in training graphs and generation graphs,
// so what is trained is what runs:
//
//   - [ProjectionHook]: Project(b, layer, p, x, y) sees the input x and
//     y = W·x (before any bias) of the projection p (ProjQ, ProjK, ProjV,
//     ProjO, ProjGate, ProjUp, ProjDown, and ProjOutput with layer -1) and
//     returns y plus a change (LoRA: y + scale·B·(A·x)). [Proj.WeightName]
//     gives the GGUF name of the weight ("blk.3.attn_q.weight").
//   - [EmbeddingHook]: Embed(b, tokens, e) changes token embeddings.
//   - [PromptHook]: Prompt(b) returns a soft prompt [n_embd, n_virtual]
//     placed before every sequence. Its positions come first (after any
//     prefix) and the tokens continue after them; outputs exist only for
//     the real tokens. A session writes it into the cache before the first
//     token.
//   - [PrefixKVHook]: PrefixKV(b, layer) returns keys and values
//     [head_dim, n_head_kv, n_prefix] visible to every position. Keys are
//     post-RoPE (used as given); the prefix takes positions 0..n_prefix-1,
//     so tokens start at position n_prefix.
//   - [AttentionOutputHook], [FFNOutputHook]: AfterAttention/AfterFFN change
//     a block's output before the residual add (bottleneck adapters).
//   - [ScaleHook]: Scale(b, layer, site, x) at ScaleKey and ScaleValue (the
//     k and v projections' outputs, before RoPE) and ScaleFFN (the input of
//     the down projection): IA3.
//   - [LayerOutputHook]: LayerOutput(b, layer, h) after the layer's residual
//     add (control vectors).
//   - [LayerSkipHook]: SkipLayer(layer) reports a block to leave out: its
//     input passes through unchanged (block importance for shrinking).
//
// Hidden states are 2-D [n, N]: one column per position, sequence-major;
// the [Builder] carries the graph context, the model, the batch shape, the
// Train flag (Builder.Dropout is active only in training graphs) and helpers
// for per-computation inputs. Hook parameters must live in the hook's own
// allocated context; tensors built in Builder.Ctx are graph intermediates.
// Multiple prompt or prefix hooks are joined in order.
//
// Concurrency: a Model may be shared by sessions and graphs used from one
// goroutine at a time each; a Session is not safe for concurrent use.
package model
