//go:build cgo

// Package cgocheck turns a build without cgo into one clear error: package
// binding imports it, and with CGO_ENABLED=0 its only other file does not
// compile, with a message that says what to do.
package cgocheck
