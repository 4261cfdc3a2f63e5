// Package cacheclient is the Go client of a sitebridge instance's cache
// API (package cacheapi), served on its admin endpoint.
//
// A [Client] is safe for concurrent use, and by default keeps up to 64
// idle connections per instance, so many goroutines can share one. It does
// not retry: an error that wraps [store.ErrUnavailable] may be retried by
// the caller. Calls take their deadline from the context only.
package cacheclient

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/sitebridge/sitebridge/cacheapi"
	"github.com/sitebridge/sitebridge/store"
)

// Client calls the cache API of one instance.
type Client struct {
	base  string // scheme://host[:port][/path], no trailing slash
	err   error  // a bad admin URL, returned by every call
	token string
	scope string
	hc    *http.Client
}

// Option configures a [Client].
type Option func(*Client)

// WithToken sends token as the admin endpoint's bearer token.
func WithToken(token string) Option { return func(c *Client) { c.token = token } }

// WithHTTPClient makes the client use hc instead of its own. hc should not
// follow redirects (a redirected PUT turns into a GET).
func WithHTTPClient(hc *http.Client) Option { return func(c *Client) { c.hc = hc } }

// WithScope makes every call use scope (default: the instance's default
// scope).
func WithScope(scope string) Option { return func(c *Client) { c.scope = scope } }

// New returns a client of the admin endpoint at adminURL, either host:port
// (http is assumed) or a URL such as https://host:port. A bad adminURL is
// reported by every call.
func New(adminURL string, opts ...Option) *Client {
	c := &Client{}
	c.base, c.err = baseURL(adminURL)
	for _, o := range opts {
		o(c)
	}
	if c.hc == nil {
		c.hc = newHTTPClient()
	}
	return c
}

// Scoped returns a client like c, sharing its connections, that uses scope.
func (c *Client) Scoped(scope string) *Client {
	cc := *c
	cc.scope = scope
	return &cc
}

// CloseIdleConnections closes the idle connections of the client's
// transport.
func (c *Client) CloseIdleConnections() { c.hc.CloseIdleConnections() }

func baseURL(s string) (string, error) {
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("cacheclient: admin address: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return "", fmt.Errorf("cacheclient: admin address %q: want HOST:PORT or http(s)://HOST:PORT", s)
	}
	return strings.TrimSuffix(u.Scheme+"://"+u.Host+u.EscapedPath(), "/"), nil
}

func newHTTPClient() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns = 256
	tr.MaxIdleConnsPerHost = 64
	return &http.Client{
		Transport: tr,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// APIError is an error response of the cache API. errors.Is maps its code
// to the store's errors: bad-name to store.ErrBadName, too-large to
// store.ErrTooLarge, unavailable to store.ErrUnavailable and stopped to
// store.ErrStopped.
type APIError struct {
	Status  int    // HTTP status
	Code    string // cacheapi.Code*; empty when the response was not the API's
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s (HTTP %d)", e.Message, e.Status)
}

// Is reports whether target is the store error e's code stands for. A
// response without a code (from a proxy, say) maps by status: 413 to
// store.ErrTooLarge and 503 to store.ErrUnavailable.
func (e *APIError) Is(target error) bool {
	code := e.Code
	if code == "" {
		switch e.Status {
		case http.StatusRequestEntityTooLarge:
			code = cacheapi.CodeTooLarge
		case http.StatusServiceUnavailable:
			code = cacheapi.CodeUnavailable
		}
	}
	switch target {
	case store.ErrBadName:
		return code == cacheapi.CodeBadName
	case store.ErrTooLarge:
		return code == cacheapi.CodeTooLarge
	case store.ErrUnavailable:
		return code == cacheapi.CodeUnavailable
	case store.ErrStopped:
		return code == cacheapi.CodeStopped
	case store.ErrJournalFull:
		return code == cacheapi.CodeJournalFull
	}
	return false
}

// readError reads an error response into an *APIError.
func readError(resp *http.Response) *APIError {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	e := &APIError{Status: resp.StatusCode}
	var er cacheapi.ErrorResponse
	if json.Unmarshal(body, &er) == nil && er.Error != "" {
		e.Code, e.Message = er.Code, er.Error
	} else if e.Message = strings.TrimSpace(string(body)); e.Message == "" {
		e.Message = http.StatusText(resp.StatusCode)
	}
	return e
}

func (e *APIError) notFound() bool {
	return e.Status == http.StatusNotFound && e.Code == cacheapi.CodeNotFound
}

func checkNames(cache, key string) error {
	if cache == "" {
		return fmt.Errorf("%w: empty cache name", store.ErrBadName)
	}
	if key == "" {
		return fmt.Errorf("%w: empty key", store.ErrBadName)
	}
	return nil
}

// do sends a request for path (escaped, under the API prefix) with the
// query q. The caller closes the response body.
func (c *Client) do(ctx context.Context, method, path string, q url.Values, body []byte) (*http.Response, error) {
	if c.err != nil {
		return nil, c.err
	}
	if c.scope != "" {
		if q == nil {
			q = url.Values{}
		}
		q.Set("scope", c.scope)
	}
	u := c.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	return c.hc.Do(req)
}

// call sends a request whose success has no body: it returns nil on a 2xx
// status and the API error otherwise.
func (c *Client) call(ctx context.Context, method, path string, q url.Values, body []byte) error {
	resp, err := c.do(ctx, method, path, q, body)
	if err != nil {
		return err
	}
	defer drain(resp)
	if resp.StatusCode/100 != 2 {
		return readError(resp)
	}
	return nil
}

// drain reads what is left of a response body, so the connection can be
// reused, and closes it.
func drain(resp *http.Response) {
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
}

// Put stores value under key in cache, for ttl (0: no expiry). It returns
// once the instance reports the value stored.
func (c *Client) Put(ctx context.Context, cache, key string, value []byte, ttl time.Duration) error {
	if err := checkNames(cache, key); err != nil {
		return err
	}
	if ttl < 0 {
		return fmt.Errorf("cacheclient: negative ttl %v", ttl)
	}
	var q url.Values
	if ttl > 0 {
		q = url.Values{"ttl": {ttl.String()}}
	}
	if value == nil {
		value = []byte{}
	}
	return c.call(ctx, http.MethodPut, cacheapi.KeyPath(cache, key), q, value)
}

// Get returns the value under key in cache; ok is false when there is
// none.
func (c *Client) Get(ctx context.Context, cache, key string) (value []byte, ok bool, err error) {
	e, ok, err := c.GetEntry(ctx, cache, key)
	return e.Value, ok, err
}

// GetEntry returns the entry under key in cache, with its version and
// expiry; ok is false when there is none.
func (c *Client) GetEntry(ctx context.Context, cache, key string) (e store.Entry, ok bool, err error) {
	if err := checkNames(cache, key); err != nil {
		return e, false, err
	}
	resp, err := c.do(ctx, http.MethodGet, cacheapi.KeyPath(cache, key), nil, nil)
	if err != nil {
		return e, false, err
	}
	defer drain(resp)
	if resp.StatusCode != http.StatusOK {
		if ae := readError(resp); !ae.notFound() {
			return e, false, ae
		}
		return e, false, nil
	}
	if resp.ContentLength >= 0 {
		e.Value = make([]byte, resp.ContentLength)
		_, err = io.ReadFull(resp.Body, e.Value)
	} else {
		e.Value, err = io.ReadAll(resp.Body)
	}
	if err != nil {
		return store.Entry{}, false, fmt.Errorf("cacheclient: reading the value: %w", err)
	}
	if v := resp.Header.Get(cacheapi.HeaderVersion); v != "" {
		if e.Version, err = cacheapi.ParseVersion(v); err != nil {
			return store.Entry{}, false, fmt.Errorf("cacheclient: %w", err)
		}
	}
	if s := resp.Header.Get(cacheapi.HeaderExpires); s != "" {
		if e.Expires, err = time.Parse(time.RFC3339Nano, s); err != nil {
			return store.Entry{}, false, fmt.Errorf("cacheclient: %s: %w", cacheapi.HeaderExpires, err)
		}
	}
	return e, true, nil
}

// Delete removes key from cache; existed reports whether it was there.
func (c *Client) Delete(ctx context.Context, cache, key string) (existed bool, err error) {
	if err := checkNames(cache, key); err != nil {
		return false, err
	}
	resp, err := c.do(ctx, http.MethodDelete, cacheapi.KeyPath(cache, key), nil, nil)
	if err != nil {
		return false, err
	}
	defer drain(resp)
	if resp.StatusCode/100 == 2 {
		return true, nil
	}
	if ae := readError(resp); !ae.notFound() {
		return false, ae
	}
	return false, nil
}

// Clear removes every entry of cache.
func (c *Client) Clear(ctx context.Context, cache string) error {
	if cache == "" {
		return fmt.Errorf("%w: empty cache name", store.ErrBadName)
	}
	return c.call(ctx, http.MethodDelete, cacheapi.CachePath(cache), nil, nil)
}

// getJSON decodes the JSON response to a GET of path into v.
func (c *Client) getJSON(ctx context.Context, path string, q url.Values, v any) error {
	resp, err := c.do(ctx, http.MethodGet, path, q, nil)
	if err != nil {
		return err
	}
	defer drain(resp)
	if resp.StatusCode != http.StatusOK {
		return readError(resp)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("cacheclient: decoding the response: %w", err)
	}
	return nil
}

// Caches lists the caches of the scope that hold at least one entry.
func (c *Client) Caches(ctx context.Context) ([]store.CacheInfo, error) {
	var r cacheapi.CachesResponse
	if err := c.getJSON(ctx, cacheapi.Prefix, nil, &r); err != nil {
		return nil, err
	}
	return r.Caches, nil
}

// Keys lists the keys of cache in byte order, only those with prefix,
// starting after cursor (empty: from the start; else the Next of the
// previous page), at most limit of them (1-10000; 0: the server's default,
// 100). Keys are exact, whatever bytes they hold.
func (c *Client) Keys(ctx context.Context, cache, prefix, cursor string, limit int) (store.Page, error) {
	if cache == "" {
		return store.Page{}, fmt.Errorf("%w: empty cache name", store.ErrBadName)
	}
	q := url.Values{"encoding": {cacheapi.EncodingPath}}
	if prefix != "" {
		q.Set("prefix", prefix)
	}
	if cursor != "" {
		q.Set("cursor", cursor)
	}
	if limit != 0 {
		q.Set("limit", fmt.Sprint(limit))
	}
	var r cacheapi.KeysResponse
	if err := c.getJSON(ctx, cacheapi.CachePath(cache), q, &r); err != nil {
		return store.Page{}, err
	}
	if r.Encoding != cacheapi.EncodingPath {
		return store.Page{Keys: r.Keys, Next: r.Next}, nil
	}
	p := store.Page{Keys: make([]string, len(r.Keys))}
	var err error
	for i, k := range r.Keys {
		if p.Keys[i], err = url.PathUnescape(k); err != nil {
			return store.Page{}, fmt.Errorf("cacheclient: key %q: %w", k, err)
		}
	}
	if p.Next, err = url.PathUnescape(r.Next); err != nil {
		return store.Page{}, fmt.Errorf("cacheclient: cursor %q: %w", r.Next, err)
	}
	return p, nil
}
