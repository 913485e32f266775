package miniotest

import (
	"os/exec"
	"syscall"
)

// setProcAttr puts MinIO in its own process group, so killTree reaches
// anything it starts, and has the kernel kill it if the test binary dies
// without running its cleanups (a -timeout panic, a SIGKILL).
func setProcAttr(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

func killTree(cmd *exec.Cmd) {
	if cmd.Process == nil {
		return
	}
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	cmd.Process.Kill()
}
