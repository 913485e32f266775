//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package cachefs

import (
	"errors"
	"io"
	"os"
)

// Without mmap the tier holds a blob as a heap copy, which the garbage
// collector frees once it is demoted; hearth agents run on Linux.
func mapFile(f *os.File, size int) ([]byte, error) {
	b := make([]byte, size)
	if _, err := io.ReadFull(f, b); err != nil {
		return nil, err
	}
	return b, nil
}

func unmapFile([]byte) error { return nil }

func lockMem([]byte) error   { return errors.ErrUnsupported }
func unlockMem([]byte) error { return nil }

func adviseWillNeed([]byte) {}

func probeLock() error { return errors.ErrUnsupported }

func memlockLimit() string { return "not applicable on this OS" }
