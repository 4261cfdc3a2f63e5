package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sitebridge/sitebridge/cacheclient"
)

// site is one site of n instances run as real processes, for the store
// tests: each accepts tunnels (nobody dials them) and all join one cluster.
type site struct {
	ip    string
	names []string
	procs []*proc
	admin []string // host:port of each admin endpoint
	http  *http.Client
}

const (
	storeTunnelBase = 8540
	storeGossipBase = 7540
	storeRelayBase  = 7560
	storeAdminBase  = 9540
)

func startSite(t *testing.T, bin string, n int) *site {
	t.Helper()
	s := &site{ip: pickLoopback(t), http: &http.Client{Timeout: 2 * time.Second}}
	dir := t.TempDir()
	args := []string{"tlsgen", "--out", dir}
	var join []string
	for i := range n {
		s.names = append(s.names, fmt.Sprintf("store%d", i+1))
		args = append(args, "--instance", fmt.Sprintf("cloud/%s=localhost,%s", s.names[i], s.ip))
		join = append(join, fmt.Sprintf("%q", fmt.Sprintf("%s:%d", s.ip, storeGossipBase+i)))
	}
	runCLI(t, bin, args...)
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range s.procs {
				p.dumpLog(t)
			}
		}
	})
	t.Cleanup(func() {
		for _, p := range s.procs {
			p.stop(t)
		}
		s.http.CloseIdleConnections()
	})
	for i, name := range s.names {
		cfg := fmt.Sprintf(`instance: %s
site: cloud
mode: dev
tls: {ca: ca.crt, cert: %s.crt, key: %s.key}
tunnel: {listen: "%s:%d"}
peers: [{site: onprem}]
admin: {listen: "%s:%d"}
log: {level: info}
cluster:
  name: store-test
  bind: "%s:%d"
  relay: "%s:%d"
  join: [%s]
  gossip-key: gossip.key
store:
  partitions: 257
  request-timeout: 20s
`, name, name, name, s.ip, storeTunnelBase+i, s.ip, storeAdminBase+i, s.ip, storeGossipBase+i, s.ip, storeRelayBase+i, strings.Join(join, ", "))
		path := filepath.Join(dir, name+".yaml")
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		runCLI(t, bin, "run", "--config", path, "--check")
		p := &proc{name: name, bin: bin, args: []string{"run", "--config", path}, log: filepath.Join(dir, name+".log")}
		s.procs = append(s.procs, p)
		s.admin = append(s.admin, fmt.Sprintf("%s:%d", s.ip, storeAdminBase+i))
		p.start(t)
	}
	s.waitSettled(t, n)
	return s
}

// storeStatus is the part of GET /api/v1/store the tests read.
type storeStatus struct {
	Schemes []struct {
		Settled   bool           `json:"settled"`
		Primaries map[string]int `json:"primaries"`
		Lineage   string         `json:"lineage"`
	} `json:"schemes"`
}

// waitSettled waits until every running instance reports the same settled
// table over all n members.
func (s *site) waitSettled(t *testing.T, n int) time.Duration {
	t.Helper()
	return waitFor(t, "store tables settled", 60*time.Second, 100*time.Millisecond, func() error {
		lineage := ""
		for i, p := range s.procs {
			if err := p.exited(); err != nil {
				t.Fatal(err)
			}
			resp, err := s.http.Get("http://" + s.admin[i] + "/api/v1/store")
			if err != nil {
				return err
			}
			var st storeStatus
			err = json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
			if err != nil {
				return err
			}
			sc := st.Schemes[0]
			if !sc.Settled || len(sc.Primaries) != n {
				return fmt.Errorf("%s: settled %v, primaries %v", s.names[i], sc.Settled, sc.Primaries)
			}
			if lineage != "" && sc.Lineage != lineage {
				return fmt.Errorf("%s: lineage %s, others %s", s.names[i], sc.Lineage, lineage)
			}
			lineage = sc.Lineage
		}
		return nil
	})
}

// storeLoad writes keys through the cache API of every live instance and
// records what was acknowledged.
type storeLoad struct {
	clients []*cacheclient.Client
	down    []atomic.Bool

	mu     sync.Mutex
	acked  map[string]string
	doubt  map[string][]string // failed writes after the last ack: may or may not have taken
	ackedN atomic.Int64
	failed atomic.Int64

	lastAck  atomic.Int64 // unix nanos of the latest ack
	stallMax atomic.Int64 // longest gap between acks, nanos
}

// writer writes until target writes are acknowledged in all (or ctx ends).
func (l *storeLoad) writer(ctx context.Context, w int, target int64, keys int) {
	for i := 0; l.ackedN.Load() < target; i++ {
		if ctx.Err() != nil {
			return
		}
		key := fmt.Sprintf("key-%d", (w*7919+i)%keys)
		val := fmt.Sprintf("w%d-%d", w, i)
		c := (w + i) % len(l.clients)
		for l.down[c].Load() {
			c = (c + 1) % len(l.clients)
		}
		cctx, cancel := context.WithTimeout(ctx, 25*time.Second)
		err := l.clients[c].Put(cctx, "load", key, []byte(val), 0)
		cancel()
		l.mu.Lock()
		if err != nil {
			l.doubt[key] = append(l.doubt[key], val)
			l.failed.Add(1)
		} else {
			l.acked[key] = val
			delete(l.doubt, key)
			l.ackedN.Add(1)
			now := time.Now().UnixNano()
			if prev := l.lastAck.Swap(now); prev != 0 && now-prev > l.stallMax.Load() {
				l.stallMax.Store(now - prev)
			}
		}
		l.mu.Unlock()
	}
}

// TestStoreKillNoAckedWriteLost: sites of 2 and 3 instances take 50,000
// acknowledged writes from 8 clients; one instance is killed with SIGKILL midway
// and restarted. Afterwards every instance reads, for every key, its last
// acknowledged value (or the value of a later write that failed and so is
// in doubt).
func TestStoreKillNoAckedWriteLost(t *testing.T) {
	skipUnlessLinux(t)
	bin := sitebridgeBinary(t)
	for _, tc := range []struct {
		n      int
		victim int
	}{{2, 1}, {3, 0}} {
		t.Run(fmt.Sprintf("site-of-%d", tc.n), func(t *testing.T) {
			s := startSite(t, bin, tc.n)
			const writers, total, keys = 8, 50000, 5000
			l := &storeLoad{acked: map[string]string{}, doubt: map[string][]string{}, down: make([]atomic.Bool, tc.n)}
			for _, a := range s.admin {
				l.clients = append(l.clients, cacheclient.New(a))
			}
			defer func() {
				for _, c := range l.clients {
					c.CloseIdleConnections()
				}
			}()
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
			defer cancel()
			start := time.Now()
			var wg sync.WaitGroup
			for w := range writers {
				wg.Go(func() { l.writer(ctx, w, total, keys) })
			}
			waitFor(t, "40% of the writes acknowledged", 3*time.Minute, 10*time.Millisecond, func() error {
				if n := l.ackedN.Load(); n < total*4/10 {
					return fmt.Errorf("%d acknowledged", n)
				}
				return nil
			})
			victim := s.procs[tc.victim]
			l.down[tc.victim].Store(true)
			victim.kill(t)
			killedAt := l.ackedN.Load()
			t.Logf("killed %s (SIGKILL) after %d acknowledged writes", victim.name, killedAt)
			waitFor(t, "writes to go on without the victim", 3*time.Minute, 10*time.Millisecond, func() error {
				if n := l.ackedN.Load(); n < killedAt+total/10 {
					return fmt.Errorf("%d acknowledged", n)
				}
				return nil
			})
			victim.start(t)
			t.Logf("restarted %s after %d acknowledged writes", victim.name, l.ackedN.Load())
			waitFor(t, victim.name+" admin endpoint up", 30*time.Second, 50*time.Millisecond, func() error {
				resp, err := s.http.Get("http://" + s.admin[tc.victim] + "/healthz")
				if err == nil {
					resp.Body.Close()
				}
				return err
			})
			l.down[tc.victim].Store(false)
			wg.Wait()
			took := time.Since(start)
			settle := s.waitSettled(t, tc.n)

			// Verify through every instance.
			lost, checked := 0, 0
			var lostKeys []string
			for i, c := range l.clients {
				for key, want := range l.acked {
					got, ok, err := c.Get(t.Context(), "load", key)
					if err != nil {
						t.Fatalf("get %s via %s: %v", key, s.names[i], err)
					}
					checked++
					if !ok || (string(got) != want && !slices.Contains(l.doubt[key], string(got))) {
						lost++
						if len(lostKeys) < 5 {
							lostKeys = append(lostKeys, fmt.Sprintf("%s via %s: got %q (present %v), acknowledged %q", key, s.names[i], got, ok, want))
						}
					}
				}
			}
			t.Logf("site of %d: %d writes acknowledged, %d failed (in doubt), %d keys checked on every instance (%d reads), lost %d; longest stall between acknowledgements %v; %0.f writes/s; settled %v after the load",
				tc.n, l.ackedN.Load(), l.failed.Load(), len(l.acked), checked, lost,
				time.Duration(l.stallMax.Load()).Round(time.Millisecond), float64(l.ackedN.Load())/took.Seconds(), settle.Round(time.Millisecond))
			if l.ackedN.Load() < 50000 {
				t.Errorf("only %d writes acknowledged, want at least 50000", l.ackedN.Load())
			}
			if lost > 0 {
				t.Fatalf("%d acknowledged writes lost:\n%s", lost, strings.Join(lostKeys, "\n"))
			}
		})
	}
}
