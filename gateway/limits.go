package gateway

import "sync"

// connLimits counts the connections open per service, and the streams
// peers of each tenant have open, against their limits.
type connLimits struct {
	mu        sync.Mutex
	tenantMax int // changed by reloads
	svc       map[string]int
	tenant    map[string]int
}

// setTenantMax changes the per-tenant limit (a reload); streams already
// open above a lowered limit stay open.
func (l *connLimits) setTenantMax(n int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.tenantMax = n
}

// Which limit refused a connection.
const (
	fullService = "service"
	fullTenant  = "tenant"
)

// acquire takes a slot of service (at most max open) and, for a stream
// from a peer (tenant key not empty), of its tenant. When either is full
// it takes nothing and says which.
func (l *connLimits) acquire(service, tenant string, max int) (full string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.svc[service] >= max {
		return fullService
	}
	if tenant != "" && l.tenant[tenant] >= l.tenantMax {
		return fullTenant
	}
	l.svc[service]++
	if tenant != "" {
		l.tenant[tenant]++
	}
	return ""
}

func (l *connLimits) release(service, tenant string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.svc[service]--
	if tenant != "" {
		l.tenant[tenant]--
	}
}
