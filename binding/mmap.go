package binding

/*
#include "ggml.h"
#include "ggml-backend.h"
*/
import "C"

import (
	"fmt"
	"os"
	"runtime"
	"unsafe"
)

// HostMapping is a file mapped into memory (copy-on-write, so the file is
// never modified) and wrapped in a CPU backend buffer, so that tensors can
// live in the file's pages without a copy (see [HostMapping.Place]).
type HostMapping struct {
	path string
	data []byte
	buf  C.ggml_backend_buffer_t
}

// MapFile maps the whole file at path. It fails on platforms without mmap;
// callers fall back to reading the file.
func MapFile(path string) (*HostMapping, error) {
	if st, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("map %s: %w", path, err)
	} else if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("map %s: %w", path, ErrNotRegular)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("map %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("map %s: %w", path, err)
	}
	if st.Size() == 0 {
		return nil, fmt.Errorf("map %s: empty file", path)
	}
	data, err := mmapFile(f, st.Size())
	if err != nil {
		return nil, fmt.Errorf("map %s: %w", path, err)
	}
	buf := C.ggml_backend_cpu_buffer_from_ptr(unsafe.Pointer(&data[0]), C.size_t(len(data)))
	if buf == nil {
		_ = munmapFile(data)
		return nil, fmt.Errorf("map %s: could not wrap the mapping in a CPU buffer", path)
	}
	m := &HostMapping{path: path, data: data, buf: buf}
	setLeakFinalizer(m, func(m *HostMapping) { m.Close() })
	return m, nil
}

// Size returns the size of the mapping in bytes.
func (m *HostMapping) Size() int64 { return int64(len(m.data)) }

// Bytes returns the mapped bytes (valid until Close).
func (m *HostMapping) Bytes() []byte { return m.data }

// Place makes the unallocated tensor t (of a no-alloc context) use the
// mapped bytes at offset as its data. The tensor's data must fit in the
// mapping and offset must be aligned to 32 bytes.
func (m *HostMapping) Place(t *Tensor, offset int64) error {
	if m.buf == nil {
		return fmt.Errorf("place tensor in %s: %w", m.path, ErrClosed)
	}
	if t == nil || t.t == nil {
		return fmt.Errorf("place tensor in %s: nil tensor", m.path)
	}
	if t.t.buffer != nil || t.t.data != nil || t.t.view_src != nil {
		return fmt.Errorf("place tensor %s in %s: tensor is already allocated or a view", t, m.path)
	}
	if offset < 0 || offset%32 != 0 || offset+t.Bytes() > int64(len(m.data)) {
		return fmt.Errorf("place tensor %s in %s: %w: %d bytes at offset %d outside the %d-byte mapping or misaligned",
			t, m.path, ErrShape, t.Bytes(), offset, len(m.data))
	}
	if st := C.ggml_backend_tensor_alloc(m.buf, t.t, unsafe.Pointer(&m.data[offset])); st != C.GGML_STATUS_SUCCESS {
		return fmt.Errorf("place tensor %s in %s: ggml status %d", t, m.path, int(st))
	}
	return nil
}

// Close frees the buffer and unmaps the file. Tensors placed in the mapping
// must not be used afterwards. It is idempotent.
func (m *HostMapping) Close() error {
	if m == nil || m.buf == nil {
		return nil
	}
	C.ggml_backend_buffer_free(m.buf)
	m.buf = nil
	err := munmapFile(m.data)
	m.data = nil
	runtime.SetFinalizer(m, nil)
	return err
}
