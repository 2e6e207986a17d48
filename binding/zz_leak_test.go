package binding_test

import (
	"fmt"
	"os"
	"runtime"
	"testing"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/internal/fixture"
)

func TestZZLeak(t *testing.T) {
	path := fixture.Path(t, "models/stories260K.gguf")
	mode := os.Getenv("MODE")
	if os.Getenv("LOCK") != "" {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
	}
	n := 0
	pr := func() {
		b, _ := os.ReadFile("/proc/self/smaps_rollup")
		t.Log(string(b))
		if os.Getenv("SMAPS") != "" {
			b, _ = os.ReadFile("/proc/self/smaps")
			os.WriteFile(os.Getenv("SMAPS")+fmt.Sprint(n), b, 0o644)
			n++
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		t.Logf("GoSys %d HeapSys %d HeapInuse %d HeapReleased %d StackSys %d", ms.Sys>>10, ms.HeapSys>>10, ms.HeapInuse>>10, ms.HeapReleased>>10, ms.StackSys>>10)
	}
	pr()
	defer pr()
	checkLeak(t, func(int) {
		m, _ := binding.LoadModel(path, binding.ModelParams{VocabOnly: mode == "vocab", NoMmap: os.Getenv("NOMMAP") != ""})
		if mode == "ctx" || mode == "decode" || mode == "sampler" {
			ctx, _ := binding.NewLlamaContext(m, binding.ContextParams{NCtx: 64, Threads: 1})
			if mode == "decode" || mode == "sampler" {
				ctx.Decode([]binding.Token{1, 403, 407}, 0, true)
			}
			if mode == "sampler" {
				s := binding.NewSampler(binding.SamplerParams{Temperature: 0.8, TopK: 40, Seed: 1})
				s.Sample(ctx, -1)
				s.Close()
			}
			ctx.Close()
		}
		m.Close()
	})
}
