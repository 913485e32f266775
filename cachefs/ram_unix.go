//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package cachefs

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// mapFile maps size bytes of f read-only. MAP_SHARED maps the page cache's
// own pages, so a blob in RAM costs no second copy of what the kernel caches.
func mapFile(f *os.File, size int) ([]byte, error) {
	return unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ, unix.MAP_SHARED)
}

// unmapFile releases a mapping from mapFile; unmapping also unlocks it.
func unmapFile(b []byte) error { return unix.Munmap(b) }

func lockMem(b []byte) error   { return unix.Mlock(b) }
func unlockMem(b []byte) error { return unix.Munlock(b) }

// adviseWillNeed starts readahead of the whole mapping, so the kernel reads
// ahead of the pages being faulted in one by one.
func adviseWillNeed(b []byte) { _ = unix.Madvise(b, unix.MADV_WILLNEED) }

// probeLock tries mlock on one anonymous page: it fails where the process
// may lock nothing (RLIMIT_MEMLOCK of 0 without CAP_IPC_LOCK).
func probeLock() error {
	b, err := unix.Mmap(-1, 0, os.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return err
	}
	defer unix.Munmap(b)
	return unix.Mlock(b)
}

// memlockLimit describes RLIMIT_MEMLOCK for the warning given when mlock is
// refused.
func memlockLimit() string {
	var r unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &r); err != nil {
		return "unknown"
	}
	if r.Cur == unix.RLIM_INFINITY {
		return "unlimited"
	}
	return fmt.Sprintf("%d bytes", r.Cur)
}
