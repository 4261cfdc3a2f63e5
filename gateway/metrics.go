package gateway

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are one instance's Prometheus metrics. The supervisor owns them,
// so counters survive a stop and start through the admin API; a nil
// *metrics (an Instance made without a supervisor) records nothing.
type metrics struct {
	reg *prometheus.Registry

	tunnelConnects    *prometheus.CounterVec
	tunnelDisconnects *prometheus.CounterVec
	streamsOpened     *prometheus.CounterVec
	streamsRefused    *prometheus.CounterVec
	connections       *prometheus.GaugeVec
	bytes             *prometheus.CounterVec
	openSeconds       *prometheus.HistogramVec
	failovers         *prometheus.CounterVec
	relays            *prometheus.CounterVec
	earlyOpens        *prometheus.CounterVec
	earlyBytes        *prometheus.CounterVec
}

func newMetrics(s *Supervisor) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	ns := "sitebridge"
	m.tunnelConnects = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "tunnel_connects_total",
		Help: "Tunnels established, by peer site."}, []string{"peer_site"})
	m.tunnelDisconnects = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "tunnel_disconnects_total",
		Help: "Tunnels ended, by peer site and reason (closed_by_peer, error, stopping)."}, []string{"peer_site", "reason"})
	m.streamsOpened = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "streams_opened_total",
		Help: "Service streams opened: role accept (a local client, out over a tunnel) or connect (from a peer, to the local target)."},
		[]string{"service", "role"})
	m.streamsRefused = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "streams_refused_total",
		Help: "Service streams refused, by role and reason (the reply code, or no_route for a client no route could take)."},
		[]string{"service", "role", "reason"})
	m.connections = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "connections_active",
		Help: "Forwarded connections open now."}, []string{"service", "role"})
	m.bytes = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "forwarded_bytes_total",
		Help: "Bytes forwarded by finished connections, by direction (to_peer: into the tunnel; from_peer: out of it)."},
		[]string{"service", "role", "direction"})
	m.openSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "stream_open_seconds",
		Help:    "Time to open a service stream for a client, failed routes and waits for a route included.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}}, []string{"service"})
	m.failovers = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "failovers_total",
		Help: "Client connections that got through on another route after a route failed."}, []string{"service"})
	m.relays = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "relayed_connections_total",
		Help: "Client connections relayed through another member of this site."}, []string{"service"})
	m.earlyOpens = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "early_data_opens_total",
		Help: "Client connections whose first bytes went with the stream header (services[].early-data)."}, []string{"service"})
	m.earlyBytes = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "early_data_bytes_total",
		Help: "Client bytes sent with stream headers (services[].early-data); also counted in forwarded_bytes_total."}, []string{"service"})
	m.reg.MustRegister(m.tunnelConnects, m.tunnelDisconnects, m.streamsOpened, m.streamsRefused, m.connections,
		m.bytes, m.openSeconds, m.failovers, m.relays, m.earlyOpens, m.earlyBytes,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&liveCollector{s: s})
	return m
}

func (m *metrics) tunnelUp(site string) {
	if m != nil {
		m.tunnelConnects.WithLabelValues(site).Inc()
	}
}

func (m *metrics) tunnelDown(site, reason string) {
	if m != nil {
		m.tunnelDisconnects.WithLabelValues(site, reason).Inc()
	}
}

func (m *metrics) opened(service, role string) {
	if m != nil {
		m.streamsOpened.WithLabelValues(service, role).Inc()
	}
}

func (m *metrics) refused(service, role, reason string) {
	if m != nil {
		m.streamsRefused.WithLabelValues(service, role, reason).Inc()
	}
}

func (m *metrics) openTook(service string, seconds float64, failedRoutes int, relayed bool) {
	if m == nil {
		return
	}
	m.openSeconds.WithLabelValues(service).Observe(seconds)
	if failedRoutes > 0 {
		m.failovers.WithLabelValues(service).Inc()
	}
	if relayed {
		m.relays.WithLabelValues(service).Inc()
	}
}

// earlyData counts a client connection whose first n bytes went with its
// stream header.
func (m *metrics) earlyData(service string, n int) {
	if m != nil {
		m.earlyOpens.WithLabelValues(service).Inc()
		m.earlyBytes.WithLabelValues(service).Add(float64(n))
	}
}

// conn counts a forwarded connection while it is open; done records its
// bytes.
func (m *metrics) conn(service, role string) (done func(toPeer, fromPeer int64)) {
	if m == nil {
		return func(int64, int64) {}
	}
	g := m.connections.WithLabelValues(service, role)
	g.Inc()
	return func(toPeer, fromPeer int64) {
		g.Dec()
		m.bytes.WithLabelValues(service, role, "to_peer").Add(float64(toPeer))
		m.bytes.WithLabelValues(service, role, "from_peer").Add(float64(fromPeer))
	}
}

// liveCollector reads what is true now at each scrape: tunnels up, cluster
// members, federation and journals.
type liveCollector struct{ s *Supervisor }

var (
	descTunnelsUp = prometheus.NewDesc("sitebridge_tunnels_up", "Live tunnels, by peer site and peer instance.",
		[]string{"peer_site", "peer"}, nil)
	descRunning = prometheus.NewDesc("sitebridge_instance_running", "1 while the instance runs, 0 while stopped through the admin API.",
		nil, nil)
	descMembers = prometheus.NewDesc("sitebridge_cluster_members", "Live members of this instance's site cluster, itself included.",
		nil, nil)
	descFedPending = prometheus.NewDesc("sitebridge_federation_pending_entries", "Journal entries this member has yet to ship to the participant.",
		[]string{"scheme", "participant"}, nil)
	descFedPendingBytes = prometheus.NewDesc("sitebridge_federation_pending_bytes", "Bytes of those entries.",
		[]string{"scheme", "participant"}, nil)
	descFedLag = prometheus.NewDesc("sitebridge_federation_lag_seconds", "Age of the oldest change this member has yet to ship to the participant.",
		[]string{"scheme", "participant"}, nil)
	descFedRate = prometheus.NewDesc("sitebridge_federation_send_rate", "Changes per second the participant acknowledged, last 10 s.",
		[]string{"scheme", "participant"}, nil)
	descFedState = prometheus.NewDesc("sitebridge_federation_participant_state", "1 for the participant's current state.",
		[]string{"scheme", "participant", "state"}, nil)
	descJournal = prometheus.NewDesc("sitebridge_federation_journal_bytes", "Journal bytes held by this member.",
		[]string{"scheme"}, nil)
)

func (c *liveCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descTunnelsUp, descRunning, descMembers, descFedPending, descFedPendingBytes,
		descFedLag, descFedRate, descFedState, descJournal} {
		ch <- d
	}
}

func (c *liveCollector) Collect(ch chan<- prometheus.Metric) {
	in := c.s.Current()
	if in == nil {
		ch <- prometheus.MustNewConstMetric(descRunning, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(descRunning, prometheus.GaugeValue, 1)
	up := map[[2]string]float64{}
	for _, p := range in.peers.all() {
		up[[2]string{p.hello.Site, p.hello.Instance}]++
	}
	for k, n := range up {
		ch <- prometheus.MustNewConstMetric(descTunnelsUp, prometheus.GaugeValue, n, k[0], k[1])
	}
	if in.cluster != nil {
		ch <- prometheus.MustNewConstMetric(descMembers, prometheus.GaugeValue, float64(len(in.cluster.Members())))
	}
	journal := map[string]float64{}
	for _, f := range in.store.LocalFedStatus() {
		l := []string{f.Scheme, f.Participant}
		ch <- prometheus.MustNewConstMetric(descFedPending, prometheus.GaugeValue, float64(f.Pending), l...)
		ch <- prometheus.MustNewConstMetric(descFedPendingBytes, prometheus.GaugeValue, float64(f.PendingBytes), l...)
		ch <- prometheus.MustNewConstMetric(descFedLag, prometheus.GaugeValue, f.LagSeconds, l...)
		ch <- prometheus.MustNewConstMetric(descFedRate, prometheus.GaugeValue, f.SendRate, l...)
		ch <- prometheus.MustNewConstMetric(descFedState, prometheus.GaugeValue, 1, f.Scheme, f.Participant, f.State)
		journal[f.Scheme] = float64(f.JournalBytes)
	}
	for scheme, b := range journal {
		ch <- prometheus.MustNewConstMetric(descJournal, prometheus.GaugeValue, b, scheme)
	}
}
