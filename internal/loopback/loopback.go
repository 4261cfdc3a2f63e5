// Package loopback picks loopback addresses for tests and benchmarks that
// run several instances on fixed ports side by side.
package loopback

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
)

// Pick returns a random 127.X.Y.Z (X, Y in 1..250, Z in 2..250) that this
// host can bind (Linux routes all of 127.0.0.0/8 to lo), so that the fixed
// ports of one run never clash with another run or with a demo on
// 127.0.0.1.
func Pick() (string, error) {
	var errs []error
	for range 5 {
		ip := fmt.Sprintf("127.%d.%d.%d", 1+rand.IntN(250), 1+rand.IntN(250), 2+rand.IntN(249))
		ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		ln.Close()
		return ip, nil
	}
	return "", fmt.Errorf("no random loopback address binds: %w", errors.Join(errs...))
}
