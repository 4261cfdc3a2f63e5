package bench

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"time"

	"github.com/sitebridge/sitebridge/tlsgen"
)

// Reference path names, as in the progress lines; each has its own
// fields in [Figure].
const (
	refRelay    = "relay"     // two plain TCP relays: Figure.Relay
	refTLSRelay = "tls-relay" // two relays with mutual TLS between them: Figure.TLSRelay
)

// reference is a path measured beside direct and the tunnel for
// comparison.
type reference struct {
	name string // refRelay or refTLSRelay
	t    targets
}

// startReferences starts the reference relays that o asks for: the plain
// ones listening on hop(0) and hop(1), the TLS ones on hop(2) and hop(3).
// It returns their paths and a function that stops them all.
func startReferences(ctx context.Context, o Options, sp *spawner, dir, ip string, direct targets, hop func(i int) targets) ([]reference, func(), error) {
	var refs []reference
	var stops []func()
	stop := func() {
		for _, s := range stops {
			s()
		}
	}
	var chains []relayChain
	if o.RelayCopy > 0 {
		flag := fmt.Sprintf("-copy-buffer=%d", o.RelayCopy)
		if len(o.RelayArgv) > 0 {
			o.RelayArgv = append(slices.Clone(o.RelayArgv), flag)
		}
		if len(o.TLSRelayArgv) > 0 {
			o.TLSRelayArgv = append(slices.Clone(o.TLSRelayArgv), flag)
		}
	}
	if len(o.RelayArgv) > 0 {
		chains = append(chains, relayChain{name: refRelay, argv1: o.RelayArgv, argv2: o.RelayArgv})
	}
	if len(o.TLSRelayArgv) > 0 {
		flags, err := tlsRelayFlags(dir, ip)
		if err != nil {
			return nil, nil, err
		}
		chains = append(chains, relayChain{name: refTLSRelay, tls: true,
			argv1: append(slices.Clone(o.TLSRelayArgv), flags[0]...), argv2: append(slices.Clone(o.TLSRelayArgv), flags[1]...)})
	}
	for _, rc := range chains {
		i := 0
		if rc.tls {
			i = 2
		}
		t, s, err := rc.start(ctx, sp, dir, direct, hop(i), hop(i+1))
		if err != nil {
			stop()
			return nil, nil, err
		}
		stops = append(stops, s)
		refs = append(refs, reference{name: rc.name, t: t})
	}
	return refs, stop, nil
}

// relayChain is a reference path of two relay processes (see [Relay]) in
// a chain: client -> relay1 -> relay2 -> server.
type relayChain struct {
	name         string   // refRelay or refTLSRelay; the processes are name1 and name2
	argv1, argv2 []string // each relay's command line before its pairs
	tls          bool     // relay1 dials relay2 with mutual TLS
}

// start starts relay2 (listening on hop2, relaying to the servers at
// direct), then relay1 (listening on hop1, relaying to hop2), and waits
// until an echo goes through both. It returns the path through hop1 and
// a function that stops both processes.
func (rc relayChain) start(ctx context.Context, sp *spawner, dir string, direct, hop1, hop2 targets) (targets, func(), error) {
	scheme := ""
	if rc.tls {
		scheme = tlsScheme
	}
	var relays []*child
	stop := func() {
		for _, c := range relays {
			c.stop()
		}
	}
	for _, r := range []struct {
		n     int
		argv  []string
		pairs []string
	}{
		{2, rc.argv2, relayPairs(hop2, direct, scheme, "")},
		{1, rc.argv1, relayPairs(hop1, hop2, "", scheme)},
	} {
		name := fmt.Sprintf("%s%d", rc.name, r.n)
		c, err := startChild(sp, name, filepath.Join(dir, name+".log"), append(slices.Clone(r.argv), r.pairs...))
		if err != nil {
			stop()
			return targets{}, nil, err
		}
		relays = append(relays, c)
	}
	rd := &deployment{cloud: relays[1], onprem: relays[0]}
	if err := rd.waitReady(ctx, hop1.echo(), 10*time.Second); err != nil {
		stop()
		return targets{}, nil, fmt.Errorf("reference %ss: %w", rc.name, err)
	}
	hop1.procs = relays
	return hop1, stop, nil
}

// relayPairs are the relay arguments from each address of one path to the
// same server's address on another, with the given schemes ("" or
// tlsScheme).
func relayPairs(from, to targets, fromScheme, toScheme string) []string {
	pair := func(f, t string) string { return fromScheme + f + "=" + toScheme + t }
	return []string{pair(from.sinkAddr, to.sinkAddr), pair(from.echoAddr, to.echoAddr), pair(from.sourceAddr, to.sourceAddr)}
}

// tlsRelayFlags issues a certificate for each TLS relay with tlsgen in
// dir, from the CA deploy wrote there (Generate reuses it), and returns
// each relay's -tls-* flags. relay2, the TLS server, has ip as its IP SAN:
// relay1 checks it against the address it dials.
func tlsRelayFlags(dir, ip string) ([2][]string, error) {
	spec := tlsgen.Spec{Instances: []tlsgen.InstanceSpec{
		{Name: refTLSRelay + "1", Site: "bench"},
		{Name: refTLSRelay + "2", Site: "bench", IPs: []string{ip}},
	}}
	res, err := tlsgen.Generate(spec, dir, false)
	if err != nil {
		return [2][]string{}, fmt.Errorf("tlsgen for the TLS relays: %w", err)
	}
	var flags [2][]string
	for i, c := range res.Certs {
		flags[i] = []string{"-tls-cert", c.CertFile, "-tls-key", c.KeyFile, "-tls-ca", res.CAFile}
	}
	return flags, nil
}
