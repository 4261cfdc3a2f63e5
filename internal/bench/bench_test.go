package bench

import (
	"context"
	"net"
	"strconv"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestPercentileAndMedian(t *testing.T) {
	s := []time.Duration{5, 1, 4, 2, 3, 10, 9, 8, 7, 6}
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{{50, 5}, {99, 10}, {10, 1}, {100, 10}, {0, 1}} {
		if got := percentile(s, c.p); got != c.want {
			t.Errorf("percentile(%v) = %v, want %v", c.p, got, c.want)
		}
	}
	if got := median([]float64{3, 1, 2}); got != 2 {
		t.Errorf("median odd = %v", got)
	}
	if got := median([]float64{4, 1, 2, 3}); got != 2.5 {
		t.Errorf("median even = %v", got)
	}
}

func TestCheck(t *testing.T) {
	for _, c := range []struct {
		target         string
		direct, tunnel float64
		pass           bool
	}{
		{"≥ 0.25", 100, 30, true},
		{"≥ 0.25", 100, 20, false},
		{"≤ 1.8×", 10, 17, true},
		{"≤ 1.8×", 10, 19, false},
	} {
		f := Figure{Target: c.target}
		f.set([]float64{c.direct}, []float64{c.tunnel})
		f.check()
		if f.Pass == nil || *f.Pass != c.pass {
			t.Errorf("%s with ratio %.2f: pass = %v, want %v", c.target, *f.Ratio, f.Pass, c.pass)
		}
	}
}

// TestLoadAgainstServers runs every load generator briefly against the
// servers, directly and through the reference relay, as the bench does.
func TestLoadAgainstServers(t *testing.T) {
	var lns []net.Listener
	for range 3 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
	}
	srv := startServers(lns[0], lns[1], lns[2])
	defer srv.close()
	direct := targets{sinkAddr: lns[0].Addr().String(), echoAddr: lns[1].Addr().String(), sourceAddr: lns[2].Addr().String()}

	ctx, cancel := context.WithCancel(context.Background())
	relayAddrs := make([]string, 3)
	for i := range relayAddrs {
		port, err := freePort("127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		relayAddrs[i] = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	}
	relayDone := make(chan error, 1)
	go func() {
		relayDone <- Relay(ctx, []string{
			relayAddrs[0] + "=" + direct.sinkAddr, relayAddrs[1] + "=" + direct.echoAddr, relayAddrs[2] + "=" + direct.sourceAddr,
		})
	}()
	defer func() {
		cancel()
		if err := <-relayDone; err != nil {
			t.Error(err)
		}
	}()
	relay := targets{sinkAddr: relayAddrs[0], echoAddr: relayAddrs[1], sourceAddr: relayAddrs[2]}
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := relay.echo()(ctx)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}

	for name, tg := range map[string]targets{"direct": direct, "relay": relay} {
		if r, err := throughput(ctx, tg.sink(), 2, 100*time.Millisecond, 1<<30); err != nil || r <= 0 {
			t.Errorf("%s throughput = %v, %v", name, r, err)
		}
		if r, err := throughput(ctx, tg.sink(), 1, time.Hour, 1<<20); err != nil || r <= 0 {
			t.Errorf("%s throughput bounded by bytes = %v, %v", name, r, err)
		}
		if r, err := pull(ctx, tg.source(), 100*time.Millisecond, 1<<30); err != nil || r <= 0 {
			t.Errorf("%s pull = %v, %v", name, r, err)
		}
		if s, err := echoRTT(ctx, tg.echo(), 10, 100, time.Second); err != nil || len(s) != 100 {
			t.Errorf("%s echo: %d samples, %v", name, len(s), err)
		}
		if r, failed, err := connRate(ctx, tg.echo(), 2, 100*time.Millisecond, 50); err != nil || r <= 0 || failed > 0 {
			t.Errorf("%s conn rate = %v (%d failed), %v", name, r, failed, err)
		}
		conns, err := hold(ctx, tg.echo(), 20, 5)
		if err != nil {
			t.Errorf("%s hold: %v", name, err)
		}
		closeAll(conns)
	}
	s, err := echoInterleaved(ctx, []dialFunc{direct.echo(), relay.echo()}, 10, 100, 2*time.Second)
	if err != nil || len(s) != 2 || len(s[0]) != 100 || len(s[1]) != 100 {
		t.Errorf("interleaved echo: %d paths, %v", len(s), err)
	}
}
