package binding_test

import (
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/internal/fixture"
)

const (
	leakIterations = 200
	leakWarmup     = 20
	leakBudget     = 10 << 20 // bytes of RSS growth allowed after the warm-up
)

// rss returns the resident set size of the process in bytes.
func rss(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		t.Skipf("no /proc/self/statm: %v", err)
	}
	f := strings.Fields(string(b))
	require.GreaterOrEqual(t, len(f), 2)
	pages, err := strconv.ParseInt(f[1], 10, 64)
	require.NoError(t, err)
	return pages * int64(os.Getpagesize())
}

// checkLeak runs body leakWarmup times, measures RSS, runs it
// leakIterations times and checks the growth. Freed memory is returned to
// the OS first (binding.ReleaseMemory: Go's GC and glibc's malloc_trim), so
// that what remains is memory still allocated, not pages glibc kept. The
// goroutine stays on one OS thread so that the C allocations come from one
// glibc arena instead of whichever arenas the threads Go happens to use.
//
// Known upstream leak: ollama's patch 0001 moved `delete buffer` out of
// ggml_backend_buffer_free into the backends, so the zero-size dummy
// buffers llama_model_load's weight_buft_supported allocates (104 bytes,
// about 50 per load of stories260K) are never freed. With fragmentation this
// costs about 15 KiB of RSS per model load.
func checkLeak(t *testing.T, body func(i int)) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for i := 0; i < leakWarmup; i++ {
		body(i)
	}
	binding.ReleaseMemory()
	before := rss(t)
	for i := 0; i < leakIterations; i++ {
		body(i)
	}
	binding.ReleaseMemory()
	after := rss(t)
	t.Logf("RSS %.1f MiB -> %.1f MiB over %d iterations", float64(before)/(1<<20), float64(after)/(1<<20), leakIterations)
	assert.Less(t, after-before, int64(leakBudget), "RSS grew by %d bytes", after-before)
}

func TestLeakLlama(t *testing.T) {
	path := fixture.Path(t, "models/stories260K.gguf")
	checkLeak(t, func(int) {
		m, err := binding.LoadModel(path, binding.ModelParams{})
		require.NoError(t, err)
		ctx, err := binding.NewLlamaContext(m, binding.ContextParams{NCtx: 64, Threads: 1})
		require.NoError(t, err)
		require.NoError(t, ctx.Decode([]binding.Token{1, 403, 407}, 0, true))
		s := binding.NewSampler(binding.SamplerParams{Temperature: 0.8, TopK: 40, Seed: 1})
		s.Sample(ctx, -1)
		s.Close()
		ctx.Close()
		ctx.Close()
		m.Close()
		m.Close()
	})
}

func TestLeakGraphs(t *testing.T) {
	checkLeak(t, func(i int) {
		// An allocating context with a forward and backward graph.
		ctx, err := binding.NewContext(8<<20, false)
		require.NoError(t, err)
		x := ctx.NewF32(make([]float32, 256), 16, 16)
		require.NoError(t, x.SetParam())
		w := ctx.NewF32(make([]float32, 256), 16, 16)
		loss := ctx.Sum(ctx.SoftMax(ctx.MulMat(w, x), nil, 1))
		require.NoError(t, loss.SetLoss())
		g, err := ctx.NewGraph(256, true)
		require.NoError(t, err)
		require.NoError(t, g.BuildForward(loss))
		require.NoError(t, g.BuildBackward(ctx))
		be, err := binding.NewCPUBackend(1)
		require.NoError(t, err)
		g.Reset()
		require.NoError(t, be.Compute(g))

		// A metadata context in a backend buffer, computed through the graph
		// allocator and through the scheduler.
		meta, err := binding.NewGraphContext(8, 64, false)
		require.NoError(t, err)
		a := meta.NewTensor(binding.TypeF32, 64, 64)
		b := meta.NewTensor(binding.TypeF32, 64, 8)
		buf, err := be.AllocContext(meta)
		require.NoError(t, err)
		require.NoError(t, a.SetFloats(make([]float32, 64*64)))
		require.NoError(t, b.SetFloats(make([]float32, 64*8)))
		cctx, err := binding.NewGraphContext(8, 64, false)
		require.NoError(t, err)
		out := cctx.RMSNorm(cctx.MulMat(a, b), 1e-5)
		gf, err := cctx.NewGraph(64, false)
		require.NoError(t, err)
		require.NoError(t, gf.BuildForward(out))
		alloc, err := be.NewAllocator()
		require.NoError(t, err)
		require.NoError(t, alloc.Alloc(gf))
		require.NoError(t, be.Compute(gf))
		_, err = out.Floats()
		require.NoError(t, err)
		alloc.Close()
		sched, err := binding.NewSched([]*binding.Backend{be}, 64)
		require.NoError(t, err)
		require.NoError(t, sched.Alloc(gf))
		require.NoError(t, sched.Compute(gf))
		sched.Close()

		cctx.Close()
		buf.Close()
		buf.Close()
		meta.Close()
		be.Close()
		be.Close()
		ctx.Close()
	})
}

func TestLeakGGUF(t *testing.T) {
	src := fixture.Path(t, "models/stories260K.gguf")
	dst := filepath.Join(t.TempDir(), "copy.gguf")
	checkLeak(t, func(int) {
		f, err := binding.OpenGGUF(src)
		require.NoError(t, err)
		w, err := binding.NewGGUFWriter(len(f.Tensors()))
		require.NoError(t, err)
		for _, kv := range f.KVs() {
			require.NoError(t, w.Set(kv.Key, kv.Value))
		}
		for _, ti := range f.Tensors() {
			b, err := f.ReadTensor(ti.Name)
			require.NoError(t, err)
			require.NoError(t, w.AddTensor(ti.Name, ti.Type, ti.Shape, b))
		}
		require.NoError(t, w.WriteFile(dst))
		w.Close()
		require.NoError(t, f.Close())
		m, err := binding.LoadModel(dst, binding.ModelParams{VocabOnly: true})
		require.NoError(t, err)
		m.Close()
	})
}

func TestLeakOpt(t *testing.T) {
	xs, ys, _, _ := leastSquares(3, 16)
	checkLeak(t, func(int) {
		m := newLinearModel(t, 3, 1, 16, xs)
		o := m.opt(t, binding.LossMeanSquaredError, binding.OptimizerAdamW, 2, binding.DefaultOptimizerParams())
		require.NoError(t, o.Labels().SetFloats(ys))
		res := binding.NewOptResult()
		for i := 0; i < 4; i++ {
			require.NoError(t, o.Step(res))
		}
		res.Close()
		o.Close()
		m.Close()
	})
}
