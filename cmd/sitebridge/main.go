// Command sitebridge is the sitebridge gateway: reverse TLS WebSocket
// tunnels between a cloud site and an on-prem site.
//
//	sitebridge demo                     run the 2+2 demo on 127.0.0.1
//	sitebridge demo stop cloud1         stop one demo instance (start brings it back)
//	sitebridge drill                    the failover drill against the demo (or --target ...)
//	sitebridge run --config FILE        run one instance
//	sitebridge run --config FILE --check   validate a config and exit
//	sitebridge run --config FILE --expand-env   fill ${VAR} in the config from the environment
//	sitebridge tlsgen --out DIR ...     generate a CA, instance certificates and the gossip key
//	sitebridge enroll --ca-url URL ...  get an instance certificate from a smallstep CA with a one-time token
//	sitebridge echo --listen ADDR       a TCP echo server (for demos and tests)
//	sitebridge reload --admin ADDR      read the config file again (as SIGHUP does)
//	sitebridge version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sitebridge/sitebridge/config"
	"github.com/sitebridge/sitebridge/demo"
	"github.com/sitebridge/sitebridge/drill"
	"github.com/sitebridge/sitebridge/gateway"
	"github.com/sitebridge/sitebridge/internal/echo"
	"github.com/sitebridge/sitebridge/tlsgen"
)

const usage = `sitebridge: reverse TLS WebSocket tunnels between sites

Usage:
  sitebridge demo [--host 127.0.0.1] [--port-offset N] [--dir DIR]
  sitebridge demo stop|start INSTANCE [--host 127.0.0.1] [--port-offset N]
  sitebridge drill [--host 127.0.0.1] [--port-offset N] [--target NAME=ADMIN,CLIENT[,WHAT]]... [--token T]
  sitebridge run --config FILE [--expand-env] [--check [-v]]
  sitebridge tlsgen --out DIR [--spec FILE] [--instance [TENANT:]SITE/NAME[=SAN,...]]... [--force]
  sitebridge enroll --ca-url URL --root FILE --token OTT|-|--token-file FILE --out DIR [--name INSTANCE] [--dns NAME]... [--ip ADDR]...
  sitebridge status [--admin HOST:PORT] [--token T] [-o text|json]
  sitebridge reload [--admin HOST:PORT] [--token T]   (or: kill -HUP PID)
  sitebridge cache put|get|del|clear|ls ... [--admin HOST:PORT] [--token T] [--scope S]
  sitebridge fed status|verify|start|stop|pause|resume|replicate-all|start-with-no-backlog ... [--admin HOST:PORT] [--token T]
  sitebridge echo --listen ADDR
  sitebridge version

Run 'sitebridge COMMAND -h' for the flags of a command.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "sitebridge:", err)
		}
		stop()
		os.Exit(exitCode(err))
	}
}

// errUsage marks command-line mistakes (exit status 2).
var errUsage = errors.New("usage")

func exitCode(err error) int {
	if errors.Is(err, errUsage) || errors.Is(err, flag.ErrHelp) {
		return 2
	}
	return 1
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("%w: no command given", errUsage)
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "demo":
		return cmdDemo(ctx, rest, stdout, stderr)
	case "run":
		return cmdRun(ctx, rest, stdout, stderr)
	case "tlsgen":
		return cmdTLSGen(rest, stdout, stderr)
	case "enroll":
		return cmdEnroll(ctx, rest, os.Stdin, stdout, stderr)
	case "echo":
		return cmdEcho(ctx, rest, stderr)
	case "drill":
		return cmdDrill(ctx, rest, stdout, stderr)
	case "status":
		return cmdStatus(ctx, rest, stdout, stderr)
	case "reload":
		return cmdReload(ctx, rest, stdout, stderr)
	case "cache":
		return cmdCache(ctx, rest, os.Stdin, stdout, stderr)
	case "fed":
		return cmdFed(ctx, rest, stdout, stderr)
	case "version", "--version", "-v":
		fmt.Fprintln(stdout, "sitebridge", version())
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("%w: unknown command %q", errUsage, cmd)
}

func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("sitebridge "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	return nil
}

func newLogger(w io.Writer, level, format string) *slog.Logger {
	log, _ := newLevelLogger(w, level, format)
	return log
}

// newLevelLogger is newLogger with its level variable, which a config
// reload sets.
func newLevelLogger(w io.Writer, level, format string) (*slog.Logger, *slog.LevelVar) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		lv = slog.LevelInfo
	}
	v := new(slog.LevelVar)
	v.Set(lv)
	opts := &slog.HandlerOptions{Level: v}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts)), v
	}
	return slog.New(slog.NewTextHandler(w, opts)), v
}

func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("run", stderr)
	file := fs.String("config", "", "instance config `FILE` (YAML)")
	check := fs.Bool("check", false, "validate the config and exit")
	verbose := fs.Bool("v", false, "with --check: print the effective config")
	expandEnv := fs.Bool("expand-env", false, "expand ${VAR} and ${VAR:-default} in the config file from the environment before parsing ($$ is a literal $)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *file == "" {
		return fmt.Errorf("%w: --config is required", errUsage)
	}
	load := config.Load
	if *expandEnv {
		load = func(path string) (*config.Config, error) { return config.LoadWithEnv(path, os.LookupEnv) }
	}
	cfg, err := load(*file)
	if err != nil {
		return err
	}
	if *check {
		// Load the TLS material too: a missing file, a key that does not
		// match, or a certificate for another instance fails the check.
		if _, err := gateway.New(cfg, nil); err != nil {
			return err
		}
		if *verbose {
			out, err := cfg.Marshal()
			if err != nil {
				return err
			}
			stdout.Write(out)
		}
		fmt.Fprintf(stderr, "%s: config is valid\n", *file)
		return nil
	}
	log, level := newLevelLogger(stderr, cfg.Log.Level, cfg.Log.Format)
	sup, err := gateway.NewSupervisor(cfg, log)
	if err != nil {
		return err
	}
	sup.SetReloadSource(func() (*config.Config, error) { return load(*file) }, level)
	// SIGHUP reads the config file again and applies what changed (see
	// gateway.Instance.Reload); a bad file is refused and logged.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	var wg sync.WaitGroup
	defer wg.Wait()
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wg.Go(func() {
		for {
			select {
			case <-rctx.Done():
				return
			case <-hup:
				log.Info("config reload requested (SIGHUP)", "file", *file)
				sup.ReloadFromSource() // logs its outcome
			}
		}
	})
	return sup.Run(ctx, nil)
}

func cmdDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && (args[0] == "stop" || args[0] == "start") {
		return cmdDemoControl(ctx, args[0], args[1:], stdout, stderr)
	}
	fs := newFlags("demo", stderr)
	var o demo.Options
	fs.StringVar(&o.Host, "host", "127.0.0.1", "address every demo port binds to")
	fs.IntVar(&o.PortOffset, "port-offset", 0, "added to every demo port, so two demos can coexist")
	fs.StringVar(&o.Dir, "dir", "", "keep certificates and configs in `DIR` (default: a temporary directory, removed on exit)")
	level := fs.String("log-level", "info", "log level: debug, info, warn, error")
	if err := parse(fs, args); err != nil {
		return err
	}
	o.Log = newLogger(stderr, *level, "text")
	o.Out = stdout
	return demo.Run(ctx, o, nil)
}

// demoTargets describes the demo's instances for the drill.
func demoTargets(o demo.Options) []drill.Target {
	var ts []drill.Target
	for _, in := range o.Instances() {
		ts = append(ts, drill.Target{
			Name:   in.Name,
			Admin:  net.JoinHostPort(o.Host, strconv.Itoa(in.AdminPort)),
			Client: net.JoinHostPort(o.Host, strconv.Itoa(in.ClientPort)),
			Path:   in.Service,
		})
	}
	return ts
}

func cmdDemoControl(ctx context.Context, action string, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("demo "+action, stderr)
	var o demo.Options
	fs.StringVar(&o.Host, "host", "127.0.0.1", "address the demo runs on")
	fs.IntVar(&o.PortOffset, "port-offset", 0, "the demo's port offset")
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return fmt.Errorf("%w: sitebridge demo %s INSTANCE (cloud1, cloud2, onprem1 or onprem2)", errUsage, action)
	}
	name := args[0]
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	for _, t := range demoTargets(o) {
		if t.Name != name {
			continue
		}
		var err error
		if action == "stop" {
			err = drill.Stop(ctx, t, "")
		} else {
			err = drill.Start(ctx, t, "")
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: %s requested\n", name, action)
		return nil
	}
	return fmt.Errorf("%w: no demo instance %q (cloud1, cloud2, onprem1, onprem2)", errUsage, name)
}

// targetFlag collects --target NAME=ADMIN,CLIENT[,WHAT] values.
type targetFlag []drill.Target

func (f *targetFlag) String() string { return fmt.Sprint(len(*f), " targets") }

func (f *targetFlag) Set(v string) error {
	name, rest, ok := strings.Cut(v, "=")
	parts := strings.Split(rest, ",")
	if !ok || name == "" || len(parts) < 2 || len(parts) > 3 {
		return fmt.Errorf("want NAME=ADMIN_HOST:PORT,CLIENT_HOST:PORT[,WHAT], got %q", v)
	}
	t := drill.Target{Name: name, Admin: parts[0], Client: parts[1], Path: "?"}
	if len(parts) == 3 {
		t.Path = parts[2]
	}
	*f = append(*f, t)
	return nil
}

func cmdDrill(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("drill", stderr)
	var o demo.Options
	fs.StringVar(&o.Host, "host", "127.0.0.1", "address of the demo to drill")
	fs.IntVar(&o.PortOffset, "port-offset", 0, "port offset of the demo to drill")
	var targets targetFlag
	fs.Var(&targets, "target", "an instance as `NAME=ADMIN,CLIENT[,WHAT]` (host:port of its admin endpoint and of its accept port); repeatable; default: the demo's four instances")
	token := fs.String("token", "", "bearer token of the admin endpoints")
	probes := fs.Int("probes", 5, "round trips per port while an instance is down")
	if err := parse(fs, args); err != nil {
		return err
	}
	ts := []drill.Target(targets)
	if len(ts) == 0 {
		ts = demoTargets(o)
	}
	if len(ts) < 2 {
		return fmt.Errorf("%w: a drill needs at least two targets", errUsage)
	}
	rows, err := drill.Run(ctx, drill.Options{Targets: ts, Token: *token, Probes: *probes})
	drill.Print(stdout, rows)
	if err == nil {
		fmt.Fprintln(stdout, "drill passed: every path through surviving instances echoed, every instance carried traffic again")
	}
	return err
}

// instanceFlag collects --instance [TENANT:]SITE/NAME[=SAN,...] values.
type instanceFlag []tlsgen.InstanceSpec

func (f *instanceFlag) String() string { return fmt.Sprint(len(*f), " instances") }

func (f *instanceFlag) Set(v string) error {
	id, sans, _ := strings.Cut(v, "=")
	var in tlsgen.InstanceSpec
	if t, rest, ok := strings.Cut(id, ":"); ok {
		in.Tenant, id = t, rest
	}
	site, name, ok := strings.Cut(id, "/")
	if !ok {
		return fmt.Errorf("want [TENANT:]SITE/NAME[=SAN,...], got %q", v)
	}
	in.Site, in.Name = site, name
	for _, san := range strings.Split(sans, ",") {
		switch {
		case san == "":
		case net.ParseIP(san) != nil:
			in.IPs = append(in.IPs, san)
		default:
			in.DNS = append(in.DNS, san)
		}
	}
	*f = append(*f, in)
	return nil
}

func cmdTLSGen(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("tlsgen", stderr)
	out := fs.String("out", "", "output `DIR` (created if missing)")
	specFile := fs.String("spec", "", "YAML spec `FILE` listing instances (trust-domain, valid-for, instances: [{name, site, tenant, dns, ips}])")
	td := fs.String("trust-domain", "", "trust domain of the identities (default sitebridge.local)")
	validFor := fs.Duration("valid-for", 0, "validity of instance certificates (default 8760h)")
	force := fs.Bool("force", false, "replace an existing CA and gossip key")
	var insts instanceFlag
	fs.Var(&insts, "instance", "an instance as `[TENANT:]SITE/NAME[=SAN,...]`; SANs that parse as IPs become IP SANs (repeatable)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *out == "" {
		return fmt.Errorf("%w: --out is required", errUsage)
	}
	spec := &tlsgen.Spec{}
	if *specFile != "" {
		var err error
		if spec, err = tlsgen.LoadSpec(*specFile); err != nil {
			return err
		}
	}
	if *td != "" {
		spec.TrustDomain = *td
	}
	if *validFor != 0 {
		spec.ValidFor = *validFor
	}
	spec.Instances = append(spec.Instances, insts...)
	if len(spec.Instances) == 0 {
		return fmt.Errorf("%w: name at least one instance with --instance or --spec", errUsage)
	}
	res, err := tlsgen.Generate(*spec, *out, *force)
	if err != nil {
		return err
	}
	caNote := "created"
	if res.CAReused {
		caNote = "kept (use --force to replace)"
	}
	fmt.Fprintf(stdout, "CA          %s  %s\n", res.CAFile, caNote)
	fmt.Fprintf(stdout, "gossip key  %s\n", res.GossipKeyFile)
	for _, c := range res.Certs {
		fmt.Fprintf(stdout, "%-11s %s  %s  %s\n", c.Name, c.CertFile, c.KeyFile, c.Identity)
	}
	return nil
}

func cmdEcho(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlags("echo", stderr)
	addr := fs.String("listen", "127.0.0.1:7771", "`ADDR` to listen on")
	if err := parse(fs, args); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	log := newLogger(stderr, "info", "text")
	log.Info("echo server listening", "addr", ln.Addr().String())
	start := time.Now()
	err = echo.Serve(ctx, ln)
	log.Info("echo server stopped", "uptime", time.Since(start).Round(time.Second).String())
	return err
}
