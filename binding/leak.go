package binding

import (
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"sync/atomic"
)

// trackLeaks records where each C-owning object was created, for the leak
// log; it costs a stack trace per object and is on with GGTUNE_LOG=debug.
var trackLeaks = strings.EqualFold(os.Getenv("GGTUNE_LOG"), "debug")

// leaks counts objects freed by their finalizer instead of Close.
var leaks atomic.Int64

// Leaks returns how many objects were freed by the garbage collector's
// finalizer because nobody called their Close: each is a leak in the
// caller (memory held until the collector ran) and is logged at debug
// level, with the stack that created it when GGTUNE_LOG=debug.
func Leaks() int64 { return leaks.Load() }

// setLeakFinalizer makes the collector close obj if it becomes unreachable
// while still open, counting and logging the leak. Close clears it with
// runtime.SetFinalizer(obj, nil).
func setLeakFinalizer[T any](obj *T, closeFn func(*T)) {
	var where string
	if trackLeaks {
		where = string(debug.Stack())
	}
	runtime.SetFinalizer(obj, func(o *T) {
		logMu.Lock()
		l := logger
		logMu.Unlock()
		if where == "" {
			where = "unknown (set GGTUNE_LOG=debug to record it)"
		}
		l.Debug("ggtune: unclosed object freed by its finalizer; call Close", "type", fmt.Sprintf("%T", o), "created", where)
		closeFn(o)
		// Counted last: whoever sees the count has the log line.
		leaks.Add(1)
	})
}
