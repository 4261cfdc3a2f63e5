package config

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// ByteSize is a number of bytes written in YAML as a plain integer
// (1048576) or an integer with one of the units B, KiB, MiB or GiB ("1MiB",
// "64KiB"). The units are powers of 1024; KB, MB and GB are rejected rather
// than guessed at. Negative sizes are rejected.
type ByteSize int64

// byteUnits are the accepted units, largest first.
var byteUnits = [...]struct {
	suffix string
	size   int64
}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}}

// String returns b with the largest unit that divides it exactly, such as
// "1MiB" or "1536KiB", and as a plain number of bytes otherwise ("1000").
func (b ByteSize) String() string {
	if b != 0 {
		for _, u := range byteUnits[:len(byteUnits)-1] {
			if int64(b)%u.size == 0 {
				return strconv.FormatInt(int64(b)/u.size, 10) + u.suffix
			}
		}
	}
	return strconv.FormatInt(int64(b), 10)
}

// MarshalYAML writes b as a string with a unit when one divides it exactly,
// and as an integer number of bytes otherwise.
func (b ByteSize) MarshalYAML() (any, error) {
	if s := b.String(); strings.HasSuffix(s, "iB") {
		return s, nil
	}
	return int64(b), nil
}

// UnmarshalYAML reads a byte size.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: expected a byte size", n.Line)
	}
	v, err := parseByteSize(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*b = v
	return nil
}

// MarshalText writes b as String does, so that JSON output shows "1MiB".
func (b ByteSize) MarshalText() ([]byte, error) { return []byte(b.String()), nil }

// UnmarshalText reads a byte size.
func (b *ByteSize) UnmarshalText(text []byte) error {
	v, err := parseByteSize(string(text))
	if err != nil {
		return err
	}
	*b = v
	return nil
}

func parseByteSize(s string) (ByteSize, error) {
	if strings.HasPrefix(s, "-") {
		return 0, fmt.Errorf("invalid byte size %q: must not be negative", s)
	}
	i := 0
	for i < len(s) && (s[i] >= '0' && s[i] <= '9' || i > 0 && s[i] == '_') {
		i++
	}
	num, unit := s[:i], s[i:]
	if num == "" {
		return 0, fmt.Errorf(`invalid byte size %q (want bytes, or a number with B, KiB, MiB or GiB such as "64KiB")`, s)
	}
	size := int64(0)
	if unit == "" {
		size = 1
	}
	for _, u := range byteUnits {
		if unit == u.suffix {
			size = u.size
		}
	}
	if size == 0 {
		switch strings.ToLower(unit) {
		case "k", "kb", "m", "mb", "g", "gb", "t", "tb":
			return 0, fmt.Errorf("invalid byte size %q: use KiB, MiB or GiB (powers of 1024); %s is not accepted", s, unit)
		case "kib", "mib", "gib":
			return 0, fmt.Errorf("invalid byte size %q: units are written B, KiB, MiB, GiB", s)
		}
		return 0, fmt.Errorf(`invalid byte size %q (want bytes, or a number with B, KiB, MiB or GiB such as "64KiB")`, s)
	}
	n, err := strconv.ParseInt(strings.ReplaceAll(num, "_", ""), 10, 64)
	if err != nil || n > math.MaxInt64/size {
		return 0, fmt.Errorf("invalid byte size %q: out of range", s)
	}
	return ByteSize(n * size), nil
}
