package data

import (
	"errors"
	"fmt"
)

// Sentinel errors callers can branch on with [errors.Is].
var (
	// ErrMalformed marks a record that cannot be used: bad JSON, a missing
	// field, a field of the wrong type, an empty value or an over-long line.
	// It always arrives wrapped in a [*RecordError] naming file and line.
	ErrMalformed = errors.New("malformed record")
	// ErrNoExamples means a data set holds no usable example.
	ErrNoExamples = errors.New("no usable examples")
	// ErrTemplate means the chat template is missing, unsupported, or does
	// not render conversations as prefixes of each other.
	ErrTemplate = errors.New("chat template")
	// ErrFormat means an unknown format name or a record of a kind the
	// operation does not handle.
	ErrFormat = errors.New("unknown data format")
	// ErrPosition means a resume position does not fit the data set.
	ErrPosition = errors.New("invalid data position")
)

// RecordError is an error about one record of a data file. Line is the
// 1-based line where the record starts (1 for a whole plain-text file).
type RecordError struct {
	File string
	Line int
	Err  error
}

// Error formats the error as "file:line: message".
func (e *RecordError) Error() string { return fmt.Sprintf("%s:%d: %v", e.File, e.Line, e.Err) }

// Unwrap returns the underlying error (often wrapping [ErrMalformed]).
func (e *RecordError) Unwrap() error { return e.Err }

// malformed builds a RecordError wrapping ErrMalformed.
func malformed(file string, line int, format string, args ...any) *RecordError {
	return &RecordError{File: file, Line: line, Err: fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))}
}
