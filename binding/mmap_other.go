//go:build !unix

package binding

import (
	"errors"
	"os"
)

func mmapFile(*os.File, int64) ([]byte, error) {
	return nil, errors.New("memory mapping is not supported on this platform")
}

func munmapFile([]byte) error { return nil }
