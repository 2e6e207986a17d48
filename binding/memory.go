package binding

/*
#include <stdlib.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

static void ggtune_trim(void) {
#if defined(__GLIBC__)
    malloc_trim(0);
#endif
}
*/
import "C"

import (
	"runtime"
	"runtime/debug"
)

// ReleaseMemory returns freed memory to the operating system: Go's heap
// (after a garbage collection) and, with glibc, the C heap that ggml and
// libllama allocate from (malloc_trim). Long-running programs that load and
// free models or contexts repeatedly can call it after freeing; the C
// allocator otherwise keeps freed pages, which shows as resident memory.
func ReleaseMemory() {
	runtime.GC()
	debug.FreeOSMemory()
	C.ggtune_trim()
}
