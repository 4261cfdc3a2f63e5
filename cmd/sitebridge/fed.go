package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sitebridge/sitebridge/store"
)

const fedUsage = `Usage:
  sitebridge fed status [-o text|json]           participants of the site: state, backlog, lag, errors
  sitebridge fed OPERATION PARTICIPANT           start, stop, pause, resume, replicate-all or
                                                 start-with-no-backlog the federation to PARTICIPANT
  sitebridge fed verify --other HOST:PORT [--scheme S] [--other-token T] [--wait D]
                        [--max-keys N] [-o text|json]
                                                 compare the caches of two sites partition by
                                                 partition (exit 1 unless they agree)

Every command also takes --admin HOST:PORT or URL (default $SITEBRIDGE_ADMIN,
else 127.0.0.1:9100), --token T (default $SITEBRIDGE_TOKEN) and --timeout D
(per request). Flags may come before or after the arguments.
`

// fedOps are the operations on a participant.
var fedOps = []string{
	store.FedOpStart, store.FedOpStop, store.FedOpPause, store.FedOpResume,
	store.FedOpReplicateAll, store.FedOpNoBacklog,
}

// fedConn holds the flags every fed command takes.
type fedConn struct{ adminConn }

func addFedConnFlags(fs *flag.FlagSet) *fedConn {
	fc := &fedConn{}
	addAdminFlags(fs, &fc.adminConn, "admin `HOST:PORT` or URL of an instance of the site ($SITEBRIDGE_ADMIN)", "give up on a request after `D`")
	return fc
}

func (fc *fedConn) client() (*fedClient, error) {
	return newFedClient(fc.admin, fc.resolvedToken(), fc.timeout)
}

func cmdFed(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, fedUsage)
		return fmt.Errorf("%w: sitebridge fed status|verify|%s", errUsage, strings.Join(fedOps, "|"))
	}
	sub, args := args[0], args[1:]
	fs := newFlags("fed "+sub, stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, fedUsage, "\nFlags of fed ", sub, ":\n")
		fs.PrintDefaults()
	}
	fc := addFedConnFlags(fs)
	var err error
	switch {
	case sub == "status":
		err = fedStatusCmd(ctx, fs, fc, args, stdout)
	case sub == "verify":
		err = fedVerifyCmd(ctx, fs, fc, args, stdout)
	case slices.Contains(fedOps, sub):
		err = fedControlCmd(ctx, fs, fc, sub, args, stdout)
	case sub == "help" || sub == "-h" || sub == "--help":
		fmt.Fprint(stdout, fedUsage)
		return nil
	default:
		fmt.Fprint(stderr, fedUsage)
		return fmt.Errorf("%w: unknown fed command %q", errUsage, sub)
	}
	if err != nil && !errors.Is(err, errUsage) && !errors.Is(err, flag.ErrHelp) {
		err = fmt.Errorf("fed %s: %w", sub, err)
	}
	return err
}

func fedStatusCmd(ctx context.Context, fs *flag.FlagSet, fc *fedConn, args []string, stdout io.Writer) error {
	output := fs.String("o", "text", "output: text or json (the participants as the API gives them)")
	if _, err := parseArgs(fs, args, 0, 0, "[-o text|json]"); err != nil {
		return err
	}
	if *output != "text" && *output != "json" {
		return fmt.Errorf("%w: -o must be text or json", errUsage)
	}
	c, err := fc.client()
	if err != nil {
		return err
	}
	if *output == "json" {
		var raw struct {
			Participants json.RawMessage `json:"participants"`
		}
		if err := c.get(ctx, "/api/v1/federation", nil, &raw); err != nil {
			return err
		}
		if len(raw.Participants) == 0 || string(raw.Participants) == "null" {
			raw.Participants = json.RawMessage("[]")
		}
		var buf bytes.Buffer
		if err := json.Indent(&buf, raw.Participants, "", "  "); err != nil {
			return err
		}
		buf.WriteByte('\n')
		_, err := buf.WriteTo(stdout)
		return err
	}
	st, err := c.status(ctx)
	if err != nil {
		return err
	}
	printFedStatus(stdout, st, time.Now())
	return nil
}

func printFedStatus(w io.Writer, st fedStatusResponse, now time.Time) {
	fmt.Fprintf(w, "instance %s  site %s\n", st.Instance, st.Site)
	if len(st.Participants) == 0 {
		fmt.Fprintln(w, "no federation participants")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "SCHEME\tPARTICIPANT\tSTATE\tPENDING\tBYTES\tLAG\tSEND/S\tAPPLIED\tDUPS\tLAST-ERROR\n")
	schemes := map[string]bool{}
	for _, p := range st.Participants {
		schemes[p.Scheme] = true
		lastErr := dash(p.LastError)
		if p.LastError != "" && !p.LastErrorAt.IsZero() {
			lastErr += " (" + seconds(now.Sub(p.LastErrorAt).Seconds()) + " ago)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%.1f\t%d\t%d\t%s\n", p.Scheme, p.Participant, p.State,
			p.Pending, bytesize(p.PendingBytes), seconds(p.LagSeconds), p.SendRate, p.Applied, p.Duplicates, lastErr)
	}
	tw.Flush()
	for _, p := range st.Participants {
		name := p.Participant
		if len(schemes) > 1 {
			name += " (scheme " + p.Scheme + ")"
		}
		if r := p.ReplicateAll; r != nil {
			fmt.Fprintf(w, "%s: replicate-all round %d: %.0f%% (%d/%d partitions)", name, r.Gen, r.Percent, r.Done, r.Total)
			if r.ETASeconds > 0 {
				fmt.Fprintf(w, ", ETA %s", seconds(r.ETASeconds))
			}
			fmt.Fprintln(w)
		}
		if p.Reason != "" {
			fmt.Fprintf(w, "%s: reason: %s\n", name, p.Reason)
		}
	}
}

// seconds formats a number of seconds as a duration, rounded for reading.
func seconds(s float64) string {
	d := time.Duration(s * float64(time.Second))
	switch {
	case d <= 0:
		return "0s"
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

// bytesize formats n bytes in binary units.
func bytesize(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + "B"
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTP"[exp])
}

func fedControlCmd(ctx context.Context, fs *flag.FlagSet, fc *fedConn, op string, args []string, stdout io.Writer) error {
	pos, err := parseArgs(fs, args, 1, 1, "PARTICIPANT")
	if err != nil {
		return err
	}
	c, err := fc.client()
	if err != nil {
		return err
	}
	var res struct {
		Participant string `json:"participant"`
		Operation   string `json:"operation"`
		Result      string `json:"result"`
	}
	if err := c.post(ctx, "/api/v1/federation/"+url.PathEscape(pos[0])+"/"+url.PathEscape(op), &res); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: %s %s\n", pos[0], op, cmp.Or(res.Result, "done"))
	return nil
}

func fedVerifyCmd(ctx context.Context, fs *flag.FlagSet, fc *fedConn, args []string, stdout io.Writer) error {
	other := fs.String("other", "", "admin `HOST:PORT` or URL of an instance of the other site (required)")
	otherToken := fs.String("other-token", "", "bearer token of the other site's admin endpoint (default: the --token)")
	var o verifyOptions
	fs.StringVar(&o.Scheme, "scheme", "", "compare the caches of `SCHEME` (default: the --admin site's first scheme)")
	fs.DurationVar(&o.Wait, "wait", 0, "poll for up to `D` until the sites agree (replication is asynchronous)")
	fs.IntVar(&o.MaxKeys, "max-keys", 20, "list at most `N` differing keys")
	output := fs.String("o", "text", "output: text or json")
	if _, err := parseArgs(fs, args, 0, 0, "--other HOST:PORT [--scheme S] [--wait D] [--max-keys N] [-o text|json]"); err != nil {
		return err
	}
	switch {
	case *other == "":
		return fmt.Errorf("%w: fed verify needs --other HOST:PORT, the other site's admin endpoint", errUsage)
	case *output != "text" && *output != "json":
		return fmt.Errorf("%w: -o must be text or json", errUsage)
	case o.Wait < 0:
		return fmt.Errorf("%w: --wait must not be negative", errUsage)
	case o.MaxKeys < 0:
		return fmt.Errorf("%w: --max-keys must not be negative", errUsage)
	}
	a, err := fc.client()
	if err != nil {
		return err
	}
	b, err := newFedClient(*other, cmp.Or(*otherToken, fc.resolvedToken()), fc.timeout)
	if err != nil {
		return err
	}
	res, err := fedVerify(ctx, a, b, o)
	if err != nil {
		return err
	}
	if *output == "json" {
		if err := printJSON(stdout, res); err != nil {
			return err
		}
	} else {
		printVerify(stdout, res)
	}
	if !res.Converged {
		return fmt.Errorf("%s and %s have not converged: %d of %d partitions differ", res.Sites[0], res.Sites[1], len(res.Differ), res.Partitions)
	}
	return nil
}

func printVerify(w io.Writer, res *verifyResult) {
	if res.Converged {
		fmt.Fprintf(w, "converged: %d partitions, %d entries\n", res.Partitions, res.Entries[0])
		return
	}
	keys := res.Keys
	for _, d := range res.Differ {
		switch {
		case !d.Compared:
			continue
		case d.Error != "":
			fmt.Fprintf(w, "partition %d: cannot list its keys: %s\n", d.Partition, d.Error)
			continue
		case d.KeysDiffer == 0:
			fmt.Fprintf(w, "partition %d: digests differ (%s %d entries, %s %d) but the key listings agree: changes in flight\n",
				d.Partition, res.Sites[0], d.Count[0], res.Sites[1], d.Count[1])
			continue
		}
		for len(keys) > 0 && keys[0].Partition == d.Partition {
			k := keys[0]
			keys = keys[1:]
			fmt.Fprintf(w, "partition %d: key %s/%s: %s, %s\n", k.Partition, k.Cache, k.Key,
				sideString(res.Sites[0], k.Have[0], k.Have[1]), sideString(res.Sites[1], k.Have[1], k.Have[0]))
		}
	}
	if res.KeysOmitted > 0 {
		fmt.Fprintf(w, "(%d more differing keys not shown: raise --max-keys)\n", res.KeysOmitted)
	}
	if n := len(res.Differ) - res.PartitionsCompared; n > 0 && res.PartitionsCompared > 0 {
		fmt.Fprintf(w, "(keys compared in the first %d of %d differing partitions)\n", res.PartitionsCompared, len(res.Differ))
	}
	fmt.Fprintf(w, "not converged: %d of %d partitions differ\n", len(res.Differ), res.Partitions)
}

// sideString is how one site holds a differing key: its version, and its
// value's hash when the other site has the same version.
func sideString(site string, kv, other *store.KeyVersion) string {
	if kv == nil {
		return site + " missing"
	}
	s := site + " " + kv.Version
	if other != nil && other.Version == kv.Version {
		s += " (value " + kv.ValueHash + ")"
	}
	return s
}

// fedClient calls the federation part of one instance's admin API.
type fedClient struct {
	addr    string // as given, for messages
	base    string // scheme://host[:port][/path], no trailing slash
	token   string
	timeout time.Duration // per request; 0: none
	hc      *http.Client
}

// fedAPIError is an error response of the admin API ({"error","code"}).
type fedAPIError struct {
	Status  int    // HTTP status
	Code    string // such as unknown-participant; empty when the body was not the API's
	Message string
}

func (e *fedAPIError) Error() string { return fmt.Sprintf("%s (HTTP %d)", e.Message, e.Status) }

// newFedClient returns a client of the admin endpoint at admin, either
// host:port (http is assumed) or a URL. A bad address is a usage error.
func newFedClient(admin, token string, timeout time.Duration) (*fedClient, error) {
	s := admin
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%w: admin address %q: want HOST:PORT or http(s)://HOST:PORT", errUsage, admin)
	}
	return &fedClient{
		addr:    admin,
		base:    strings.TrimSuffix(u.Scheme+"://"+u.Host+u.EscapedPath(), "/"),
		token:   token,
		timeout: timeout,
		hc: &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		}},
	}, nil
}

func (c *fedClient) get(ctx context.Context, path string, q url.Values, v any) error {
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	return c.do(ctx, http.MethodGet, path, v)
}

func (c *fedClient) post(ctx context.Context, path string, v any) error {
	return c.do(ctx, http.MethodPost, path, v)
}

// do sends a request without a body and decodes a 200 answer into v.
func (c *fedClient) do(ctx context.Context, method, path string, v any) error {
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, nil)
	if err != nil {
		return err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		e := &fedAPIError{Status: resp.StatusCode}
		var er struct{ Error, Code string }
		if json.Unmarshal(body, &er) == nil && er.Error != "" {
			e.Code, e.Message = er.Code, er.Error
		} else if e.Message = strings.TrimSpace(string(body)); e.Message == "" {
			e.Message = http.StatusText(resp.StatusCode)
		}
		return e
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("%s %s: bad answer: %w", method, c.base+path, err)
	}
	return nil
}

// fedStatusResponse is the answer of GET /api/v1/federation.
type fedStatusResponse struct {
	Instance     string            `json:"instance"`
	Site         string            `json:"site"`
	Participants []store.FedStatus `json:"participants"`
}

func (c *fedClient) status(ctx context.Context) (fedStatusResponse, error) {
	var st fedStatusResponse
	err := c.get(ctx, "/api/v1/federation", nil, &st)
	return st, err
}

// digestsResponse is the answer of GET /api/v1/federation/digests.
type digestsResponse struct {
	Site       string         `json:"site"`
	Scheme     string         `json:"scheme"`
	Partitions []store.Digest `json:"partitions"`
}

// digests fetches every partition's digest of scheme ("": the instance's
// first scheme).
func (c *fedClient) digests(ctx context.Context, scheme string) (digestsResponse, error) {
	var q url.Values
	if scheme != "" {
		q = url.Values{"scheme": {scheme}}
	}
	var d digestsResponse
	err := c.get(ctx, "/api/v1/federation/digests", q, &d)
	return d, err
}

// keysResponse is the answer of GET /api/v1/federation/partitions/{n}/keys.
type keysResponse struct {
	Site      string             `json:"site"`
	Scheme    string             `json:"scheme"`
	Partition int                `json:"partition"`
	Keys      []store.KeyVersion `json:"keys"`
}

func (c *fedClient) keys(ctx context.Context, scheme string, part int) (keysResponse, error) {
	var k keysResponse
	err := c.get(ctx, "/api/v1/federation/partitions/"+strconv.Itoa(part)+"/keys", url.Values{"scheme": {scheme}}, &k)
	return k, err
}

// errIncomparable: the two sites cannot be compared (different schemes or
// partition counts, or the same site twice). Waiting does not help.
var errIncomparable = errors.New("sites cannot be compared")

// verifyOptions configure fedVerify.
type verifyOptions struct {
	Scheme        string        // "": the first site's first scheme
	Wait          time.Duration // poll until converged for up to this long; 0: look once
	Poll          time.Duration // between polls; default 250ms
	MaxKeys       int           // differing keys to list; 0: none (no key listings are fetched)
	MaxPartitions int           // differing partitions whose keys are listed; default 10
}

// verifyResult is the outcome of fedVerify. Index 0 of the pairs is the
// first site, 1 the other.
type verifyResult struct {
	Scheme             string     `json:"scheme"`
	Sites              [2]string  `json:"sites"`
	Partitions         int        `json:"partitions"`
	Entries            [2]int     `json:"entries"`
	Converged          bool       `json:"converged"`
	Polls              int        `json:"polls"`
	Differ             []partDiff `json:"differing_partitions,omitempty"`
	PartitionsCompared int        `json:"partitions_compared,omitempty"` // of Differ, whose keys were listed
	Keys               []keyDiff  `json:"differing_keys,omitempty"`      // at most MaxKeys, by partition, cache and key
	KeysOmitted        int        `json:"keys_omitted,omitempty"`        // differing keys beyond MaxKeys
}

// partDiff is a partition whose digests differ.
type partDiff struct {
	Partition  int       `json:"partition"`
	Count      [2]int    `json:"count"`
	Hash       [2]string `json:"hash"` // "": the site does not list the partition
	Compared   bool      `json:"compared"`
	KeysDiffer int       `json:"keys_differ"`     // when compared
	Error      string    `json:"error,omitempty"` // listing its keys failed
}

// keyDiff is a key the sites hold differently; a nil side lacks it.
type keyDiff struct {
	Partition int                  `json:"partition"`
	Cache     string               `json:"cache"`
	Key       string               `json:"key"`
	Have      [2]*store.KeyVersion `json:"have"`
}

// fedVerify compares the partition digests of two sites' instances,
// polling until they agree or o.Wait has passed, and when they do not,
// lists the keys that differ in the first differing partitions. It blocks
// until done or ctx ends. An error means the sites could not be compared;
// a result that has not converged is not an error.
func fedVerify(ctx context.Context, a, b *fedClient, o verifyOptions) (*verifyResult, error) {
	if o.Poll <= 0 {
		o.Poll = 250 * time.Millisecond
	}
	if o.MaxPartitions <= 0 {
		o.MaxPartitions = 10
	}
	deadline := time.Now().Add(o.Wait)
	for polls := 1; ; polls++ {
		res, err := compareDigests(ctx, a, b, o.Scheme)
		if res != nil {
			res.Polls = polls
		}
		if err == nil && res.Converged {
			return res, nil
		}
		if errors.Is(err, errIncomparable) {
			return nil, err
		}
		left := time.Until(deadline)
		if left <= 0 {
			if err != nil {
				return nil, err
			}
			listDifferingKeys(ctx, a, b, res, o)
			return res, nil
		}
		t := time.NewTimer(min(o.Poll, left))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// siteName is the site an instance reports, else its address.
func siteName(site string, c *fedClient) string {
	if site != "" {
		return site
	}
	return c.addr
}

// compareDigests fetches both sites' digests once and compares them.
func compareDigests(ctx context.Context, a, b *fedClient, scheme string) (*verifyResult, error) {
	da, err := a.digests(ctx, scheme)
	if err != nil {
		return nil, fmt.Errorf("digests from %s: %w", a.addr, err)
	}
	if scheme == "" {
		scheme = da.Scheme // the other site may list its schemes in another order
	}
	db, err := b.digests(ctx, scheme)
	if err != nil {
		return nil, fmt.Errorf("digests from %s: %w", b.addr, err)
	}
	res := &verifyResult{Scheme: da.Scheme, Sites: [2]string{siteName(da.Site, a), siteName(db.Site, b)}, Partitions: len(da.Partitions)}
	switch {
	case da.Site != "" && da.Site == db.Site:
		return nil, fmt.Errorf("%w: %s and %s are both of site %s: name an instance of the other site with --other", errIncomparable, a.addr, b.addr, da.Site)
	case da.Scheme != db.Scheme:
		return nil, fmt.Errorf("%w: %s answered for scheme %q, %s for %q", errIncomparable, res.Sites[0], da.Scheme, res.Sites[1], db.Scheme)
	case len(da.Partitions) != len(db.Partitions):
		return nil, fmt.Errorf("%w: scheme %s has %d partitions at %s, %d at %s (store.partitions must agree)",
			errIncomparable, da.Scheme, len(da.Partitions), res.Sites[0], len(db.Partitions), res.Sites[1])
	}
	byPart := map[int]*partDiff{}
	for side, list := range [2][]store.Digest{da.Partitions, db.Partitions} {
		for _, d := range list {
			res.Entries[side] += d.Count
			p := byPart[d.Partition]
			if p == nil {
				p = &partDiff{Partition: d.Partition}
				byPart[d.Partition] = p
			}
			p.Count[side], p.Hash[side] = d.Count, d.Hash
		}
	}
	for _, p := range byPart {
		if p.Count[0] != p.Count[1] || p.Hash[0] != p.Hash[1] {
			res.Differ = append(res.Differ, *p)
		}
	}
	slices.SortFunc(res.Differ, func(x, y partDiff) int { return cmp.Compare(x.Partition, y.Partition) })
	res.Converged = len(res.Differ) == 0
	return res, nil
}

// listDifferingKeys fills in res.Keys from the key listings of the first
// differing partitions. A listing that fails is noted in its partDiff.
func listDifferingKeys(ctx context.Context, a, b *fedClient, res *verifyResult, o verifyOptions) {
	if o.MaxKeys == 0 {
		return
	}
	for i := range res.Differ {
		if i == o.MaxPartitions {
			break
		}
		d := &res.Differ[i]
		d.Compared = true
		res.PartitionsCompared++
		var lists [2][]store.KeyVersion
		for side, c := range [2]*fedClient{a, b} {
			k, err := c.keys(ctx, res.Scheme, d.Partition)
			if err != nil {
				d.Error = fmt.Sprintf("%s: %v", res.Sites[side], err)
				break
			}
			lists[side] = k.Keys
		}
		if d.Error != "" {
			continue
		}
		diffs := diffKeys(d.Partition, lists[0], lists[1])
		d.KeysDiffer = len(diffs)
		room := max(0, o.MaxKeys-len(res.Keys))
		res.Keys = append(res.Keys, diffs[:min(room, len(diffs))]...)
		res.KeysOmitted += max(0, len(diffs)-room)
	}
}

// diffKeys returns the keys of a partition that two sites hold differently
// (one lacks it, or the versions or values differ), by cache and key.
func diffKeys(part int, a, b []store.KeyVersion) []keyDiff {
	type ck struct{ cache, key string }
	have := map[ck]*[2]*store.KeyVersion{}
	for side, list := range [2][]store.KeyVersion{a, b} {
		for i := range list {
			kv := &list[i]
			k := ck{kv.Cache, kv.Key}
			if have[k] == nil {
				have[k] = &[2]*store.KeyVersion{}
			}
			have[k][side] = kv
		}
	}
	var out []keyDiff
	for k, h := range have {
		if h[0] != nil && h[1] != nil && *h[0] == *h[1] {
			continue
		}
		out = append(out, keyDiff{Partition: part, Cache: k.cache, Key: k.key, Have: *h})
	}
	slices.SortFunc(out, func(x, y keyDiff) int {
		return cmp.Or(cmp.Compare(x.Cache, y.Cache), cmp.Compare(x.Key, y.Key))
	})
	return out
}
