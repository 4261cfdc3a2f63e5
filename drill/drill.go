// Package drill runs the failover drill of the KWIC HA tutorial against a
// running deployment: it stops each instance in turn through its admin
// API, probes every forwarded port of the instances still up, starts the
// stopped instance again and measures how long until its own port carries
// traffic, and reports a table.
package drill

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"
)

// Target is one instance: its admin endpoint and its client (accept) port.
type Target struct {
	Name   string
	Admin  string // host:port of the admin endpoint
	Client string // host:port of the accept port probed
	Path   string // what the client port reaches, for the table (e.g. "server-a")
}

// Options configures a drill.
type Options struct {
	Targets  []Target
	Token    string        // bearer token for the admin API, if the deployment uses one
	Probes   int           // round trips per port per step (default 5)
	Timeout  time.Duration // per probe (default 3s)
	Recovery time.Duration // how long a restarted instance may take to carry traffic (default 15s)
	// Ready: how long a restarted instance may take to report /readyz
	// (its site's cluster joined, its share of the site store copied back,
	// a tunnel to each peer site) before the next one is stopped (default
	// 60s). Stopping the next instance earlier would lose the store
	// partitions whose only copy it holds.
	Ready time.Duration
}

// Row is one line of the drill's table.
type Row struct {
	Stopped  string        // the instance stopped in this step
	Path     string        // the port probed ("cloud2:5552 -> server-a"), or "restart"
	Attempts int           // probes made
	Failures int           // probes that did not echo
	Recovery time.Duration // restart rows: start request until its port echoed
}

// ErrFailures is returned when any probe failed.
var ErrFailures = errors.New("drill: some probes failed")

// ErrNotReady is returned when a restarted instance did not become ready.
var ErrNotReady = errors.New("drill: instance not ready")

// Run drills every target in turn and returns the table. It returns
// ErrFailures (wrapped) if any probe failed, and other errors when the
// admin API cannot be used.
func Run(ctx context.Context, o Options) ([]Row, error) {
	if o.Probes <= 0 {
		o.Probes = 5
	}
	if o.Timeout <= 0 {
		o.Timeout = 3 * time.Second
	}
	if o.Recovery <= 0 {
		o.Recovery = 15 * time.Second
	}
	if o.Ready <= 0 {
		o.Ready = 60 * time.Second
	}
	c := client{token: o.Token}
	var rows []Row
	failed := 0
	for _, x := range o.Targets {
		if err := c.post(ctx, x, "stop"); err != nil {
			return rows, err
		}
		if err := c.waitState(ctx, x, "stopped", o.Recovery); err != nil {
			return rows, err
		}
		for _, y := range o.Targets {
			if y.Name == x.Name {
				continue
			}
			r := Row{Stopped: x.Name, Path: y.Name + " " + y.Client + " -> " + y.Path}
			for i := range o.Probes {
				r.Attempts++
				if err := Probe(ctx, y.Client, fmt.Sprintf("drill %s stopped, probe %d via %s\n", x.Name, i, y.Name), o.Timeout); err != nil {
					r.Failures++
				}
			}
			failed += r.Failures
			rows = append(rows, r)
		}
		start := time.Now()
		if err := c.post(ctx, x, "start"); err != nil {
			return rows, err
		}
		r := Row{Stopped: x.Name, Path: "restart: " + x.Name + " " + x.Client + " -> " + x.Path}
		for {
			r.Attempts++
			err := Probe(ctx, x.Client, "drill restart probe\n", o.Timeout)
			if err == nil {
				r.Recovery = time.Since(start)
				break
			}
			if time.Since(start) > o.Recovery || ctx.Err() != nil {
				r.Failures = 1
				break
			}
			sleep(ctx, 50*time.Millisecond)
		}
		failed += r.Failures
		rows = append(rows, r)
		// Let the site settle before the next instance is stopped: wait
		// until the restarted one is ready (a rolling restart's rule).
		if err := c.waitReady(ctx, x, o.Ready); err != nil {
			return rows, err
		}
	}
	if failed > 0 {
		return rows, fmt.Errorf("%w: %d failed", ErrFailures, failed)
	}
	return rows, nil
}

// Print writes rows as a table.
func Print(w io.Writer, rows []Row) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "STOPPED\tPATH\tATTEMPTS\tFAILURES\tRECOVERY")
	for _, r := range rows {
		rec := "-"
		if r.Recovery > 0 {
			rec = r.Recovery.Round(time.Millisecond).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\n", r.Stopped, r.Path, r.Attempts, r.Failures, rec)
	}
	tw.Flush()
}

// Probe connects to addr, sends line, half-closes, and expects exactly
// line back before the connection ends, all within timeout.
func Probe(ctx context.Context, addr, line string, timeout time.Duration) error {
	d := net.Dialer{Timeout: timeout}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, line); err != nil {
		return err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
	got, err := io.ReadAll(io.LimitReader(c, int64(len(line))+1))
	if err != nil {
		return err
	}
	if string(got) != line {
		return fmt.Errorf("echo %q, want %q", got, line)
	}
	return nil
}

type client struct{ token string }

func (c client) do(ctx context.Context, method string, t Target, path string, out any) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, "http://"+t.Admin+path, nil)
	if err != nil {
		return err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("%s: %w", t.Name, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s: %s %s: %s: %s", t.Name, method, path, resp.Status, strings.TrimSpace(string(body)))
	}
	if out != nil {
		return json.Unmarshal(body, out)
	}
	return nil
}

// post asks the instance to stop or start.
func (c client) post(ctx context.Context, t Target, action string) error {
	return c.do(ctx, http.MethodPost, t, "/api/v1/"+action, nil)
}

// Stop stops one instance through its admin API.
func Stop(ctx context.Context, t Target, token string) error {
	return client{token}.post(ctx, t, "stop")
}

// Start starts a stopped instance through its admin API.
func Start(ctx context.Context, t Target, token string) error {
	return client{token}.post(ctx, t, "start")
}

type status struct {
	State string `json:"state"`
}

func (c client) waitState(ctx context.Context, t Target, want string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		var st status
		err := c.do(ctx, http.MethodGet, t, "/api/v1/status", &st)
		if err == nil && st.State == want {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%s: not %s within %v (last: %q, %v)", t.Name, want, limit, st.State, err)
		}
		sleep(ctx, 50*time.Millisecond)
	}
}

// waitReady polls the instance's /readyz until it answers 200.
func (c client) waitReady(ctx context.Context, t Target, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		err := c.do(ctx, http.MethodGet, t, "/readyz", nil)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%w: %s not ready within %v after its restart: %w", ErrNotReady, t.Name, limit, err)
		}
		sleep(ctx, 100*time.Millisecond)
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
