package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/sitebridge/sitebridge/cacheapi"
	"github.com/sitebridge/sitebridge/cacheclient"
	"github.com/sitebridge/sitebridge/store"
)

const cacheUsage = `Usage:
  sitebridge cache put CACHE KEY VALUE [--ttl 30s]   store VALUE ('-': read it from standard input)
  sitebridge cache get CACHE KEY [-o raw|json]       print the value (exit 1 when absent)
  sitebridge cache del CACHE KEY                     delete a key (exit 1 when absent)
  sitebridge cache clear CACHE                       delete every key of a cache
  sitebridge cache ls [-o text|json]                 list the caches and their sizes
  sitebridge cache ls CACHE [--prefix P] [--limit N] [--cursor C] [--all] [-o text|json]
                                                     list keys, one a line

Every command also takes --admin HOST:PORT or URL (default $SITEBRIDGE_ADMIN,
else 127.0.0.1:9100), --token T (default $SITEBRIDGE_TOKEN), --scope NAME and
--timeout D. Flags may come before or after the arguments; put -- before a
VALUE or KEY that begins with '-'.
`

// adminConn holds the flags of the commands that talk to an admin
// endpoint: --admin (default $SITEBRIDGE_ADMIN, else 127.0.0.1:9100),
// --token (default $SITEBRIDGE_TOKEN) and --timeout.
type adminConn struct {
	admin, token string
	timeout      time.Duration
}

// addAdminFlags binds the flags to ac.
func addAdminFlags(fs *flag.FlagSet, ac *adminConn, adminHelp, timeoutHelp string) {
	fs.StringVar(&ac.admin, "admin", cmp.Or(os.Getenv("SITEBRIDGE_ADMIN"), "127.0.0.1:9100"), adminHelp)
	fs.StringVar(&ac.token, "token", "", "bearer token of the admin endpoint (default $SITEBRIDGE_TOKEN)")
	fs.DurationVar(&ac.timeout, "timeout", 10*time.Second, timeoutHelp)
}

// resolvedToken is --token, else $SITEBRIDGE_TOKEN.
func (ac *adminConn) resolvedToken() string { return cmp.Or(ac.token, os.Getenv("SITEBRIDGE_TOKEN")) }

// cacheConn holds the flags every cache command takes.
type cacheConn struct {
	adminConn
	scope string
}

func addCacheConnFlags(fs *flag.FlagSet) *cacheConn {
	cc := &cacheConn{}
	addAdminFlags(fs, &cc.adminConn, "admin `HOST:PORT` or URL of the instance ($SITEBRIDGE_ADMIN)", "give up after `D`")
	fs.StringVar(&cc.scope, "scope", "", "cache scope `NAME` (default: the instance's default scope)")
	return cc
}

func (cc *cacheConn) client() *cacheclient.Client {
	return cacheclient.New(cc.admin, cacheclient.WithToken(cc.resolvedToken()), cacheclient.WithScope(cc.scope))
}

// parseArgs parses flags that may be mixed with positional arguments
// (flag.Parse stops at the first argument), and checks the number of
// arguments against synopsis.
func parseArgs(fs *flag.FlagSet, args []string, min, max int, synopsis string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, fmt.Errorf("%w: %v", errUsage, err)
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			pos = append(pos, rest...)
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	if len(pos) < min || len(pos) > max {
		return nil, fmt.Errorf("%w: want sitebridge %s %s", errUsage, strings.TrimPrefix(fs.Name(), "sitebridge "), synopsis)
	}
	return pos, nil
}

func cmdCache(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, cacheUsage)
		return fmt.Errorf("%w: sitebridge cache put|get|del|clear|ls", errUsage)
	}
	sub, args := args[0], args[1:]
	fs := newFlags("cache "+sub, stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, cacheUsage, "\nFlags of cache ", sub, ":\n")
		fs.PrintDefaults()
	}
	cc := addCacheConnFlags(fs)
	var err error
	switch sub {
	case "put":
		err = cachePut(ctx, fs, cc, args, stdin)
	case "get":
		err = cacheGet(ctx, fs, cc, args, stdout)
	case "del", "delete", "rm":
		err = cacheDel(ctx, fs, cc, args)
	case "clear":
		err = cacheClear(ctx, fs, cc, args)
	case "ls", "list":
		err = cacheList(ctx, fs, cc, args, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, cacheUsage)
		return nil
	default:
		fmt.Fprint(stderr, cacheUsage)
		return fmt.Errorf("%w: unknown cache command %q", errUsage, sub)
	}
	if err != nil && !errors.Is(err, errUsage) && !errors.Is(err, flag.ErrHelp) {
		err = fmt.Errorf("cache %s: %w", sub, err)
	}
	return err
}

func cachePut(ctx context.Context, fs *flag.FlagSet, cc *cacheConn, args []string, stdin io.Reader) error {
	ttl := fs.Duration("ttl", 0, "expire the value after `D` (0: never)")
	pos, err := parseArgs(fs, args, 3, 3, "CACHE KEY VALUE|- [--ttl D]")
	if err != nil {
		return err
	}
	if *ttl < 0 {
		return fmt.Errorf("%w: --ttl must not be negative", errUsage)
	}
	value := []byte(pos[2])
	if pos[2] == "-" {
		if value, err = io.ReadAll(stdin); err != nil {
			return fmt.Errorf("reading standard input: %w", err)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, cc.timeout)
	defer cancel()
	return cc.client().Put(ctx, pos[0], pos[1], value, *ttl)
}

// entryJSON is what cache get -o json prints.
type entryJSON struct {
	Cache       string        `json:"cache"`
	Key         string        `json:"key"`
	Value       *string       `json:"value,omitempty"`        // when valid UTF-8
	ValueBase64 []byte        `json:"value_base64,omitempty"` // otherwise
	Version     store.Version `json:"version"`
	Expires     *time.Time    `json:"expires,omitempty"`
}

func cacheGet(ctx context.Context, fs *flag.FlagSet, cc *cacheConn, args []string, stdout io.Writer) error {
	output := fs.String("o", "raw", "output: raw (the value's bytes) or json (value, version and expiry)")
	pos, err := parseArgs(fs, args, 2, 2, "CACHE KEY [-o raw|json]")
	if err != nil {
		return err
	}
	if *output != "raw" && *output != "json" {
		return fmt.Errorf("%w: -o must be raw or json", errUsage)
	}
	ctx, cancel := context.WithTimeout(ctx, cc.timeout)
	defer cancel()
	e, ok, err := cc.client().GetEntry(ctx, pos[0], pos[1])
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("key %q not found in cache %q", pos[1], pos[0])
	}
	if *output == "raw" {
		_, err = stdout.Write(e.Value)
		return err
	}
	out := entryJSON{Cache: pos[0], Key: pos[1], Version: e.Version}
	if utf8.Valid(e.Value) {
		s := string(e.Value)
		out.Value = &s
	} else {
		out.ValueBase64 = e.Value
	}
	if !e.Expires.IsZero() {
		out.Expires = &e.Expires
	}
	return printJSON(stdout, out)
}

func cacheDel(ctx context.Context, fs *flag.FlagSet, cc *cacheConn, args []string) error {
	pos, err := parseArgs(fs, args, 2, 2, "CACHE KEY")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, cc.timeout)
	defer cancel()
	existed, err := cc.client().Delete(ctx, pos[0], pos[1])
	if err == nil && !existed {
		err = fmt.Errorf("key %q not found in cache %q", pos[1], pos[0])
	}
	return err
}

func cacheClear(ctx context.Context, fs *flag.FlagSet, cc *cacheConn, args []string) error {
	pos, err := parseArgs(fs, args, 1, 1, "CACHE")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, cc.timeout)
	defer cancel()
	return cc.client().Clear(ctx, pos[0])
}

func cacheList(ctx context.Context, fs *flag.FlagSet, cc *cacheConn, args []string, stdout, stderr io.Writer) error {
	output := fs.String("o", "text", "output: text or json")
	prefix := fs.String("prefix", "", "with CACHE: only keys that begin with `P`")
	limit := fs.Int("limit", 0, "with CACHE: keys per request, 1-10000 (default 100)")
	cursor := fs.String("cursor", "", "with CACHE: start after this cursor (the next of an earlier listing)")
	all := fs.Bool("all", false, "with CACHE: follow cursors to the last key")
	pos, err := parseArgs(fs, args, 0, 1, "[CACHE [--prefix P] [--limit N] [--cursor C] [--all]] [-o text|json]")
	if err != nil {
		return err
	}
	if *output != "text" && *output != "json" {
		return fmt.Errorf("%w: -o must be text or json", errUsage)
	}
	var keyFlag string // a flag of key listings that was set
	limitSet := false
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "prefix", "limit", "cursor", "all":
			keyFlag = f.Name
		}
		limitSet = limitSet || f.Name == "limit"
	})
	if keyFlag != "" && len(pos) == 0 {
		return fmt.Errorf("%w: --%s lists keys: name the CACHE", errUsage, keyFlag)
	}
	if limitSet && (*limit < 1 || *limit > cacheapi.MaxLimit) {
		return fmt.Errorf("%w: --limit must be from 1 to %d", errUsage, cacheapi.MaxLimit)
	}
	ctx, cancel := context.WithTimeout(ctx, cc.timeout)
	defer cancel()
	c := cc.client()

	if len(pos) == 0 {
		infos, err := c.Caches(ctx)
		if err != nil {
			return err
		}
		if *output == "json" {
			if infos == nil {
				infos = []store.CacheInfo{}
			}
			return printJSON(stdout, cacheapi.CachesResponse{Caches: infos})
		}
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "CACHE\tSIZE\tSCHEME\tBACKUPS\n")
		for _, in := range infos {
			fmt.Fprintf(tw, "%s\t%d\t%s\t%d\n", in.Name, in.Size, in.Scheme, in.Backups)
		}
		return tw.Flush()
	}

	cache := pos[0]
	var keys []string
	next := *cursor
	for {
		p, err := c.Keys(ctx, cache, *prefix, next, *limit)
		if err != nil {
			return err
		}
		if *output == "text" {
			for _, k := range p.Keys {
				fmt.Fprintln(stdout, k)
			}
		} else {
			keys = append(keys, p.Keys...)
		}
		if p.Next != "" && p.Next == next {
			return fmt.Errorf("the server returned cursor %q again", next)
		}
		next = p.Next
		if !*all || next == "" {
			break
		}
	}
	if *output == "json" {
		if keys == nil {
			keys = []string{}
		}
		return printJSON(stdout, cacheapi.KeysResponse{Keys: keys, Next: next})
	}
	if next != "" {
		fmt.Fprintf(stderr, "(more keys: --cursor %q, or --all)\n", next)
	}
	return nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
