package config

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// testFile is the file name used for parsed snippets; it is absolute so
// that resolved TLS paths in the golden files do not depend on the
// working directory.
const testFile = "/etc/sitebridge/sitebridge.yaml"

// validConfig is a good config; it produces testdata/<name>.golden.
type validConfig struct {
	name string
	yaml string
	// check makes extra assertions on the parsed config.
	check func(t *testing.T, c *Config)
}

// validConfigs are checked by TestParseValid, together with
// fedValidConfigs.
var validConfigs = []validConfig{
	{
		name: "accepting-minimal",
		yaml: `
instance: cloud-0
site: cloud
tls:
  ca: tls/ca.crt
  cert: tls/cloud-0.crt
  key: /abs/cloud-0.key
tunnel:
  listen: ":8443"
peers:
  - site: onprem
`,
		check: func(t *testing.T, c *Config) {
			if !c.Accepting() {
				t.Error("Accepting() = false")
			}
			if got := c.PeerSites(); !reflect.DeepEqual(got, []string{"onprem"}) {
				t.Errorf("PeerSites() = %q", got)
			}
			if c.Tunnel.Keepalive.D() != time.Second || c.Tunnel.DeadAfter.D() != 3*time.Second {
				t.Errorf("dev timing defaults: keepalive %v dead-after %v", c.Tunnel.Keepalive, c.Tunnel.DeadAfter)
			}
			if c.TLS.CA != "/etc/sitebridge/tls/ca.crt" || c.TLS.Key != "/abs/cloud-0.key" {
				t.Errorf("tls paths: %+v", c.TLS)
			}
			want := Store{
				Partitions:     DefaultPartitions,
				MaxValueSize:   DefaultMaxValueSize,
				RequestTimeout: Duration(DefaultRequestTimeout),
				JournalRetain:  DefaultJournalRetain,
				Schemes:        []Scheme{{Name: DefaultScheme, BackupCount: new(DefaultBackupCount)}},
				Caches:         []CacheMapping{{Pattern: "*", Scheme: DefaultScheme}},
			}
			if !reflect.DeepEqual(c.Store, want) {
				t.Errorf("store defaults:\n%+v\nwant\n%+v", c.Store, want)
			}
		},
	},
	{
		name: "connecting-minimal",
		yaml: `
instance: onprem-0
site: onprem
tls: {insecure: true}
peers:
  - site: cloud
    urls: [ws://cloud.example.com:8080/sitebridge, "wss://[::1]:8443/sitebridge"]
services:
  - name: server-a
    connect: server-a.example.org:5551
  - name: server-b
    accept: 0.0.0.0:6661
`,
		check: func(t *testing.T, c *Config) {
			if c.Accepting() {
				t.Error("Accepting() = true")
			}
			if c.Services[0].IsAccept() || !c.Services[1].IsAccept() {
				t.Errorf("IsAccept wrong: %+v", c.Services)
			}
			if c.Services[1].DialTimeout.D() != 5*time.Second {
				t.Errorf("service dial-timeout default = %v", c.Services[1].DialTimeout)
			}
		},
	},
	{
		name: "prod-full",
		yaml: `
# every key set
instance: cloud-1
site: cloud
tenant: acme
trust-domain: corp.example.com
mode: prod
tls:
  ca: ../ca.crt
  cert: ./cloud-1.crt
  key: cloud-1.key
  insecure: false
  renew:
    ca-url: https://ca.corp.example.com:9000/
    before: 8h
tunnel:
  listen: 10.0.0.5:8443
  path: /tunnels/v1
  advertise: wss://cloud-1.example.com:443/tunnels/v1
  # keepalive and dead-after take the prod defaults
  dial-timeout: 2s
  backoff-min: 250ms
  backoff-max: 1m
peers:
  - site: onprem-a
  - site: onprem-b
    urls: []
services:
  - name: db.primary_1
    accept: 127.0.0.1:5432
    dial-timeout: 1500ms
admin:
  listen: "[::]:0"
  token: s3cret
log:
  level: debug
  format: json
limits:
  handshake-timeout: 20s
  hello-timeout: 2s
  max-streams-per-tunnel: 1_000
  max-message-size: 0x10000
  open-timeout: 30s
  idle-timeout: 1h
store:
  partitions: 1021
  max-value-size: 4MiB
  request-timeout: 30s
  journal-retain: 0        # explicit zero: kept
  scope: acme.prod_1
  schemes:
    - name: trades
      backup-count: 0      # explicit zero: kept
      expiry: 24h
      federation: active-active
    - name: ref-data
      backup-count: 6
  caches:
    - pattern: "trades-*"
      scheme: trades
    - pattern: "*.ref"
      scheme: ref-data
federation:
  participants:
    - site: onprem-a
      initial-action: pause
    - site: onprem-b
      initial-action: start-with-no-backlog
  topologies:
    - name: active-active
      type: active-active
      sites: [cloud, onprem-a, onprem-b]
    - name: to-onprem
      type: hub-and-spoke
      hub: cloud
      spokes: [onprem-a, onprem-b]
  journal:
    limit: 1GiB
    policy: error
    block-wait: 0s
    auto-replicate-all: false
  batch-size: 1_000
  send-interval: 10ms
`,
		check: func(t *testing.T, c *Config) {
			if r := c.TLS.Renew; r.CAURL != "https://ca.corp.example.com:9000/" || r.Before.D() != 8*time.Hour {
				t.Errorf("tls.renew = %+v", r)
			}
			s := c.Store
			if s.Partitions != 1021 || s.MaxValueSize != 4<<20 || s.RequestTimeout.D() != 30*time.Second ||
				s.JournalRetain != 0 || s.Scope != "acme.prod_1" {
				t.Errorf("store = %+v", s)
			}
			if got := []int{s.Schemes[0].Backups(), s.Schemes[1].Backups()}; !reflect.DeepEqual(got, []int{0, 6}) {
				t.Errorf("backup counts = %v, want [0 6]", got)
			}
			if sc, ok := s.SchemeFor("trades-eu"); !ok || sc.Name != "trades" || sc.Expiry.D() != 24*time.Hour || sc.Federation != "active-active" {
				t.Errorf("SchemeFor(trades-eu) = %+v, %v", sc, ok)
			}
			if sc, ok := s.SchemeFor("prices"); ok {
				t.Errorf("SchemeFor(prices) = %+v, want no match", sc)
			}
			if c.Tunnel.Keepalive.D() != 10*time.Second || c.Tunnel.DeadAfter.D() != 30*time.Second {
				t.Errorf("prod timing defaults: keepalive %v dead-after %v", c.Tunnel.Keepalive, c.Tunnel.DeadAfter)
			}
			if c.Peers[1].URLs != nil {
				t.Errorf("urls: [] should decode as nil, got %#v", c.Peers[1].URLs)
			}
			if c.Limits.MaxStreamsPerTunnel != 1000 || c.Limits.MaxMessageSize != 65536 {
				t.Errorf("limits: %+v", c.Limits)
			}
			f := c.Federation
			if f.Journal.Limit != 1<<30 || f.Journal.Policy != PolicyError || f.Journal.AutoReplicate() ||
				f.BatchSize != 1000 || f.SendInterval.D() != 10*time.Millisecond {
				t.Errorf("federation = %+v", f)
			}
			if p, ok := f.Participant("onprem-b"); !ok || p.InitialAction != InitialNoBacklog {
				t.Errorf("Participant(onprem-b) = %+v, %v", p, ok)
			}
		},
	},
	{
		name: "anchors-and-nulls",
		yaml: `
instance: edge-0
site: edge
tenant:            # null: same as absent
tls: {insecure: true}
tunnel:
  listen: localhost:9000
  keepalive: &ka 2s
  dead-after: 7s
  dial-timeout: *ka
peers:
  - &hub {site: hub, urls: ["ws://hub:9000/sitebridge"]}
services:
log: {}
`,
	},
	{
		name: "store-schemes-only",
		yaml: `
instance: cloud-0
site: cloud
tls: {insecure: true}
tunnel: {listen: ":8443"}
peers: [{site: onprem}]
store:
  max-value-size: 1536   # not a whole KiB: marshalled as bytes
  request-timeout: 1m
  schemes:
    - name: trades       # backup-count left out: 1
      federation: active-active
    - name: sessions
      backup-count: 2
      expiry: 30m
federation:
  participants: [{site: onprem}]
  topologies: [{name: active-active, type: active-active, sites: [onprem, cloud]}]
`,
		check: func(t *testing.T, c *Config) {
			s := c.Store
			if s.MaxValueSize != 1536 || s.Partitions != DefaultPartitions || s.JournalRetain != DefaultJournalRetain {
				t.Errorf("store = %+v", s)
			}
			// Caches left out: every name maps to the first scheme.
			if want := []CacheMapping{{Pattern: "*", Scheme: "trades"}}; !reflect.DeepEqual(s.Caches, want) {
				t.Errorf("caches = %+v, want %+v", s.Caches, want)
			}
			if s.Schemes[0].BackupCount == nil || s.Schemes[0].Backups() != 1 || s.Schemes[1].Backups() != 2 {
				t.Errorf("schemes = %+v", s.Schemes)
			}
			if sc, ok := s.SchemeFor("anything"); !ok || sc.Name != "trades" {
				t.Errorf("SchemeFor(anything) = %+v, %v", sc, ok)
			}
		},
	},
}

func TestParseValid(t *testing.T) {
	for _, tc := range slices.Concat(validConfigs, fedValidConfigs) {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse(testFile, []byte(tc.yaml))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if tc.check != nil {
				tc.check(t, c)
			}
			out, err := c.Marshal()
			if err != nil {
				t.Fatalf("Marshal: %v", err)
			}
			golden := filepath.Join("testdata", tc.name+".golden")
			if *update {
				if err := os.WriteFile(golden, out, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if !bytes.Equal(out, want) {
				t.Errorf("Marshal output differs from %s (run go test -update):\n--- got\n%s--- want\n%s", golden, out, want)
			}
			c2, err := Parse(testFile, out)
			if err != nil {
				t.Fatalf("re-Parse of Marshal output: %v", err)
			}
			if !reflect.DeepEqual(c, c2) {
				t.Errorf("re-Parse differs:\n%+v\n%+v", c, c2)
			}
			if err := c.Validate(); err != nil {
				t.Errorf("Validate on an effective config: %v", err)
			}
		})
	}
}

// invalidConfig is a bad config with every expected error as
// "line: path: message substring", in the order reported.
type invalidConfig struct {
	name string
	yaml string
	want []string
}

// invalidConfigs are checked by TestParseInvalid, together with
// fedInvalidConfigs.
var invalidConfigs = []invalidConfig{
	{
		name: "tls-renew",
		yaml: `instance: cloud1
site: cloud
tls:
  ca: ca.pem
  cert: c.pem
  key: k.pem
  renew:
    ca-url: http://ca.example.com:9000
tunnel: {listen: ":8443"}
peers: [{site: onprem}]
`,
		want: []string{
			`8: tls.renew.ca-url: invalid URL "http://ca.example.com:9000": scheme must be https`,
		},
	},
	{
		name: "tls-renew-before-only",
		yaml: `instance: cloud1
site: cloud
tls: {ca: ca.pem, cert: c.pem, key: k.pem, renew: {before: 1h}}
tunnel: {listen: ":8443"}
peers: [{site: onprem}]
`,
		want: []string{
			`3: tls.renew.before: is set but tls.renew.ca-url is empty`,
		},
	},
	{
		name: "tls-renew-insecure",
		yaml: `instance: cloud1
site: cloud
tls:
  insecure: true
  renew: {ca-url: "https://ca.example.com?x=1"}
tunnel: {listen: ":8443"}
peers: [{site: onprem}]
`,
		want: []string{
			`5: tls.renew: must not be set with tls.insecure: true`,
		},
	},
	{
		name: "tls-renew-negative",
		yaml: `instance: cloud1
site: cloud
tls: {ca: ca.pem, cert: c.pem, key: k.pem, renew: {ca-url: "https://ca.example.com?x=1", before: -1s}}
tunnel: {listen: ":8443"}
peers: [{site: onprem}]
`,
		want: []string{
			`3: tls.renew.ca-url: invalid URL "https://ca.example.com?x=1": must not contain a query or fragment`,
			`3: tls.renew.before: invalid duration "-1s": must not be negative`,
		},
	},
	{
		name: "tls-renew-url",
		yaml: `instance: cloud1
site: cloud
tls:
  ca: ca.pem
  cert: c.pem
  key: k.pem
  renew: {ca-url: "https://user@ca.example.com:99999/#frag"}
tunnel: {listen: ":8443"}
peers: [{site: onprem}]
`,
		want: []string{
			`7: tls.renew.ca-url: invalid URL "https://user@ca.example.com:99999/#frag": must not contain user information`,
		},
	},
	{
		name: "cluster",
		yaml: `instance: cloud1
site: cloud
tls: {ca: ca.pem, cert: c.pem, key: k.pem}
tunnel: {listen: ":8443"}
peers: [{site: onprem}]
cluster:
  name: "has space"
  bind: "0.0.0.0:8443"
  join: ["nohost", "ok.example.com:7946"]
`,
		want: []string{
			`6: cluster.gossip-key: is required unless tls.insecure is true`,
			`7: cluster.name: invalid cluster name "has space"`,
			`8: cluster.bind: address 0.0.0.0:8443 conflicts with tunnel.listen (:8443)`,
			`9: cluster.join[0]: invalid address "nohost"`,
		},
	},
	{
		name: "store",
		yaml: `instance: a
site: b
tls: {insecure: true}
tunnel: {listen: ":8443"}
peers: [{site: c}]
store:
  partitions: 8192
  max-value-size: 65MiB
  request-timeout: 0s
  journal-retain: -1
  scope: "has space"
  schemes:
    - name: trades
      backup-count: 7
      federation: Active_Active
    - name: trades
      backup-count: -1
    - name: Bad
      expiry: -1s
  caches:
    - pattern: "trades-*"
      scheme: trade
    - pattern: "trades-*"
      scheme: trades
    - pattern: "trades/*"
      scheme: Bad
    - scheme: nope
    - pattern: "*"
    - pattern: "x*"
      scheme: trades
`,
		want: []string{
			`7: store.partitions: must be from 1 to 8191, got 8192`,
			`8: store.max-value-size: must be from 1KiB to 64MiB, got 65MiB`,
			`9: store.request-timeout: must be greater than 0, got 0s`,
			`10: store.journal-retain: must not be negative, got -1`,
			`11: store.scope: invalid scope "has space"`,
			`14: store.schemes[0].backup-count: must be from 0 to 6, got 7`,
			`15: store.schemes[0].federation: invalid name "Active_Active"`,
			`16: store.schemes[1].name: duplicate scheme name "trades" (also store.schemes[0])`,
			`17: store.schemes[1].backup-count: must be from 0 to 6, got -1`,
			`18: store.schemes[2].name: invalid name "Bad"`,
			`19: store.schemes[2].expiry: invalid duration "-1s": must not be negative`,
			`22: store.caches[0].scheme: unknown scheme "trade" (did you mean "trades"?)`,
			`23: store.caches[1].pattern: duplicate pattern "trades-*" (also store.caches[0])`,
			`25: store.caches[2].pattern: invalid pattern "trades/*"`,
			`27: store.caches[3].pattern: is required`,
			`27: store.caches[3].scheme: unknown scheme "nope" (defined: "trades", "Bad")`,
			`28: store.caches[4].scheme: is required`,
			`29: store.caches[5].pattern: pattern "x*" is never used: every name it matches matches store.caches[4] ("*") first`,
		},
	},
	{
		name: "store-types",
		yaml: `instance: a
site: b
tls: {insecure: true}
tunnel: {listen: ":8443"}
peers: [{site: c}]
store:
  partitions: many
  max-value-size: 1MB
  request-timeout: [1s]
  scope: [a]
  schemes:
    - name: x
      backup-count: one
    - name: [y]
    -
  caches: "*"
`,
		want: []string{
			`7: store.partitions: expected an integer, got "many"`,
			`8: store.max-value-size: invalid byte size "1MB": use KiB, MiB or GiB`,
			`9: store.request-timeout: expected a duration such as "5s", got a list`,
			`10: store.scope: expected a string, got a list`,
			`13: store.schemes[0].backup-count: expected an integer, got "one"`,
			`14: store.schemes[1].name: expected a string, got a list`,
			`15: store.schemes[2]: empty list item`,
			`16: store.caches: expected a list, got "*"`,
		},
	},
	{
		// The default mapping "*" goes to the first scheme, which has no
		// name: only the missing name is reported.
		name: "store-unnamed-first-scheme",
		yaml: `instance: a
site: b
tls: {insecure: true}
tunnel: {listen: ":8443"}
peers: [{site: c}]
store:
  schemes:
    - backup-count: 0
    - name: trades
`,
		want: []string{
			`8: store.schemes[0].name: is required`,
		},
	},
	{
		name: "store-explicit-zeros",
		yaml: `instance: a
site: b
tls: {insecure: true}
tunnel: {listen: ":8443"}
peers: [{site: c}]
store:
  partitions: 0
  max-value-size: 0
  schemes: []
  caches:
    - pattern: "*"
      scheme: trades
`,
		want: []string{
			`7: store.partitions: must be from 1 to 8191, got 0`,
			`8: store.max-value-size: must be from 1KiB to 64MiB, got 0`,
			`12: store.caches[0].scheme: unknown scheme "trades" (defined: "default")`,
		},
	},
	{
		name: "cluster-keys-without-name",
		yaml: `instance: cloud1
site: cloud
tls: {ca: ca.pem, cert: c.pem, key: k.pem}
tunnel: {listen: ":8443"}
peers: [{site: onprem}]
cluster:
  join: ["a.example.com:7946"]
`,
		want: []string{
			`6: cluster.name: is required when any other cluster key is set`,
		},
	},
	{
		name: "several-errors-at-once",
		yaml: `instance: Cloud_0
site: cloud
mode: staging
tls:
  ca: ca.pem
tunnel:
  listen: ":8443"
  keepalive: 5s
  dead-after: 2s
peers:
  - site: cloud
`,
		want: []string{
			`1: instance: invalid name "Cloud_0"`,
			`3: mode: must be "dev" or "prod", got "staging"`,
			`4: tls.cert: is required unless tls.insecure is true`,
			`4: tls.key: is required unless tls.insecure is true`,
			`9: tunnel.dead-after: must be greater than tunnel.keepalive (5s), got 2s`,
			`11: peers[0].site: must differ from this instance's site "cloud"`,
		},
	},
	{
		name: "unknown-keys",
		yaml: `instance: a
site: b
colour: blue
tls:
  insecure: true
tunnel:
  listen: ":8443"
  dead_after: 3s
  listne: x
  extra:
    deeper: 1
peers:
  - site: c
    url: wss://c:1/x
`,
		want: []string{
			`3: colour: unknown key`,
			`8: tunnel.dead_after: unknown key (did you mean "dead-after"?)`,
			`9: tunnel.listne: unknown key (did you mean "listen"?)`,
			`10: tunnel.extra: unknown key`,
			`14: peers[0].url: unknown key (did you mean "urls"?)`,
		},
	},
	{
		name: "wrong-types",
		yaml: `instance: [a, b]
site: {x: 1}
tls:
  insecure: yes
  ca: [x]
tunnel: ":8443"
peers: onprem
limits:
  max-streams-per-tunnel: lots
  max-message-size: 1.5
  open-timeout: [1s]
`,
		want: []string{
			`1: instance: expected a string, got a list`,
			`2: site: expected a string, got a mapping`,
			// insecure did not decode, so the TLS files count as missing.
			`3: tls.cert: is required`,
			`3: tls.key: is required`,
			`4: tls.insecure: expected true or false, got "yes"`,
			`5: tls.ca: expected a string, got a list`,
			`6: tunnel: expected a mapping, got ":8443"`,
			`7: peers: expected a list, got "onprem"`,
			`9: limits.max-streams-per-tunnel: expected an integer, got "lots"`,
			`10: limits.max-message-size: expected an integer, got "1.5"`,
			`11: limits.open-timeout: expected a duration`,
		},
	},
	{
		name: "bad-durations",
		yaml: `instance: a
site: b
tls: {insecure: true}
tunnel:
  listen: ":8443"
  keepalive: abc
  dead-after: 5
  dial-timeout: -1s
  backoff-min: 0s
  backoff-max: 0
peers: [{site: c}]
limits:
  idle-timeout: 0
  hello-timeout: 1.5
`,
		want: []string{
			`6: tunnel.keepalive: invalid duration "abc"`,
			`7: tunnel.dead-after: invalid duration "5"`,
			`8: tunnel.dial-timeout: must not be negative`,
			`9: tunnel.backoff-min: must be greater than 0, got 0s`,
			`10: tunnel.backoff-max: must be greater than 0, got 0s`,
			`14: limits.hello-timeout: invalid duration "1.5"`,
		},
	},
	{
		name: "bad-tunnel-connections",
		yaml: `instance: a
site: b
tls: {insecure: true}
tunnel:
  listen: ":8443"
  connections: 17
peers: [{site: c}]
`,
		want: []string{
			`6: tunnel.connections: must be from 1 to 16, got 17`,
		},
	},
	{
		name: "zero-tunnel-connections",
		yaml: `instance: a
site: b
tls: {insecure: true}
tunnel: {listen: ":8443", connections: 0}
peers: [{site: c}]
`,
		want: []string{
			`4: tunnel.connections: must be from 1 to 16, got 0`,
		},
	},
	{
		name: "bad-urls",
		yaml: `instance: a
site: b
tls: {ca: c, cert: c, key: k}
tunnel:
  listen: ":8443"
  advertise: https://a.example.com:8443/sitebridge
peers:
  - site: c
    urls:
      - ws://c.example.com:80/sitebridge
      - wss://c.example.com/sitebridge
      - wss://c.example.com:8443
      - wss://user@c.example.com:8443/x
      - wss://c.example.com:99999/x
      - wss://c.example.com:8443/x?y=1
      - "wss:// bad"
`,
		want: []string{
			`6: tunnel.advertise: scheme must be wss`,
			`10: peers[0].urls[0]: scheme ws requires tls.insecure`,
			`11: peers[0].urls[1]: an explicit port is required`,
			`12: peers[0].urls[2]: the tunnel path is required`,
			`13: peers[0].urls[3]: must not contain user information`,
			`14: peers[0].urls[4]: port must be a number from 1 to 65535`,
			`15: peers[0].urls[5]: must not contain a query or fragment`,
			`16: peers[0].urls[6]: invalid URL`,
		},
	},
	{
		name: "services",
		yaml: `instance: a
site: b
tls: {insecure: true}
tunnel: {listen: ":8443"}
peers: [{site: c}, {site: c}, {site: "-x"}]
services:
  - name: web
    accept: ":8080"
  - name: web
    connect: web.internal:80
  - name: both
    accept: ":81"
    connect: x:81
  - name: neither
  - name: "bad name!"
    accept: 0.0.0.0:8080
  - accept: 127.0.0.1:8443
  - name: nohost
    connect: ":80"
  - name: badport
    accept: ":http"
  - name: zero
    accept: "localhost:0"
  - name: early
    connect: db:5432
    early-data: true
`,
		want: []string{
			`5: peers[1].site: duplicate peer site "c" (also peers[0])`,
			`5: peers[2].site: invalid name "-x"`,
			`9: services[1].name: duplicate service name "web" (also services[0])`,
			`11: services[2]: exactly one of accept or connect must be set, got both`,
			`14: services[3]: exactly one of accept or connect must be set, got neither`,
			`15: services[4].name: invalid service name "bad name!"`,
			`16: services[4].accept: address 0.0.0.0:8080 conflicts with services[0].accept (:8080)`,
			`17: services[5].name: is required`,
			`17: services[5].accept: address 127.0.0.1:8443 conflicts with tunnel.listen (:8443)`,
			`19: services[6].connect: host is required`,
			`21: services[7].accept: port must be a number from 1 to 65535`,
			`23: services[8].accept: port must be a number from 1 to 65535`,
			`26: services[9].early-data: applies only to accept services (the side that takes clients sends it); this service connects db:5432`,
		},
	},
	{
		name: "tls-keys-missing",
		yaml: `instance: a
site: b
tunnel: {listen: ":8443"}
peers: [{site: c}]
`,
		want: []string{
			`1: tls.ca: is required unless tls.insecure is true`,
			`1: tls.cert: is required unless tls.insecure is true`,
			`1: tls.key: is required unless tls.insecure is true`,
		},
	},
	{
		name: "admin-exposed-without-token",
		yaml: `instance: a
site: b
tls: {insecure: true}
tunnel: {listen: ":8443"}
peers: [{site: c}]
admin:
  listen: 0.0.0.0:9100
`,
		want: []string{
			`6: admin.token: is required when admin.listen (0.0.0.0:9100) is not a loopback address`,
		},
	},
	{
		name: "duplicate-keys",
		yaml: `instance: a
site: b
instance: c
tls: {insecure: true, insecure: false}
tunnel: {listen: ":8443"}
peers: [{site: c, site: d}]
`,
		want: []string{
			`3: instance: duplicate key (first defined at line 1)`,
			`4: tls.insecure: duplicate key (first defined at line 4)`,
			`6: peers[0].site: duplicate key (first defined at line 6)`,
		},
	},
	{
		name: "required-and-neither",
		yaml: `# no names, no listener, no urls
tls: {insecure: true}
tunnel:
  advertise: ws://me:1/sitebridge
peers:
  - site: c
`,
		want: []string{
			`2: instance: is required`,
			`2: site: is required`,
			`4: tunnel.advertise: is set but tunnel.listen is empty`,
			`5: peers: instance neither accepts tunnels (tunnel.listen) nor dials any (peers[].urls)`,
		},
	},
	{
		name: "connecting-peer-without-urls",
		yaml: `instance: a
site: b
tls: {insecure: true}
peers:
  - site: c
    urls: [ws://c:1/x]
  - site: d
`,
		want: []string{
			`7: peers[1].urls: required: this instance does not accept tunnels`,
		},
	},
	{
		name: "no-peers-and-explicit-zeros",
		yaml: `instance: a
site: b
trust-domain: ""
tls: {insecure: true}
tunnel: {listen: "[::1]:8443", path: sitebridge}
peers: []
admin: {listen: ""}
log: {level: verbose, format: xml}
limits:
  max-streams-per-tunnel: 0
  max-message-size: 1000
`,
		want: []string{
			`3: trust-domain: invalid trust domain ""`,
			`5: tunnel.path: must start with "/"`,
			`6: peers: at least one peer is required`,
			`7: admin.listen: must not be empty`,
			`8: log.level: must be one of debug, info, warn, error; got "verbose"`,
			`8: log.format: must be text or json, got "xml"`,
			`10: limits.max-streams-per-tunnel: must be greater than 0, got 0`,
			`11: limits.max-message-size: must be at least 65536`,
		},
	},
	{
		name: "structure",
		yaml: `instance: a
site: b
<<: {x: 1}
? [complex]
: key
tls:
  insecure: true
  ca: "bell\a"
tunnel: {listen: ":1"}
peers:
  -
  - site: c
`,
		want: []string{
			`3: : merge keys (<<) are not supported`,
			`4: : expected a string key, got a list`,
			`8: tls.ca: contains non-printable characters`,
			`11: peers[0]: empty list item`,
		},
	},
	{
		name: "tenants-on-a-tenant-instance",
		yaml: `instance: a
site: b
tenant: acme
tls: {insecure: true}
tunnel: {listen: ":8443"}
peers:
  - site: c
  - site: d
    tenant: globex
  - site: e
    tenant: "Bad"
services:
  - name: web
    accept: ":8080"
  - name: db
    tenant: globex
    connect: db:5432
`,
		want: []string{
			`9: peers[1].tenant: is "globex", but this instance belongs to tenant "acme"`,
			`11: peers[2].tenant: invalid name "Bad"`,
			`16: services[1].tenant: is "globex", but this instance belongs to tenant "acme"`,
		},
	},
	{
		name: "tenants-on-a-shared-instance",
		yaml: `instance: a
site: b
tls: {insecure: true}
tunnel: {listen: ":8443"}
peers:
  - site: c
    tenant: acme
  - site: d
    tenant: globex
services:
  - name: db
    tenant: acme
    accept: ":8080"
  - name: db
    tenant: globex
    accept: ":8081"
  - name: db
    tenant: acme
    connect: db:5432
  - name: api
    tenant: initech
    accept: ":8082"
  - name: own
    accept: ":8083"
`,
		want: []string{
			`17: services[2].name: duplicate service name "db" of tenant "acme" (also services[0])`,
			`21: services[3].tenant: no peer site of tenant "initech"`,
			`23: services[4].tenant: is not set, and every peer site names a tenant`,
		},
	},
	{name: "empty", yaml: "", want: []string{`0: : empty config file`}},
	{name: "comments-only", yaml: "# nothing\n\n", want: []string{`0: : empty config file`}},
	{name: "null-document", yaml: "---\n~\n", want: []string{`2: : empty config file`}},
	{name: "top-level-list", yaml: "- a\n- b\n", want: []string{`1: : expected a mapping at the top level, got a list`}},
	{name: "syntax-error", yaml: "instance: a\nsite: b\n  tls: x\n", want: []string{`3: : invalid YAML: mapping values are not allowed`}},
	{name: "syntax-error-line-1", yaml: "instance: [a\n", want: []string{`1: : invalid YAML:`}},
	{name: "tab-indent", yaml: "instance: a\ntls:\n\tinsecure: true\n", want: []string{`3: : invalid YAML: found character that cannot start any token`}},
	{name: "unknown-anchor", yaml: "instance: a\nsite: *nope\n", want: []string{`2: : invalid YAML: unknown anchor 'nope' referenced`}},
	{name: "multiple-documents", yaml: "instance: a\n---\nsite: b\n", want: []string{`2: : multiple YAML documents`}},
}

func TestParseInvalid(t *testing.T) {
	for _, tc := range slices.Concat(invalidConfigs, fedInvalidConfigs) {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse("bad.yaml", []byte(tc.yaml))
			if err == nil {
				t.Fatalf("Parse succeeded: %+v", c)
			}
			if c != nil {
				t.Errorf("Parse returned a config with an error")
			}
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("error %T is not Errors: %v", err, err)
			}
			var got []string
			for _, e := range errs {
				got = append(got, fmt.Sprintf("%d: %s: %s", e.Line, e.Path, e.Msg))
				if e.File != "bad.yaml" {
					t.Errorf("error %q has File %q", e, e.File)
				}
			}
			ok := len(got) == len(tc.want)
			for i := 0; ok && i < len(got); i++ {
				ok = matches(got[i], tc.want[i])
			}
			if !ok {
				t.Errorf("errors:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(tc.want, "\n  "))
			}
		})
	}
}

// matches reports whether got ("line: path: msg") has the line and path of
// want and contains want's message.
func matches(got, want string) bool {
	w := strings.SplitN(want, ": ", 3)
	g := strings.SplitN(got, ": ", 3)
	return len(w) == 3 && len(g) == 3 && g[0] == w[0] && g[1] == w[1] && strings.Contains(g[2], w[2])
}

func TestExcessiveAliasing(t *testing.T) {
	var b strings.Builder
	b.WriteString("instance: a\nsite: b\ntls: {insecure: true}\npeers:\n  - &p {site: c, urls: &u [")
	for i := range 2000 {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("ws://c:1/x")
	}
	b.WriteString("]}\n")
	for range 1000 {
		b.WriteString("  - *p\n")
	}
	start := time.Now()
	_, err := Parse("bomb.yaml", []byte(b.String()))
	var errs Errors
	if !errors.As(err, &errs) || len(errs) != 1 || !strings.Contains(errs[0].Msg, "excessive aliasing") {
		t.Errorf("Parse = %.200v, want an excessive aliasing error", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Parse took %v", d)
	}
}

func TestErrorFormat(t *testing.T) {
	_, err := Parse("cfg.yaml", []byte("instance: a\nsite: b\ntls: {insecure: true}\ntunnel: {listen: ':1', keepalive: x}\npeers: [{site: c}]\nfoo: 1\n"))
	want := `cfg.yaml:4:35: tunnel.keepalive: invalid duration "x" (want e.g. "500ms", "5s", "2m")` + "\n" +
		`cfg.yaml:6:1: foo: unknown key`
	if err == nil || err.Error() != want {
		t.Errorf("error:\n%v\nwant:\n%s", err, want)
	}
	var e *Error
	if !errors.As(err, &e) || e.Line != 4 {
		t.Errorf("errors.As(*Error) = %v", e)
	}
	for _, tc := range []struct {
		e    Error
		want string
	}{
		{Error{File: "f", Msg: "empty config file"}, "f: empty config file"},
		{Error{Path: "a.b", Msg: "m"}, "a.b: m"},
		{Error{File: "f", Line: 3, Path: "p", Msg: "m"}, "f:3: p: m"},
		{Error{Line: 3, Column: 2, Msg: "m"}, "3:2: m"},
	} {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("%+v.Error() = %q, want %q", tc.e, got, tc.want)
		}
	}
}

func TestRelativeTLSPaths(t *testing.T) {
	dir := t.TempDir()
	sub := filepath.Join(dir, "etc")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(sub, "sitebridge.yaml")
	data := "instance: a\nsite: b\ntls:\n  ca: ../ca.pem\n  cert: tls/a.crt\n  key: /abs/a.key\ntunnel: {listen: ':1'}\npeers: [{site: c}]\n"
	if err := os.WriteFile(file, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Load(file)
	if err != nil {
		t.Fatal(err)
	}
	want := TLS{CA: filepath.Join(dir, "ca.pem"), Cert: filepath.Join(sub, "tls", "a.crt"), Key: "/abs/a.key"}
	if c.TLS != want {
		t.Errorf("TLS = %+v, want %+v", c.TLS, want)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load = %v, want an error wrapping fs.ErrNotExist", err)
	}
	var errs Errors
	if errors.As(err, &errs) {
		t.Errorf("a missing file is not a config error: %v", err)
	}
}

func TestExamples(t *testing.T) {
	for _, name := range []string{"example-cloud.yaml", "example-onprem.yaml"} {
		t.Run(name, func(t *testing.T) {
			c, err := Load(name)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if len(c.Services) != 2 || c.Services[0].Name != "server-a" || c.Services[1].Name != "server-b" {
				t.Errorf("services = %+v", c.Services)
			}
			cloud := name == "example-cloud.yaml"
			if c.Accepting() != cloud || c.Services[0].IsAccept() != cloud {
				t.Errorf("wrong side: accepting %v, server-a accept %v", c.Accepting(), c.Services[0].IsAccept())
			}
			if c.TLS.Insecure || !filepath.IsAbs(c.TLS.CA) {
				t.Errorf("tls = %+v", c.TLS)
			}
			if sc, ok := c.Store.SchemeFor("trades-eu"); !ok || sc.Name != "trades" || sc.Federation != "active-active" || sc.Backups() != 1 {
				t.Errorf("SchemeFor(trades-eu) = %+v, %v", sc, ok)
			}
			if sc, ok := c.Store.SchemeFor("sessions"); !ok || sc.Name != DefaultScheme {
				t.Errorf("SchemeFor(sessions) = %+v, %v", sc, ok)
			}
			other := map[bool]string{true: "onprem", false: "cloud"}[cloud]
			if p, ok := c.Federation.Participant(other); len(c.Federation.Participants) != 1 || !ok || p.InitialAction != InitialStart {
				t.Errorf("participants = %+v", c.Federation.Participants)
			}
			wantFrom := []Edge{{From: c.Site, To: other}}
			wantTo := []Edge{{From: other, To: c.Site}}
			if got := c.FedEdgesFrom("active-active"); !reflect.DeepEqual(got, wantFrom) {
				t.Errorf("FedEdgesFrom = %+v, want %+v", got, wantFrom)
			}
			if got := c.FedEdgesTo("active-active"); !reflect.DeepEqual(got, wantTo) {
				t.Errorf("FedEdgesTo = %+v, want %+v", got, wantTo)
			}
			j := c.Federation.Journal
			if j.Limit != DefaultJournalLimit || j.Policy != PolicyBlock || j.BlockWait != 0 || !j.AutoReplicate() ||
				c.Federation.BatchSize != DefaultBatchSize || c.Federation.SendInterval.D() != DefaultSendInterval {
				t.Errorf("federation = %+v", c.Federation)
			}
		})
	}
}

func TestSetDefaultsValidate(t *testing.T) {
	c := &Config{
		Instance: "onprem-0",
		Site:     "onprem",
		Mode:     ModeProd,
		TLS:      TLS{Insecure: true},
		Peers:    []Peer{{Site: "cloud", URLs: []string{"ws://cloud:80/sitebridge"}}},
		Services: []Service{{Name: "s", Connect: "s.internal:22"}},
	}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if c.Tunnel.Keepalive.D() != DefaultKeepaliveProd || c.Services[0].DialTimeout.D() != DefaultDialTimeout ||
		c.Admin.Listen != DefaultAdminListen || c.Limits.MaxMessageSize != DefaultMaxMessageSize {
		t.Errorf("defaults not applied: %+v", c)
	}

	c.Services = append(c.Services, Service{Name: "s", Accept: "0.0.0.0:22", MaxConnections: 1})
	c.Limits.IdleTimeout = -1
	err := c.Validate()
	var errs Errors
	if !errors.As(err, &errs) || len(errs) != 3 {
		t.Fatalf("Validate = %v, want 3 Errors", err)
	}
	if errs[0].Line != 0 || errs[0].Path == "" {
		t.Errorf("Validate errors carry paths but no lines: %+v", errs[0])
	}
}

func TestClone(t *testing.T) {
	c, err := Parse(testFile, []byte(validConfigs[1].yaml))
	if err != nil {
		t.Fatal(err)
	}
	d := c.Clone()
	if !reflect.DeepEqual(c, d) {
		t.Fatalf("Clone differs:\n%+v\n%+v", c, d)
	}
	d.Peers[0].URLs[0] = "changed"
	d.Services[0].Name = "changed"
	if c.Peers[0].URLs[0] == "changed" || c.Services[0].Name == "changed" {
		t.Error("Clone shares slices with the original")
	}
}

func TestDuration(t *testing.T) {
	var v struct {
		D Duration `yaml:"d"`
	}
	if err := yaml.Unmarshal([]byte("d: 1m30s"), &v); err != nil || v.D.D() != 90*time.Second {
		t.Errorf("Unmarshal = %v, %v", v.D, err)
	}
	for _, bad := range []string{"d: -1s", "d: abc", "d: 5", "d: [1s]"} {
		if err := yaml.Unmarshal([]byte(bad), &v); err == nil {
			t.Errorf("Unmarshal(%q) succeeded", bad)
		}
	}
	out, err := yaml.Marshal(v)
	if err != nil || string(out) != "d: 1m30s\n" {
		t.Errorf("Marshal = %q, %v", out, err)
	}
	if b, _ := Duration(500 * time.Millisecond).MarshalText(); string(b) != "500ms" {
		t.Errorf("MarshalText = %q", b)
	}
}

// TestTenantExamples loads the two-tenant example of config/examples/tenants.
func TestTenantExamples(t *testing.T) {
	cloud, err := Load("examples/tenants/cloud.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if cloud.Tenant != "" || len(cloud.Peers) != 2 || cloud.Peers[0].Tenant != "acme" || cloud.Peers[1].Tenant != "globex" {
		t.Errorf("cloud peers = %+v", cloud.Peers)
	}
	var ids []string
	for _, s := range cloud.Services {
		ids = append(ids, s.ID())
	}
	if got := strings.Join(ids, ","); got != "acme/db,globex/db,acme/reports" {
		t.Errorf("cloud services = %s", got)
	}
	for _, name := range []string{"acme", "globex"} {
		c, err := Load("examples/tenants/" + name + ".yaml")
		if err != nil {
			t.Fatal(err)
		}
		if c.Tenant != name || c.Peers[0].Tenant != name {
			t.Errorf("%s: tenant %q, peer tenant %q", name, c.Tenant, c.Peers[0].Tenant)
		}
		for _, s := range c.Services {
			if s.Tenant != name {
				t.Errorf("%s: service %s of tenant %q", name, s.Name, s.Tenant)
			}
		}
	}
}
