package tlsgen

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Defaults applied by [Spec.SetDefaults].
const (
	DefaultTrustDomain = "sitebridge.local"
	DefaultValidFor    = 365 * 24 * time.Hour
)

// reservedName reports whether name cannot name an instance because its
// files would collide with ca.crt, ca.key or gossip.key.
func reservedName(name string) bool { return name == "ca" || name == "gossip" }

// InstanceSpec describes one instance certificate.
type InstanceSpec struct {
	Name   string   `yaml:"name"`
	Site   string   `yaml:"site"`
	Tenant string   `yaml:"tenant"` // optional
	DNS    []string `yaml:"dns"`    // DNS SANs; the instance name is NOT auto-added
	IPs    []string `yaml:"ips"`    // IP SANs
}

// Spec describes what [Generate] creates.
type Spec struct {
	// TrustDomain is the host part of every identity; empty means
	// DefaultTrustDomain.
	TrustDomain string `yaml:"trust-domain"`
	// ValidFor is the leaf validity, a Go duration such as "8760h"; zero
	// means DefaultValidFor. Leaves never outlive the CA.
	ValidFor  time.Duration  `yaml:"valid-for"`
	Instances []InstanceSpec `yaml:"instances"`
}

// LoadSpec reads a spec file strictly: unknown keys, wrong types and invalid
// values are all errors, each prefixed with file:line. Defaults are applied.
func LoadSpec(path string) (*Spec, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load spec: %w", err)
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, yamlError(path, err)
	}
	var s Spec
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&s); err != nil && !errors.Is(err, io.EOF) {
		return nil, yamlError(path, err)
	}
	s.SetDefaults()
	if ps := s.problems(); len(ps) > 0 {
		return nil, locateProblems(path, ps, nodeLines(&root))
	}
	return &s, nil
}

// SetDefaults fills in TrustDomain and ValidFor when they are zero.
func (s *Spec) SetDefaults() {
	if s.TrustDomain == "" {
		s.TrustDomain = DefaultTrustDomain
	}
	if s.ValidFor == 0 {
		s.ValidFor = DefaultValidFor
	}
}

// Validate reports every problem in s at once (joined with errors.Join):
// invalid trust domain, negative validity, no instances, invalid or reserved
// names ("ca", "gossip"), duplicate instance names, and malformed DNS names or
// IP addresses. Zero TrustDomain and ValidFor are accepted as defaults.
func (s *Spec) Validate() error {
	var errs []error
	for _, p := range s.problems() {
		errs = append(errs, fmt.Errorf("%s: %w", p.path, p.err))
	}
	return errors.Join(errs...)
}

// problem is one validation failure at a YAML path such as
// "instances[1].name".
type problem struct {
	path string
	err  error
}

func (s *Spec) problems() []problem {
	var ps []problem
	if s.TrustDomain != "" {
		if err := ValidTrustDomain(s.TrustDomain); err != nil {
			ps = append(ps, problem{"trust-domain", err})
		}
	}
	if s.ValidFor < 0 {
		ps = append(ps, problem{"valid-for", fmt.Errorf("must not be negative, got %s", s.ValidFor)})
	}
	if len(s.Instances) == 0 {
		ps = append(ps, problem{"instances", errors.New("no instances")})
	}
	seen := make(map[string]int)
	for i, in := range s.Instances {
		at := fmt.Sprintf("instances[%d]", i)
		if j, dup := seen[in.Name]; dup && in.Name != "" {
			ps = append(ps, problem{at + ".name", fmt.Errorf("duplicate instance name %q (also instances[%d])", in.Name, j)})
		}
		seen[in.Name] = i
		ps = append(ps, in.problems(at)...)
	}
	return ps
}

func (in InstanceSpec) problems(at string) []problem {
	var ps []problem
	add := func(field string, err error) {
		if err != nil {
			ps = append(ps, problem{at + "." + field, err})
		}
	}
	add("name", ValidName(in.Name))
	if reservedName(in.Name) {
		add("name", fmt.Errorf("name %q is reserved", in.Name))
	}
	add("site", ValidName(in.Site))
	if in.Tenant != "" {
		add("tenant", ValidName(in.Tenant))
	}
	for i, d := range in.DNS {
		add(fmt.Sprintf("dns[%d]", i), validDNSName(d))
	}
	for i, ip := range in.IPs {
		_, err := parseIP(ip)
		add(fmt.Sprintf("ips[%d]", i), err)
	}
	return ps
}

// validDNSName accepts lowercase host names, optionally with a leading "*."
// wildcard label.
func validDNSName(s string) error {
	if len(s) > 253 {
		return fmt.Errorf("dns name %q is longer than 253 characters", s)
	}
	for label := range strings.SplitSeq(strings.TrimPrefix(s, "*."), ".") {
		if err := ValidName(label); err != nil {
			return fmt.Errorf("dns name %q: %w", s, err)
		}
	}
	return nil
}

func parseIP(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("ip address: %w", err)
	}
	if a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("ip address %q: zones are not allowed", s)
	}
	return a, nil
}

// yamlError rewrites yaml.v3's "yaml: line N: msg" messages as
// "path:N: msg", one error per problem. yaml.v3 exposes line numbers only
// inside its messages, so this is the one place that reads them.
func yamlError(path string, err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return &locatedError{locate(path, err.Error()), err}
	}
	errs := make([]error, len(te.Errors))
	for i, msg := range te.Errors {
		errs[i] = &locatedError{locate(path, msg), err}
	}
	return errors.Join(errs...)
}

// locatedError is a YAML error relabelled with file:line. It unwraps to the
// original yaml.v3 error.
type locatedError struct {
	msg string
	err error
}

func (e *locatedError) Error() string { return e.msg }
func (e *locatedError) Unwrap() error { return e.err }

func locate(path, msg string) string {
	msg = strings.TrimPrefix(msg, "yaml: ")
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if n, text, ok := strings.Cut(rest, ": "); ok {
			if _, err := strconv.Atoi(n); err == nil {
				return path + ":" + n + ": " + text
			}
		}
	}
	return path + ": " + msg
}

// nodeLines maps YAML paths ("instances[0].dns[1]") to their line numbers.
func nodeLines(root *yaml.Node) map[string]int {
	lines := make(map[string]int)
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		lines[path] = n.Line
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, path)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				walk(n.Content[i+1], strings.TrimPrefix(path+"."+n.Content[i].Value, "."))
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				walk(c, fmt.Sprintf("%s[%d]", path, i))
			}
		}
	}
	walk(root, "")
	return lines
}

// locateProblems prefixes each problem with file:line, using the line of its
// path or of the nearest enclosing node that exists in the file.
func locateProblems(file string, ps []problem, lines map[string]int) error {
	errs := make([]error, len(ps))
	for i, p := range ps {
		line := lineOf(p.path, lines)
		errs[i] = fmt.Errorf("%s:%d: %s: %w", file, line, p.path, p.err)
	}
	return errors.Join(errs...)
}

func lineOf(path string, lines map[string]int) int {
	for {
		if n, ok := lines[path]; ok && n > 0 {
			return n
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			return max(lines[""], 1)
		}
		path = path[:i]
	}
}
