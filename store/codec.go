package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// The intra-site messages are encoded with a small hand-written binary
// codec: unsigned varints for numbers and lengths, length-prefixed bytes for
// strings. Every decoder bounds what it allocates by what the input holds.

// errShort: a message ended early or a length exceeds what is left.
var errShort = errors.New("store message truncated")

type enc struct{ b []byte }

func (e *enc) u8(v byte)         { e.b = append(e.b, v) }
func (e *enc) uv(v uint64)       { e.b = binary.AppendUvarint(e.b, v) }
func (e *enc) iv(v int64)        { e.b = binary.AppendVarint(e.b, v) }
func (e *enc) bytes(v []byte)    { e.uv(uint64(len(v))); e.b = append(e.b, v...) }
func (e *enc) str(v string)      { e.uv(uint64(len(v))); e.b = append(e.b, v...) }
func (e *enc) boolean(v bool)    { e.u8(map[bool]byte{false: 0, true: 1}[v]) }
func (e *enc) epoch(v Epoch)     { e.uv(v.Ver); e.str(v.Author) }
func (e *enc) version(v Version) { e.iv(v.Wall); e.uv(uint64(v.Logical)); e.str(v.Site) }
func (e *enc) strs(v []string) {
	e.uv(uint64(len(v)))
	for _, s := range v {
		e.str(s)
	}
}

// dec reads what enc wrote; the first error sticks and later reads return
// zero values.
type dec struct {
	b   []byte
	err error
}

func (d *dec) fail(err error) {
	if d.err == nil {
		d.err = err
	}
}

func (d *dec) u8() byte {
	if d.err != nil || len(d.b) < 1 {
		d.fail(errShort)
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *dec) uv() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail(errShort)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *dec) iv() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail(errShort)
		return 0
	}
	d.b = d.b[n:]
	return v
}

// n reads a count of items each at least min bytes long, refusing counts the
// rest of the message cannot hold.
func (d *dec) n(min int) int {
	v := d.uv()
	if d.err != nil {
		return 0
	}
	if min < 1 {
		min = 1
	}
	if v > uint64(len(d.b)/min) {
		d.fail(fmt.Errorf("%w: count %d", errShort, v))
		return 0
	}
	return int(v)
}

func (d *dec) raw() []byte {
	v := d.uv()
	if d.err != nil {
		return nil
	}
	if v > uint64(len(d.b)) {
		d.fail(errShort)
		return nil
	}
	out := d.b[:v:v]
	d.b = d.b[v:]
	return out
}

// bytes returns a copy, so the message buffer can be reused.
func (d *dec) bytes() []byte {
	r := d.raw()
	if r == nil {
		return nil
	}
	return append([]byte(nil), r...)
}

func (d *dec) str() string { return string(d.raw()) }

func (d *dec) boolean() bool {
	switch d.u8() {
	case 0:
		return false
	case 1:
		return true
	}
	d.fail(errors.New("store message: bad boolean"))
	return false
}

func (d *dec) epoch() Epoch { return Epoch{Ver: d.uv(), Author: d.str()} }

func (d *dec) version() Version {
	v := Version{Wall: d.iv()}
	l := d.uv()
	if l > math.MaxUint32 {
		d.fail(errors.New("store message: bad version"))
	}
	v.Logical = uint32(l)
	v.Site = d.str()
	return v
}

func (d *dec) strs() []string {
	n := d.n(1)
	var out []string
	for range n {
		out = append(out, d.str())
	}
	return out
}

// done fails unless the whole message was read.
func (d *dec) done() error {
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("store message: %d trailing bytes", len(d.b))
	}
	return d.err
}
