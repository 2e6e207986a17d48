package binding

/*
#include <stdlib.h>
#include "llama.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"runtime"
	"unsafe"
)

// Token is a vocabulary id.
type Token = int32

// ModelParams configure [LoadModel].
type ModelParams struct {
	VocabOnly bool // load only the vocabulary
	NoMmap    bool // read the file instead of mapping it
	// GPULayers is the number of layers to offload to the registered GPU
	// devices (see LoadBackends). 0 keeps libllama on the CPU alone: no
	// weights, no cache and no operations on a device.
	GPULayers int
}

// LlamaModel is a model loaded by libllama. It may be shared by several
// [LlamaContext] values on different goroutines.
type LlamaModel struct {
	m    *C.struct_llama_model
	path string
}

// cpuOnly is libllama's empty device list (C memory: cgo may not pass Go
// memory holding a pointer that C keeps).
var cpuOnly = (*[1]C.ggml_backend_dev_t)(C.calloc(1, C.size_t(unsafe.Sizeof(C.ggml_backend_dev_t(nil)))))

// LoadModel loads a GGUF model with libllama.
func LoadModel(path string, p ModelParams) (*LlamaModel, error) {
	if err := validateGGUF(path); err != nil {
		return nil, fmt.Errorf("load model %s: %w", path, err)
	}
	loadBackendsFromEnv()
	mp := C.llama_model_default_params()
	mp.vocab_only = C.bool(p.VocabOnly)
	mp.use_mmap = C.bool(!p.NoMmap)
	mp.n_gpu_layers = C.int32_t(p.GPULayers)
	if p.GPULayers == 0 {
		mp.devices = &cpuOnly[0] // an empty, NULL-terminated device list
	}
	cs := C.CString(path)
	defer freeCString(cs)
	m := C.llama_model_load_from_file(cs, mp)
	if m == nil {
		return nil, fmt.Errorf("load model %s: %w (set GGTUNE_LOG=debug for details)", path, ErrLlama)
	}
	out := &LlamaModel{m: m, path: path}
	setLeakFinalizer(out, (*LlamaModel).Close)
	return out, nil
}

// Close frees the model. It is idempotent. Contexts and adapters created
// from it must be closed first.
func (m *LlamaModel) Close() {
	if m == nil || m.m == nil {
		return
	}
	C.llama_model_free(m.m)
	m.m = nil
	runtime.SetFinalizer(m, nil)
}

// Path returns the file the model was loaded from.
func (m *LlamaModel) Path() string { return m.path }

// NEmbd returns the embedding size.
func (m *LlamaModel) NEmbd() int { return int(C.llama_model_n_embd(m.m)) }

// NLayer returns the number of transformer blocks.
func (m *LlamaModel) NLayer() int { return int(C.llama_model_n_layer(m.m)) }

// NVocab returns the vocabulary size.
func (m *LlamaModel) NVocab() int { return int(C.llama_vocab_n_tokens(m.vocab())) }

// NCtxTrain returns the training context length from the metadata.
func (m *LlamaModel) NCtxTrain() int { return int(C.llama_model_n_ctx_train(m.m)) }

// Description returns libllama's one-line description of the model.
func (m *LlamaModel) Description() string {
	var buf [256]C.char
	C.llama_model_desc(m.m, &buf[0], C.size_t(len(buf)))
	return C.GoString(&buf[0])
}

func (m *LlamaModel) vocab() *C.struct_llama_vocab { return C.llama_model_get_vocab(m.m) }

// BOS returns the beginning-of-sequence token (-1 if none).
func (m *LlamaModel) BOS() Token { return Token(C.llama_vocab_bos(m.vocab())) }

// EOS returns the end-of-sequence token (-1 if none).
func (m *LlamaModel) EOS() Token { return Token(C.llama_vocab_eos(m.vocab())) }

// AddBOS reports whether the vocabulary asks for a BOS token on tokenize.
func (m *LlamaModel) AddBOS() bool { return bool(C.llama_vocab_get_add_bos(m.vocab())) }

// AddEOS reports whether the vocabulary asks for an EOS token on tokenize.
func (m *LlamaModel) AddEOS() bool { return bool(C.llama_vocab_get_add_eos(m.vocab())) }

// IsEOG reports whether t ends generation (EOS, EOT, ...).
func (m *LlamaModel) IsEOG(t Token) bool {
	return bool(C.llama_vocab_is_eog(m.vocab(), C.llama_token(t)))
}

// Tokenize converts text to tokens. addSpecial adds BOS/EOS as the
// vocabulary asks; parseSpecial recognises special-token text such as "<s>".
func (m *LlamaModel) Tokenize(text string, addSpecial, parseSpecial bool) ([]Token, error) {
	ctext := C.CString(text)
	defer freeCString(ctext)
	n := len(text) + 8
	for {
		buf := make([]Token, n)
		got := C.llama_tokenize(m.vocab(), ctext, C.int32_t(len(text)), (*C.llama_token)(unsafe.Pointer(&buf[0])), C.int32_t(n),
			C.bool(addSpecial), C.bool(parseSpecial))
		if got == C.INT32_MIN {
			return nil, fmt.Errorf("tokenize: %w: text too long", ErrLlama)
		}
		if got >= 0 {
			return buf[:got], nil
		}
		n = int(-got)
	}
}

// TokenPiece returns the text of one token; special renders special tokens.
func (m *LlamaModel) TokenPiece(t Token, special bool) string {
	buf := make([]byte, 64)
	for {
		n := C.llama_token_to_piece(m.vocab(), C.llama_token(t), (*C.char)(unsafe.Pointer(&buf[0])), C.int32_t(len(buf)), 0, C.bool(special))
		if n >= 0 {
			return string(buf[:n])
		}
		buf = make([]byte, -n)
	}
}

// Detokenize converts tokens back to text. removeSpecial drops BOS/EOS as
// the vocabulary adds them; unparseSpecial renders special tokens.
func (m *LlamaModel) Detokenize(tokens []Token, removeSpecial, unparseSpecial bool) string {
	if len(tokens) == 0 {
		return ""
	}
	buf := make([]byte, len(tokens)*8+16)
	for {
		n := C.llama_detokenize(m.vocab(), (*C.llama_token)(unsafe.Pointer(&tokens[0])), C.int32_t(len(tokens)),
			(*C.char)(unsafe.Pointer(&buf[0])), C.int32_t(len(buf)), C.bool(removeSpecial), C.bool(unparseSpecial))
		if n >= 0 {
			return string(buf[:n])
		}
		buf = make([]byte, -n)
	}
}

// ChatTemplate returns the model's built-in chat template ("" if none).
func (m *LlamaModel) ChatTemplate() string {
	t := C.llama_model_chat_template(m.m, nil)
	if t == nil {
		return ""
	}
	return C.GoString(t)
}

// ChatMessage is one message of a conversation.
type ChatMessage struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// ApplyChatTemplate formats messages with tmpl (a template string or the
// name of a built-in template such as "chatml" or "llama3"). addAssistant
// ends the text with the assistant's turn prefix.
func ApplyChatTemplate(tmpl string, msgs []ChatMessage, addAssistant bool) (string, error) {
	if len(msgs) == 0 {
		return "", fmt.Errorf("chat template: no messages")
	}
	ctmpl := C.CString(tmpl)
	defer freeCString(ctmpl)
	cm := make([]C.struct_llama_chat_message, len(msgs))
	var allocs []*C.char
	defer func() {
		for _, p := range allocs {
			freeCString(p)
		}
	}()
	size := 0
	for i, msg := range msgs {
		r, c := C.CString(msg.Role), C.CString(msg.Content)
		allocs = append(allocs, r, c)
		size += len(msg.Role) + len(msg.Content)
		cm[i] = C.struct_llama_chat_message{role: r, content: c}
	}
	pinner := new(runtime.Pinner)
	defer pinner.Unpin()
	pinner.Pin(&cm[0])
	n := 2*size + 256
	for {
		buf := make([]byte, n)
		got := C.llama_chat_apply_template(ctmpl, &cm[0], C.size_t(len(cm)), C.bool(addAssistant), (*C.char)(unsafe.Pointer(&buf[0])), C.int32_t(n))
		if got < 0 {
			return "", fmt.Errorf("chat template: %w: template not supported", ErrLlama)
		}
		if int(got) <= n {
			return string(buf[:got]), nil
		}
		n = int(got)
	}
}

// ContextParams configure [NewLlamaContext].
type ContextParams struct {
	NCtx       int  // context length (0: 512)
	NBatch     int  // logical batch (0: NCtx)
	NUBatch    int  // physical batch (0: NBatch)
	Threads    int  // 0: number of CPUs
	Embeddings bool // also extract embeddings
	FlashAttn  bool
	F32Cache   bool // keep the KV cache in F32 (libllama's default is F16)
}

// LlamaContext is a libllama inference context over a model. It is not safe
// for concurrent use.
type LlamaContext struct {
	c     *C.struct_llama_context
	model *LlamaModel
	nCtx  int
	batch C.struct_llama_batch
	nMax  int
}

// NewLlamaContext creates an inference context.
func NewLlamaContext(m *LlamaModel, p ContextParams) (*LlamaContext, error) {
	if m == nil || m.m == nil {
		return nil, fmt.Errorf("new llama context: model %w", ErrClosed)
	}
	if err := CheckThreads(p.Threads); err != nil {
		return nil, fmt.Errorf("new llama context: %w", err)
	}
	cp := C.llama_context_default_params()
	if p.NCtx <= 0 {
		p.NCtx = 512
	}
	if p.NBatch <= 0 {
		p.NBatch = p.NCtx
	}
	if p.NUBatch <= 0 {
		p.NUBatch = p.NBatch
	}
	if p.Threads <= 0 {
		p.Threads = runtime.NumCPU()
	}
	cp.n_ctx = C.uint32_t(p.NCtx)
	cp.n_batch = C.uint32_t(p.NBatch)
	cp.n_ubatch = C.uint32_t(p.NUBatch)
	cp.n_threads = C.int32_t(p.Threads)
	cp.n_threads_batch = C.int32_t(p.Threads)
	cp.embeddings = C.bool(p.Embeddings)
	cp.no_perf = true
	if p.F32Cache {
		cp.type_k = C.GGML_TYPE_F32
		cp.type_v = C.GGML_TYPE_F32
	}
	if p.FlashAttn {
		cp.flash_attn_type = C.LLAMA_FLASH_ATTN_TYPE_ENABLED
	} else {
		cp.flash_attn_type = C.LLAMA_FLASH_ATTN_TYPE_DISABLED
	}
	c := C.llama_init_from_model(m.m, cp)
	if c == nil {
		return nil, fmt.Errorf("new llama context: %w", ErrLlama)
	}
	out := &LlamaContext{c: c, model: m, nCtx: int(C.llama_n_ctx(c)), nMax: p.NBatch}
	out.batch = C.llama_batch_init(C.int32_t(p.NBatch), 0, 1)
	setLeakFinalizer(out, (*LlamaContext).Close)
	return out, nil
}

// Close frees the context. It is idempotent.
func (c *LlamaContext) Close() {
	if c == nil || c.c == nil {
		return
	}
	C.llama_batch_free(c.batch)
	C.llama_free(c.c)
	c.c = nil
	runtime.SetFinalizer(c, nil)
}

// NCtx returns the context length.
func (c *LlamaContext) NCtx() int { return c.nCtx }

// Model returns the context's model.
func (c *LlamaContext) Model() *LlamaModel { return c.model }

// ClearMemory empties the KV cache.
func (c *LlamaContext) ClearMemory() {
	if c.c != nil {
		C.llama_memory_clear(C.llama_get_memory(c.c), true)
	}
}

// Decode evaluates tokens at positions startPos.. of sequence 0. With
// allLogits every position's logits are kept, otherwise only the last.
func (c *LlamaContext) Decode(tokens []Token, startPos int, allLogits bool) error {
	if c.c == nil {
		return fmt.Errorf("decode: %w", ErrClosed)
	}
	if len(tokens) == 0 {
		return fmt.Errorf("decode: no tokens")
	}
	if len(tokens) > c.nMax {
		return fmt.Errorf("decode: %d tokens exceed the batch size %d", len(tokens), c.nMax)
	}
	if startPos < 0 || startPos+len(tokens) > c.nCtx {
		return fmt.Errorf("decode: positions %d..%d exceed the context %d", startPos, startPos+len(tokens), c.nCtx)
	}
	nv := Token(c.model.NVocab())
	for i, t := range tokens {
		if t < 0 || t >= nv {
			return fmt.Errorf("decode: token %d at %d is outside the vocabulary of %d", t, i, nv)
		}
	}
	b := &c.batch
	b.n_tokens = C.int32_t(len(tokens))
	tok := unsafe.Slice(b.token, c.nMax)
	pos := unsafe.Slice(b.pos, c.nMax)
	nseq := unsafe.Slice(b.n_seq_id, c.nMax)
	seq := unsafe.Slice(b.seq_id, c.nMax)
	logits := unsafe.Slice(b.logits, c.nMax)
	for i, t := range tokens {
		tok[i] = C.llama_token(t)
		pos[i] = C.llama_pos(startPos + i)
		nseq[i] = 1
		*seq[i] = 0
		logits[i] = 0
		if allLogits || i == len(tokens)-1 {
			logits[i] = 1
		}
	}
	if rc := C.llama_decode(c.c, *b); rc != 0 {
		return fmt.Errorf("decode: %w: status %d", ErrLlama, int(rc))
	}
	return nil
}

// DecodeEmbeddings evaluates input embeddings (n rows of n_embd floats) at
// positions startPos.. of sequence 0, keeping the logits of every position.
func (c *LlamaContext) DecodeEmbeddings(embd []float32, startPos int) error {
	if c.c == nil {
		return fmt.Errorf("decode embeddings: %w", ErrClosed)
	}
	ne := c.model.NEmbd()
	if len(embd) == 0 || len(embd)%ne != 0 {
		return fmt.Errorf("decode embeddings: %d floats are not rows of %d", len(embd), ne)
	}
	n := len(embd) / ne
	if startPos < 0 || startPos+n > c.nCtx || n > c.nMax {
		return fmt.Errorf("decode embeddings: %d rows at %d exceed the context %d or batch %d", n, startPos, c.nCtx, c.nMax)
	}
	b := C.llama_batch_init(C.int32_t(n), C.int32_t(ne), 1)
	defer C.llama_batch_free(b)
	b.n_tokens = C.int32_t(n)
	copy(unsafe.Slice((*float32)(unsafe.Pointer(b.embd)), len(embd)), embd)
	pos := unsafe.Slice(b.pos, n)
	nseq := unsafe.Slice(b.n_seq_id, n)
	seq := unsafe.Slice(b.seq_id, n)
	logits := unsafe.Slice(b.logits, n)
	for i := 0; i < n; i++ {
		pos[i] = C.llama_pos(startPos + i)
		nseq[i] = 1
		*seq[i] = 0
		logits[i] = 1
	}
	if rc := C.llama_decode(c.c, b); rc != 0 {
		return fmt.Errorf("decode embeddings: %w: status %d", ErrLlama, int(rc))
	}
	return nil
}

// Logits returns a copy of the logits of output i of the last decode
// (-1: the last output).
func (c *LlamaContext) Logits(i int) ([]float32, error) {
	if c.c == nil {
		return nil, fmt.Errorf("logits: %w", ErrClosed)
	}
	p := C.llama_get_logits_ith(c.c, C.int32_t(i))
	if p == nil {
		return nil, fmt.Errorf("logits: %w: no logits for output %d", ErrLlama, i)
	}
	n := c.model.NVocab()
	out := make([]float32, n)
	copy(out, unsafe.Slice((*float32)(unsafe.Pointer(p)), n))
	return out, nil
}

// Adapter is a LoRA adapter loaded by libllama for one model.
type Adapter struct {
	a     *C.struct_llama_adapter_lora
	model *LlamaModel
}

// LoadAdapter loads a LoRA adapter GGUF for the model.
func (m *LlamaModel) LoadAdapter(path string) (*Adapter, error) {
	if m.m == nil {
		return nil, fmt.Errorf("load adapter: model %w", ErrClosed)
	}
	if err := validateGGUF(path); err != nil {
		return nil, fmt.Errorf("load adapter %s: %w", path, err)
	}
	cs := C.CString(path)
	defer freeCString(cs)
	a := C.llama_adapter_lora_init(m.m, cs)
	if a == nil {
		return nil, fmt.Errorf("load adapter %s: %w (set GGTUNE_LOG=debug for details)", path, ErrLlama)
	}
	out := &Adapter{a: a, model: m}
	setLeakFinalizer(out, (*Adapter).Close)
	return out, nil
}

// Meta returns the adapter's string metadata value for key.
func (a *Adapter) Meta(key string) (string, bool) {
	ck := C.CString(key)
	defer freeCString(ck)
	buf := make([]byte, 1024)
	n := C.llama_adapter_meta_val_str(a.a, ck, (*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(buf)))
	if n < 0 {
		return "", false
	}
	return string(buf[:min(int(n), len(buf)-1)]), true
}

// Close frees the adapter. It is idempotent. Remove it from contexts first.
func (a *Adapter) Close() {
	if a == nil || a.a == nil {
		return
	}
	if a.model.m != nil {
		C.llama_adapter_lora_free(a.a)
	}
	a.a = nil
	runtime.SetFinalizer(a, nil)
}

// SetAdapter applies the adapter to the context with the given scale.
func (c *LlamaContext) SetAdapter(a *Adapter, scale float32) error {
	if c.c == nil || a.a == nil {
		return fmt.Errorf("set adapter: %w", ErrClosed)
	}
	if rc := C.llama_set_adapter_lora(c.c, a.a, C.float(scale)); rc != 0 {
		return fmt.Errorf("set adapter: %w: status %d", ErrLlama, int(rc))
	}
	return nil
}

// RemoveAdapter removes one adapter from the context.
func (c *LlamaContext) RemoveAdapter(a *Adapter) error {
	if c.c == nil || a.a == nil {
		return fmt.Errorf("remove adapter: %w", ErrClosed)
	}
	if rc := C.llama_rm_adapter_lora(c.c, a.a); rc != 0 {
		return errors.New("remove adapter: the adapter is not applied to this context")
	}
	return nil
}

// ClearAdapters removes every adapter from the context.
func (c *LlamaContext) ClearAdapters() {
	if c.c != nil {
		C.llama_clear_adapter_lora(c.c)
	}
}

// SetControlVector applies a control vector: data holds n_embd floats for
// each layer from layer 1, applied to layers ilStart..ilEnd (inclusive). A
// nil data clears it.
func (c *LlamaContext) SetControlVector(data []float32, ilStart, ilEnd int) error {
	if c.c == nil {
		return fmt.Errorf("control vector: %w", ErrClosed)
	}
	ne := c.model.NEmbd()
	var p *C.float
	if data != nil {
		if len(data)%ne != 0 || len(data)/ne > c.model.NLayer() {
			return fmt.Errorf("control vector: %d floats are not up to %d layers of %d", len(data), c.model.NLayer(), ne)
		}
		p = (*C.float)(unsafe.Pointer(&data[0]))
	}
	if rc := C.llama_apply_adapter_cvec(c.c, p, C.size_t(len(data)), C.int32_t(ne), C.int32_t(ilStart), C.int32_t(ilEnd)); rc != 0 {
		return fmt.Errorf("control vector: %w: status %d", ErrLlama, int(rc))
	}
	return nil
}

// SamplerParams configure a [Sampler] chain. Temperature <= 0 is greedy.
type SamplerParams struct {
	Temperature   float32
	TopK          int
	TopP          float32
	MinP          float32
	RepeatPenalty float32 // 1 disables
	RepeatLastN   int
	Seed          uint32
}

// Sampler is a libllama sampler chain. It is not safe for concurrent use.
type Sampler struct {
	s *C.struct_llama_sampler
}

// NewSampler builds a sampler chain: penalties, top-k, top-p, min-p,
// temperature, then a seeded draw (or greedy when Temperature <= 0).
func NewSampler(p SamplerParams) *Sampler {
	sp := C.llama_sampler_chain_default_params()
	sp.no_perf = true
	ch := C.llama_sampler_chain_init(sp)
	if p.RepeatPenalty > 0 && p.RepeatPenalty != 1 {
		n := p.RepeatLastN
		if n == 0 {
			n = 64
		}
		C.llama_sampler_chain_add(ch, C.llama_sampler_init_penalties(C.int32_t(n), C.float(p.RepeatPenalty), 0, 0))
	}
	if p.Temperature <= 0 {
		C.llama_sampler_chain_add(ch, C.llama_sampler_init_greedy())
	} else {
		if p.TopK > 0 {
			C.llama_sampler_chain_add(ch, C.llama_sampler_init_top_k(C.int32_t(p.TopK)))
		}
		if p.TopP > 0 && p.TopP < 1 {
			C.llama_sampler_chain_add(ch, C.llama_sampler_init_top_p(C.float(p.TopP), 1))
		}
		if p.MinP > 0 {
			C.llama_sampler_chain_add(ch, C.llama_sampler_init_min_p(C.float(p.MinP), 1))
		}
		C.llama_sampler_chain_add(ch, C.llama_sampler_init_temp(C.float(p.Temperature)))
		C.llama_sampler_chain_add(ch, C.llama_sampler_init_dist(C.uint32_t(p.Seed)))
	}
	s := &Sampler{s: ch}
	setLeakFinalizer(s, (*Sampler).Close)
	return s
}

// Sample picks the next token from output i of the context's last decode
// (-1: the last) and records it in the chain's history.
func (s *Sampler) Sample(c *LlamaContext, i int) Token {
	return Token(C.llama_sampler_sample(s.s, c.c, C.int32_t(i)))
}

// Close frees the sampler chain. It is idempotent.
func (s *Sampler) Close() {
	if s == nil || s.s == nil {
		return
	}
	C.llama_sampler_free(s.s)
	s.s = nil
	runtime.SetFinalizer(s, nil)
}
