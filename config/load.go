package config

import (
	"bytes"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// Load reads and parses the config file at path; see Parse. A file that
// cannot be read gives the wrapped os error (errors.Is(err,
// fs.ErrNotExist) works); an invalid config gives Errors.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, data)
}

// Parse parses a YAML config, applies the defaults and validates the result,
// which is the effective config. file is used in error messages and to
// resolve relative TLS file paths, which are taken relative to
// filepath.Dir(file) and made absolute.
//
// All problems are reported at once as Errors sorted by position. Every
// Error has a line, except the one for an empty file.
func Parse(file string, data []byte) (*Config, error) {
	d := &decoder{
		file:   file,
		pos:    map[string]position{},
		set:    map[string]bool{},
		failed: map[string]bool{},
	}
	root, errs := parseYAML(file, data)
	if errs != nil {
		return nil, errs
	}
	d.pos[""] = position{root.Line, root.Column}

	c := new(Config)
	d.decode(root, reflect.ValueOf(c).Elem(), "")
	c.resolvePaths(filepath.Dir(file))
	c.applyDefaults(func(path string) bool { return d.set[path] })

	errs = d.errs
	if d.visits > maxVisits {
		errs.sort() // the config is incomplete: validating it would only add noise
		return nil, errs
	}
	for _, e := range c.validate() {
		if d.suppressed(e.Path) {
			continue
		}
		p := d.locate(e.Path)
		e.File, e.Line, e.Column = file, p.line, p.col
		errs = append(errs, e)
	}
	if len(errs) > 0 {
		errs.sort()
		return nil, errs
	}
	return c, nil
}

// resolvePaths makes relative TLS file paths absolute, relative to dir.
func (c *Config) resolvePaths(dir string) {
	for _, p := range []*string{&c.TLS.CA, &c.TLS.Cert, &c.TLS.Key, &c.Cluster.GossipKey} {
		if *p == "" || filepath.IsAbs(*p) {
			continue
		}
		*p = filepath.Join(dir, *p)
		if abs, err := filepath.Abs(*p); err == nil {
			*p = abs
		}
	}
}

// parseYAML parses data as exactly one YAML document whose root is a
// mapping.
func parseYAML(file string, data []byte) (root *yaml.Node, errs Errors) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := safeDecode(dec, &doc); err != nil {
		if err == io.EOF {
			return nil, Errors{{File: file, Msg: "empty config file"}}
		}
		return nil, Errors{syntaxError(file, data, err)}
	}
	var extra yaml.Node
	switch err := safeDecode(dec, &extra); {
	case err == io.EOF:
	case err != nil:
		return nil, Errors{syntaxError(file, data, err)}
	default:
		return nil, Errors{{File: file, Line: max(extra.Line, 1), Column: extra.Column,
			Msg: "multiple YAML documents; a config file holds exactly one"}}
	}
	root = &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	root = resolveAlias(root)
	switch {
	case isNull(root):
		return nil, Errors{{File: file, Line: max(root.Line, 1), Column: root.Column, Msg: "empty config file"}}
	case root.Kind != yaml.MappingNode:
		return nil, Errors{{File: file, Line: max(root.Line, 1), Column: root.Column,
			Msg: "expected a mapping at the top level, got " + describe(root)}}
	}
	return root, nil
}

// safeDecode turns a panic in the YAML library into an error, so that no
// input can crash the caller.
func safeDecode(dec *yaml.Decoder, n *yaml.Node) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("yaml: internal error: %v", r)
		}
	}()
	return dec.Decode(n)
}

var (
	yamlLineRE   = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)
	yamlAnchorRE = regexp.MustCompile(`^yaml: unknown anchor '(.*)' referenced$`)
)

// syntaxError converts a YAML library error into an Error with a line. The
// library leaves the line out for problems on the first line and for some
// others; those get the line of the likely culprit, or 1.
func syntaxError(file string, data []byte, err error) *Error {
	msg := err.Error()
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		return &Error{File: file, Line: max(line, 1), Msg: "invalid YAML: " + m[2]}
	}
	msg = strings.TrimPrefix(msg, "yaml: ")
	line := 1
	if m := yamlAnchorRE.FindStringSubmatch(err.Error()); m != nil {
		if i := bytes.Index(data, []byte("*"+m[1])); i >= 0 {
			line = lineAt(data, i)
		}
	} else if i := badByte(data); i >= 0 {
		line = lineAt(data, i)
	}
	return &Error{File: file, Line: line, Msg: "invalid YAML: " + msg}
}

// badByte returns the offset of the first invalid UTF-8 sequence or
// disallowed control character in data, or -1.
func badByte(data []byte) int {
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		if r == utf8.RuneError && size <= 1 {
			return i
		}
		if r < 0x20 && r != '\t' && r != '\n' && r != '\r' || r == 0x7f {
			return i
		}
		i += size
	}
	return -1
}

func lineAt(data []byte, off int) int { return bytes.Count(data[:off], []byte("\n")) + 1 }

type position struct{ line, col int }

// decoder walks a YAML node tree against the config struct types,
// recording problems with their positions, where each key path was found,
// and which keys were set explicitly.
type decoder struct {
	file   string
	errs   Errors
	pos    map[string]position // key path -> position of the value (of the key for mappings and lists)
	set    map[string]bool     // key paths with an explicit non-null value
	failed map[string]bool     // key paths whose value could not be decoded
	visits int                 // values decoded so far, to bound alias expansion
}

// maxVisits bounds the values decoded from one file. Without aliases the
// number of values is at most the number of nodes, but aliases can expand
// a small file enormously (a "billion laughs" document).
const maxVisits = 100_000

func (d *decoder) errorf(n *yaml.Node, path, format string, args ...any) {
	d.errs = append(d.errs, &Error{
		File: d.file, Line: max(n.Line, 1), Column: n.Column,
		Path: path, Msg: fmt.Sprintf(format, args...),
	})
}

func (d *decoder) typeError(n *yaml.Node, path, want string) {
	d.errorf(n, path, "expected %s, got %s", want, describe(n))
	d.failed[path] = true
}

var (
	durationType = reflect.TypeFor[Duration]()
	byteSizeType = reflect.TypeFor[ByteSize]()
)

func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	if v.Kind() == reflect.Pointer {
		// An optional value such as *int: nil unless the key is set.
		p := reflect.New(v.Type().Elem())
		d.decode(n, p.Elem(), path)
		v.Set(p)
		return
	}
	at := n // position to report: where the value is written, even if it is an alias
	n = resolveAlias(n)
	if d.visits++; d.visits > maxVisits {
		if d.visits == maxVisits+1 {
			d.errorf(at, path, "document contains excessive aliasing")
			d.failed[path] = true
		}
		return
	}
	switch v.Type() {
	case durationType:
		d.decodeInt64(at, n, v, path, `a duration such as "5s"`, func(s string) (int64, error) {
			dur, err := parseDuration(s)
			return int64(dur), err
		})
		return
	case byteSizeType:
		d.decodeInt64(at, n, v, path, `a byte size such as "1MiB"`, func(s string) (int64, error) {
			size, err := parseByteSize(s)
			return int64(size), err
		})
		return
	}
	switch v.Kind() {
	case reflect.Struct:
		d.decodeStruct(n, v, path)
	case reflect.Slice:
		d.decodeSlice(n, v, path)
	case reflect.String:
		if n.Kind != yaml.ScalarNode || !stringTag(n.ShortTag()) {
			d.typeError(at, path, "a string")
			return
		}
		if !printable(n.Value) {
			d.errorf(at, path, "%q contains non-printable characters", n.Value)
			d.failed[path] = true
			return
		}
		v.SetString(n.Value)
	case reflect.Bool:
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" {
			d.typeError(at, path, "true or false")
			return
		}
		switch strings.ToLower(n.Value) {
		case "true":
			v.SetBool(true)
		case "false":
			v.SetBool(false)
		default:
			d.typeError(at, path, "true or false")
		}
	case reflect.Int:
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
			d.typeError(at, path, "an integer")
			return
		}
		i, err := strconv.ParseInt(strings.ReplaceAll(n.Value, "_", ""), 0, strconv.IntSize)
		if err != nil {
			d.errorf(at, path, "integer %s out of range", n.Value)
			d.failed[path] = true
			return
		}
		v.SetInt(i)
	default:
		panic("config: unsupported field type " + v.Type().String())
	}
}

// decodeInt64 decodes a scalar written as a string, such as a duration,
// into the int64-based v.
func (d *decoder) decodeInt64(at, n *yaml.Node, v reflect.Value, path, want string, parse func(string) (int64, error)) {
	if n.Kind != yaml.ScalarNode || isNull(n) {
		d.typeError(at, path, want)
		return
	}
	i, err := parse(n.Value)
	if err != nil {
		d.errorf(at, path, "%v", err)
		d.failed[path] = true
		return
	}
	v.SetInt(i)
}

func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.typeError(n, path, "a mapping")
		return
	}
	fields := structFields(v.Type())
	seen := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content) && d.visits <= maxVisits; i += 2 {
		k, val := resolveAlias(n.Content[i]), n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			d.errorf(k, path, "expected a string key, got %s", describe(k))
			continue
		}
		if k.ShortTag() == "!!merge" {
			d.errorf(k, path, "merge keys (<<) are not supported")
			continue
		}
		name := k.Value
		p := name
		if path != "" {
			p = path + "." + name
		}
		if first, dup := seen[name]; dup {
			d.errorf(k, p, "duplicate key (first defined at line %d)", first.Line)
			continue
		}
		seen[name] = k
		idx, ok := fields[name]
		if !ok {
			d.errorf(k, p, "unknown key%s", suggest(name, fields))
			continue
		}
		if rv := resolveAlias(val); rv.Kind == yaml.MappingNode || rv.Kind == yaml.SequenceNode {
			d.pos[p] = position{k.Line, k.Column}
		} else {
			d.pos[p] = position{val.Line, val.Column}
		}
		if isNull(resolveAlias(val)) {
			continue // "key:" with no value is the same as leaving the key out
		}
		d.set[p] = true
		d.decode(val, v.Field(idx), p)
	}
}

func (d *decoder) decodeSlice(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.SequenceNode {
		d.typeError(n, path, "a list")
		return
	}
	if len(n.Content) == 0 {
		v.SetZero() // nil, so that "[]" and a missing key give equal configs
		return
	}
	s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
	for i, item := range n.Content {
		if d.visits > maxVisits {
			break
		}
		p := path + "[" + strconv.Itoa(i) + "]"
		d.pos[p] = position{item.Line, item.Column}
		if isNull(resolveAlias(item)) {
			d.errorf(item, p, "empty list item")
			d.failed[p] = true
			continue
		}
		d.decode(item, s.Index(i), p)
	}
	v.Set(s)
}

// locate returns the position of path, or of its nearest ancestor that
// appears in the file (for keys that are missing).
func (d *decoder) locate(path string) position {
	for {
		if p, ok := d.pos[path]; ok {
			return p
		}
		if path == "" {
			return position{1, 0}
		}
		path = parentPath(path)
	}
}

// suppressed reports whether a validation error at path is a consequence
// of a value that could not be decoded (at path, above or below it).
func (d *decoder) suppressed(path string) bool {
	for f := range d.failed {
		if f == path || isUnder(path, f) || isUnder(f, path) {
			return true
		}
	}
	return false
}

// isUnder reports whether path is strictly inside the key path parent.
func isUnder(path, parent string) bool {
	if parent == "" || !strings.HasPrefix(path, parent) || len(path) == len(parent) {
		return false
	}
	c := path[len(parent)]
	return c == '.' || c == '['
}

func parentPath(path string) string {
	if strings.HasSuffix(path, "]") {
		if i := strings.LastIndexByte(path, '['); i >= 0 {
			return path[:i]
		}
	}
	if i := strings.LastIndexByte(path, '.'); i >= 0 {
		return path[:i]
	}
	return ""
}

// structFields maps the yaml tag names of t's fields to field indexes.
func structFields(t reflect.Type) map[string]int {
	m := make(map[string]int, t.NumField())
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if name != "" && name != "-" {
			m[name] = i
		}
	}
	return m
}

// suggest returns a hint for an unknown key that is close to a known one:
// equal but for case, '-' and '_' ("dead_after", "deadAfter"), or a small
// typo ("url", "listne").
func suggest(name string, fields map[string]int) string {
	squash := func(s string) string {
		return strings.ToLower(strings.NewReplacer("-", "", "_", "").Replace(s))
	}
	best, bestDist := "", 3
	if len(name) < 6 {
		bestDist = 2
	}
	for _, f := range slices.Sorted(maps.Keys(fields)) {
		if squash(f) == squash(name) {
			return fmt.Sprintf(" (did you mean %q?)", f)
		}
		if d := editDistance(squash(f), squash(name)); d < bestDist {
			best, bestDist = f, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// stringTag reports whether a scalar with tag can be a string field: a
// plain scalar such as 8080 or true is taken as written.
func stringTag(tag string) bool {
	switch tag {
	case "!!str", "!!int", "!!float", "!!bool", "!!timestamp":
		return true
	}
	return false
}

func resolveAlias(n *yaml.Node) *yaml.Node {
	for i := 0; n.Kind == yaml.AliasNode && n.Alias != nil && i < 100; i++ {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == 0 || n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// describe names what n is, for type errors.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	case yaml.ScalarNode:
		if isNull(n) {
			return "null"
		}
		v := n.Value
		if len(v) > 40 {
			v = v[:40] + "..."
		}
		return strconv.Quote(v)
	}
	return "nothing"
}

// printable reports whether s is valid UTF-8 made of printable characters
// and ASCII spaces only.
func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r != ' ' && !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}
