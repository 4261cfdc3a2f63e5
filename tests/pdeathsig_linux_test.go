package tests

import (
	"os/exec"
	"syscall"
)

// killWithParent makes the kernel SIGKILL the child if the test binary dies
// without running its cleanups (for example on a test timeout panic), so no
// instance outlives the run and holds its ports.
func killWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
