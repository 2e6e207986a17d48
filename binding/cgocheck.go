package binding

// Imported by a file without cgo, so that a CGO_ENABLED=0 build reports the
// one message of package cgocheck instead of a wall of undefined names.
import _ "github.com/ggtune/ggtune/internal/cgocheck"
