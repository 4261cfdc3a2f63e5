package charttest

import (
	"os/exec"
	"syscall"
)

// killWithParent makes the kernel SIGKILL the child if the test binary dies
// without running its cleanups (a test timeout panic, say), so that no
// emulated pod outlives the run and holds its addresses. (Copied from the
// main module's tests, which this module cannot import.)
func killWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
