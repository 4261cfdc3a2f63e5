package tests

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestReload changes the config files of running instances and reloads
// them, one with SIGHUP and one with `sitebridge reload`: a new service is
// forwarded at once, while a connection held open across the reloads and
// every tunnel stay up; a broken or restart-only config is refused with its
// errors and the instance carries on with the old one.
func TestReload(t *testing.T) {
	skipUnlessLinux(t)
	bin := sitebridgeBinary(t)
	ip := pickLoopback(t)
	c := startCluster(t, bin, ip)
	cloud1, onprem1 := c.inst("cloud1"), c.inst("onprem1")

	// A connection held open across every reload below.
	held, err := net.Dial("tcp", c.addr(portCloud1Client))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	r := bufio.NewReader(held)
	echo := func(line string) {
		t.Helper()
		held.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(held, "%s\n", line)
		got, err := r.ReadString('\n')
		if err != nil || got != line+"\n" {
			t.Fatalf("held connection: %q, %v; want %q", got, err, line)
		}
	}
	echo("before")
	tunnelsOf := func(in *instance) []string {
		st, err := c.status(in)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, tu := range st.Tunnels {
			out = append(out, fmt.Sprintf("%s/%d/%s", tu.Peer, tu.Epoch, tu.Addr))
		}
		slices.Sort(out)
		return out
	}
	before := map[string][]string{"cloud1": tunnelsOf(cloud1), "onprem1": tunnelsOf(onprem1)}
	downs := map[string]int{"cloud1": len(grepFile(cloud1.proc.log, "tunnel down")), "onprem1": len(grepFile(onprem1.proc.log, "tunnel down"))}

	// A new service: onprem1 connects it, cloud1 accepts it on a new port.
	ln, err := net.Listen("tcp", c.addr(0))
	if err != nil {
		t.Fatal(err)
	}
	newPort := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	edit := func(in *instance, f func(string) string) string {
		t.Helper()
		b, err := os.ReadFile(in.config)
		if err != nil {
			t.Fatal(err)
		}
		old := string(b)
		if err := os.WriteFile(in.config, []byte(f(old)), 0o600); err != nil {
			t.Fatal(err)
		}
		return old
	}
	addService := func(item string) func(string) string {
		return func(s string) string {
			if !strings.Contains(s, "\nservices:\n") {
				t.Fatal("no services section")
			}
			return strings.Replace(s, "\nservices:\n", "\nservices:\n"+item, 1)
		}
	}
	edit(onprem1, addService(fmt.Sprintf("  - {name: server-x, connect: %q}\n", c.addr(portServerA))))
	edit(cloud1, addService(fmt.Sprintf("  - {name: server-x, accept: %q}\n", c.addr(newPort))))

	mark := time.Now()
	if err := onprem1.proc.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	out := runCLI(t, bin, "reload", "--admin", c.addr(cloud1.adminPort))
	if !strings.Contains(out, "reloaded: services") {
		t.Errorf("sitebridge reload printed %q", out)
	}
	waitFor(t, "server-x forwarded through cloud1", 10*time.Second, 50*time.Millisecond, func() error {
		got, err := runNC(t, c.addr(newPort), "x\n")
		if err == nil && got != "x\n" {
			err = fmt.Errorf("got %q", got)
		}
		return err
	})
	t.Logf("new service forwarded %v after the reloads were asked for", time.Since(mark).Round(time.Millisecond))
	echo("after adding a service")
	// The services API shows it, up, on both sides.
	for _, tc := range []struct {
		in   *instance
		role string
		addr string
	}{{cloud1, "accept", c.addr(newPort)}, {onprem1, "connect", c.addr(portServerA)}} {
		var svcs []svcStatus
		resp, err := c.http.Get("http://" + c.addr(tc.in.adminPort) + "/api/v1/services")
		if err != nil {
			t.Fatal(err)
		}
		err = json.NewDecoder(resp.Body).Decode(&svcs)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(svcs, func(s svcStatus) bool { return s.ID == "server-x" })
		if i < 0 || svcs[i].Role != tc.role || svcs[i].Addr != tc.addr || !svcs[i].Up {
			t.Errorf("%s /api/v1/services: %+v", tc.in.name, svcs)
		}
	}
	for name, in := range map[string]*instance{"cloud1": cloud1, "onprem1": onprem1} {
		if got := tunnelsOf(in); !slices.Equal(got, before[name]) {
			t.Errorf("%s tunnels changed across the reload:\n before %v\n after  %v", name, before[name], got)
		}
		if lines := grepFile(in.proc.log, "tunnel down"); len(lines) != downs[name] {
			t.Errorf("%s: a tunnel went down: %v", name, lines[downs[name]:])
		}
	}
	if lines := grepFile(onprem1.proc.log, "config reload requested (SIGHUP)", `msg="config reloaded" `); len(lines) != 2 {
		t.Errorf("onprem1 did not log the SIGHUP reload: %v", lines)
	}

	// A broken config is refused with file and line; the old one stays.
	good := edit(cloud1, func(s string) string { return s + "tunnle: {listen: x}\n" })
	cmd := exec.Command(bin, "reload", "--admin", c.addr(cloud1.adminPort))
	msg, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(msg), cloud1.config+":") || !strings.Contains(string(msg), `tunnle: unknown key (did you mean "tunnel"?)`) {
		t.Errorf("reload of a broken config: %v\n%s", err, msg)
	}
	edit(cloud1, func(string) string { return good })
	// A change a reload cannot apply (the cluster) is refused too.
	edit(onprem1, func(s string) string { return strings.Replace(s, "\n  name: ", "\n  name: renamed-", 1) })
	if err := onprem1.proc.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "onprem1 refuses the restart-only change", 5*time.Second, 50*time.Millisecond, func() error {
		for _, l := range grepFile(onprem1.proc.log, "config reload refused") {
			if strings.Contains(l, "cluster changed: needs a restart") {
				return nil
			}
		}
		return fmt.Errorf("not logged yet")
	})
	echo("after refused reloads")
	if got, err := runNC(t, c.addr(newPort), "still\n"); err != nil || got != "still\n" {
		t.Errorf("server-x after refused reloads: %q, %v", got, err)
	}
	if err := c.checkReady(); err != nil {
		t.Errorf("mesh after the reloads: %v", err)
	}
}

// svcStatus is an entry of GET /api/v1/services.
type svcStatus struct {
	ID   string `json:"id"`
	Role string `json:"role"`
	Addr string `json:"addr"`
	Up   bool   `json:"up"`
}
