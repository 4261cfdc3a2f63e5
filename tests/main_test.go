package tests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"go.uber.org/goleak"
)

// buildDir holds the binary built for this test run; TestMain removes it.
var buildDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sitebridge-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "tests:", err)
		os.Exit(1)
	}
	buildDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	if code == 0 {
		// Every child process and every goroutine of the test must be gone.
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

var build struct {
	once sync.Once
	path string
	err  error
}

// sitebridgeBinary builds cmd/sitebridge once per test run (CGO_ENABLED=0,
// without -race, whatever flags the test itself runs with) and returns the
// path of the binary.
func sitebridgeBinary(t *testing.T) string {
	t.Helper()
	build.once.Do(func() {
		gobin, err := exec.LookPath("go") // go test puts GOROOT/bin first in PATH
		if err != nil {
			build.err = fmt.Errorf("go command not found: %w", err)
			return
		}
		out := filepath.Join(buildDir, "sitebridge")
		cmd := exec.Command(gobin, "build", "-o", out, "github.com/sitebridge/sitebridge/cmd/sitebridge")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if msg, err := cmd.CombinedOutput(); err != nil {
			build.err = fmt.Errorf("go build: %w\n%s", err, msg)
			return
		}
		build.path = out
	})
	if build.err != nil {
		t.Fatal(build.err)
	}
	return build.path
}
