package tunnel

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
)

// Version is the protocol version this build speaks. A peer that speaks
// another version is refused with [CodeVersionMismatch].
const Version = 1

// Control frame types, sent on the control stream.
const (
	frameHello    byte = 1 // payload: JSON Hello
	frameError    byte = 2 // payload: JSON ControlError; the sender closes the session after it
	frameMembers  byte = 3 // payload: JSON MembersUpdate; the sender's site membership changed
	frameServices byte = 4 // payload: JSON ServicesUpdate; the services the sender offers changed
)

// ServicesUpdate is the payload of a services frame: the services the
// sender can connect now (its targets that pass their health check).
type ServicesUpdate struct {
	Services []string `json:"services"`
}

// MembersUpdate is the payload of a members frame: the tunnel URLs of every
// live accepting member of the sender's site, the sender included.
type MembersUpdate struct {
	Members []string `json:"members"`
}

// maxControlPayload bounds one control frame payload.
const maxControlPayload = 64 << 10

// Hello is what each end of a tunnel says about itself on the control
// stream before any other stream is opened.
type Hello struct {
	Version  int    `json:"version"`
	Instance string `json:"instance"`
	Site     string `json:"site"`
	Tenant   string `json:"tenant,omitempty"`
	// Epoch is a fresh value at every start of the instance; a newer epoch
	// from the same instance replaces any older session.
	Epoch uint64 `json:"epoch"`
	// Services lists the services this instance can connect to (the
	// targets it offers to the other side).
	Services []string `json:"services,omitempty"`
	// Advertise is the tunnel URL of this instance, when it accepts tunnels.
	Advertise string `json:"advertise,omitempty"`
	// Members lists the tunnel URLs of every live accepting member of the
	// sender's site (discovery: the dialler connects to each).
	Members []string `json:"members,omitempty"`
}

// Offers reports whether h advertises service name.
func (h *Hello) Offers(name string) bool { return slices.Contains(h.Services, name) }

// ControlError is the payload of an error frame.
type ControlError struct {
	Code    Code   `json:"code"`
	Message string `json:"message"`
}

// Code is a reason code carried in stream replies and control errors.
type Code uint8

// Reason codes. Zero means success.
const (
	CodeOK                Code = 0
	CodeUnknownService    Code = 1 // the receiver has no connect target for the named service
	CodeForbidden         Code = 2 // the peer's identity may not use the service
	CodeTargetUnreachable Code = 3 // the receiver could not connect to the target
	CodeOverloaded        Code = 4 // a limit was reached; try elsewhere
	CodeBadHeader         Code = 5 // the stream header could not be decoded
	CodeUnsupportedKind   Code = 6 // the stream kind is unknown to the receiver
	CodeShuttingDown      Code = 7 // the receiver is stopping
	CodeVersionMismatch   Code = 8 // control: protocol versions differ
	CodeBadHello          Code = 9 // control: the hello is malformed or does not match the certificate
)

var codeNames = map[Code]string{
	CodeOK:                "ok",
	CodeUnknownService:    "unknown-service",
	CodeForbidden:         "forbidden",
	CodeTargetUnreachable: "target-unreachable",
	CodeOverloaded:        "overloaded",
	CodeBadHeader:         "bad-header",
	CodeUnsupportedKind:   "unsupported-kind",
	CodeShuttingDown:      "shutting-down",
	CodeVersionMismatch:   "version-mismatch",
	CodeBadHello:          "bad-hello",
}

func (c Code) String() string {
	if s, ok := codeNames[c]; ok {
		return s
	}
	return fmt.Sprintf("code-%d", uint8(c))
}

// Kind is the kind of a stream.
type Kind uint8

// Stream kinds.
const (
	KindService    Kind = 1 // a forwarded TCP connection
	KindFederation Kind = 2 // federation journal batches (reserved)
	KindStore      Kind = 3 // intra-site store requests (site members only)
)

// Stream header framing.
const (
	headerMagic = 0x53 // 'S'
	maxNameLen  = 64
	maxReplyMsg = 255
)

// Header opens every stream other than the control stream.
type Header struct {
	Kind    Kind
	Tenant  string
	Service string
}

// Errors returned by the decoders.
var (
	ErrBadMagic   = errors.New("bad stream magic")
	ErrBadVersion = errors.New("unsupported stream header version")
	ErrBadName    = errors.New("bad name in stream header")
	ErrTooLarge   = errors.New("frame too large")
)

// AppendHeader encodes h onto b:
//
//	magic(0x53) version(1) kind(1) tenantLen(1) tenant serviceLen(1) service
func AppendHeader(b []byte, h Header) ([]byte, error) {
	if err := checkName(h.Tenant, true); err != nil {
		return b, fmt.Errorf("tenant: %w", err)
	}
	if err := checkName(h.Service, false); err != nil {
		return b, fmt.Errorf("service: %w", err)
	}
	b = append(b, headerMagic, Version, byte(h.Kind), byte(len(h.Tenant)))
	b = append(b, h.Tenant...)
	b = append(b, byte(len(h.Service)))
	return append(b, h.Service...), nil
}

// ReadHeader decodes a stream header from r. It reads exactly the header's
// bytes and nothing after them.
func ReadHeader(r io.Reader) (Header, error) {
	var fixed [4]byte
	if _, err := io.ReadFull(r, fixed[:]); err != nil {
		return Header{}, err
	}
	if fixed[0] != headerMagic {
		return Header{}, ErrBadMagic
	}
	if fixed[1] != Version {
		return Header{}, fmt.Errorf("%w: %d", ErrBadVersion, fixed[1])
	}
	h := Header{Kind: Kind(fixed[2])}
	var err error
	if h.Tenant, err = readName(r, int(fixed[3]), true); err != nil {
		return Header{}, fmt.Errorf("tenant: %w", err)
	}
	var n [1]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return Header{}, err
	}
	if h.Service, err = readName(r, int(n[0]), false); err != nil {
		return Header{}, fmt.Errorf("service: %w", err)
	}
	return h, nil
}

func readName(r io.Reader, n int, empty bool) (string, error) {
	if n > maxNameLen {
		return "", ErrBadName
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		return "", err
	}
	s := string(buf)
	return s, checkName(s, empty)
}

// checkName allows 1-64 characters of [A-Za-z0-9._-]; empty only if allowed.
func checkName(s string, empty bool) error {
	if s == "" && empty {
		return nil
	}
	if s == "" || len(s) > maxNameLen {
		return ErrBadName
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
		if !ok {
			return ErrBadName
		}
	}
	return nil
}

// AppendReply encodes the receiver's answer to a stream header:
//
//	code(1) messageLen(1) message
func AppendReply(b []byte, code Code, msg string) []byte {
	if len(msg) > maxReplyMsg {
		msg = msg[:maxReplyMsg]
	}
	b = append(b, byte(code), byte(len(msg)))
	return append(b, msg...)
}

// ReadReply decodes a reply written by [AppendReply].
func ReadReply(r io.Reader) (Code, string, error) {
	var fixed [2]byte
	if _, err := io.ReadFull(r, fixed[:]); err != nil {
		return 0, "", err
	}
	msg := make([]byte, fixed[1])
	if _, err := io.ReadFull(r, msg); err != nil {
		return 0, "", err
	}
	return Code(fixed[0]), string(msg), nil
}

// writeFrame writes one control frame: type(1) length(4, big endian) payload.
func writeFrame(w io.Writer, typ byte, v any) error {
	payload, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if len(payload) > maxControlPayload {
		return ErrTooLarge
	}
	buf := make([]byte, 5, 5+len(payload))
	buf[0] = typ
	binary.BigEndian.PutUint32(buf[1:], uint32(len(payload)))
	_, err = w.Write(append(buf, payload...))
	return err
}

// readFrame reads one control frame, refusing payloads over the bound.
func readFrame(r io.Reader) (byte, []byte, error) {
	var fixed [5]byte
	if _, err := io.ReadFull(r, fixed[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(fixed[1:])
	if n > maxControlPayload {
		return 0, nil, fmt.Errorf("%w: control frame of %d bytes", ErrTooLarge, n)
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return 0, nil, err
	}
	return fixed[0], payload, nil
}

// DecodeHello parses and checks a hello payload.
func DecodeHello(payload []byte) (Hello, error) {
	var h Hello
	if err := json.Unmarshal(payload, &h); err != nil {
		return Hello{}, fmt.Errorf("decode hello: %w", err)
	}
	if h.Version != Version {
		return Hello{}, &VersionError{Peer: h.Version}
	}
	return h, h.validate()
}

// VersionError is a hello from a peer that speaks another protocol version.
type VersionError struct{ Peer int }

func (e *VersionError) Error() string {
	return fmt.Sprintf("peer speaks tunnel protocol version %d, this instance speaks version %d", e.Peer, Version)
}

func decodeControlError(payload []byte) (ControlError, error) {
	var ce ControlError
	if err := json.Unmarshal(payload, &ce); err != nil {
		return ControlError{}, fmt.Errorf("decode control error frame: %w", err)
	}
	if len(ce.Message) > 1024 {
		ce.Message = ce.Message[:1024]
	}
	return ce, nil
}

func (h *Hello) validate() error {
	if err := checkName(h.Instance, false); err != nil {
		return fmt.Errorf("hello instance %q: %w", h.Instance, err)
	}
	if err := checkName(h.Site, false); err != nil {
		return fmt.Errorf("hello site %q: %w", h.Site, err)
	}
	if err := checkName(h.Tenant, true); err != nil {
		return fmt.Errorf("hello tenant %q: %w", h.Tenant, err)
	}
	if err := checkServices(h.Services); err != nil {
		return fmt.Errorf("hello: %w", err)
	}
	return checkMembers(h.Members)
}

func checkServices(names []string) error {
	if len(names) > 4096 {
		return fmt.Errorf("%d services listed: %w", len(names), ErrTooLarge)
	}
	for _, s := range names {
		if err := checkName(s, false); err != nil {
			return fmt.Errorf("service %q: %w", s, err)
		}
	}
	return nil
}

// maxMembers bounds the member list a peer may announce.
const maxMembers = 256

func checkMembers(urls []string) error {
	if len(urls) > maxMembers {
		return fmt.Errorf("%d members announced: %w", len(urls), ErrTooLarge)
	}
	for _, u := range urls {
		if len(u) > 512 || !strings.HasPrefix(u, "wss://") && !strings.HasPrefix(u, "ws://") {
			return fmt.Errorf("member url %q: want ws:// or wss://", u)
		}
	}
	return nil
}
