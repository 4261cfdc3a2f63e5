package gateway

import (
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sitebridge/sitebridge/config"
)

// clustered adds cluster settings (loopback, fresh ports) to a config.
func clustered(name string, join ...string) func(*config.Config) {
	return func(c *config.Config) {
		c.Cluster = config.Cluster{Name: name, Bind: "127.0.0.1:0", Relay: "127.0.0.1:0", Join: join, GossipKey: c.Cluster.GossipKey}
	}
}

func both(fs ...func(*config.Config)) func(*config.Config) {
	return func(c *config.Config) {
		for _, f := range fs {
			f(c)
		}
	}
}

func withGossipKey(yaml string) string {
	return yaml + "cluster: {name: placeholder, gossip-key: gossip.key}\n"
}

func peerNames(r *running) []string {
	var out []string
	for _, t := range r.Status().Tunnels {
		out = append(out, t.Peer)
	}
	slices.Sort(out)
	return out
}

func TestDiscoveryFollowsScaling(t *testing.T) {
	e := newEnv(t, "cloud/cloud1", "cloud/cloud2", "cloud/cloud3", "onprem/onprem1")
	c1 := e.start(withGossipKey(cloudYAML("cloud1", e.echoB)), both(listenOn("127.0.0.1:0", "127.0.0.1:0"), clustered("cloud")))
	c2 := e.start(withGossipKey(cloudYAML("cloud2", e.echoB)), both(listenOn("127.0.0.1:0", "127.0.0.1:0"), clustered("cloud", c1.ClusterAddr())))
	// One bootstrap URL: cloud1's.
	op := e.start(onpremYAML("onprem1", e.echoA, wssURL(c1.TunnelAddr())), listenOn("", "127.0.0.1:0"))
	took := waitFor(t, "tunnels to cloud1 and cloud2", 10*time.Second, func() bool {
		return slices.Equal(peerNames(op), []string{"cloud1", "cloud2"})
	})
	t.Logf("full mesh from one bootstrap URL after %v", took.Round(time.Millisecond))

	c3 := e.start(withGossipKey(cloudYAML("cloud3", e.echoB)), both(listenOn("127.0.0.1:0", "127.0.0.1:0"), clustered("cloud", c1.ClusterAddr())))
	took = waitFor(t, "scale 2 -> 3 followed", 5*time.Second, func() bool {
		return slices.Equal(peerNames(op), []string{"cloud1", "cloud2", "cloud3"})
	})
	t.Logf("scale 2 -> 3 followed after %v", took.Round(time.Millisecond))

	c3.stop()
	took = waitFor(t, "scale 3 -> 2 followed", 5*time.Second, func() bool {
		return slices.Equal(peerNames(op), []string{"cloud1", "cloud2"}) &&
			strings.Contains(op.logs.String(), "no longer announced; stopping its dialer")
	})
	t.Logf("scale 3 -> 2 followed after %v", took.Round(time.Millisecond))

	for _, addr := range []string{c1.AcceptAddr("server-a"), c2.AcceptAddr("server-a"), op.AcceptAddr("server-b")} {
		if err := roundTrip(addr, "meshed\n"); err != nil {
			t.Fatalf("via %s: %v", addr, err)
		}
	}
}

func TestDuplicateTunnelThroughSecondURLClosed(t *testing.T) {
	e := newEnv(t, "cloud/cloud1", "onprem/onprem1")
	c1 := e.start(cloudYAML("cloud1", e.echoB), listenOn("127.0.0.1:0", "127.0.0.1:0"))
	// The same instance reached by IP and by a TCP proxy (a load balancer).
	lb := startProxy(t, c1.TunnelAddr())
	op := e.start(onpremYAML("onprem1", e.echoA, wssURL(c1.TunnelAddr()), wssURL(lb.addr)), listenOn("", "127.0.0.1:0"))
	waitFor(t, "one tunnel", 5*time.Second, func() bool { return tunnels(op) == 1 })
	waitFor(t, "duplicate detected", 5*time.Second, func() bool {
		return strings.Contains(op.logs.String(), "duplicate tunnel")
	})
	waitFor(t, "cloud1 holds one tunnel from onprem1", 5*time.Second, func() bool { return tunnels(c1) == 1 })
}

func TestRelayWhenInstanceHasNoTunnel(t *testing.T) {
	e := newEnv(t, "cloud/cloud1", "cloud/cloud2", "onprem/onprem1")
	// onprem1 reaches cloud1 only through a link we can cut: cloud1
	// advertises the link's address.
	link := startProxy(t, "")
	c1 := e.start(withGossipKey(cloudYAML("cloud1", e.echoB)), both(listenOn("127.0.0.1:0", "127.0.0.1:0"), clustered("cloud"),
		func(c *config.Config) { c.Tunnel.Advertise = wssURL(link.addr) }))
	link.target.Store(c1.TunnelAddr())
	c2 := e.start(withGossipKey(cloudYAML("cloud2", e.echoB)), both(listenOn("127.0.0.1:0", "127.0.0.1:0"), clustered("cloud", c1.ClusterAddr())))
	op := e.start(onpremYAML("onprem1", e.echoA, wssURL(link.addr), wssURL(c2.TunnelAddr())), listenOn("", "127.0.0.1:0"))
	waitFor(t, "both tunnels", 10*time.Second, func() bool { return tunnels(op) >= 2 && tunnels(c1) == 1 })

	link.cut()
	waitFor(t, "cloud1 has no tunnel", 5*time.Second, func() bool { return tunnels(c1) == 0 })
	waitFor(t, "cloud2 advertises what it reaches", 5*time.Second, func() bool {
		for _, m := range c1.cluster.Members() {
			if m.Name == "cloud2" && slices.Contains(m.Meta.Reach, "server-a") {
				return true
			}
		}
		return false
	})
	for i := range 10 {
		if err := roundTrip(c1.AcceptAddr("server-a"), fmt.Sprintf("relayed %d\n", i)); err != nil {
			t.Fatalf("client %d of cloud1 with no tunnel: %v", i, err)
		}
	}
	if !strings.Contains(c2.logs.String(), `msg=relaying`) {
		t.Fatal("cloud2 did not log relaying")
	}
}

// proxy is a TCP forwarder that can be cut: its listener and every
// connection through it are closed.
type proxy struct {
	addr   string
	target atomic.Value // string: where to forward
	ln     net.Listener
	mu     sync.Mutex
	cs     []net.Conn
	wg     sync.WaitGroup
}

func startProxy(t *testing.T, target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{addr: ln.Addr().String(), ln: ln}
	p.target.Store(target)
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", p.target.Load().(string))
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.cs = append(p.cs, c, u)
			p.mu.Unlock()
			p.wg.Go(func() { io.Copy(u, c); u.Close() })
			p.wg.Go(func() { io.Copy(c, u); c.Close() })
		}
	})
	t.Cleanup(p.cut)
	return p
}

func (p *proxy) cut() {
	p.ln.Close()
	p.mu.Lock()
	for _, c := range p.cs {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}
