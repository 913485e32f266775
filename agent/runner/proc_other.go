//go:build !unix

package runner

import (
	"os"
	"os/exec"
)

// ownGroup is a no-op where process groups do not exist; hearth's hosts are
// Linux, this only keeps the package building elsewhere.
func ownGroup(cmd *exec.Cmd) {}

// killGroup kills p alone.
func killGroup(p *os.Process) error {
	if p == nil {
		return nil
	}
	return p.Kill()
}
