package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/sitebridge/sitebridge/tunnel"
)

// The two namespaces of the WAN profile: A is the cloud side (client and
// cloud1), B the on-prem side (servers and onprem1). Their addresses exist
// only inside these namespaces.
const (
	wanIPA    = "10.231.0.1"
	wanIPB    = "10.231.0.2"
	nsPrefix  = "sbbench-"
	tunMTU    = 65000
	wanTunnel = 8443
)

// killWithParent makes the kernel SIGKILL the child when the thread that
// forked it ends (see spawner).
func killWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// wanPrereqs reports what is missing to build the WAN profile, or "".
func wanPrereqs() string {
	var miss []string
	if os.Geteuid() != 0 {
		miss = append(miss, "root (network namespaces need CAP_NET_ADMIN)")
	}
	for _, tool := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			miss = append(miss, fmt.Sprintf("%q (iproute2: apt-get install iproute2)", tool))
		}
	}
	if len(miss) == 0 {
		return ""
	}
	return "missing " + strings.Join(miss, ", ")
}

// wanEnv is a pair of namespaces joined by a delayed link.
type wanEnv struct {
	nsA, nsB string
	kind     string     // how the delay is made
	line     *delayLine // nil with netem
	prog     io.Writer
}

func ipCmd(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// removeStaleNamespaces deletes namespaces left by earlier runs that were
// killed before they could clean up (their process is gone).
func removeStaleNamespaces() {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		rest, ok := strings.CutPrefix(name, nsPrefix)
		if !ok {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if syscall.Kill(pid, 0) == syscall.ESRCH {
			ipCmd("ip", "netns", "del", name)
		}
	}
}

// setupWAN creates the namespaces and the delayed link: a veth pair with
// netem on both ends, or, when the kernel has no netem, two TUN devices and
// a delay line in this process.
func setupWAN(delay time.Duration, prog io.Writer) (w *wanEnv, err error) {
	removeStaleNamespaces()
	pid := os.Getpid()
	w = &wanEnv{nsA: fmt.Sprintf("%s%d-a", nsPrefix, pid), nsB: fmt.Sprintf("%s%d-b", nsPrefix, pid), prog: prog}
	defer func() {
		if err != nil {
			w.close()
			w = nil
		}
	}()
	for _, ns := range []string{w.nsA, w.nsB} {
		if err := ipCmd("ip", "netns", "add", ns); err != nil {
			return nil, err
		}
		if err := ipCmd("ip", "-n", ns, "link", "set", "lo", "up"); err != nil {
			return nil, err
		}
	}
	devA, devB := fmt.Sprintf("sbv%da", pid), fmt.Sprintf("sbv%db", pid)
	d := fmt.Sprintf("%dus", delay.Microseconds())
	netemErr := func() error {
		if err := ipCmd("ip", "link", "add", devA, "netns", w.nsA, "type", "veth", "peer", "name", devB, "netns", w.nsB); err != nil {
			return err
		}
		for _, x := range []struct{ ns, dev, ip string }{{w.nsA, devA, wanIPA}, {w.nsB, devB, wanIPB}} {
			if err := ipCmd("ip", "-n", x.ns, "addr", "add", x.ip+"/30", "dev", x.dev); err != nil {
				return err
			}
			if err := ipCmd("ip", "-n", x.ns, "link", "set", x.dev, "up"); err != nil {
				return err
			}
			// limit: netem's default queue of 1000 packets would drop
			// below the bandwidth-delay product of a fast link.
			if err := ipCmd("tc", "-n", x.ns, "qdisc", "add", "dev", x.dev, "root", "netem", "delay", d, "limit", "100000"); err != nil {
				return err
			}
		}
		return nil
	}()
	if netemErr == nil {
		w.kind = "tc netem on a veth pair"
		return w, nil
	}
	ipCmd("ip", "-n", w.nsA, "link", "del", devA) // also removes the peer
	fmt.Fprintf(prog, "WAN: tc netem is not usable (%v); using a delay line over TUN devices instead\n", netemErr)

	tunA, tunB := fmt.Sprintf("sbt%da", pid), fmt.Sprintf("sbt%db", pid)
	fa, err := openTunIn(w.nsA, tunA)
	if err != nil {
		return nil, err
	}
	fb, err := openTunIn(w.nsB, tunB)
	if err != nil {
		fa.Close()
		return nil, err
	}
	w.line = startDelayLine(fa, fb, delay)
	for _, x := range []struct{ ns, dev, ip, peer string }{{w.nsA, tunA, wanIPA, wanIPB}, {w.nsB, tunB, wanIPB, wanIPA}} {
		if err := ipCmd("ip", "-n", x.ns, "addr", "add", x.ip, "peer", x.peer, "dev", x.dev); err != nil {
			return nil, err
		}
		if err := ipCmd("ip", "-n", x.ns, "link", "set", x.dev, "mtu", strconv.Itoa(tunMTU), "up"); err != nil {
			return nil, err
		}
	}
	w.kind = fmt.Sprintf("delay line over TUN devices, MTU %d (no netem: %v)", tunMTU, shortErr(netemErr))
	return w, nil
}

func shortErr(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		s = s[i+2:]
	}
	return s
}

// close removes everything setupWAN made. It is safe on a partial setup.
func (w *wanEnv) close() {
	if w.line != nil {
		w.line.close()
	}
	for _, ns := range []string{w.nsA, w.nsB} {
		if _, err := os.Stat("/run/netns/" + ns); err == nil {
			if err := ipCmd("ip", "netns", "del", ns); err != nil {
				fmt.Fprintf(w.prog, "WAN cleanup: %v\n", err)
			}
		}
	}
}

// inNS runs f on an OS thread switched into network namespace ns. Sockets
// f creates belong to ns for their whole life. The thread is discarded
// afterwards (the goroutine ends locked), so no other goroutine ever runs
// in ns.
func inNS(ns string, f func() error) error {
	h, err := os.Open("/run/netns/" + ns)
	if err != nil {
		return err
	}
	defer h.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Setns(int(h.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

func nsDialer(ns string) func(addr string, local net.Addr) dialFunc {
	return func(addr string, local net.Addr) dialFunc {
		d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: local}
		return func(ctx context.Context) (c net.Conn, err error) {
			err = inNS(ns, func() error {
				c, err = d.DialContext(ctx, "tcp", addr)
				return err
			})
			return c, err
		}
	}
}

func listenIn(ns, addr string) (ln net.Listener, err error) {
	err = inNS(ns, func() error {
		ln, err = net.Listen("tcp", addr)
		return err
	})
	return ln, err
}

// openTunIn creates TUN device name in namespace ns and returns its
// (non-blocking, poller-driven) file. The device goes away with the file.
func openTunIn(ns, name string) (f *os.File, err error) {
	err = inNS(ns, func() error {
		fd, err := syscall.Open("/dev/net/tun", syscall.O_RDWR|syscall.O_CLOEXEC|syscall.O_NONBLOCK, 0)
		if err != nil {
			return fmt.Errorf("open /dev/net/tun: %w", err)
		}
		var req struct {
			name  [16]byte
			flags uint16
			_     [22]byte
		}
		copy(req.name[:15], name)
		const iffTun, iffNoPI, tunSetIff = 0x0001, 0x1000, 0x400454ca
		req.flags = iffTun | iffNoPI
		if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), tunSetIff, uintptr(unsafe.Pointer(&req))); e != 0 {
			syscall.Close(fd)
			return fmt.Errorf("TUNSETIFF %s: %w", name, e)
		}
		f = os.NewFile(uintptr(fd), "tun:"+name)
		return nil
	})
	return f, err
}

// delayLine forwards packets between two TUN devices, each one delay after
// it was read, like netem's delay: FIFO, a bounded queue, drops beyond it.
type delayLine struct {
	a, b    *os.File
	wg      sync.WaitGroup
	dropped atomic.Int64
}

type packet struct {
	buf *[]byte
	n   int
	due time.Time
}

var packetBufs = sync.Pool{New: func() any { b := make([]byte, tunMTU+256); return &b }}

func startDelayLine(a, b *os.File, delay time.Duration) *delayLine {
	d := &delayLine{a: a, b: b}
	d.pipe(a, b, delay)
	d.pipe(b, a, delay)
	return d
}

func (d *delayLine) pipe(src, dst *os.File, delay time.Duration) {
	q := make(chan packet, 16384)
	d.wg.Go(func() {
		defer close(q)
		for {
			buf := packetBufs.Get().(*[]byte)
			n, err := src.Read(*buf)
			if err != nil {
				packetBufs.Put(buf)
				return
			}
			select {
			case q <- packet{buf: buf, n: n, due: time.Now().Add(delay)}:
			default:
				d.dropped.Add(1)
				packetBufs.Put(buf)
			}
		}
	})
	d.wg.Go(func() {
		for p := range q {
			// Timers are about 1 ms coarse when the process idles; a
			// packet due within 200 µs leaves now rather than late.
			if w := time.Until(p.due); w > 200*time.Microsecond {
				time.Sleep(w)
			}
			dst.Write((*p.buf)[:p.n])
			packetBufs.Put(p.buf)
		}
	})
}

func (d *delayLine) close() {
	d.a.Close()
	d.b.Close()
	d.wg.Wait()
}

// wanProfile measures the throughput figures across the delayed link.
func wanProfile(ctx context.Context, o Options, p params, sp *spawner, prog io.Writer) (*WANResults, error) {
	res := &WANResults{Delay: o.WANDelay.String(), WindowSize: tunnel.DefaultWindowSize}
	if miss := wanPrereqs(); miss != "" {
		res.Status = miss
		return res, nil
	}
	w, err := setupWAN(o.WANDelay, prog)
	if err != nil {
		res.Status = "setup failed: " + err.Error()
		return res, err
	}
	defer w.close()
	res.DelayKind = w.kind
	fmt.Fprintf(prog, "WAN: namespaces %s (%s, client, cloud1) and %s (%s, servers, onprem1), %s each way: %s\n",
		w.nsA, wanIPA, w.nsB, wanIPB, o.WANDelay, w.kind)

	sinkLn, err := listenIn(w.nsB, wanIPB+":7771")
	if err != nil {
		res.Status = err.Error()
		return res, err
	}
	echoLn, err := listenIn(w.nsB, wanIPB+":7772")
	if err != nil {
		sinkLn.Close()
		res.Status = err.Error()
		return res, err
	}
	sourceLn, err := listenIn(w.nsB, wanIPB+":7773")
	if err != nil {
		sinkLn.Close()
		echoLn.Close()
		res.Status = err.Error()
		return res, err
	}
	srv := startServers(sinkLn, echoLn, sourceLn)
	defer srv.close()

	dir, err := os.MkdirTemp("", "sitebridge-bench-wan-")
	if err != nil {
		res.Status = err.Error()
		return res, err
	}
	defer os.RemoveAll(dir)
	l := layout{
		cloudHost: wanIPA, tunnelPort: wanTunnel,
		sinkAccept: "127.0.0.1:5551", echoAccept: "127.0.0.1:5552", sourceAccept: "127.0.0.1:5553",
		sinkTarget: sinkLn.Addr().String(), echoTarget: echoLn.Addr().String(), sourceTarget: sourceLn.Addr().String(),
		cloudAdmin: "127.0.0.1:9101", onpremAdmin: "127.0.0.1:9201",
		cloudPrefix: []string{"ip", "netns", "exec", w.nsA}, onpremPrefix: []string{"ip", "netns", "exec", w.nsB},
	}
	dep, err := deploy(sp, o.Bin, dir, l)
	if err != nil {
		res.Status = err.Error()
		return res, err
	}
	defer dep.stop()
	dialA := nsDialer(w.nsA)
	direct := targets{sinkAddr: l.sinkTarget, echoAddr: l.echoTarget, sourceAddr: l.sourceTarget, dial: dialA}
	tun := targets{sinkAddr: l.sinkAccept, echoAddr: l.echoAccept, sourceAddr: l.sourceAccept, dial: dialA}
	if err := dep.waitReady(ctx, tun.echo(), 20*time.Second); err != nil {
		res.Status = err.Error()
		return res, err
	}
	rtt, err := echoRTT(ctx, direct.echo(), 3, 20, 10*time.Second)
	if err != nil {
		res.Status = "direct echo: " + err.Error()
		return res, err
	}
	res.RTTMillis = float64(percentile(rtt, 50)) / float64(time.Millisecond)
	fmt.Fprintf(prog, "WAN: direct round trip %.1f ms\n", res.RTTMillis)
	res.Figures = loadFigures(ctx, o, direct, tun, nil, p, p.wanTPDur, false, prog)
	for i := range res.Figures { // no targets across a WAN: the ratios show the cost
		res.Figures[i].Target, res.Figures[i].Pass = "", nil
	}
	if err := dep.exited(); err != nil {
		res.Status = err.Error()
		return res, err
	}
	if n := o.WANConnections; n > 1 && ctx.Err() == nil {
		// The same aggregate through n tunnels between the pair: one
		// TCP connection carries at most its send buffer per round trip.
		dep.stop()
		ln := l
		ln.connections = n
		dirN := filepath.Join(dir, fmt.Sprintf("connections-%d", n))
		if err := os.MkdirAll(dirN, 0o700); err != nil {
			res.Status = err.Error()
			return res, err
		}
		depN, err := deploy(sp, o.Bin, dirN, ln)
		if err != nil {
			res.Status = err.Error()
			return res, err
		}
		defer depN.stop()
		if err := depN.waitReady(ctx, tun.echo(), 20*time.Second); err != nil {
			res.Status = err.Error()
			return res, err
		}
		if err := depN.waitTunnels(ctx, nsDialer(w.nsB)(l.onpremAdmin, nil), n, 20*time.Second); err != nil {
			res.Status = err.Error()
			return res, err
		}
		on := o
		on.Only = []string{"throughput_8"}
		for _, f := range loadFigures(ctx, on, direct, tun, nil, p, p.wanTPDur, false, prog) {
			if f.Key != "throughput_8" {
				continue // its CPU figure: the delay line's CPU dominates
			}
			f.Key = fmt.Sprintf("throughput_8_connections_%d", n)
			f.Name = fmt.Sprintf("8-stream throughput, %d tunnels", n)
			f.Target, f.Pass = "", nil
			res.Figures = append(res.Figures, f)
		}
		if err := depN.exited(); err != nil {
			res.Status = err.Error()
			return res, err
		}
	}
	if w.line != nil {
		if n := w.line.dropped.Load(); n > 0 {
			fmt.Fprintf(prog, "WAN: the delay line dropped %d packets (queue full)\n", n)
		}
	}
	res.Status = "ok"
	return res, ctx.Err()
}
