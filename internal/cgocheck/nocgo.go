//go:build !cgo

package cgocheck

// The assignment below fails to compile on purpose: its error message is
// the explanation a user sees when building ggtune without cgo.
var _ int = "ggtune needs cgo: build with CGO_ENABLED=1 and a C compiler (gcc or clang) on PATH"
