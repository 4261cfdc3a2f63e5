package tests

import (
	"fmt"
	"os/exec"
	"strconv"
	"testing"
	"time"
)

// maxReconnect bounds the time from a restarted instance listening again
// to the first client connection forwarded through it.
const maxReconnect = 2 * time.Second

// TestE2E deploys the 2 cloud + 2 on-prem topology as real processes on a
// random loopback address and checks forwarding both ways with nc, large
// byte-identical transfers, and recovery from kill -9 of either side.
func TestE2E(t *testing.T) {
	skipUnlessLinux(t)
	if _, err := exec.LookPath("nc"); err != nil {
		t.Fatal("nc not found: install netcat-openbsd (.ci/run does)")
	}
	bin := sitebridgeBinary(t)
	ip := pickLoopback(t)
	c := startCluster(t, bin, ip)

	t.Run("nc", func(t *testing.T) {
		// cloud1/cloud2 reach server-a on-prem; onprem1/onprem2 reach
		// server-b in the cloud.
		for _, port := range []int{portCloud1Client, portCloud2Client, portOnprem1Client, portOnprem2Client} {
			t.Run(strconv.Itoa(port), func(t *testing.T) {
				line := fmt.Sprintf("hello via %d\n", port)
				got, err := runNC(t, c.addr(port), line)
				if err != nil {
					t.Fatal(err)
				}
				if got != line {
					t.Fatalf("nc through %s: got %q, want %q", c.addr(port), got, line)
				}
			})
		}
	})

	t.Run("large-transfer", func(t *testing.T) {
		n, timeout := int64(1<<30), 120*time.Second
		if testing.Short() {
			n, timeout = 64<<20, 30*time.Second
		}
		// One direction after the other, so each figure is its own.
		checkTransfer(t, "cloud to on-prem (server-a)", c.addr(portCloud1Client), n, timeout)
		checkTransfer(t, "on-prem to cloud (server-b)", c.addr(portOnprem1Client), n, timeout)
	})

	t.Run("kill-cloud1", func(t *testing.T) {
		// While cloud1 is down, on-prem clients get through cloud2.
		testKillRestart(t, c, c.inst("cloud1"), []int{portOnprem1Client, portOnprem2Client}, portCloud1Client)
	})

	t.Run("kill-onprem1", func(t *testing.T) {
		// While onprem1 is down, cloud clients get through onprem2.
		testKillRestart(t, c, c.inst("onprem1"), []int{portCloud1Client, portCloud2Client}, portOnprem1Client)
	})
}

// testKillRestart kills victim with SIGKILL, checks that 10 new connections
// to each of survivorPorts still echo while it is down, restarts it with
// the same config, and measures the time from it listening again until a
// client connection to probePort (its own accept port) echoes. A cloud
// instance counts as listening when its tunnel port accepts TCP; an on-prem
// instance when probePort does.
func testKillRestart(t *testing.T, c *cluster, victim *instance, survivorPorts []int, probePort int) {
	c.waitReady(t)
	killed := time.Now()
	victim.proc.kill(t)
	for _, port := range survivorPorts {
		checkRoundTrips(t, c.addr(port), victim.name+" down", 10)
	}

	restarted := time.Now()
	victim.proc.start(t)
	var listening time.Time
	if victim.tunnelPort != 0 {
		listening = waitListening(t, c.addr(victim.tunnelPort), 10*time.Second)
	}
	res := pollRoundTrip(t, c.addr(probePort), 10*time.Second, time.Second)
	if listening.IsZero() {
		listening = res.firstConnect
	}
	took := res.ok.Sub(listening)
	t.Logf("%s: down for %v, listening %v after restart, first echo through %s %v after listening (attempts: %d)",
		victim.name, restarted.Sub(killed).Round(time.Millisecond), listening.Sub(restarted).Round(time.Millisecond),
		c.addr(probePort), took.Round(time.Millisecond), res.attempts)
	if took > maxReconnect {
		t.Errorf("%s: first echo through %s came %v after it listened again, want at most %v",
			victim.name, c.addr(probePort), took.Round(time.Millisecond), maxReconnect)
	}
	c.waitReady(t)
	t.Logf("%s: full mesh (2 tunnels per instance, current epochs) back %v after restart",
		victim.name, time.Since(restarted).Round(time.Millisecond))
}
