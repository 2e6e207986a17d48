package binding

// #include <stdlib.h>
import "C"

import "unsafe"

func freeCString(s *C.char) { C.free(unsafe.Pointer(s)) }
