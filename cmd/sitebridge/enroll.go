package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sitebridge/sitebridge/config"
	"github.com/sitebridge/sitebridge/tlsgen"
)

// enrollTimeout bounds one enrolment, the CA's answer included.
const enrollTimeout = time.Minute

// stringsFlag collects the values of a repeatable flag.
type stringsFlag []string

func (f *stringsFlag) String() string { return strings.Join(*f, ",") }

func (f *stringsFlag) Set(v string) error {
	*f = append(*f, v)
	return nil
}

// cmdEnroll gets an instance's first certificate from a smallstep CA with a
// one-time token (see tlsgen.Enroll) and writes NAME.crt and NAME.key.
func cmdEnroll(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := newFlags("enroll", stderr)
	caURL := fs.String("ca-url", "", "`URL` of the smallstep CA (step-ca), e.g. https://ca.example.com:9000")
	root := fs.String("root", "", "PEM `FILE` with the CA's root certificate; verifies the CA's TLS and the issued chain")
	token := fs.String("token", "", "the one-time `TOKEN` from 'step ca token' ('-' reads it from standard input)")
	tokenFile := fs.String("token-file", "", "read the one-time token from `FILE` instead")
	out := fs.String("out", "", "output `DIR` (created with mode 0700 if missing)")
	name := fs.String("name", "", "the `INSTANCE` the token must name, and the file names INSTANCE.crt, INSTANCE.key (default: the token's instance)")
	var dns, ips stringsFlag
	fs.Var(&dns, "dns", "a DNS `NAME` the token must authorize (repeatable); with --dns or --ip, the token's DNS and IP SANs must be exactly those given")
	fs.Var(&ips, "ip", "an IP `ADDRESS` the token must authorize (repeatable)")
	if err := parse(fs, args); err != nil {
		return err
	}
	switch {
	case *caURL == "":
		return fmt.Errorf("%w: --ca-url is required", errUsage)
	case *root == "":
		return fmt.Errorf("%w: --root is required (the CA's root certificate)", errUsage)
	case *out == "":
		return fmt.Errorf("%w: --out is required", errUsage)
	case (*token == "") == (*tokenFile == ""):
		return fmt.Errorf("%w: give the one-time token with exactly one of --token and --token-file", errUsage)
	}
	ott := *token
	switch {
	case *tokenFile != "":
		b, err := os.ReadFile(*tokenFile)
		if err != nil {
			return fmt.Errorf("read token: %w", err)
		}
		ott = string(b)
	case ott == "-":
		b, err := io.ReadAll(io.LimitReader(stdin, 64<<10))
		if err != nil {
			return fmt.Errorf("read token from standard input: %w", err)
		}
		ott = string(b)
	}
	ott = strings.TrimSpace(ott)

	ctx, cancel := context.WithTimeout(ctx, enrollTimeout)
	defer cancel()
	res, err := tlsgen.Enroll(ctx, tlsgen.Enrollment{
		CAURL: *caURL, RootFile: *root, Token: ott, Name: *name, DNS: dns, IPs: ips,
	})
	if err != nil {
		return err
	}
	file := *name
	if file == "" {
		file = res.Identity.Instance
	}
	certFile, keyFile, err := res.WriteFiles(*out, file)
	if err != nil {
		return err
	}
	leaf := res.Leaf()
	fmt.Fprintf(stdout, "identity     %s\n", res.Identity)
	fmt.Fprintf(stdout, "certificate  %s  serial %x, expires %s (in %s)\n", certFile, leaf.SerialNumber,
		leaf.NotAfter.UTC().Format(time.RFC3339), time.Until(leaf.NotAfter).Round(time.Second))
	fmt.Fprintf(stdout, "key          %s\n", keyFile)
	fmt.Fprintf(stdout, "\nIn this instance's config (tls.renew renews the certificate before it expires):\n\n%s", configSnippet(res.Identity, *root, certFile, keyFile, *caURL))
	return nil
}

// configSnippet is the part of an instance config that uses the enrolled
// files, with absolute paths.
func configSnippet(id tlsgen.Identity, root, cert, key, caURL string) string {
	abs := func(p string) string {
		if a, err := filepath.Abs(p); err == nil {
			return a
		}
		return p
	}
	var b strings.Builder
	fmt.Fprintf(&b, "instance: %s\nsite: %s\n", id.Instance, id.Site)
	if id.Tenant != "" {
		fmt.Fprintf(&b, "tenant: %s\n", id.Tenant)
	}
	if id.TrustDomain != config.DefaultTrustDomain {
		fmt.Fprintf(&b, "trust-domain: %s\n", id.TrustDomain)
	}
	fmt.Fprintf(&b, "tls:\n  ca: %s\n  cert: %s\n  key: %s\n  renew:\n    ca-url: %s\n", abs(root), abs(cert), abs(key), caURL)
	return b.String()
}
