package tlsgen

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/sitebridge/sitebridge/internal/backoff"
)

// Renewal timing.
const (
	renewBackoffMin = time.Second
	renewBackoffMax = time.Minute
	// renewRecheck is the longest the renewer waits before looking at the
	// certificate again, so that files replaced by hand (a new enrolment,
	// a certificate of another lifetime) are noticed.
	renewRecheck = time.Minute
)

// Renewer renews the certificate of a [Reloader] at a smallstep CA
// (step-ca) before it expires: at the renewal time it posts to the CA's
// /1.0/renew over mutual TLS with the current key pair, checks the new
// chain (same key and identity, verifies against the Reloader's CA bundle,
// expires later), writes it atomically to the certificate file and reloads.
// Failures are logged and retried with capped exponential backoff until the
// certificate expires; an expired certificate is logged as an error (the
// CA does not renew it: enrol again), and the renewer waits for new files.
// Create it with [NewRenewer] and run it with [Renewer.Run].
type Renewer struct {
	rel    *Reloader
	caURL  string
	before time.Duration
	log    *slog.Logger

	// Replaced by tests.
	now                    func() time.Time
	backoffMin, backoffMax time.Duration
	recheck                time.Duration
}

// NewRenewer returns a renewer of rel's certificate at the step-ca at caURL,
// whose TLS is verified with rel's CA bundle. The certificate is renewed
// when the time left until it expires falls to before; 0 means a third of
// its lifetime (NotAfter - NotBefore), and more than half the lifetime is
// taken as half.
// The directory of the certificate file must be writable. A nil log
// discards messages.
func NewRenewer(rel *Reloader, caURL string, before time.Duration, log *slog.Logger) (*Renewer, error) {
	if _, err := ParseCAURL(caURL); err != nil {
		return nil, err
	}
	if before < 0 {
		return nil, fmt.Errorf("renew before %s: must not be negative", before)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Renewer{
		rel: rel, caURL: caURL, before: before, log: log,
		now:        time.Now,
		backoffMin: renewBackoffMin, backoffMax: renewBackoffMax,
		recheck: renewRecheck,
	}, nil
}

// renewAt returns when m's leaf is due, and whether the configured lead
// time was more than half the lifetime and was cut to half.
func (r *Renewer) renewAt(m *material) (time.Time, bool) {
	leaf := m.cert.Leaf
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	b := r.before
	if b == 0 {
		b = life / 3
	}
	cut := b > life/2
	if cut {
		b = life / 2
	}
	return leaf.NotAfter.Add(-b), cut
}

// Run renews the certificate whenever it is due, until ctx ends.
func (r *Renewer) Run(ctx context.Context) {
	m := r.rel.current()
	at, cut := r.renewAt(m)
	r.log.Info("certificate renewal enabled", "ca_url", r.caURL, "serial", serial(m.cert.Leaf),
		"not_after", m.cert.Leaf.NotAfter, "renew_at", at)
	if cut {
		r.log.Warn("tls.renew.before is more than half the certificate's lifetime; renewing halfway instead",
			"before", r.before, "lifetime", m.cert.Leaf.NotAfter.Sub(m.cert.Leaf.NotBefore))
	}
	b := backoff.Backoff{Min: r.backoffMin, Max: r.backoffMax}
	failures := 0
	expired := "" // serial of the expired certificate already reported
	for {
		m := r.rel.current()
		leaf, now := m.cert.Leaf, r.now()
		if !now.Before(leaf.NotAfter) {
			if s := serial(leaf); s != expired {
				expired = s
				r.log.Error("certificate expired and can no longer be renewed; enrol this instance again (sitebridge enroll)",
					"serial", s, "not_after", leaf.NotAfter, "failed_attempts", failures)
			}
			if !sleep(ctx, r.recheck) {
				return
			}
			continue
		}
		if at, _ := r.renewAt(m); now.Before(at) {
			if !sleep(ctx, min(at.Sub(now), r.recheck)) {
				return
			}
			continue
		}
		err := r.renew(ctx, m)
		if err == nil {
			failures = 0
			b.Reset()
			// A certificate due as soon as it is issued (its lifetime is
			// shorter than the CA's backdating) would be renewed in a
			// loop: wait for half its remaining validity instead.
			nm := r.rel.current()
			if at, _ := r.renewAt(nm); !r.now().Before(at) {
				d := nm.cert.Leaf.NotAfter.Sub(r.now()) / 2
				r.log.Warn("the renewed certificate is due for renewal at once (its validity is too short); renewing it halfway through instead",
					"not_before", nm.cert.Leaf.NotBefore, "not_after", nm.cert.Leaf.NotAfter, "retry_in", d.Round(time.Millisecond))
				if !sleep(ctx, d) {
					return
				}
			}
			continue
		}
		if ctx.Err() != nil {
			return
		}
		failures++
		d := max(min(b.Next(), leaf.NotAfter.Sub(r.now())), 0)
		r.log.Warn("certificate renewal failed", "err", err, "attempt", failures,
			"retry_in", d.Round(time.Millisecond), "serial", serial(leaf), "not_after", leaf.NotAfter)
		if !sleep(ctx, d) {
			return
		}
	}
}

// renew renews m's certificate once: CA request, checks, file, reload.
func (r *Renewer) renew(ctx context.Context, m *material) error {
	old := m.cert.Leaf
	ca, err := NewCAClient(r.caURL, m.pool)
	if err != nil {
		return err
	}
	chain, err := ca.Renew(ctx, m.cert)
	if err != nil {
		return err
	}
	if err := checkIssued(chain, old.PublicKey, m.id, m.pool, r.now()); err != nil {
		return err
	}
	if !chain[0].NotAfter.After(old.NotAfter) {
		return fmt.Errorf("the CA issued a certificate that expires at %s, no later than the current one (%s)",
			utc(chain[0].NotAfter), utc(old.NotAfter))
	}
	mode := os.FileMode(0o644)
	if fi, err := os.Stat(r.rel.certFile); err == nil {
		mode = fi.Mode().Perm()
	}
	if err := writeFileAtomic(r.rel.certFile, encodeChain(chain), mode); err != nil {
		return err
	}
	if err := r.rel.Reload(); err != nil {
		return fmt.Errorf("the renewed certificate was written to %s but does not load: %w", r.rel.certFile, err)
	}
	cur := r.rel.current()
	if !cur.cert.Leaf.Equal(chain[0]) {
		return errors.New("the certificate file changed again while the renewed certificate was written")
	}
	next, _ := r.renewAt(cur)
	r.log.Info("certificate renewed", "serial", serial(chain[0]), "not_after", chain[0].NotAfter,
		"previous_serial", serial(old), "previous_not_after", old.NotAfter, "next_renewal", next)
	return nil
}

// sleep waits d or until ctx ends; it reports false if ctx ended.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
