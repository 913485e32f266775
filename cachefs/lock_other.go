//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package cachefs

// dirLock is a no-op where flock is unavailable; hearth agents run on Linux.
type dirLock struct{}

func lockDir(string) (*dirLock, error) { return &dirLock{}, nil }

func (*dirLock) release() error { return nil }
