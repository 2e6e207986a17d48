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
	// ErrNotRegular reports a model or adapter path that is not a regular
	// file (a FIFO, device or directory), which is refused before it is
	// opened so that reading cannot block.
	ErrNotRegular = errors.New("not a regular file")
	// ErrVocabMismatch reports a token list whose length differs from the
	// number of rows of the embedding or output matrix.
	ErrVocabMismatch = errors.New("vocabulary does not match the tensors")
	// ErrThreads reports a thread count outside 1..[MaxThreads].
	ErrThreads = errors.New("invalid thread count")
	// ErrLlama reports a failure inside libllama.
	ErrLlama = errors.New("libllama failed")
)
