package model

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/ggtune/ggtune/binding"
)

// ErrContextFull reports an evaluation past the end of a session's KV cache.
var ErrContextFull = errors.New("context full")

// SessionOptions configure [Model.NewSession].
type SessionOptions struct {
	NCtx     int    // KV cache positions (0: the model's context length, at most 4096)
	NBatch   int    // most tokens evaluated in one graph (0: 512)
	F32Cache bool   // keep the cache in F32 (default F16, as libllama)
	Hooks    []Hook // the hook stack (adapters, soft prompts, ...)
}

// Session evaluates one sequence incrementally with a KV cache: a prompt in
// batches of up to NBatch tokens, then one token per step. Graphs and their
// allocations are reused across steps (the cache view is padded to
// multiples of 256 positions, as in libllama). Soft prompts and prefix
// keys/values of the hooks are written into the cache before the first
// token. A Session is not safe for concurrent use.
type Session struct {
	m      *Model
	opts   SessionOptions
	kvSize int
	cctx   *binding.Context
	cbuf   *binding.Buffer
	kc, vc []*binding.Tensor
	graphs map[[2]int]*stepGraph
	pos    int // next cache slot (= position)
	base   int // slots taken by prefix and soft prompt
	primed bool
}

// stepGraph is one cached generation graph for n tokens over nKV cache slots.
type stepGraph struct {
	ctx                      *binding.Context
	alloc                    *binding.Allocator // each graph keeps its own compute buffer
	g                        *binding.Graph
	b                        *Builder
	n, nKV                   int
	tokens, pos, mask, kidx  *binding.Tensor
	vidx, logits             *binding.Tensor
	posBuf, kidxBuf, vidxBuf []int32
	maskBuf                  []float32
}

const kvPad = 256

// NewSession creates a generation session with its own KV cache.
func (m *Model) NewSession(opts SessionOptions) (*Session, error) {
	cfg := &m.cfg
	if opts.NCtx < 0 || opts.NBatch < 0 {
		return nil, fmt.Errorf("new session: %w: context size %d, batch %d: want positive sizes (0: default)", ErrBadInput, opts.NCtx, opts.NBatch)
	}
	if opts.NCtx <= 0 {
		opts.NCtx = min(cfg.NCtxTrain, 4096)
		if opts.NCtx <= 0 {
			opts.NCtx = 4096
		}
	}
	if opts.NBatch <= 0 {
		opts.NBatch = 512
	}
	s := &Session{m: m, opts: opts, kvSize: (opts.NCtx + kvPad - 1) / kvPad * kvPad, graphs: map[[2]int]*stepGraph{}}
	typ := binding.TypeF16
	if opts.F32Cache {
		typ = binding.TypeF32
	}
	var err error
	s.cctx, err = binding.NewContext(int64(2*cfg.NLayer+1)*binding.TensorOverhead()+1024, true)
	if err != nil {
		return nil, fmt.Errorf("new session: %w", err)
	}
	for il := 0; il < cfg.NLayer; il++ {
		k := s.cctx.NewTensor(typ, int64(cfg.NEmbdKV()), int64(s.kvSize))
		v := s.cctx.NewTensor(typ, 1, int64(cfg.NEmbdVKV()*s.kvSize))
		if k == nil || v == nil {
			s.Close()
			return nil, fmt.Errorf("new session: %w", s.cctx.Err())
		}
		k.SetName(fmt.Sprintf("cache_k_l%d", il))
		v.SetName(fmt.Sprintf("cache_v_l%d", il))
		s.kc = append(s.kc, k)
		s.vc = append(s.vc, v)
	}
	if s.cbuf, err = m.backend.AllocContext(s.cctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("new session: KV cache of %d positions: %w", s.kvSize, err)
	}
	s.cbuf.Clear(0) // masked slots must hold finite values
	return s, nil
}

// Close frees the cache and the graphs. It is idempotent.
func (s *Session) Close() {
	if s == nil {
		return
	}
	for _, g := range s.graphs {
		g.close()
	}
	s.graphs = map[[2]int]*stepGraph{}
	if s.cbuf != nil {
		s.cbuf.Close()
		s.cbuf = nil
	}
	if s.cctx != nil {
		s.cctx.Close()
		s.cctx = nil
	}
}

// Model returns the session's model.
func (s *Session) Model() *Model { return s.m }

// NCtx returns the number of cache positions.
func (s *Session) NCtx() int { return s.opts.NCtx }

// Pos returns the number of text tokens evaluated so far.
func (s *Session) Pos() int { return s.pos - s.base }

// Reset empties the cache (the soft prompt and prefix are written again
// before the next token).
func (s *Session) Reset() {
	s.pos, s.base, s.primed = 0, 0, false
}

func (s *Session) newBuilder(ctx *binding.Context, n int) *Builder {
	return &Builder{Ctx: ctx, Model: s.m, Batch: 1, Tokens: n, Cached: true, hooks: s.opts.Hooks,
		rng: rand.New(rand.NewPCG(0, 0x67677475))}
}

// Eval appends tokens to the sequence and returns the logits (n_vocab) of
// the last one.
func (s *Session) Eval(tokens []int32) ([]float32, error) {
	if s.cctx == nil {
		return nil, fmt.Errorf("eval: %w", binding.ErrClosed)
	}
	if len(tokens) == 0 {
		return nil, fmt.Errorf("eval: %w: no tokens", ErrBadInput)
	}
	if err := s.m.checkTokens(tokens); err != nil {
		return nil, fmt.Errorf("eval: %w", err)
	}
	if err := s.prime(); err != nil {
		return nil, err
	}
	if s.pos+len(tokens) > s.opts.NCtx {
		return nil, fmt.Errorf("eval: %w: %d positions used, %d more exceed %d", ErrContextFull, s.pos, len(tokens), s.opts.NCtx)
	}
	var last *stepGraph
	for len(tokens) > 0 {
		n := min(len(tokens), s.opts.NBatch)
		g, err := s.run(tokens[:n])
		if err != nil {
			return nil, err
		}
		last = g
		tokens = tokens[n:]
	}
	out, err := last.logits.Floats()
	if err != nil {
		return nil, fmt.Errorf("eval: %w", err)
	}
	return out, nil
}

func (s *Session) nKV(end int) int {
	return min(s.kvSize, (end+kvPad-1)/kvPad*kvPad)
}

// run evaluates one batch of tokens and advances the position.
func (s *Session) run(tokens []int32) (*stepGraph, error) {
	n := len(tokens)
	nkv := s.nKV(s.pos + n)
	key := [2]int{n, nkv}
	g := s.graphs[key]
	if g == nil {
		if len(s.graphs) >= 8 {
			for k, old := range s.graphs {
				if k[0] != 1 {
					old.close()
					delete(s.graphs, k)
				}
			}
		}
		var err error
		if g, err = s.buildStep(n, nkv, nil); err != nil {
			return nil, err
		}
		s.graphs[key] = g
	}
	if err := s.compute(g, tokens); err != nil {
		return nil, err
	}
	s.pos += n
	return g, nil
}

func (g *stepGraph) close() {
	g.alloc.Close()
	g.ctx.Close()
}

func (s *Session) compute(g *stepGraph, tokens []int32) error {
	if err := g.setInputs(s, tokens); err != nil {
		return fmt.Errorf("eval: %w", err)
	}
	if err := s.m.backend.Compute(g.g); err != nil {
		return fmt.Errorf("eval: %w", err)
	}
	return nil
}

// setInputs writes positions, cache indices and the mask for a batch that
// starts at the session's position.
func (g *stepGraph) setInputs(s *Session, tokens []int32) error {
	nv := s.m.cfg.NEmbdVKV()
	for i := 0; i < g.n; i++ {
		p := int32(s.pos + i)
		g.posBuf[i] = p
		g.kidxBuf[i] = p
		for d := 0; d < nv; d++ {
			g.vidxBuf[i*nv+d] = int32(d*s.kvSize) + p
		}
		row := g.maskBuf[i*g.nKV : (i+1)*g.nKV]
		for j := range row {
			if j <= int(p) {
				row[j] = 0
			} else {
				row[j] = float32(math.Inf(-1))
			}
		}
	}
	if g.tokens != nil {
		if err := g.tokens.SetInts(tokens); err != nil {
			return err
		}
	}
	if !g.pos.Allocated() {
		// Every block is skipped (LayerSkipHook): no attention, no cache.
		return g.b.fillInputs()
	}
	for _, e := range []error{g.pos.SetInts(g.posBuf), g.kidx.SetInts(g.kidxBuf), g.vidx.SetInts(g.vidxBuf), g.mask.SetFloats(g.maskBuf)} {
		if e != nil {
			return e
		}
	}
	return g.b.fillInputs()
}

// buildStep builds the graph for n positions over nKV cache slots. With a
// soft prompt (virtual != nil) the inputs are those embeddings instead of
// token ids and the graph only fills the cache.
func (s *Session) buildStep(n, nKV int, virtual func(b *Builder) *binding.Tensor) (*stepGraph, error) {
	size := s.m.GraphSize()
	ctx, err := binding.NewGraphContext(size, size, false)
	if err != nil {
		return nil, err
	}
	g := &stepGraph{ctx: ctx, n: n, nKV: nKV,
		posBuf: make([]int32, n), kidxBuf: make([]int32, n),
		vidxBuf: make([]int32, n*s.m.cfg.NEmbdVKV()), maskBuf: make([]float32, n*nKV)}
	if err := s.buildStepGraph(g, virtual); err != nil {
		ctx.Close()
		return nil, fmt.Errorf("build generation graph: %w", err)
	}
	if g.alloc, err = s.m.backend.NewAllocator(); err != nil {
		ctx.Close()
		return nil, err
	}
	if err := g.alloc.Alloc(g.g); err != nil {
		g.close()
		return nil, fmt.Errorf("allocate generation graph: %w", err)
	}
	return g, nil
}

func (s *Session) buildStepGraph(g *stepGraph, virtual func(b *Builder) *binding.Tensor) error {
	ctx := g.ctx
	cfg := &s.m.cfg
	b := s.newBuilder(ctx, g.n)
	b.Prefix = s.base
	g.b = b
	n := int64(g.n)
	var err error
	if g.g, err = ctx.NewGraph(s.m.GraphSize(), false); err != nil {
		return err
	}
	var x *binding.Tensor
	if virtual != nil {
		b.Tokens, b.Virtual = 0, g.n
		x = virtual(b)
	} else {
		g.tokens = ctx.NewTensor(binding.TypeI32, n)
		if g.tokens == nil {
			return ctx.Err()
		}
		g.tokens.SetName("tokens").SetInput()
		x = b.embedTokens(g.tokens)
	}
	g.pos = ctx.NewTensor(binding.TypeI32, n)
	g.kidx = ctx.NewTensor(binding.TypeI32, n)
	g.vidx = ctx.NewTensor(binding.TypeI32, n*int64(cfg.NEmbdVKV()))
	g.mask = ctx.NewTensor(binding.TypeF32, int64(g.nKV), n)
	if g.pos == nil || g.kidx == nil || g.vidx == nil || g.mask == nil {
		return ctx.Err()
	}
	g.pos.SetName("positions").SetInput()
	g.kidx.SetName("k_idxs").SetInput()
	g.vidx.SetName("v_idxs").SetInput()
	g.mask.SetName("kq_mask").SetInput()

	hd, hdv, nkv := int64(cfg.HeadDim), int64(cfg.HeadDimV), int64(cfg.NHeadKV)
	nEK, nEV := int64(cfg.NEmbdKV()), int64(cfg.NEmbdVKV())
	kvSize, nKV := int64(s.kvSize), int64(g.nKV)
	var writes []*binding.Tensor
	attend := func(il int, q, k, v *binding.Tensor) *binding.Tensor {
		kw := ctx.SetRows(s.kc[il], ctx.Reshape(k, nEK, n), g.kidx)
		vw := ctx.SetRows(s.vc[il], ctx.Reshape(ctx.Cont(v), 1, nEV*n), g.vidx)
		writes = append(writes, kw, vw)
		if kw == nil || vw == nil {
			return nil
		}
		es := kw.Type().BlockBytes()
		kv := ctx.Permute(ctx.View(kw, []int64{hd, nkv, nKV}, []int64{hd * es, nEK * es}, 0), [4]int{0, 2, 1, 3})
		kq := ctx.MulMat(kv, ctx.Permute(q, [4]int{0, 2, 1, 3}))
		kq = ctx.SoftMax(kq, g.mask, cfg.AttnScale)
		vv := ctx.Permute(ctx.View(vw, []int64{nKV, nkv, hdv}, []int64{kvSize * hdv * es, kvSize * es}, 0), [4]int{0, 2, 1, 3})
		kqv := ctx.MulMat(vv, kq)
		o := ctx.Cont(ctx.Permute(kqv, [4]int{0, 2, 1, 3}))
		return ctx.Reshape(o, hdv*int64(cfg.NHead), n)
	}
	var sel func(*binding.Tensor) *binding.Tensor
	if n > 1 {
		sel = func(t *binding.Tensor) *binding.Tensor {
			return ctx.View(t, []int64{t.Dim(0), 1}, []int64{t.Stride(1)}, (n-1)*t.Stride(1))
		}
	}
	if x == nil {
		return errOr(ctx.Err(), "no input embeddings")
	}
	hidden := b.blocks(x, g.pos, attend, sel)
	if virtual != nil {
		for _, w := range writes {
			if err := g.g.BuildForward(w); err != nil {
				return err
			}
		}
		return nil
	}
	g.logits = b.logits(hidden)
	if g.logits == nil {
		return errOr(ctx.Err(), "graph construction failed")
	}
	g.logits.SetName("logits").SetOutput()
	return g.g.BuildForward(g.logits)
}

// prime writes the hooks' prefix keys/values and soft prompt into the cache
// once after creation or Reset.
func (s *Session) prime() error {
	if s.primed {
		return nil
	}
	s.pos, s.base = 0, 0
	var hasPrompt, hasPrefix bool
	for _, h := range s.opts.Hooks {
		_, p := h.(PromptHook)
		_, k := h.(PrefixKVHook)
		hasPrompt = hasPrompt || p
		hasPrefix = hasPrefix || k
	}
	if hasPrefix {
		if err := s.writePrefix(); err != nil {
			return fmt.Errorf("session: prefix: %w", err)
		}
	}
	if hasPrompt {
		if err := s.writePrompt(); err != nil {
			return fmt.Errorf("session: soft prompt: %w", err)
		}
	}
	s.base = s.pos
	s.primed = true
	return nil
}

func (s *Session) writePrefix() error {
	size := s.m.GraphSize()
	ctx, err := binding.NewGraphContext(size, size, false)
	if err != nil {
		return err
	}
	defer ctx.Close()
	b := s.newBuilder(ctx, 0)
	ks, vs, np, err := b.prefixes()
	if err != nil {
		return err
	}
	if np > s.opts.NCtx {
		return fmt.Errorf("%w: %d prefix positions exceed the context %d", ErrContextFull, np, s.opts.NCtx)
	}
	cfg := &s.m.cfg
	nEK, nEV := int64(cfg.NEmbdKV()), int64(cfg.NEmbdVKV())
	kidx := ctx.NewTensor(binding.TypeI32, int64(np))
	vidx := ctx.NewTensor(binding.TypeI32, int64(np)*nEV)
	g, err := ctx.NewGraph(size, false)
	if err != nil {
		return err
	}
	if kidx == nil || vidx == nil {
		return ctx.Err()
	}
	kidx.SetInput()
	vidx.SetInput()
	for il := range ks {
		kw := ctx.SetRows(s.kc[il], ctx.Reshape(ctx.Cont(ks[il]), nEK, int64(np)), kidx)
		vw := ctx.SetRows(s.vc[il], ctx.Reshape(ctx.Cont(vs[il]), 1, nEV*int64(np)), vidx)
		for _, w := range []*binding.Tensor{kw, vw} {
			if err := g.BuildForward(w); err != nil {
				return err
			}
		}
	}
	alloc, err := s.m.backend.NewAllocator()
	if err != nil {
		return err
	}
	defer alloc.Close()
	if err := alloc.Alloc(g); err != nil {
		return err
	}
	ki := make([]int32, np)
	vi := make([]int32, int(nEV)*np)
	for i := range ki {
		ki[i] = int32(i)
		for d := 0; d < int(nEV); d++ {
			vi[i*int(nEV)+d] = int32(d*s.kvSize + i)
		}
	}
	if err := kidx.SetInts(ki); err != nil {
		return err
	}
	if err := vidx.SetInts(vi); err != nil {
		return err
	}
	if err := b.fillInputs(); err != nil {
		return err
	}
	if err := s.m.backend.Compute(g); err != nil {
		return err
	}
	s.pos = np
	return nil
}

func (s *Session) writePrompt() error {
	// The number of virtual positions is known only once the hooks have
	// built their tensors: build once to learn it, then for real.
	probe, err := binding.NewGraphContext(s.m.GraphSize(), s.m.GraphSize(), false)
	if err != nil {
		return err
	}
	p, err := s.newBuilder(probe, 0).prompts()
	nv := 0
	if p != nil {
		nv = int(p.Dim(1))
	}
	probe.Close()
	if err != nil {
		return err
	}
	if s.pos+nv > s.opts.NCtx {
		return fmt.Errorf("%w: %d soft-prompt positions exceed the context %d", ErrContextFull, s.pos+nv, s.opts.NCtx)
	}
	var perr error
	g, err := s.buildStep(nv, s.nKV(s.pos+nv), func(b *Builder) *binding.Tensor {
		t, err := b.prompts()
		perr = err
		return t
	})
	if perr != nil {
		return perr
	}
	if err != nil {
		return err
	}
	defer g.close()
	if err := s.compute(g, nil); err != nil {
		return err
	}
	s.pos += nv
	return nil
}
