//go:build !linux

package bench

import (
	"context"
	"io"
	"os/exec"

	"github.com/sitebridge/sitebridge/tunnel"
)

// wanProfile needs Linux network namespaces.
func wanProfile(ctx context.Context, o Options, p params, sp *spawner, prog io.Writer) (*WANResults, error) {
	return &WANResults{Status: "needs Linux (network namespaces)", Delay: o.WANDelay.String(), WindowSize: tunnel.DefaultWindowSize}, nil
}

func killWithParent(cmd *exec.Cmd) {}
