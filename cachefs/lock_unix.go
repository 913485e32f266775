//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package cachefs

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// dirLock keeps two Stores (two agents, or an agent and a stray test run)
// off one directory: each would delete the other's temp files on Open.
type dirLock struct{ f *os.File }

func lockDir(path string) (*dirLock, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("cachefs: open lock file %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("cachefs: %s is locked: another process (or Store) is using this cache directory; stop it or choose another directory: %w", path, err)
		}
		return nil, fmt.Errorf("cachefs: lock %s: %w", path, err)
	}
	return &dirLock{f: f}, nil
}

func (l *dirLock) release() error {
	// Closing the descriptor drops the flock.
	if err := l.f.Close(); err != nil {
		return fmt.Errorf("cachefs: release lock %s: %w", l.f.Name(), err)
	}
	return nil
}
