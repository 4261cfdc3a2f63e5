package cacheapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/sitebridge/sitebridge/store"
)

// DefaultTimeout bounds each store call when [Options.Timeout] is zero. It
// is below the admin server's 10s WriteTimeout, so a store that does not
// answer in time still gets a 503 to the client.
const DefaultTimeout = 5 * time.Second

// Options configure [Handler]. The zero value is usable.
type Options struct {
	// DefaultScope is the scope of requests without ?scope= (or with an
	// empty one).
	DefaultScope string
	// Log receives refused and failed requests; successes are not
	// logged. nil: discard.
	Log *slog.Logger
	// Prefix is the path the handler is mounted at; empty means [Prefix].
	Prefix string
	// Timeout bounds each store call; zero means [DefaultTimeout].
	Timeout time.Duration
}

// Handler returns the HTTP handler of the cache API over c (see the
// package doc for the contract). It serves the paths under opts.Prefix
// (default /api/v1/caches) exactly as they arrive, so mount it without
// stripping the prefix, on both Prefix and Prefix + "/". It does no
// authentication: wrap it in the admin endpoint's token check.
func Handler(c store.Cache, opts Options) http.Handler {
	h := &handler{c: c, scope: opts.DefaultScope, log: opts.Log, prefix: opts.Prefix, timeout: opts.Timeout}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	h.log = h.log.With("component", "cacheapi")
	if h.prefix == "" {
		h.prefix = Prefix
	}
	h.prefix = strings.TrimSuffix(h.prefix, "/")
	if h.timeout <= 0 {
		h.timeout = DefaultTimeout
	}
	return h
}

type handler struct {
	c       store.Cache
	scope   string
	log     *slog.Logger
	prefix  string
	timeout time.Duration
}

// route says which kind of resource a path names.
type route int

const (
	routeCaches route = iota // Prefix or Prefix/
	routeCache               // Prefix/{cache}
	routeKey                 // Prefix/{cache}/{key...}
)

// target is what a request path names.
type target struct {
	route route
	cache string
	key   string
}

// errNoRoute: the path is not under the prefix.
var errNoRoute = errors.New("no such path")

// parsePath splits an escaped request path (URL.EscapedPath) under prefix
// into the cache and key it names. The cache is the first segment after
// the prefix and the key is everything after the following '/', both
// unescaped with url.PathUnescape, so a key may hold '/' (literal or
// %2F) and any escaped byte. An empty key (a path ending in "{cache}/") is
// returned as such: the caller refuses it. Errors are errNoRoute or a bad
// percent-escape.
func parsePath(prefix, escaped string) (target, error) {
	rest, ok := strings.CutPrefix(escaped, prefix)
	if !ok {
		return target{}, errNoRoute
	}
	if rest == "" || rest == "/" {
		return target{route: routeCaches}, nil
	}
	if rest, ok = strings.CutPrefix(rest, "/"); !ok {
		return target{}, errNoRoute
	}
	seg, key, hasKey := strings.Cut(rest, "/")
	cache, err := url.PathUnescape(seg)
	if err != nil {
		return target{}, fmt.Errorf("cache name: %w", err)
	}
	if !hasKey {
		return target{route: routeCache, cache: cache}, nil
	}
	if key, err = url.PathUnescape(key); err != nil {
		return target{}, fmt.Errorf("key: %w", err)
	}
	return target{route: routeKey, cache: cache, key: key}, nil
}

// refusal is a request the handler refuses by itself, before or instead
// of asking the store.
type refusal struct {
	status int
	code   string
	msg    string
	allow  string // the Allow header of a 405
}

func (e *refusal) Error() string { return e.msg }

func badRequest(format string, args ...any) error {
	return &refusal{status: http.StatusBadRequest, code: CodeBadRequest, msg: fmt.Sprintf(format, args...)}
}

func notFound(msg string) error {
	return &refusal{status: http.StatusNotFound, code: CodeNotFound, msg: msg}
}

func notAllowed(method, allow string) error {
	return &refusal{status: http.StatusMethodNotAllowed, code: CodeMethodNotAllowed,
		msg: "method " + method + " not allowed here; allowed: " + allow, allow: allow}
}

// call is one request being served.
type call struct {
	w     http.ResponseWriter
	r     *http.Request
	ctx   context.Context // the request's, bounded by the handler's timeout
	q     url.Values
	scope string
	t     target
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c := &call{w: w, r: r}
	t, err := parsePath(h.prefix, r.URL.EscapedPath())
	if errors.Is(err, errNoRoute) {
		h.fail(c, notFound("no such path in the cache API"))
		return
	}
	if err != nil {
		h.fail(c, badRequest("%v", err))
		return
	}
	c.t = t
	if c.q, err = url.ParseQuery(r.URL.RawQuery); err != nil {
		h.fail(c, badRequest("query: %v", err))
		return
	}
	c.scope = c.q.Get("scope")
	if c.scope == "" {
		c.scope = h.scope
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.timeout)
	defer cancel()
	c.ctx = ctx

	read := r.Method == http.MethodGet || r.Method == http.MethodHead
	switch {
	case t.route == routeCaches && read:
		err = h.listCaches(c)
	case t.route == routeCaches:
		err = notAllowed(r.Method, "GET, HEAD")
	case t.route == routeCache && read:
		err = h.listKeys(c)
	case t.route == routeCache && r.Method == http.MethodDelete:
		err = h.clear(c)
	case t.route == routeCache:
		err = notAllowed(r.Method, "GET, HEAD, DELETE")
	case t.key == "" && (read || r.Method == http.MethodPut || r.Method == http.MethodDelete):
		err = fmt.Errorf("%w: empty key", store.ErrBadName)
	case read:
		err = h.get(c)
	case r.Method == http.MethodPut:
		err = h.put(c)
	case r.Method == http.MethodDelete:
		err = h.del(c)
	default:
		err = notAllowed(r.Method, "GET, HEAD, PUT, DELETE")
	}
	if err != nil {
		h.fail(c, err)
	}
}

func (h *handler) listCaches(c *call) error {
	infos, err := h.c.Caches(c.ctx, c.scope)
	if err != nil {
		return err
	}
	if infos == nil {
		infos = []store.CacheInfo{}
	}
	writeJSON(c.w, http.StatusOK, CachesResponse{Caches: infos})
	return nil
}

func (h *handler) listKeys(c *call) error {
	limit := DefaultLimit
	if s := c.q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > MaxLimit {
			return badRequest("limit %q: want an integer from 1 to %d", s, MaxLimit)
		}
		limit = n
	}
	enc := c.q.Get("encoding")
	if enc != "" && enc != EncodingPath {
		return badRequest("encoding %q: want %q or nothing", enc, EncodingPath)
	}
	page, err := h.c.Keys(c.ctx, c.scope, c.t.cache, c.q.Get("prefix"), c.q.Get("cursor"), limit)
	if err != nil {
		return err
	}
	resp := KeysResponse{Keys: page.Keys, Next: page.Next, Encoding: enc}
	if enc == EncodingPath {
		resp.Keys = make([]string, len(page.Keys))
		for i, k := range page.Keys {
			resp.Keys[i] = url.PathEscape(k)
		}
		resp.Next = url.PathEscape(page.Next)
	}
	if resp.Keys == nil {
		resp.Keys = []string{}
	}
	writeJSON(c.w, http.StatusOK, resp)
	return nil
}

func (h *handler) clear(c *call) error {
	if err := h.c.Clear(c.ctx, c.scope, c.t.cache); err != nil {
		return err
	}
	c.w.WriteHeader(http.StatusNoContent)
	return nil
}

func (h *handler) get(c *call) error {
	e, ok, err := h.c.Get(c.ctx, c.scope, c.t.cache, c.t.key)
	if err != nil {
		return err
	}
	if !ok {
		return notFound("key not found")
	}
	hdr := c.w.Header()
	hdr.Set("Content-Type", "application/octet-stream")
	hdr.Set("Content-Length", strconv.Itoa(len(e.Value)))
	hdr.Set("Cache-Control", "no-store")
	hdr.Set("X-Content-Type-Options", "nosniff")
	if !e.Version.IsZero() {
		hdr.Set(HeaderVersion, e.Version.String())
	}
	if !e.Expires.IsZero() {
		hdr.Set(HeaderExpires, e.Expires.UTC().Format(time.RFC3339Nano))
	}
	c.w.WriteHeader(http.StatusOK)
	if c.r.Method != http.MethodHead {
		c.w.Write(e.Value)
	}
	return nil
}

func (h *handler) put(c *call) error {
	var ttl time.Duration
	if s := c.q.Get("ttl"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			return badRequest("ttl %q: want a duration such as 30s or 5m (0: no expiry)", s)
		}
		ttl = d
	}
	value, err := readValue(c.w, c.r, h.c.MaxValueSize())
	if err != nil {
		return err
	}
	if err := h.c.Put(c.ctx, c.scope, c.t.cache, c.t.key, value, ttl); err != nil {
		return err
	}
	c.w.WriteHeader(http.StatusNoContent)
	return nil
}

// readValue reads a request body of at most limit bytes into a new slice.
// A larger body is refused with ErrTooLarge, before reading it when its
// length is announced.
func readValue(w http.ResponseWriter, r *http.Request, limit int) ([]byte, error) {
	tooLarge := fmt.Errorf("%w: the limit is %d bytes", store.ErrTooLarge, limit)
	if r.ContentLength > int64(limit) {
		return nil, tooLarge
	}
	body := http.MaxBytesReader(w, r.Body, int64(limit))
	var value []byte
	var err error
	if r.ContentLength >= 0 {
		// The server delivers exactly ContentLength bytes or an error.
		value = make([]byte, r.ContentLength)
		_, err = io.ReadFull(body, value)
	} else {
		value, err = io.ReadAll(body)
	}
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return nil, tooLarge
	}
	if err != nil {
		return nil, badRequest("reading the value: %v", err)
	}
	return value, nil
}

func (h *handler) del(c *call) error {
	existed, err := h.c.Delete(c.ctx, c.scope, c.t.cache, c.t.key)
	if err != nil {
		return err
	}
	if !existed {
		return notFound("key not found")
	}
	c.w.WriteHeader(http.StatusNoContent)
	return nil
}

// classify maps an error to its HTTP status and error code.
func classify(err error) (status int, code string) {
	var rf *refusal
	switch {
	case errors.As(err, &rf):
		return rf.status, rf.code
	case errors.Is(err, store.ErrBadName):
		return http.StatusBadRequest, CodeBadName
	case errors.Is(err, store.ErrTooLarge):
		return http.StatusRequestEntityTooLarge, CodeTooLarge
	case errors.Is(err, store.ErrUnavailable),
		errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, context.Canceled):
		return http.StatusServiceUnavailable, CodeUnavailable
	case errors.Is(err, store.ErrStopped):
		return http.StatusServiceUnavailable, CodeStopped
	case errors.Is(err, store.ErrJournalFull):
		return http.StatusServiceUnavailable, CodeJournalFull
	}
	return http.StatusInternalServerError, CodeInternal
}

// fail writes err as a JSON error response and logs it: internal errors
// at error, unavailability at warn, refusals at debug, and a missing key
// (a normal answer) not at all.
func (h *handler) fail(c *call, err error) {
	status, code := classify(err)
	hdr := c.w.Header()
	var rf *refusal
	if errors.As(err, &rf) && rf.allow != "" {
		hdr.Set("Allow", rf.allow)
	}
	if code == CodeUnavailable {
		hdr.Set("Retry-After", "1")
	}
	writeJSON(c.w, status, ErrorResponse{Error: err.Error(), Code: code})

	level, msg := slog.LevelDebug, "cache request refused"
	if status >= 500 {
		msg = "cache request failed"
	}
	switch {
	case code == CodeNotFound && c.t.route == routeKey:
		return
	case c.r.Context().Err() != nil: // the client went away
	case code == CodeInternal:
		level = slog.LevelError
	case status >= 500:
		level = slog.LevelWarn
	}
	h.log.LogAttrs(c.r.Context(), level, msg,
		slog.String("method", c.r.Method), slog.String("path", c.r.URL.EscapedPath()),
		slog.String("scope", c.scope), slog.Int("status", status), slog.String("code", code),
		slog.String("err", err.Error()), slog.String("from", c.r.RemoteAddr))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil { // only for values that cannot be marshalled: a bug
		status, b = http.StatusInternalServerError, []byte(`{"error":"encoding the response failed","code":"internal"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}
