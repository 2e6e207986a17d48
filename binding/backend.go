package binding

/*
#include <stdlib.h>
#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "llama.h"

static void ggtune_set_n_threads(ggml_backend_t backend, int n) {
    ggml_backend_dev_t dev = ggml_backend_get_device(backend);
    ggml_backend_reg_t reg = dev ? ggml_backend_dev_backend_reg(dev) : NULL;
    if (!reg) return;
    ggml_backend_set_n_threads_t fn = (ggml_backend_set_n_threads_t) ggml_backend_reg_get_proc_address(reg, "ggml_backend_set_n_threads");
    if (fn) fn(backend, n);
}
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"unsafe"
)

// DeviceType classifies a backend device.
type DeviceType int

// Device types, as in ggml's backend registry.
const (
	DeviceCPU   DeviceType = C.GGML_BACKEND_DEVICE_TYPE_CPU
	DeviceGPU   DeviceType = C.GGML_BACKEND_DEVICE_TYPE_GPU
	DeviceIGPU  DeviceType = C.GGML_BACKEND_DEVICE_TYPE_IGPU
	DeviceAccel DeviceType = C.GGML_BACKEND_DEVICE_TYPE_ACCEL
)

// String returns "CPU", "GPU", "iGPU" or "accel".
func (t DeviceType) String() string {
	switch t {
	case DeviceCPU:
		return "CPU"
	case DeviceGPU:
		return "GPU"
	case DeviceIGPU:
		return "iGPU"
	case DeviceAccel:
		return "accel"
	}
	return fmt.Sprintf("device(%d)", int(t))
}

// Device describes one device of ggml's backend registry.
type Device struct {
	Index       int
	Name        string
	Description string
	Backend     string // the registry that provides it ("CPU", "CUDA", ...)
	Type        DeviceType
	MemoryFree  uint64
	MemoryTotal uint64
	dev         C.ggml_backend_dev_t
}

var loadOnce sync.Once

// loadBackendsFromEnv loads the backend libraries in GGTUNE_BACKEND_PATH
// (a list of directories) once.
func loadBackendsFromEnv() {
	loadOnce.Do(func() {
		for _, dir := range filepath.SplitList(os.Getenv("GGTUNE_BACKEND_PATH")) {
			if dir != "" {
				_ = LoadBackends(dir)
			}
		}
	})
}

// LoadBackends loads every ggml backend library (libggml-*.so, .dylib or
// .dll) found in dir and registers its devices.
func LoadBackends(dir string) error {
	st, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("load backends: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("load backends: %s is not a directory", dir)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("load backends: %w", err)
	}
	var errs []error
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, "libggml-") && !strings.HasPrefix(name, "ggml-") {
			continue
		}
		if !(strings.HasSuffix(name, ".so") || strings.HasSuffix(name, ".dylib") || strings.HasSuffix(name, ".dll")) {
			continue
		}
		if strings.Contains(name, "ggml-cpu") || strings.Contains(name, "ggml-base") {
			continue // the CPU backend is compiled in
		}
		cs := C.CString(filepath.Join(dir, name))
		reg := C.ggml_backend_load(cs)
		freeCString(cs)
		if reg == nil {
			errs = append(errs, fmt.Errorf("load backend %s: not a loadable ggml backend", filepath.Join(dir, name)))
		}
	}
	return errors.Join(errs...)
}

// Devices lists the devices of every registered backend, loading the
// libraries of GGTUNE_BACKEND_PATH first.
func Devices() []Device {
	loadBackendsFromEnv()
	n := int(C.ggml_backend_dev_count())
	out := make([]Device, 0, n)
	for i := 0; i < n; i++ {
		d := C.ggml_backend_dev_get(C.size_t(i))
		var free, total C.size_t
		C.ggml_backend_dev_memory(d, &free, &total)
		out = append(out, Device{
			Index:       i,
			Name:        C.GoString(C.ggml_backend_dev_name(d)),
			Description: C.GoString(C.ggml_backend_dev_description(d)),
			Backend:     C.GoString(C.ggml_backend_reg_name(C.ggml_backend_dev_backend_reg(d))),
			Type:        DeviceType(C.ggml_backend_dev_type(d)),
			MemoryFree:  uint64(free),
			MemoryTotal: uint64(total),
			dev:         d,
		})
	}
	return out
}

// SystemInfo describes the CPU features the compiled ggml uses (for
// example "AVX512 = 1") and the registered backends.
func SystemInfo() string {
	loadBackendsFromEnv()
	return strings.TrimSpace(C.GoString(C.llama_print_system_info()))
}

// CPUFeatures lists the SIMD features compiled into the CPU backend.
func CPUFeatures() []string {
	var out []string
	add := func(name string, on C.int) {
		if on != 0 {
			out = append(out, name)
		}
	}
	add("SSE3", C.ggml_cpu_has_sse3())
	add("SSSE3", C.ggml_cpu_has_ssse3())
	add("AVX", C.ggml_cpu_has_avx())
	add("AVX2", C.ggml_cpu_has_avx2())
	add("F16C", C.ggml_cpu_has_f16c())
	add("FMA", C.ggml_cpu_has_fma())
	add("BMI2", C.ggml_cpu_has_bmi2())
	add("AVX_VNNI", C.ggml_cpu_has_avx_vnni())
	add("AVX512", C.ggml_cpu_has_avx512())
	add("AVX512_VBMI", C.ggml_cpu_has_avx512_vbmi())
	add("AVX512_VNNI", C.ggml_cpu_has_avx512_vnni())
	add("AVX512_BF16", C.ggml_cpu_has_avx512_bf16())
	add("AMX_INT8", C.ggml_cpu_has_amx_int8())
	add("NEON", C.ggml_cpu_has_neon())
	add("ARM_FMA", C.ggml_cpu_has_arm_fma())
	add("DOTPROD", C.ggml_cpu_has_dotprod())
	add("SVE", C.ggml_cpu_has_sve())
	add("LLAMAFILE", C.ggml_cpu_has_llamafile())
	return out
}

// Backend is an initialised compute backend (a stream on one device).
//
// Compute may be called from several goroutines: a backend runs one graph
// at a time (ggml's CPU backend shares one work buffer between
// computations), so concurrent calls are serialised by a mutex. Graphs
// computed concurrently must not share tensors that are written.
//
// A backend on a device other than the CPU owns a CPU backend as well: its
// allocators schedule graphs over both (ggml_backend_sched), each operation
// on the device when the device supports it and on the CPU otherwise.
type Backend struct {
	b    C.ggml_backend_t
	name string
	mu   sync.Mutex // held during a graph computation
	host *Backend   // the CPU fallback of a device backend; nil for the CPU
}

// MaxThreads is the largest thread count a backend or libllama context
// accepts: four times the logical CPUs. More only oversubscribes the CPU,
// and ggml's thread pool fails (GGML_ASSERT) or spins for minutes when
// given tens of thousands.
func MaxThreads() int { return 4 * runtime.NumCPU() }

// CheckThreads returns an error wrapping [ErrThreads] unless n is 0 (all
// CPUs) or in 1..[MaxThreads].
func CheckThreads(n int) error {
	if n < 0 || n > MaxThreads() {
		return fmt.Errorf("%w: %d threads (want 1..%d, 4x the %d CPUs, or 0 for all CPUs)", ErrThreads, n, MaxThreads(), runtime.NumCPU())
	}
	return nil
}

// NewCPUBackend creates the CPU backend with the given number of threads
// (0 means the number of CPUs).
func NewCPUBackend(threads int) (*Backend, error) {
	return NewBackend("CPU", threads)
}

// NewBackend initialises the device named name (see [Devices]; "CPU" for
// the CPU). threads applies to backends that run on CPU threads.
func NewBackend(name string, threads int) (*Backend, error) {
	if err := CheckThreads(threads); err != nil {
		return nil, fmt.Errorf("backend %q: %w", name, err)
	}
	loadBackendsFromEnv()
	cs := C.CString(name)
	defer freeCString(cs)
	dev := C.ggml_backend_dev_by_name(cs)
	if dev == nil {
		var names []string
		for _, d := range Devices() {
			names = append(names, d.Name)
		}
		return nil, fmt.Errorf("backend %q: no such device (have %s)", name, strings.Join(names, ", "))
	}
	b := C.ggml_backend_dev_init(dev, nil)
	if b == nil {
		return nil, fmt.Errorf("backend %q: initialisation failed", name)
	}
	be := &Backend{b: b, name: C.GoString(C.ggml_backend_name(b))}
	if threads <= 0 {
		threads = runtime.NumCPU()
	}
	C.ggtune_set_n_threads(b, C.int(threads))
	if C.ggml_backend_dev_type(dev) != C.GGML_BACKEND_DEVICE_TYPE_CPU {
		host, err := NewBackend("CPU", threads)
		if err != nil {
			C.ggml_backend_free(b)
			return nil, fmt.Errorf("backend %q: CPU fallback: %w", name, err)
		}
		be.host = host
	}
	setLeakFinalizer(be, (*Backend).Close)
	return be, nil
}

// Name returns the backend's name.
func (b *Backend) Name() string { return b.name }

// IsCPU reports whether the backend runs on the host CPU.
func (b *Backend) IsCPU() bool {
	if b.b == nil {
		return false
	}
	d := C.ggml_backend_get_device(b.b)
	return d != nil && C.ggml_backend_dev_type(d) == C.GGML_BACKEND_DEVICE_TYPE_CPU
}

// SetThreads sets the number of CPU threads (for CPU-based backends); 0
// means the number of CPUs. A count past [MaxThreads] is an error wrapping
// [ErrThreads].
func (b *Backend) SetThreads(n int) error {
	if err := CheckThreads(n); err != nil {
		return err
	}
	if n == 0 {
		n = runtime.NumCPU()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.b == nil {
		return fmt.Errorf("set threads: backend %w", ErrClosed)
	}
	C.ggtune_set_n_threads(b.b, C.int(n))
	if b.host != nil {
		C.ggtune_set_n_threads(b.host.b, C.int(n))
	}
	return nil
}

// Close frees the backend. It is idempotent.
func (b *Backend) Close() {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.b == nil {
		return
	}
	C.ggml_backend_free(b.b)
	b.b = nil
	b.host.Close()
	runtime.SetFinalizer(b, nil)
}

// Supports reports whether the backend can compute the node t.
func (b *Backend) Supports(t *Tensor) bool {
	return b.b != nil && bool(C.ggml_backend_supports_op(b.b, t.t))
}

// Compute runs the graph on the backend. Every tensor must be allocated in
// a buffer the backend can use. A graph that an allocator of a device
// backend allocated runs through that allocator's scheduler (the device,
// with the CPU for the operations the device lacks).
func (b *Backend) Compute(g *Graph) error {
	if b.b == nil {
		return fmt.Errorf("compute: backend %w", ErrClosed)
	}
	if g.ctx.c == nil {
		return fmt.Errorf("compute: graph %w", ErrClosed)
	}
	if err := checkGraphAllocated(g); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if a := g.sched; a != nil {
		if a.sched == nil || a.graph != g {
			return fmt.Errorf("compute on %s: %w: the graph's scheduled allocation was released", b.name, ErrNotAllocated)
		}
		if st := C.ggml_backend_sched_graph_compute(a.sched, g.g); st != C.GGML_STATUS_SUCCESS {
			return fmt.Errorf("compute on %s: ggml status %d", b.name, int(st))
		}
		return nil
	}
	if st := C.ggml_backend_graph_compute(b.b, g.g); st != C.GGML_STATUS_SUCCESS {
		return fmt.Errorf("compute on %s: ggml status %d", b.name, int(st))
	}
	return nil
}

func checkGraphAllocated(g *Graph) error {
	for i := 0; i < g.NumNodes(); i++ {
		n := C.ggml_graph_node(g.g, C.int(i))
		if n.data == nil && n.buffer == nil && n.view_src == nil {
			return fmt.Errorf("compute: %w: node %q", ErrNotAllocated, C.GoString(&n.name[0]))
		}
	}
	return nil
}

// Buffer is backend memory holding tensors.
type Buffer struct {
	b C.ggml_backend_buffer_t
}

// AllocContext allocates every tensor of the metadata-only context c in one
// buffer of the backend.
func (b *Backend) AllocContext(c *Context) (*Buffer, error) {
	if b.b == nil || c.c == nil {
		return nil, fmt.Errorf("alloc context: %w", ErrClosed)
	}
	if !c.noAlloc {
		return nil, fmt.Errorf("alloc context: the context allocates its own memory")
	}
	if C.ggml_get_first_tensor(c.c) == nil {
		return nil, fmt.Errorf("alloc context: the context has no tensors")
	}
	buf := C.ggml_backend_alloc_ctx_tensors(c.c, b.b)
	if buf == nil {
		return nil, fmt.Errorf("alloc context on %s: %w", b.name, ErrOutOfMemory)
	}
	out := &Buffer{b: buf}
	setLeakFinalizer(out, (*Buffer).Close)
	return out, nil
}

// Size returns the buffer's size in bytes.
func (b *Buffer) Size() int64 {
	if b.b == nil {
		return 0
	}
	return int64(C.ggml_backend_buffer_get_size(b.b))
}

// Clear sets every byte of the buffer to v.
func (b *Buffer) Clear(v byte) {
	if b.b != nil {
		C.ggml_backend_buffer_clear(b.b, C.uint8_t(v))
	}
}

// SetWeights marks the buffer as holding weights (the scheduler keeps
// compute on the weights' backend).
func (b *Buffer) SetWeights() {
	if b.b != nil {
		C.ggml_backend_buffer_set_usage(b.b, C.GGML_BACKEND_BUFFER_USAGE_WEIGHTS)
	}
}

// Close frees the buffer. It is idempotent.
func (b *Buffer) Close() {
	if b == nil || b.b == nil {
		return
	}
	C.ggml_backend_buffer_free(b.b)
	b.b = nil
	runtime.SetFinalizer(b, nil)
}

// Allocator allocates the intermediate tensors of graphs in a buffer of one
// backend, reusing memory between nodes (ggml's graph allocator). The
// allocator of a device backend schedules each graph over the device and
// the CPU instead (ggml_backend_sched): an operation the device does not
// support runs on the CPU, with copies between the two where needed, and
// Placement reports where each operation went.
type Allocator struct {
	a C.ggml_gallocr_t
	// sched, for a device backend, replaces a (created for the first graph
	// and again for a larger one); graph is the graph it holds.
	sched     C.ggml_backend_sched_t
	schedSize int
	graph     *Graph
	be        *Backend
	// owned are the tensors Alloc placed in the allocator's buffer (only
	// those in the memory of the graph's own context). Close detaches them,
	// so that using them afterwards gives ErrNotAllocated instead of
	// reading freed memory.
	owned map[*C.struct_ggml_tensor]allocation
}

type allocation struct {
	buf C.ggml_backend_buffer_t
	ctx *Context
}

// NewAllocator creates a graph allocator for the backend's default buffer type.
func (b *Backend) NewAllocator() (*Allocator, error) {
	if b.b == nil {
		return nil, fmt.Errorf("new allocator: %w", ErrClosed)
	}
	if b.host != nil {
		out := &Allocator{be: b}
		setLeakFinalizer(out, (*Allocator).Close)
		return out, nil
	}
	a := C.ggml_gallocr_new(C.ggml_backend_get_default_buffer_type(b.b))
	if a == nil {
		return nil, fmt.Errorf("new allocator: %w", ErrOutOfMemory)
	}
	out := &Allocator{a: a}
	setLeakFinalizer(out, (*Allocator).Close)
	return out, nil
}

// Reserve sizes the allocator's buffer for graphs like g. Like Alloc, it
// first puts the fused kernels in place of attentions marked for them (see
// Context.Attention).
func (a *Allocator) Reserve(g *Graph) error {
	if a.closed() {
		return fmt.Errorf("reserve: %w", ErrClosed)
	}
	if g.ctx.c == nil {
		return fmt.Errorf("reserve graph: graph %w", ErrClosed)
	}
	if err := g.fuseAttention(g.ctx); err != nil {
		return fmt.Errorf("reserve graph: %w", err)
	}
	if a.be != nil {
		if err := a.ensureSched(g); err != nil {
			return fmt.Errorf("reserve graph: %w", err)
		}
		if !C.ggml_backend_sched_reserve(a.sched, g.g) {
			return fmt.Errorf("reserve graph on %s: %w", a.be.name, ErrOutOfMemory)
		}
		return nil
	}
	if !C.ggml_gallocr_reserve(a.a, g.g) {
		return fmt.Errorf("reserve graph: %w", ErrOutOfMemory)
	}
	return nil
}

// Alloc allocates the graph's tensors that are not yet allocated, after
// putting the fused kernels in place of the attentions marked for them
// (see Context.Attention) that are not yet fused.
func (a *Allocator) Alloc(g *Graph) error {
	if a.closed() {
		return fmt.Errorf("alloc graph: %w", ErrClosed)
	}
	if g.ctx.c == nil {
		return fmt.Errorf("alloc graph: graph %w", ErrClosed)
	}
	if err := g.fuseAttention(g.ctx); err != nil {
		return fmt.Errorf("alloc graph: %w", err)
	}
	var fresh []*C.struct_ggml_tensor
	for _, t := range g.tensors() {
		if t.data == nil && t.buffer == nil && g.ctx.holds(t) {
			fresh = append(fresh, t)
		}
	}
	if a.be != nil {
		if err := a.ensureSched(g); err != nil {
			return fmt.Errorf("alloc graph: %w", err)
		}
		g.preciseProducts()
		C.ggml_backend_sched_reset(a.sched)
		a.detach()
		if !C.ggml_backend_sched_alloc_graph(a.sched, g.g) {
			return fmt.Errorf("alloc graph on %s: %w", a.be.name, ErrOutOfMemory)
		}
		a.graph, g.sched = g, a
	} else if !C.ggml_gallocr_alloc_graph(a.a, g.g) {
		return fmt.Errorf("alloc graph: %w", ErrOutOfMemory)
	}
	if a.owned == nil {
		a.owned = map[*C.struct_ggml_tensor]allocation{}
	}
	for t, al := range a.owned {
		if al.ctx.c == nil {
			delete(a.owned, t)
		}
	}
	for _, t := range fresh {
		if t.buffer != nil {
			a.owned[t] = allocation{buf: t.buffer, ctx: g.ctx}
		}
	}
	return nil
}

// preciseProducts asks for F32 accumulation in every matrix product of
// the graph (ggml_mul_mat_set_prec). The CPU always accumulates in F32;
// ggml's default precision lets GPU backends accumulate in F16, which puts
// 1e-3 relative error into logits and gradients.
func (g *Graph) preciseProducts() {
	for i := 0; i < g.NumNodes(); i++ {
		if n := C.ggml_graph_node(g.g, C.int(i)); n.op == C.GGML_OP_MUL_MAT || n.op == C.GGML_OP_MUL_MAT_ID {
			C.ggml_mul_mat_set_prec(n, C.GGML_PREC_F32)
		}
	}
}

func (a *Allocator) closed() bool { return a.a == nil && (a.be == nil || a.be.b == nil) }

// ensureSched creates the scheduler of a device allocator, or a larger one
// when g has more tensors than the current one was made for.
func (a *Allocator) ensureSched(g *Graph) error {
	need := g.countTensors() + 64
	if a.sched != nil && need <= a.schedSize {
		return nil
	}
	if a.be.b == nil || a.be.host.b == nil {
		return fmt.Errorf("backend %w", ErrClosed)
	}
	size := max(need, g.size)
	a.freeSched()
	bes := [2]C.ggml_backend_t{a.be.b, a.be.host.b}
	s := C.ggml_backend_sched_new(&bes[0], nil, 2, C.size_t(size), false, true)
	if s == nil {
		return fmt.Errorf("scheduler for %s: %w", a.be.name, ErrOutOfMemory)
	}
	a.sched, a.schedSize = s, size
	return nil
}

// detach forgets the graph the scheduler held, so that computing it
// reports that its allocation is gone.
func (a *Allocator) detach() {
	if a.graph != nil && a.graph.sched == a {
		a.graph.sched = nil
	}
	a.graph = nil
}

// freeSched frees the scheduler and detaches the graph it held.
func (a *Allocator) freeSched() {
	if a.sched == nil {
		return
	}
	a.detach()
	C.ggml_backend_sched_free(a.sched)
	a.sched = nil
}

// BufferSize returns the size of the allocator's buffer (for a device
// allocator, the sum of its compute buffers on the device and the CPU).
func (a *Allocator) BufferSize() int64 {
	if a.sched != nil {
		return int64(C.ggml_backend_sched_get_buffer_size(a.sched, a.be.b)) + int64(C.ggml_backend_sched_get_buffer_size(a.sched, a.be.host.b))
	}
	if a.a == nil {
		return 0
	}
	return int64(C.ggml_gallocr_get_buffer_size(a.a, 0))
}

// Placement says where the operations of the graph that the allocator
// allocated last run: for each backend, the number of nodes of each
// operation (views and reshapes, which compute nothing, left out). On the
// CPU every operation is on the CPU; a device allocator reports the
// operations that fell back to the CPU under the CPU's name.
type Placement struct {
	// Ops maps a backend's name to operation names and their node counts.
	Ops map[string]map[string]int
	// Splits is the number of graph pieces run one after the other
	// (1 when everything runs on one backend).
	Splits int
}

// Placement reports where the operations of the last graph run (see
// [Placement]); the zero Placement before any Alloc.
func (a *Allocator) Placement() Placement {
	p := Placement{Ops: map[string]map[string]int{}}
	g := a.graph
	if a.sched == nil || g == nil || g.ctx.c == nil {
		return p
	}
	for i := 0; i < g.NumNodes(); i++ {
		n := C.ggml_graph_node(g.g, C.int(i))
		switch n.op {
		case C.GGML_OP_NONE, C.GGML_OP_VIEW, C.GGML_OP_RESHAPE, C.GGML_OP_PERMUTE, C.GGML_OP_TRANSPOSE:
			continue
		}
		be := C.ggml_backend_sched_get_tensor_backend(a.sched, n)
		name := "?"
		if be != nil {
			name = C.GoString(C.ggml_backend_name(be))
		}
		op := C.GoString(C.ggml_op_desc(n))
		if p.Ops[name] == nil {
			p.Ops[name] = map[string]int{}
		}
		p.Ops[name][op]++
	}
	p.Splits = int(C.ggml_backend_sched_get_n_splits(a.sched))
	return p
}

// Close frees the allocator and its buffer. It is idempotent.
func (a *Allocator) Close() {
	if a == nil || (a.a == nil && a.be == nil) {
		return
	}
	for t, al := range a.owned {
		if al.ctx.c != nil && t.buffer == al.buf {
			t.data, t.buffer = nil, nil
		}
	}
	a.owned = nil
	if a.a != nil {
		C.ggml_gallocr_free(a.a)
		a.a = nil
	}
	a.freeSched()
	a.be = nil
	runtime.SetFinalizer(a, nil)
}

// Sched schedules graphs over several backends (the last must be the CPU),
// splitting them where a backend cannot run an operation.
type Sched struct {
	s         C.ggml_backend_sched_t
	backends  []*Backend
	graphSize int
	user      any // the graph or OptContext whose allocation the scheduler holds
}

// NewSched creates a scheduler over backends for graphs of up to graphSize nodes.
func NewSched(backends []*Backend, graphSize int) (*Sched, error) {
	if len(backends) == 0 || len(backends) > 16 {
		return nil, fmt.Errorf("new scheduler: %d backends (1 to 16)", len(backends))
	}
	if graphSize < 1 {
		return nil, fmt.Errorf("new scheduler: %w: graph size %d", ErrShape, graphSize)
	}
	if !backends[len(backends)-1].IsCPU() {
		return nil, fmt.Errorf("new scheduler: the last backend must be the CPU")
	}
	arr := (*[1 << 20]C.ggml_backend_t)(C.malloc(C.size_t(len(backends)) * C.size_t(unsafe.Sizeof(C.ggml_backend_t(nil)))))
	defer C.free(unsafe.Pointer(arr))
	for i, b := range backends {
		if b.b == nil {
			return nil, fmt.Errorf("new scheduler: backend %d %w", i, ErrClosed)
		}
		arr[i] = b.b
	}
	s := C.ggml_backend_sched_new(&arr[0], nil, C.int(len(backends)), C.size_t(graphSize), false, true)
	if s == nil {
		return nil, fmt.Errorf("new scheduler: failed")
	}
	out := &Sched{s: s, backends: backends, graphSize: graphSize}
	setLeakFinalizer(out, (*Sched).Close)
	return out, nil
}

// Reserve sizes the scheduler's buffers for graphs like g.
func (s *Sched) Reserve(g *Graph) error {
	if s.s == nil {
		return fmt.Errorf("reserve: %w", ErrClosed)
	}
	if err := s.fits(g); err != nil {
		return fmt.Errorf("reserve graph: %w", err)
	}
	if !C.ggml_backend_sched_reserve(s.s, g.g) {
		return fmt.Errorf("reserve graph: %w", ErrOutOfMemory)
	}
	return nil
}

// Alloc assigns backends to the graph's nodes and allocates them.
func (s *Sched) Alloc(g *Graph) error {
	if s.s == nil {
		return fmt.Errorf("alloc graph: %w", ErrClosed)
	}
	if err := s.fits(g); err != nil {
		return fmt.Errorf("alloc graph: %w", err)
	}
	C.ggml_backend_sched_reset(s.s)
	s.user = g
	if !C.ggml_backend_sched_alloc_graph(s.s, g.g) {
		return fmt.Errorf("alloc graph: %w", ErrOutOfMemory)
	}
	return nil
}

// fits checks that the graph's tensors fit the scheduler's hash table
// (ggml aborts otherwise).
func (s *Sched) fits(g *Graph) error {
	if g.ctx.c == nil {
		return fmt.Errorf("graph %w", ErrClosed)
	}
	if n := g.countTensors(); n > s.graphSize {
		return fmt.Errorf("%w: the graph has %d nodes and leafs, the scheduler was created for %d", ErrOutOfMemory, n, s.graphSize)
	}
	return nil
}

// Compute runs a graph previously allocated with Alloc.
func (s *Sched) Compute(g *Graph) error {
	if s.s == nil {
		return fmt.Errorf("compute: %w", ErrClosed)
	}
	if st := C.ggml_backend_sched_graph_compute(s.s, g.g); st != C.GGML_STATUS_SUCCESS {
		return fmt.Errorf("compute: ggml status %d", int(st))
	}
	return nil
}

// Reset frees the allocation of the last graph.
func (s *Sched) Reset() {
	if s.s != nil {
		C.ggml_backend_sched_reset(s.s)
		s.user = nil
	}
}

// Close frees the scheduler (not its backends). It is idempotent.
func (s *Sched) Close() {
	if s == nil || s.s == nil {
		return
	}
	C.ggml_backend_sched_free(s.s)
	s.s = nil
	runtime.SetFinalizer(s, nil)
}
