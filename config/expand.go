package config

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"unicode/utf8"
)

// LoadWithEnv is Load with environment expansion: it reads the file at
// path, expands ${NAME} and ${NAME:-default} in its text with lookup (see
// ExpandEnv) and parses the result. A nil lookup means os.LookupEnv.
//
// This is what 'sitebridge run --expand-env' uses, so that instances that
// share one file (the pods of a Kubernetes StatefulSet, which share a
// ConfigMap) can each fill in their own name and address.
func LoadWithEnv(path string, lookup func(string) (string, bool)) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	data, err = ExpandEnv(path, data, lookup)
	if err != nil {
		return nil, err
	}
	return Parse(path, data)
}

// ExpandEnv returns data with environment references replaced, for a config
// file named file (used in error messages). It works on the text, before
// YAML parsing, comments included:
//
//   - ${NAME} is the value of NAME; NAME unset is an error. Set but empty,
//     it expands to nothing.
//   - ${NAME:-default} is the value of NAME, or default when NAME is unset
//     or empty. The default is taken literally (no nested references) and
//     cannot contain '}'.
//   - $$ is a literal '$', so $${NAME} stays ${NAME}.
//   - Any other '$' is left as it is.
//
// NAME is a letter or '_' followed by letters, digits and '_'. A reference
// must close on its own line, and a value containing a line break is an
// error, so every line of the result is the line of the same number in
// data and the positions in later config errors stay true. Values are not
// quoted: write "${NAME}" where the value may hold YAML syntax such as ": "
// or " #".
//
// Every problem is reported at once, as Errors with the file, line and
// column of the reference. A nil lookup means os.LookupEnv.
func ExpandEnv(file string, data []byte, lookup func(string) (string, bool)) ([]byte, error) {
	if lookup == nil {
		lookup = os.LookupEnv
	}
	if bytes.IndexByte(data, '$') < 0 {
		return data, nil
	}
	var (
		out       = make([]byte, 0, len(data))
		errs      Errors
		line      = 1
		lineStart = 0
	)
	fail := func(at int, format string, args ...any) {
		errs = append(errs, &Error{
			File: file, Line: line, Column: utf8.RuneCount(data[lineStart:at]) + 1,
			Msg: fmt.Sprintf(format, args...),
		})
	}
	for i := 0; i < len(data); {
		c := data[i]
		switch {
		case c == '\n':
			out = append(out, c)
			i++
			line, lineStart = line+1, i
			continue
		case c != '$' || i+1 == len(data):
			out = append(out, c)
			i++
			continue
		case data[i+1] == '$':
			out = append(out, '$')
			i += 2
			continue
		case data[i+1] != '{':
			out = append(out, c)
			i++
			continue
		}
		// A reference: ${ ... } on this line.
		end := bytes.IndexAny(data[i+2:], "}\n")
		if end < 0 || data[i+2+end] != '}' {
			fail(i, "unterminated ${: a reference must close with '}' on the same line (write $${ for a literal ${)")
			out = append(out, "${"...)
			i += 2
			continue
		}
		ref := string(data[i+2 : i+2+end])
		val, err := expandRef(ref, lookup)
		if err != nil {
			fail(i, "%s", err)
		}
		out = append(out, val...)
		i += 2 + end + 1
	}
	if len(errs) > 0 {
		errs.sort()
		return nil, errs
	}
	return out, nil
}

// expandRef returns the value of one reference, the text between "${" and
// "}".
func expandRef(ref string, lookup func(string) (string, bool)) (string, error) {
	name, def, hasDef := strings.Cut(ref, ":-")
	if !validEnvName(name) {
		return "", fmt.Errorf("${%s}: invalid reference: want ${NAME} or ${NAME:-default}, NAME made of letters, digits and '_', not starting with a digit", quoteRef(ref))
	}
	val, ok := lookup(name)
	switch {
	case hasDef && val == "":
		val = def
	case !ok:
		return "", fmt.Errorf("${%s}: environment variable %s is not set (write ${%s:-default} to give a default)", name, name, name)
	}
	if strings.ContainsAny(val, "\r\n") {
		what := "the value of " + name
		if hasDef && val == def {
			what = "the default of " + name
		}
		return "", fmt.Errorf("${%s}: %s contains a line break; an expanded value must stay on one line", quoteRef(ref), what)
	}
	return val, nil
}

// quoteRef shortens and escapes a reference for an error message.
func quoteRef(ref string) string {
	if len(ref) > 40 {
		ref = ref[:40] + "..."
	}
	q := fmt.Sprintf("%q", ref)
	return q[1 : len(q)-1]
}

// validEnvName reports whether s can name an environment variable in a
// reference: [A-Za-z_][A-Za-z0-9_]*.
func validEnvName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '_', 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		case '0' <= c && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}
