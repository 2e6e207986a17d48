package binding

/*
#include "ggml.h"
#include "llama.h"
extern void ggtuneGoLog(int level, char * text, void * user_data);
*/
import "C"

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"sync"
	"unsafe"
)

var (
	logMu     sync.Mutex
	logger    *slog.Logger
	logBuffer strings.Builder
)

func init() {
	level := new(slog.LevelVar)
	level.Set(slog.LevelError + 100) // silent by default
	switch strings.ToLower(os.Getenv("GGTUNE_LOG")) {
	case "debug":
		level.Set(slog.LevelDebug)
	case "info":
		level.Set(slog.LevelInfo)
	case "warn", "warning":
		level.Set(slog.LevelWarn)
	case "error":
		level.Set(slog.LevelError)
	}
	logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	C.ggml_log_set(C.ggml_log_callback(C.ggtuneGoLog), nil)
	C.llama_log_set(C.ggml_log_callback(C.ggtuneGoLog), nil)
	C.llama_backend_init()
}

// SetLogger routes ggml and libllama log output to l. A nil logger silences
// it. By default the output is silent unless GGTUNE_LOG is set to debug,
// info, warn or error.
func SetLogger(l *slog.Logger) {
	logMu.Lock()
	defer logMu.Unlock()
	if l == nil {
		l = slog.New(slog.DiscardHandler)
	}
	logger = l
}

//export ggtuneGoLog
func ggtuneGoLog(level C.int, text *C.char, _ unsafe.Pointer) {
	msg := C.GoString(text)
	logMu.Lock()
	defer logMu.Unlock()
	// ggml emits lines in pieces; CONT continues the previous message.
	logBuffer.WriteString(msg)
	if !strings.HasSuffix(msg, "\n") {
		return
	}
	line := strings.TrimRight(logBuffer.String(), "\n")
	logBuffer.Reset()
	var l slog.Level
	switch level {
	case C.GGML_LOG_LEVEL_DEBUG:
		l = slog.LevelDebug
	case C.GGML_LOG_LEVEL_WARN:
		l = slog.LevelWarn
	case C.GGML_LOG_LEVEL_ERROR:
		l = slog.LevelError
	default:
		l = slog.LevelInfo
	}
	if logger.Enabled(context.Background(), l) {
		logger.Log(context.Background(), l, line, "source", "ggml")
	}
}

// Logger returns the logger that ggml's and libllama's messages go to (see
// SetLogger), for ggtune's own diagnostics at the same levels.
func Logger() *slog.Logger {
	logMu.Lock()
	defer logMu.Unlock()
	return logger
}
