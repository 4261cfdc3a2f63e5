package tlsgen

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.step.sm/crypto/pemutil"
)

// checkInterval is how often, at most, the TLS callbacks look at the files.
const checkInterval = time.Second

// Reloader holds the CA pool and this instance's key pair, loaded from
// files, and reloads them when the files change. Use [NewReloader]. It is
// safe for concurrent use; the configurations it returns read the current
// material on every handshake.
//
// The files are checked (modification time and size) at most once per second,
// lazily from the TLS callbacks, and reloaded completely when any of them
// changed. [Reloader.Reload] reloads at once. A failed reload keeps the
// previous material and is logged; the same unchanged files are not retried
// until they change again.
type Reloader struct {
	caFile, certFile, keyFile string
	log                       *slog.Logger
	every                     time.Duration // minimum time between lazy checks

	cur       atomic.Pointer[material]
	lastCheck atomic.Int64 // UnixNano of the last lazy check

	mu     sync.Mutex // serializes loading; guards failed
	failed fileStamp  // files whose last load failed
}

// material is one consistent set of loaded files. It is never modified
// after it is stored.
type material struct {
	pool  *x509.CertPool
	cert  *tls.Certificate // Leaf is set
	id    Identity
	stamp fileStamp
}

// fileStamp records what the CA, certificate and key files looked like.
type fileStamp [3]fileStat

type fileStat struct {
	exists  bool
	size    int64
	modTime int64
}

// NewReloader loads the CA bundle, certificate and key. It fails if a file is
// missing or unreadable, the key does not match the certificate, the
// certificate is outside its validity window, does not chain to the CA
// bundle, or has no valid identity. A nil log discards messages.
func NewReloader(caFile, certFile, keyFile string, log *slog.Logger) (*Reloader, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Reloader{
		caFile: caFile, certFile: certFile, keyFile: keyFile,
		log:   log.With("component", "tlsgen"),
		every: checkInterval,
	}
	m, err := r.load()
	if err != nil {
		return nil, err
	}
	r.cur.Store(m)
	r.lastCheck.Store(time.Now().UnixNano())
	return r, nil
}

// Reload loads the files now. On failure it returns why and keeps the
// previous material.
func (r *Reloader) Reload() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reloadLocked()
}

// Identity returns the identity of the current leaf.
func (r *Reloader) Identity() Identity { return r.current().id }

// Leaf returns the current leaf certificate. It must not be modified.
func (r *Reloader) Leaf() *x509.Certificate { return r.current().cert.Leaf }

// current returns the material to use, first reloading it if the files
// changed and no check ran in the last interval.
func (r *Reloader) current() *material {
	r.maybeReload()
	return r.cur.Load()
}

func (r *Reloader) maybeReload() {
	now := time.Now().UnixNano()
	last := r.lastCheck.Load()
	if now-last < int64(r.every) || !r.lastCheck.CompareAndSwap(last, now) {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.stamp()
	if st == r.cur.Load().stamp || st == r.failed {
		return
	}
	_ = r.reloadLocked() // logged by reloadLocked
}

func (r *Reloader) reloadLocked() error {
	m, err := r.load()
	if err != nil {
		r.failed = m.stamp
		old := r.cur.Load().cert.Leaf
		r.log.Warn("tls reload failed, keeping previous certificate", "err", err, "serial", serial(old))
		return err
	}
	old := r.cur.Swap(m).cert.Leaf
	if !old.Equal(m.cert.Leaf) {
		r.log.Info("tls certificate reloaded", "identity", m.id.String(), "serial", serial(m.cert.Leaf),
			"not_after", m.cert.Leaf.NotAfter, "previous_serial", serial(old))
	}
	return nil
}

// load reads and checks all three files. The returned material is never nil;
// on error only its stamp is set.
func (r *Reloader) load() (*material, error) {
	st := r.stamp() // before reading, so a change during the read is seen next time
	m, err := loadMaterial(r.caFile, r.certFile, r.keyFile, time.Now())
	if err != nil {
		return &material{stamp: st}, err
	}
	m.stamp = st
	return m, nil
}

func (r *Reloader) stamp() fileStamp {
	var st fileStamp
	for i, p := range [...]string{r.caFile, r.certFile, r.keyFile} {
		if fi, err := os.Stat(p); err == nil {
			st[i] = fileStat{exists: true, size: fi.Size(), modTime: fi.ModTime().UnixNano()}
		}
	}
	return st
}

func loadMaterial(caFile, certFile, keyFile string, now time.Time) (*material, error) {
	pool, err := loadPool(caFile)
	if err != nil {
		return nil, err
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load key pair %s, %s: %w", certFile, keyFile, err)
	}
	leaf := pair.Leaf
	if _, err := checkValidity(leaf, now); err != nil {
		return nil, fmt.Errorf("certificate %s: %w", certFile, err)
	}
	id, err := IdentityFromCert(leaf)
	if err != nil {
		return nil, fmt.Errorf("certificate %s: %w", certFile, err)
	}
	chain, err := parseChain(pair.Certificate[1:])
	if err != nil {
		return nil, fmt.Errorf("certificate %s: chain: %w", certFile, err)
	}
	opts := verifyOptions(pool, chain, x509.ExtKeyUsageAny, now)
	if _, err := leaf.Verify(opts); err != nil {
		return nil, fmt.Errorf("certificate %s does not verify against %s: %w", certFile, caFile, err)
	}
	return &material{pool: pool, cert: &pair, id: id}, nil
}

func loadPool(caFile string) (*x509.CertPool, error) {
	certs, err := pemutil.ReadCertificateBundle(caFile)
	if err != nil {
		return nil, fmt.Errorf("load CA bundle: %w", err)
	}
	if len(certs) == 0 {
		return nil, errors.New("load CA bundle: " + caFile + " holds no certificates")
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}

// parseChain parses the certificates that follow the leaf in a key pair.
func parseChain(ders [][]byte) ([]*x509.Certificate, error) {
	certs := make([]*x509.Certificate, len(ders))
	for i, der := range ders {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, err
		}
		certs[i] = c
	}
	return certs, nil
}

func serial(c *x509.Certificate) string {
	if c == nil {
		return ""
	}
	return fmt.Sprintf("%x", c.SerialNumber)
}
