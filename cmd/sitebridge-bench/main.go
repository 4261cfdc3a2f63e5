// Command sitebridge-bench measures sitebridge against direct TCP, its
// site store against an in-memory map behind the same cache API, and
// federation between two sites against local writes, on this machine and
// prints one table of figures with their ratios to the baseline; see
// package internal/bench.
//
//	sitebridge-bench                   full mode (make bench), about 4-5 minutes
//	sitebridge-bench -short            short mode (make bench-short), about 30 s
//	sitebridge-bench -bin bin/sitebridge -json out.json -wan off
//	sitebridge-bench -only store       the site store alone
//	sitebridge-bench -only federation  federation alone, about 80 s (short: 6 s)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/sitebridge/sitebridge/internal/bench"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "sitebridge-bench:", err)
		}
		stop()
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	if len(args) > 0 && args[0] == "relay" {
		// A reference relay (a child of a bench run):
		// relay [-tls-cert F -tls-key F -tls-ca F] [tls://]LISTEN=[tls://]TARGET...
		return bench.Relay(ctx, args[1:], os.Stderr)
	}
	if len(args) > 0 && args[0] == "servers" {
		// The servers of a bench run (a child): servers SINK ECHO SOURCE.
		return bench.Servers(ctx, args[1:])
	}
	fs := flag.NewFlagSet("sitebridge-bench", flag.ContinueOnError)
	var o bench.Options
	fs.BoolVar(&o.Short, "short", false, "short mode: one quick run of each figure, no WAN profile (for CI; figures are rough)")
	fs.StringVar(&o.Bin, "bin", "", "sitebridge `binary` to run the instances with (default: build ./cmd/sitebridge into a temporary directory)")
	fs.IntVar(&o.Runs, "runs", 0, "runs per figure (default 3, short mode 1)")
	fs.StringVar(&o.WAN, "wan", "auto", "WAN profile: auto (full mode, when root with iproute2), on (fail if it cannot run), off")
	fs.DurationVar(&o.WANDelay, "wan-delay", 20*time.Millisecond, "one-way delay of the WAN profile")
	fs.IntVar(&o.WANConnections, "wan-connections", 4, "tunnel.connections of an extra WAN run of the 8-stream figure (1: skip it)")
	fs.DurationVar(&o.IdleTimeout, "idle-timeout", 0, "cloud1's limits.idle-timeout in the loopback layout (0: none), to measure what the idle guard costs")
	jsonPath := fs.String("json", "bench-results.json", "write the results as JSON to `FILE` (empty: do not write)")
	quiet := fs.Bool("q", false, "print only the table")
	strict := fs.Bool("strict", false, "exit with status 1 when a target is missed")
	limit := fs.Duration("timeout", 10*time.Minute, "stop the whole run after this long")
	noRelay := fs.Bool("no-relay", false, "skip the reference column (two plain TCP relays in a chain)")
	noTLSRelay := fs.Bool("no-tls-relay", false, "skip the second reference column (two relays in a chain with mutual TLS 1.3 between them)")
	relayCopy := fs.Int("relay-copy", 0, "the reference relays copy every byte through user-space buffers of this many bytes instead of io.Copy (which splices between TCP connections): what forwarding costs when the bytes must reach user space, as they must under TLS")
	inprocServers := fs.Bool("inproc-servers", false, "run the sink, echo and source servers inside the bench process instead of a process of their own")
	fs.BoolVar(&o.NoLoopback, "no-loopback", false, "skip the loopback figures (with -wan on: only the WAN profile)")
	only := fs.String("only", "", "comma-separated groups to run: "+strings.Join(bench.Groups, ", ")+" (default: all)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	switch o.WAN {
	case "auto", "on", "off":
	default:
		return fmt.Errorf("-wan: want auto, on or off, got %q", o.WAN)
	}
	if *only != "" {
		o.Only = strings.Split(*only, ",")
		for _, g := range o.Only {
			if !slices.Contains(bench.Groups, g) {
				return fmt.Errorf("-only: unknown group %q (want %s)", g, strings.Join(bench.Groups, ", "))
			}
		}
	}
	ctx, cancel := context.WithTimeout(ctx, *limit)
	defer cancel()
	o.Progress = os.Stderr
	if *quiet {
		o.Progress = io.Discard
	}
	if o.Bin == "" {
		dir, err := os.MkdirTemp("", "sitebridge-bench-bin-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		o.Bin = filepath.Join(dir, "sitebridge")
		fmt.Fprintf(o.Progress, "building %s\n", o.Bin)
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", o.Bin, "github.com/sitebridge/sitebridge/cmd/sitebridge")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build: %v\n%s", err, out)
		}
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	if !*noRelay {
		o.RelayArgv = []string{exe, "relay"}
	}
	if !*noTLSRelay {
		o.TLSRelayArgv = []string{exe, "relay"}
	}
	o.RelayCopy = *relayCopy
	if !*inprocServers {
		o.ServersArgv = []string{exe, "servers"}
	}
	res, err := bench.Run(ctx, o)
	if err != nil {
		if res == nil {
			return err
		}
		fmt.Fprintln(os.Stderr, "sitebridge-bench:", err)
	}
	if res == nil {
		return errors.New("no results")
	}
	bench.WriteTable(os.Stdout, res)
	if *jsonPath != "" {
		if err := bench.WriteJSON(*jsonPath, res); err != nil {
			return err
		}
		fmt.Fprintf(o.Progress, "results written to %s\n", *jsonPath)
	}
	for _, p := range res.Problems {
		fmt.Fprintln(os.Stderr, "problem:", p)
	}
	if err != nil {
		return err
	}
	if *strict {
		if missed := bench.Missed(res); len(missed) > 0 {
			return fmt.Errorf("targets missed: %v", missed)
		}
	}
	return nil
}
