package cachefs

import (
	"errors"
	"os"
	"syscall"
	"unsafe"
)

// directAlign is the buffer and offset alignment O_DIRECT needs: the
// logical block size, which is at most a page on the disks hearth uses.
const directAlign = 4096

// openScrub opens p for a scrub, with O_DIRECT if direct and the file
// system supports it (tmpfs, for one, does not).
func openScrub(p string, direct bool) (*os.File, error) {
	if direct {
		f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_DIRECT, 0)
		if !errors.Is(err, syscall.EINVAL) {
			return f, err
		}
	}
	return os.Open(p)
}

// scrubBuf returns an n-byte buffer aligned for O_DIRECT. Go's heap does
// not move objects, so the alignment holds for the buffer's life.
func scrubBuf(n int) []byte {
	b := make([]byte, n+directAlign)
	off := int(uintptr(unsafe.Pointer(&b[0])) & (directAlign - 1))
	if off != 0 {
		off = directAlign - off
	}
	return b[off : off+n : off+n]
}
