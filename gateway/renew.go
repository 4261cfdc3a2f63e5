package gateway

import (
	"context"

	"github.com/sitebridge/sitebridge/tlsgen"
)

// renewLoop renews this instance's certificate at the smallstep CA of
// tls.renew.ca-url until ctx ends (see [tlsgen.Renewer]): the renewed
// certificate is written to tls.cert and reloaded, so tunnels and
// connections stay up. Without tls.renew.ca-url, or without TLS, it
// returns at once.
func (in *Instance) renewLoop(ctx context.Context) {
	r := in.cfg.TLS.Renew
	if in.tls == nil || r.CAURL == "" {
		return
	}
	rn, err := tlsgen.NewRenewer(in.tls, r.CAURL, r.Before.D(), in.log.With("component", "tls-renew"))
	if err != nil {
		in.log.Error("certificate renewal is off", "err", err)
		return
	}
	rn.Run(ctx)
}
