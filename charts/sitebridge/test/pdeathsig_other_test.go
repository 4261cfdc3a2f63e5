//go:build !linux

package charttest

import "os/exec"

// killWithParent: only Linux has a parent-death signal; the emulation that
// uses it is skipped elsewhere.
func killWithParent(*exec.Cmd) {}
