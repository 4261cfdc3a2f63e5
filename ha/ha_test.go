package ha

import (
	"context"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// memberlist's Shutdown does not wait for a probe of a dead node in
// flight; it ends by itself at the probe timeout.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/hashicorp/memberlist.(*Memberlist).probeNode"))
}

var key = []byte("0123456789abcdef0123456789abcdef")

// member starts a member on a fresh loopback port, running until the test
// ends or the returned stop is called.
func member(t *testing.T, cluster, node string, key []byte, join ...string) (*Cluster, func()) {
	t.Helper()
	c, err := Start(Config{Name: cluster, Node: node, Bind: "127.0.0.1:0", Join: join, Key: key, Mode: "dev"},
		Meta{Instance: node, Site: "cloud", Epoch: uint64(time.Now().UnixNano())})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { c.Run(ctx) })
	stop := sync.OnceFunc(func() { cancel(); wg.Wait() })
	t.Cleanup(stop)
	return c, stop
}

func names(c *Cluster) []string {
	var out []string
	for _, m := range c.Members() {
		out = append(out, m.Name)
	}
	return out
}

func waitMembers(t *testing.T, c *Cluster, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(c.Members()) != want {
		if time.Now().After(deadline) {
			t.Fatalf("members %v, want %d", names(c), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestJoinMetadataAndLeave(t *testing.T) {
	a, _ := member(t, "site-cloud", "cloud1", key)
	b, stopB := member(t, "site-cloud", "cloud2", key, a.Addr())
	waitMembers(t, a, 2)
	waitMembers(t, b, 2)

	if err := b.UpdateMeta(Meta{Instance: "cloud2", Site: "cloud", Epoch: uint64(time.Now().UnixNano()), TunnelURL: "wss://cloud2:8442/sitebridge", Reach: []string{"server-a"}}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		ms := a.Members()
		if len(ms) == 2 && ms[1].Meta.TunnelURL == "wss://cloud2:8442/sitebridge" && len(ms[1].Meta.Reach) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("metadata not seen: %+v", ms)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if s, _ := a.Senior(); s.Name != "cloud1" {
		t.Fatalf("senior %s, want cloud1 (lowest epoch)", s.Name)
	}

	stopB()
	waitMembers(t, a, 1)
}

func TestOtherClusterNameNeverMerges(t *testing.T) {
	a, _ := member(t, "deployment-a", "a1", key)
	b, _ := member(t, "deployment-b", "b1", key, a.Addr())
	c, _ := member(t, "deployment-a", "a2", []byte("another key, 32 bytes long......"), a.Addr())
	// Give gossip time to (wrongly) merge, polling all along.
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if len(a.Members()) != 1 || len(b.Members()) != 1 || len(c.Members()) != 1 {
			t.Fatalf("clusters merged: a %v, b %v, c %v", names(a), names(b), names(c))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestMetaTooLargeIsTruncated(t *testing.T) {
	a, _ := member(t, "site", "n1", key)
	var reach []string
	for i := range 100 {
		reach = append(reach, "service-with-a-long-name-"+string(rune('a'+i%26)))
	}
	if err := a.UpdateMeta(Meta{Instance: "n1", Site: "cloud", Reach: reach}); err != nil {
		t.Fatal(err)
	}
	m := a.Members()[0].Meta
	if !m.ReachTruncated || len(m.Reach) >= 100 {
		t.Fatalf("reach not truncated: %d entries, truncated %v", len(m.Reach), m.ReachTruncated)
	}
}

// TestCrashedMemberRestartsAtNewAddress: a member that dies without
// leaving and comes back under its name at another address (a pod
// re-created with a new IP) is taken back as soon as it is declared dead,
// not after memberlist forgets the dead node.
func TestCrashedMemberRestartsAtNewAddress(t *testing.T) {
	a, _ := member(t, "site-cloud", "cloud1", key)
	b, _ := member(t, "site-cloud", "cloud2", key, a.Addr())
	waitMembers(t, a, 2)
	old := b.Addr()
	b.crashed.Store(true)
	b.ml.Shutdown() // a crash: no leave message
	start := time.Now()
	b2, _ := member(t, "site-cloud", "cloud2", key, a.Addr())
	if b2.Addr() == old {
		t.Fatal("the new incarnation has the old address")
	}
	deadline := time.Now().Add(40 * time.Second)
	for {
		m, ok := a.Member("cloud2")
		if ok && m.Addr == b2.Addr() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cloud2 at its new address %s not taken back within 40 s (a sees %+v)", b2.Addr(), m)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("taken back at its new address %v after the crash", time.Since(start).Round(time.Millisecond))
}
