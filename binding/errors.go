package binding

import "errors"

// Sentinel errors that callers can test with errors.Is.
var (
	// ErrShape reports operands whose shapes an operation cannot accept.
	ErrShape = errors.New("invalid shape")
	// ErrType reports operands whose element types an operation cannot accept.
	ErrType = errors.New("unsupported type")
	// ErrClosed reports use of an object after Close.
	ErrClosed = errors.New("use of closed object")
	// ErrOutOfMemory reports a context or buffer that is too small.
	ErrOutOfMemory = errors.New("out of memory")
	// ErrNotAllocated reports access to the data of a tensor that has no memory.
	ErrNotAllocated = errors.New("tensor has no data")
	// ErrNoBackward reports a graph whose backward pass ggml cannot build.
	ErrNoBackward = errors.New("no backward pass")
	// ErrInvalidGGUF reports a file that is not a valid GGUF file.
	ErrInvalidGGUF = errors.New("invalid GGUF file")
	// ErrLlama reports a failure inside libllama.
	ErrLlama = errors.New("libllama failed")
)
