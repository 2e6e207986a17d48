// Package binding is ggtune's thin cgo layer over ggml (tensors, graphs,
// automatic differentiation, backends, GGUF, ggml-opt) and libllama
// (models, tokenizer, decode, adapters, sampling, chat templates).
//
// It is the only package of the project that uses cgo. Every C object is
// owned by exactly one Go value with an idempotent Close method. Shapes and
// types are checked in Go before they reach ggml, so that reachable input
// produces a Go error instead of a GGML_ASSERT abort of the whole process.
//
// Graph-building methods on [Context] use a sticky error: the first invalid
// operation records an error on the context and returns nil; every later
// operation that receives a nil operand returns nil as well. Check
// [Context.Err] (or the error returned by [Graph.BuildForward]) once after
// building a graph.
//
// Concurrency: a [Context], its tensors and graphs, a [Backend], a [Sched],
// a [LlamaContext] and a [Sampler] must be used by one goroutine at a time.
// A [LlamaModel] may be shared by several LlamaContexts on different
// goroutines once loaded (libllama treats the model as read-only). Package
// level functions (SystemInfo, Devices, LoadBackends, SetLogger) are safe for
// concurrent use.
//
// The C sources are those of the pinned Go module github.com/ollama/ollama
// (llama.cpp ec98e2002); see third_party/README.md. The headers are found
// in two places: third_party/ollama in a checkout (the symlink that `make
// deps` creates) and, when ggtune itself is a dependency in the module
// cache, the pinned module's directory beside it
// ($GOMODCACHE/github.com/ollama/ollama@v0.17.4), so that `go get` and `go
// build` alone work in another module. The version in those include paths
// must equal the one in go.mod (a test checks it).
//
// Package binding needs cgo: a build with CGO_ENABLED=0 stops with one
// message saying so.
package binding

/*
#cgo CPPFLAGS: -I${SRCDIR}/../third_party/ollama/ml/backend/ggml/ggml/include
#cgo CPPFLAGS: -I${SRCDIR}/../third_party/ollama/llama/llama.cpp/include
#cgo CPPFLAGS: -I${SRCDIR}/../../../ollama/ollama@v0.17.4/ml/backend/ggml/ggml/include
#cgo CPPFLAGS: -I${SRCDIR}/../../../ollama/ollama@v0.17.4/llama/llama.cpp/include
#cgo CPPFLAGS: -I${SRCDIR}/../csrc
#cgo CXXFLAGS: -std=c++17
#include "ggml.h"
#include "llama.h"
*/
import "C"

import (
	_ "github.com/ggtune/ggtune/csrc" // our own C helpers
	_ "github.com/ollama/ollama/llama/llama.cpp/src"
	_ "github.com/ollama/ollama/ml/backend/ggml/ggml/src"
)
