package model

import (
	"errors"
	"fmt"
	"sort"
	"sync"

	"github.com/ggtune/ggtune/binding"
)

// Options configure [Load].
type Options struct {
	// Backend runs the model's graphs; nil creates a backend for Device
	// with Threads threads that the model owns.
	Backend *binding.Backend
	// Device names the ggml device (as binding.Devices lists it, e.g.
	// "Vulkan0" or "CUDA0") that holds the weights and runs the graphs when
	// Backend is nil; "" is the CPU. The CPU runs the operations the
	// device does not support.
	Device string
	// Threads for the CPU backend (0: all CPUs).
	Threads int
	// NoMmap reads the weights into backend memory instead of mapping the
	// file (mapping is used only with a CPU backend).
	NoMmap bool
	// Trainable selects weights (by GGUF name) that are loaded as F32 copies
	// so that they can be marked as parameters (full or partial fine-tuning).
	// Others keep their stored type and are never parameters.
	Trainable func(name string) bool
	// PlainAttention builds training and evaluation graphs with ggml's plain
	// soft_max attention even on the CPU backend, where the fused kernels
	// (memory linear in the context length) are the default; see
	// binding.Context.Attention.
	PlainAttention bool
}

// layerWeights holds one transformer block's tensors (optional ones nil).
type layerWeights struct {
	attnNorm, wq, wk, wv, wo *binding.Tensor
	bq, bk, bv, bo           *binding.Tensor
	qNorm, kNorm             *binding.Tensor
	ffnNorm                  *binding.Tensor
	gate, up, down           *binding.Tensor
	gateB, upB, downB        *binding.Tensor
}

// Model is a llama-family model whose weights live in backend memory. It is
// safe to build graphs from several goroutines only if each uses its own
// context; computing is serialised by the caller.
type Model struct {
	cfg     Config
	path    string
	backend *binding.Backend
	owned   bool
	plain   bool // plain soft_max attention (Options.PlainAttention)

	ctx       *binding.Context // weights kept in their stored type
	f32ctx    *binding.Context // weights converted to F32 (trainable, or 1-D weights stored in 16 bits)
	mapping   *binding.HostMapping
	bufs      []*binding.Buffer
	weights   map[string]*binding.Tensor
	types     map[string]binding.Type // stored types
	trainable []*binding.Tensor

	tokEmbd, outNorm, output, outputB, ropeFreqs *binding.Tensor
	layers                                       []layerWeights

	vocabOnce sync.Once
	vocab     *Tokenizer
	vocabErr  error
}

// supportedTypes are the weight types the CPU matrix multiplication takes.
var supportedTypes = map[binding.Type]bool{
	binding.TypeF32: true, binding.TypeF16: true, binding.TypeBF16: true,
	binding.TypeQ4_0: true, binding.TypeQ4_1: true, binding.TypeQ5_0: true, binding.TypeQ5_1: true, binding.TypeQ8_0: true,
	binding.TypeQ2_K: true, binding.TypeQ3_K: true, binding.TypeQ4_K: true, binding.TypeQ5_K: true, binding.TypeQ6_K: true,
}

type tensorSpec struct {
	name     string
	shape    []int64
	optional bool
	dst      **binding.Tensor
}

// Load reads a GGUF model: its configuration from the metadata and its
// weights into backend memory (mapped from the file with a CPU backend, so
// no copy is made), in their stored types. A missing tensor, a wrong shape,
// an unsupported type or architecture is an error naming it.
func Load(path string, opts Options) (*Model, error) {
	f, err := binding.OpenGGUF(path)
	if err != nil {
		return nil, fmt.Errorf("load model: %w", err)
	}
	defer f.Close()
	if err := refuseAdapter(f); err != nil {
		return nil, fmt.Errorf("load model %s: %w", path, err)
	}
	if err := f.CheckVocab(); err != nil {
		return nil, fmt.Errorf("load model %s: %w", path, err)
	}
	cfg, err := ReadConfig(f)
	if err != nil {
		return nil, fmt.Errorf("load model: %w", err)
	}
	m := &Model{cfg: cfg, path: path, weights: map[string]*binding.Tensor{}, types: map[string]binding.Type{}}
	if err := m.load(f, opts); err != nil {
		m.Close()
		return nil, fmt.Errorf("load model %s: %w", path, err)
	}
	return m, nil
}

func (m *Model) specs(f *binding.GGUFFile) []tensorSpec {
	c := &m.cfg
	ne, nq, nkv, nvkv, nff := int64(c.NEmbd), int64(c.NEmbdQ()), int64(c.NEmbdKV()), int64(c.NEmbdVKV()), int64(c.NFF)
	nv := int64(0)
	if ti, ok := f.TensorInfo("token_embd.weight"); ok && len(ti.Shape) == 2 {
		nv = ti.Shape[1]
	}
	m.layers = make([]layerWeights, c.NLayer)
	s := []tensorSpec{
		{name: "token_embd.weight", shape: []int64{ne, nv}, dst: &m.tokEmbd},
		{name: "output_norm.weight", shape: []int64{ne}, dst: &m.outNorm},
		{name: "output.weight", shape: []int64{ne, nv}, optional: true, dst: &m.output},
		{name: "output.bias", shape: []int64{nv}, optional: true, dst: &m.outputB},
		{name: "rope_freqs.weight", shape: []int64{int64(c.RoPEDim / 2)}, optional: true, dst: &m.ropeFreqs},
	}
	for i := range m.layers {
		l := &m.layers[i]
		n := func(s string) string { return fmt.Sprintf("blk.%d.%s", i, s) }
		s = append(s,
			tensorSpec{name: n("attn_norm.weight"), shape: []int64{ne}, dst: &l.attnNorm},
			tensorSpec{name: n("attn_q.weight"), shape: []int64{ne, nq}, dst: &l.wq},
			tensorSpec{name: n("attn_k.weight"), shape: []int64{ne, nkv}, dst: &l.wk},
			tensorSpec{name: n("attn_v.weight"), shape: []int64{ne, nvkv}, dst: &l.wv},
			tensorSpec{name: n("attn_output.weight"), shape: []int64{nq, ne}, dst: &l.wo},
			tensorSpec{name: n("attn_q.bias"), shape: []int64{nq}, optional: true, dst: &l.bq},
			tensorSpec{name: n("attn_k.bias"), shape: []int64{nkv}, optional: true, dst: &l.bk},
			tensorSpec{name: n("attn_v.bias"), shape: []int64{nvkv}, optional: true, dst: &l.bv},
			tensorSpec{name: n("attn_output.bias"), shape: []int64{ne}, optional: true, dst: &l.bo},
			tensorSpec{name: n("attn_q_norm.weight"), shape: []int64{int64(c.HeadDim)}, optional: c.Arch != "qwen3", dst: &l.qNorm},
			tensorSpec{name: n("attn_k_norm.weight"), shape: []int64{int64(c.HeadDim)}, optional: c.Arch != "qwen3", dst: &l.kNorm},
			tensorSpec{name: n("ffn_norm.weight"), shape: []int64{ne}, dst: &l.ffnNorm},
			tensorSpec{name: n("ffn_gate.weight"), shape: []int64{ne, nff}, dst: &l.gate},
			tensorSpec{name: n("ffn_up.weight"), shape: []int64{ne, nff}, dst: &l.up},
			tensorSpec{name: n("ffn_down.weight"), shape: []int64{nff, ne}, dst: &l.down},
			tensorSpec{name: n("ffn_gate.bias"), shape: []int64{nff}, optional: true, dst: &l.gateB},
			tensorSpec{name: n("ffn_up.bias"), shape: []int64{nff}, optional: true, dst: &l.upB},
			tensorSpec{name: n("ffn_down.bias"), shape: []int64{ne}, optional: true, dst: &l.downB},
		)
	}
	return s
}

func sameShape(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func (m *Model) load(f *binding.GGUFFile, opts Options) error {
	specs := m.specs(f)
	ti, ok := f.TensorInfo("token_embd.weight")
	if !ok {
		return fmt.Errorf("%w: token_embd.weight", ErrMissingTensor)
	}
	if len(ti.Shape) != 2 || ti.Shape[0] != int64(m.cfg.NEmbd) || ti.Shape[1] <= 0 {
		return fmt.Errorf("%w: token_embd.weight has shape %v, want [%d, n_vocab]", binding.ErrShape, ti.Shape, m.cfg.NEmbd)
	}
	m.cfg.NVocab = int(ti.Shape[1])

	type placed struct {
		spec tensorSpec
		info binding.GGUFTensorInfo
		f32  bool
	}
	var todo []placed
	var errs []error
	nDirect, nF32 := 0, 0
	for _, s := range specs {
		info, ok := f.TensorInfo(s.name)
		if !ok {
			if !s.optional {
				errs = append(errs, fmt.Errorf("%w: %s", ErrMissingTensor, s.name))
			}
			continue
		}
		if !sameShape(info.Shape, s.shape) {
			errs = append(errs, fmt.Errorf("%w: tensor %s has shape %v, want %v", binding.ErrShape, s.name, info.Shape, s.shape))
			continue
		}
		if !supportedTypes[info.Type] {
			errs = append(errs, fmt.Errorf("%w: tensor %s has type %v", ErrUnsupported, s.name, info.Type))
			continue
		}
		conv := len(s.shape) == 1 && info.Type != binding.TypeF32
		if opts.Trainable != nil && opts.Trainable(s.name) {
			conv = true
		}
		if conv {
			nF32++
		} else {
			nDirect++
		}
		todo = append(todo, placed{spec: s, info: info, f32: conv})
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	m.cfg.TiedOutput = m.output == nil && !hasTensor(f, "output.weight")
	m.cfg.QKNorm = hasTensor(f, "blk.0.attn_q_norm.weight")

	backend := opts.Backend
	if backend == nil {
		dev := opts.Device
		if dev == "" {
			dev = "CPU"
		}
		b, err := binding.NewBackend(dev, opts.Threads)
		if err != nil {
			return err
		}
		backend, m.owned = b, true
	}
	m.backend = backend
	m.plain = opts.PlainAttention

	var err error
	if m.ctx, err = binding.NewContext(int64(nDirect+1)*binding.TensorOverhead()+1024, true); err != nil {
		return err
	}
	if m.f32ctx, err = binding.NewContext(int64(nF32+1)*binding.TensorOverhead()+1024, true); err != nil {
		return err
	}
	for _, p := range todo {
		var t *binding.Tensor
		if p.f32 {
			t = m.f32ctx.NewTensor(binding.TypeF32, p.info.Shape...)
		} else {
			t = m.ctx.NewTensor(p.info.Type, p.info.Shape...)
		}
		if t == nil {
			return fmt.Errorf("tensor %s: %w", p.spec.name, errors.Join(m.ctx.Err(), m.f32ctx.Err()))
		}
		t.SetName(p.spec.name)
		*p.spec.dst = t
		m.weights[p.spec.name] = t
		m.types[p.spec.name] = p.info.Type
		if p.f32 && opts.Trainable != nil && opts.Trainable(p.spec.name) {
			m.trainable = append(m.trainable, t)
		}
	}
	if m.output == nil {
		m.output = m.tokEmbd
	}

	// Weights kept in their stored type: map the file (CPU) or copy.
	if nDirect > 0 {
		useMap := !opts.NoMmap && backend.IsCPU()
		if useMap {
			mp, err := binding.MapFile(m.path)
			if err == nil {
				m.mapping = mp
				for _, p := range todo {
					if p.f32 {
						continue
					}
					if err := mp.Place(*p.spec.dst, f.DataOffset()+p.info.Offset); err != nil {
						useMap = false
						break
					}
				}
			} else {
				useMap = false
			}
			if !useMap && m.mapping != nil {
				// A tensor could not be placed (misaligned file): start over with copies.
				return m.reloadWithoutMmap(opts)
			}
		}
		if !useMap {
			buf, err := backend.AllocContext(m.ctx)
			if err != nil {
				return fmt.Errorf("allocate weights: %w", err)
			}
			buf.SetWeights()
			m.bufs = append(m.bufs, buf)
			for _, p := range todo {
				if p.f32 {
					continue
				}
				data, err := f.ReadTensor(p.spec.name)
				if err != nil {
					return err
				}
				if err := (*p.spec.dst).SetBytes(data); err != nil {
					return fmt.Errorf("tensor %s: %w", p.spec.name, err)
				}
			}
		}
	}
	if nF32 > 0 {
		buf, err := backend.AllocContext(m.f32ctx)
		if err != nil {
			return fmt.Errorf("allocate f32 weights: %w", err)
		}
		buf.SetWeights()
		m.bufs = append(m.bufs, buf)
		for _, p := range todo {
			if !p.f32 {
				continue
			}
			data, err := f.ReadTensorFloats(p.spec.name)
			if err != nil {
				return err
			}
			if err := (*p.spec.dst).SetFloats(data); err != nil {
				return fmt.Errorf("tensor %s: %w", p.spec.name, err)
			}
		}
	}
	return nil
}

// reloadWithoutMmap is used when the file's tensor data cannot be mapped in
// place; it restarts the load with copies.
func (m *Model) reloadWithoutMmap(opts Options) error {
	opts.NoMmap = true
	opts.Backend = m.backend
	owned := m.owned
	m.owned = false
	m.release()
	f, err := binding.OpenGGUF(m.path)
	if err != nil {
		return err
	}
	defer f.Close()
	m.weights = map[string]*binding.Tensor{}
	m.types = map[string]binding.Type{}
	m.trainable = nil
	m.tokEmbd, m.outNorm, m.output, m.outputB, m.ropeFreqs = nil, nil, nil, nil, nil
	err = m.load(f, opts)
	m.owned = owned
	return err
}

func hasTensor(f *binding.GGUFFile, name string) bool {
	_, ok := f.TensorInfo(name)
	return ok
}

// release frees the weights (not the backend).
func (m *Model) release() {
	for _, b := range m.bufs {
		b.Close()
	}
	m.bufs = nil
	if m.mapping != nil {
		m.mapping.Close()
		m.mapping = nil
	}
	if m.ctx != nil {
		m.ctx.Close()
		m.ctx = nil
	}
	if m.f32ctx != nil {
		m.f32ctx.Close()
		m.f32ctx = nil
	}
}

// Close frees the weights, the tokenizer and the backend if the model
// created it. It is idempotent.
func (m *Model) Close() {
	if m == nil {
		return
	}
	m.release()
	if m.vocab != nil {
		m.vocab.Close()
		m.vocab = nil
	}
	if m.owned && m.backend != nil {
		m.backend.Close()
	}
	m.backend = nil
}

// Config returns the model's hyper-parameters.
func (m *Model) Config() Config { return m.cfg }

// Path returns the file the model was loaded from.
func (m *Model) Path() string { return m.path }

// Backend returns the backend that holds the weights and runs the graphs.
func (m *Model) Backend() *binding.Backend { return m.backend }

// Weight returns the weight tensor with the GGUF name name, or nil. For a
// model with tied embeddings "output.weight" returns token_embd.weight.
func (m *Model) Weight(name string) *binding.Tensor {
	if t, ok := m.weights[name]; ok {
		return t
	}
	if name == "output.weight" {
		return m.output
	}
	return nil
}

// WeightType returns the type a weight is stored with in the file.
func (m *Model) WeightType(name string) (binding.Type, bool) {
	t, ok := m.types[name]
	return t, ok
}

// WeightNames returns the names of all loaded weights, sorted.
func (m *Model) WeightNames() []string {
	out := make([]string, 0, len(m.weights))
	for n := range m.weights {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Trainable returns the F32 weights selected by Options.Trainable, in file
// order of the architecture. The caller marks them as parameters.
func (m *Model) Trainable() []*binding.Tensor { return m.trainable }

// Tokenizer returns the model's tokenizer (libllama's, loaded from the same
// file without weights on first use).
func (m *Model) Tokenizer() (*Tokenizer, error) {
	m.vocabOnce.Do(func() {
		m.vocab, m.vocabErr = LoadTokenizer(m.path)
	})
	return m.vocab, m.vocabErr
}

// SetPlainAttention switches the graphs built later between the fused
// attention kernels (false, the default on the CPU backend) and ggml's
// plain soft_max attention (true), as Options.PlainAttention does.
func (m *Model) SetPlainAttention(plain bool) { m.plain = plain }
