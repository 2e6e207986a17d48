package binding

/*
#include <stdlib.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

// ggtune_fix_mmap_threshold pins glibc's mmap threshold at n bytes (other
// C libraries have no such setting).
static void ggtune_fix_mmap_threshold(int n) {
#ifdef __GLIBC__
    mallopt(M_MMAP_THRESHOLD, n);
#else
    (void) n;
#endif
}
*/
import "C"

import (
	"os"
	"strings"
)

// MmapThreshold is the allocation size from which glibc serves ggml's
// buffers (contexts, backend and compute buffers) with their own mmap, so
// that freeing one returns its memory to the system at once.
//
// glibc's default threshold is dynamic: every freed mmapped block raises it
// to that block's size (up to 32 MB), after which buffers of a few MB come
// from the per-thread malloc arenas and stay there, free but resident, when
// their owner is closed. 1000 cycles of loading a model, building a
// training engine, one step and closing everything grew the resident set by
// 26-36 MB that way with 0.2 MB actually in use (the arenas held 270 MB of
// free memory); with the threshold fixed the growth is under 1 MB per 100
// cycles (finetune's TestLoadTrainFreeRSS).
const MmapThreshold = 256 << 10

func init() { fixMmapThreshold() }

// fixMmapThreshold sets MmapThreshold unless the user configured glibc's
// threshold (MALLOC_MMAP_THRESHOLD_ or GLIBC_TUNABLES).
func fixMmapThreshold() {
	if _, set := os.LookupEnv("MALLOC_MMAP_THRESHOLD_"); set || strings.Contains(os.Getenv("GLIBC_TUNABLES"), "mmap_threshold") {
		return
	}
	C.ggtune_fix_mmap_threshold(C.int(MmapThreshold))
}
