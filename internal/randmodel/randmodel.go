// Package randmodel writes small random llama-family GGUF models (llama,
// qwen2 with QKV biases, qwen3 with q/k norms) that libllama loads, for
// parity tests and benchmarks. The vocabulary is a synthetic
// SentencePiece-style one (special tokens, 256 byte tokens and letter
// pieces), so no test data is needed, or a real one copied from a
// vocabulary GGUF (Options.VocabFrom, e.g. llama.cpp's
// ggml-vocab-deepseek-llm.gguf with 102,400 tokens).
package randmodel

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"

	"github.com/ggtune/ggtune/binding"
)

// Options describe the model to write. Zero sizes take small defaults.
type Options struct {
	Arch     string       // llama (default), qwen2 or qwen3
	NEmbd    int          // default 64
	NLayer   int          // default 2
	NHead    int          // default 4
	NHeadKV  int          // default NHead
	HeadDim  int          // default NEmbd/NHead; written as key_length when different
	NFF      int          // default 3*NEmbd
	NVocab   int          // default 512 (at least 300)
	NCtx     int          // context_length, default 2048
	RoPEBase float32      // default 10000 (written only when set)
	RMSEps   float32      // default 1e-5
	Untied   bool         // write output.weight (otherwise the embeddings are tied)
	Type     binding.Type // type of the 2-D weights (F32 by default; rows that do not fit the block size fall back to F16)
	Biases   bool         // q/k/v biases (always for qwen2)
	Seed     uint64
	// VocabFrom is a GGUF whose tokenizer.* keys become the model's
	// vocabulary (NVocab is then its token count); empty: synthetic.
	VocabFrom string
}

func (o *Options) defaults() error {
	if o.Arch == "" {
		o.Arch = "llama"
	}
	switch o.Arch {
	case "llama", "qwen2", "qwen3":
	default:
		return fmt.Errorf("randmodel: architecture %q", o.Arch)
	}
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&o.NEmbd, 64)
	def(&o.NLayer, 2)
	def(&o.NHead, 4)
	def(&o.NHeadKV, o.NHead)
	def(&o.HeadDim, o.NEmbd/o.NHead)
	def(&o.NFF, 3*o.NEmbd)
	def(&o.NVocab, 512)
	def(&o.NCtx, 2048)
	if o.RMSEps == 0 {
		o.RMSEps = 1e-5
	}
	if o.NVocab < 300 {
		return fmt.Errorf("randmodel: vocabulary of %d tokens is below 300", o.NVocab)
	}
	if o.NHead%o.NHeadKV != 0 || o.HeadDim%2 != 0 {
		return fmt.Errorf("randmodel: n_head %d, n_head_kv %d, head_dim %d", o.NHead, o.NHeadKV, o.HeadDim)
	}
	if o.Arch == "qwen2" {
		o.Biases = true
	}
	return nil
}

// Vocab returns the synthetic vocabulary: <unk>, <s>, </s>, the 256 byte
// tokens <0x00>..<0xFF>, then SentencePiece pieces, with their scores and
// token types.
func Vocab(n int) (tokens []string, scores []float32, types []int32) {
	tokens = []string{"<unk>", "<s>", "</s>"}
	types = []int32{2, 3, 3} // unknown, control, control
	for b := 0; b < 256; b++ {
		tokens = append(tokens, fmt.Sprintf("<0x%02X>", b))
		types = append(types, 6) // byte
	}
	letters := "etaoinshrdlcumwfgypbvkjxqz"
	var pieces []string
	for _, c := range letters {
		pieces = append(pieces, "▁"+string(c), string(c))
	}
	for _, a := range letters {
		for _, b := range letters {
			pieces = append(pieces, string(a)+string(b), "▁"+string(a)+string(b))
		}
	}
	pieces = append([]string{"▁"}, pieces...)
	for i := 0; len(tokens) < n; i++ {
		p := fmt.Sprintf("x%d", i)
		if i < len(pieces) {
			p = pieces[i]
		}
		tokens = append(tokens, p)
		types = append(types, 1) // normal
	}
	scores = make([]float32, n)
	for i := range scores {
		scores[i] = -float32(i)
	}
	return tokens, scores, types
}

// vocabKVs returns the tokenizer keys: those of o.VocabFrom (setting
// o.NVocab to its token count), or the synthetic vocabulary's.
func (o *Options) vocabKVs() ([]binding.KV, error) {
	if o.VocabFrom == "" {
		tokens, scores, types := Vocab(o.NVocab)
		return []binding.KV{
			{Key: "tokenizer.ggml.model", Value: "llama"},
			{Key: "tokenizer.ggml.tokens", Value: tokens},
			{Key: "tokenizer.ggml.scores", Value: scores},
			{Key: "tokenizer.ggml.token_type", Value: types},
			{Key: "tokenizer.ggml.bos_token_id", Value: uint32(1)},
			{Key: "tokenizer.ggml.eos_token_id", Value: uint32(2)},
			{Key: "tokenizer.ggml.unknown_token_id", Value: uint32(0)},
		}, nil
	}
	f, err := binding.OpenGGUF(o.VocabFrom)
	if err != nil {
		return nil, fmt.Errorf("randmodel: vocabulary: %w", err)
	}
	defer f.Close()
	var kvs []binding.KV
	for _, kv := range f.KVs() {
		if strings.HasPrefix(kv.Key, "tokenizer.") {
			kvs = append(kvs, kv)
		}
	}
	tokens, ok := f.Get("tokenizer.ggml.tokens")
	list, isList := tokens.([]string)
	if !ok || !isList || len(list) < 300 {
		return nil, fmt.Errorf("randmodel: vocabulary %s: no tokenizer.ggml.tokens list of at least 300 tokens", o.VocabFrom)
	}
	o.NVocab = len(list)
	return kvs, nil
}

// Write writes a random model with the options to path (atomically).
func Write(path string, o Options) error {
	if err := o.defaults(); err != nil {
		return err
	}
	w, err := binding.NewGGUFWriter(16*o.NLayer + 16)
	if err != nil {
		return err
	}
	defer w.Close()
	a := o.Arch
	vocab, err := o.vocabKVs()
	if err != nil {
		return err
	}
	kvs := []binding.KV{
		{Key: "general.architecture", Value: a},
		{Key: "general.name", Value: "ggtune random " + a},
		{Key: a + ".context_length", Value: uint32(o.NCtx)},
		{Key: a + ".embedding_length", Value: uint32(o.NEmbd)},
		{Key: a + ".block_count", Value: uint32(o.NLayer)},
		{Key: a + ".feed_forward_length", Value: uint32(o.NFF)},
		{Key: a + ".attention.head_count", Value: uint32(o.NHead)},
		{Key: a + ".attention.head_count_kv", Value: uint32(o.NHeadKV)},
		{Key: a + ".attention.layer_norm_rms_epsilon", Value: o.RMSEps},
	}
	kvs = append(kvs, vocab...)
	if o.RoPEBase != 0 {
		kvs = append(kvs, binding.KV{Key: a + ".rope.freq_base", Value: o.RoPEBase})
	}
	if o.HeadDim != o.NEmbd/o.NHead {
		kvs = append(kvs,
			binding.KV{Key: a + ".attention.key_length", Value: uint32(o.HeadDim)},
			binding.KV{Key: a + ".attention.value_length", Value: uint32(o.HeadDim)},
			binding.KV{Key: a + ".rope.dimension_count", Value: uint32(o.HeadDim)})
	}
	for _, kv := range kvs {
		if err := w.Set(kv.Key, kv.Value); err != nil {
			return err
		}
	}

	rng := rand.New(rand.NewPCG(o.Seed, 0x72616e64))
	normal := func(n int, mean, std float64) []float32 {
		out := make([]float32, n)
		for i := range out {
			out[i] = float32(mean + std*rng.NormFloat64())
		}
		return out
	}
	matrix := func(name string, nIn, nOut int, std float64) error {
		typ := o.Type
		if _, err := typ.RowBytes(int64(nIn)); err != nil {
			typ = binding.TypeF16
		}
		return w.AddFloats(name, typ, []int64{int64(nIn), int64(nOut)}, normal(nIn*nOut, 0, std))
	}
	vector := func(name string, n int, mean, std float64) error {
		return w.AddFloats(name, binding.TypeF32, []int64{int64(n)}, normal(n, mean, std))
	}
	ne, nq, nkv := o.NEmbd, o.NHead*o.HeadDim, o.NHeadKV*o.HeadDim
	inv := func(n int) float64 { return 1 / math.Sqrt(float64(n)) }
	add := []func() error{
		func() error { return matrix("token_embd.weight", ne, o.NVocab, 0.3) },
		func() error { return vector("output_norm.weight", ne, 1, 0.1) },
	}
	if o.Untied {
		add = append(add, func() error { return matrix("output.weight", ne, o.NVocab, inv(ne)) })
	}
	for _, f := range add {
		if err := f(); err != nil {
			return err
		}
	}
	for il := 0; il < o.NLayer; il++ {
		n := func(s string) string { return fmt.Sprintf("blk.%d.%s", il, s) }
		steps := []error{
			vector(n("attn_norm.weight"), ne, 1, 0.1),
			matrix(n("attn_q.weight"), ne, nq, inv(ne)),
			matrix(n("attn_k.weight"), ne, nkv, inv(ne)),
			matrix(n("attn_v.weight"), ne, nkv, inv(ne)),
			matrix(n("attn_output.weight"), nq, ne, inv(nq)),
		}
		if o.Biases {
			steps = append(steps,
				vector(n("attn_q.bias"), nq, 0, 0.2),
				vector(n("attn_k.bias"), nkv, 0, 0.2),
				vector(n("attn_v.bias"), nkv, 0, 0.2))
		}
		if o.Arch == "qwen3" {
			steps = append(steps,
				vector(n("attn_q_norm.weight"), o.HeadDim, 1, 0.1),
				vector(n("attn_k_norm.weight"), o.HeadDim, 1, 0.1))
		}
		steps = append(steps,
			vector(n("ffn_norm.weight"), ne, 1, 0.1),
			matrix(n("ffn_gate.weight"), ne, o.NFF, inv(ne)),
			matrix(n("ffn_up.weight"), ne, o.NFF, inv(ne)),
			matrix(n("ffn_down.weight"), o.NFF, ne, inv(o.NFF)))
		for _, err := range steps {
			if err != nil {
				return fmt.Errorf("randmodel: %w", err)
			}
		}
	}
	return w.WriteFile(path)
}
