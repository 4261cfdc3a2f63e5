package tunnel

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestHeaderRoundTrip(t *testing.T) {
	for _, h := range []Header{
		{Kind: KindService, Service: "server-a"},
		{Kind: KindService, Tenant: "acme", Service: "db.primary_1"},
		{Kind: KindFederation, Tenant: strings.Repeat("t", 64), Service: strings.Repeat("s", 64)},
	} {
		b, err := AppendHeader(nil, h)
		if err != nil {
			t.Fatalf("AppendHeader(%+v): %v", h, err)
		}
		r := bytes.NewReader(append(b, "trailing bytes"...))
		got, err := ReadHeader(r)
		if err != nil || got != h {
			t.Fatalf("ReadHeader = %+v, %v; want %+v", got, err, h)
		}
		if rest, _ := io.ReadAll(r); string(rest) != "trailing bytes" {
			t.Fatalf("ReadHeader consumed past the header: rest %q", rest)
		}
	}
}

func TestAppendHeaderRejects(t *testing.T) {
	for _, h := range []Header{
		{Kind: KindService, Service: ""},
		{Kind: KindService, Service: "10.0.0.1:22"},
		{Kind: KindService, Service: "a/b"},
		{Kind: KindService, Service: strings.Repeat("s", 65)},
		{Kind: KindService, Tenant: "bad tenant", Service: "ok"},
	} {
		if _, err := AppendHeader(nil, h); !errors.Is(err, ErrBadName) {
			t.Errorf("AppendHeader(%+v) = %v, want ErrBadName", h, err)
		}
	}
}

func TestReadHeaderRejects(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, io.EOF},
		{"bad magic", []byte{'G', 'E', 'T', ' '}, ErrBadMagic},
		{"bad version", []byte{headerMagic, 99, 1, 0}, ErrBadVersion},
		{"truncated tenant", []byte{headerMagic, Version, 1, 5, 'a'}, io.ErrUnexpectedEOF},
		{"tenant too long", []byte{headerMagic, Version, 1, 200}, ErrBadName},
		{"address as service", append([]byte{headerMagic, Version, 1, 0, 12}, "127.0.0.1:22"...), ErrBadName},
		{"empty service", []byte{headerMagic, Version, 1, 0, 0}, ErrBadName},
		{"missing service", []byte{headerMagic, Version, 1, 0}, io.EOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ReadHeader(bytes.NewReader(tt.in))
			if !errors.Is(err, tt.want) {
				t.Fatalf("ReadHeader = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestReplyRoundTrip(t *testing.T) {
	long := strings.Repeat("x", 400)
	for _, c := range []struct {
		code Code
		msg  string
	}{{CodeOK, ""}, {CodeUnknownService, "no such service"}, {CodeTargetUnreachable, long}} {
		code, msg, err := ReadReply(bytes.NewReader(AppendReply(nil, c.code, c.msg)))
		want := c.msg[:min(len(c.msg), maxReplyMsg)]
		if err != nil || code != c.code || msg != want {
			t.Fatalf("reply round trip = %v %q %v", code, msg, err)
		}
	}
}

func TestControlFrames(t *testing.T) {
	var buf bytes.Buffer
	h := Hello{Version: Version, Instance: "onprem1", Site: "onprem", Epoch: 7, Services: []string{"server-a"}}
	if err := writeFrame(&buf, frameHello, h); err != nil {
		t.Fatal(err)
	}
	typ, payload, err := readFrame(&buf)
	if err != nil || typ != frameHello {
		t.Fatalf("readFrame = %d, %v", typ, err)
	}
	got, err := DecodeHello(payload)
	if err != nil || got.Instance != "onprem1" || got.Epoch != 7 || !got.Offers("server-a") {
		t.Fatalf("DecodeHello = %+v, %v", got, err)
	}

	huge := []byte{frameHello, 0xff, 0xff, 0xff, 0xff}
	if _, _, err := readFrame(bytes.NewReader(huge)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized control frame: %v, want ErrTooLarge", err)
	}
}

func TestDecodeHelloRejects(t *testing.T) {
	tests := []struct {
		name    string
		payload string
		version bool
	}{
		{"not json", "{", false},
		{"other version", `{"version":2,"instance":"a","site":"b"}`, true},
		{"no instance", `{"version":1,"site":"b"}`, false},
		{"bad site", `{"version":1,"instance":"a","site":"b c"}`, false},
		{"bad service", `{"version":1,"instance":"a","site":"b","services":["x:1"]}`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeHello([]byte(tt.payload))
			var ve *VersionError
			if err == nil || errors.As(err, &ve) != tt.version {
				t.Fatalf("DecodeHello = %v (version error: %v)", err, tt.version)
			}
		})
	}
}

func FuzzReadHeader(f *testing.F) {
	b, _ := AppendHeader(nil, Header{Kind: KindService, Tenant: "acme", Service: "server-a"})
	f.Add(b)
	f.Add([]byte{headerMagic, Version, 1, 0, 1, 'x'})
	f.Add([]byte{headerMagic, Version, 2, 64})
	f.Add([]byte("GET / HTTP/1.1\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := ReadHeader(bytes.NewReader(data))
		if err != nil {
			return
		}
		enc, err := AppendHeader(nil, h)
		if err != nil {
			t.Fatalf("decoded header %+v does not re-encode: %v", h, err)
		}
		if !bytes.HasPrefix(data, enc) {
			t.Fatalf("re-encoded header %x is not a prefix of the input %x", enc, data)
		}
	})
}

func FuzzDecodeHello(f *testing.F) {
	seed, _ := json.Marshal(Hello{Version: Version, Instance: "cloud1", Site: "cloud", Epoch: 1, Services: []string{"server-b"}, Advertise: "wss://x:1/sitebridge"})
	f.Add(seed)
	f.Add([]byte(`{"version":1,"instance":"a","site":"b","tenant":"t"}`))
	f.Add([]byte(`{"version":2}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := DecodeHello(data)
		if err != nil {
			return
		}
		again, err := json.Marshal(h)
		if err != nil {
			t.Fatal(err)
		}
		h2, err := DecodeHello(again)
		if err != nil || h2.Instance != h.Instance || h2.Site != h.Site || h2.Epoch != h.Epoch || len(h2.Services) != len(h.Services) {
			t.Fatalf("hello does not survive a round trip: %+v -> %+v (%v)", h, h2, err)
		}
	})
}

func FuzzReadFrame(f *testing.F) {
	var buf bytes.Buffer
	writeFrame(&buf, frameHello, Hello{Version: Version, Instance: "a", Site: "b"})
	f.Add(buf.Bytes())
	f.Add([]byte{frameError, 0, 0, 0, 2, '{', '}'})
	f.Add([]byte{1, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		typ, payload, err := readFrame(bytes.NewReader(data))
		if err != nil {
			return
		}
		if len(payload) > maxControlPayload || len(payload)+5 > len(data) {
			t.Fatalf("frame type %d with %d payload bytes from %d input bytes", typ, len(payload), len(data))
		}
		if typ == frameError {
			decodeControlError(payload)
		}
	})
}
