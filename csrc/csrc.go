// Package csrc holds ggtune's own small C helpers, compiled into every
// binary that imports package binding. It exports no Go API: binding calls
// the functions declared in ggtune.h and attention.h.
package csrc

// #cgo CFLAGS: -O3
// #cgo CPPFLAGS: -I${SRCDIR}/../third_party/ollama/ml/backend/ggml/ggml/include
// #cgo CPPFLAGS: -I${SRCDIR}/../third_party/ollama/ml/backend/ggml/ggml/src
// #cgo CPPFLAGS: -I${SRCDIR}/../../../ollama/ollama@v0.17.4/ml/backend/ggml/ggml/include
// #cgo CPPFLAGS: -I${SRCDIR}/../../../ollama/ollama@v0.17.4/ml/backend/ggml/ggml/src
import "C"
