package gateway

import (
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/sitebridge/sitebridge/tlsgen"
)

// serverSerial handshakes with addr as onprem1 and returns the serial of
// the certificate the server presents.
func serverSerial(t *testing.T, e *env, addr string) string {
	t.Helper()
	r, err := tlsgen.NewReloader(e.dir+"/ca.crt", e.dir+"/onprem1.crt", e.dir+"/onprem1.key", nil)
	if err != nil {
		t.Fatal(err)
	}
	tc := r.ClientConfig("localhost", nil)
	tc.NextProtos = []string{"http/1.1"}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, tc)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
}

func TestCertificateRotationKeepsTunnelsAndConnections(t *testing.T) {
	e := newEnv(t, "cloud/cloud1", "onprem/onprem1")
	cloud, onprem := pair(t, e)
	before := serverSerial(t, e, cloud.TunnelAddr())

	// A forwarded connection that stays open across the rotation.
	c, err := net.Dial("tcp", cloud.AcceptAddr("server-a"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echoLine := func(line string) {
		t.Helper()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, line); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len(line))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != line {
			t.Fatalf("long-lived connection: %q, %v", buf, err)
		}
	}
	echoLine("before rotation\n")

	// Re-issue both leaves in place (same CA), as an operator would.
	spec := tlsgen.Spec{Instances: []tlsgen.InstanceSpec{
		{Name: "cloud1", Site: "cloud", DNS: []string{"localhost"}, IPs: []string{"127.0.0.1"}},
		{Name: "onprem1", Site: "onprem", DNS: []string{"localhost"}, IPs: []string{"127.0.0.1"}},
	}}
	if _, err := tlsgen.Generate(spec, e.dir, false); err != nil {
		t.Fatal(err)
	}
	took := waitFor(t, "new certificate served", 10*time.Second, func() bool {
		return serverSerial(t, e, cloud.TunnelAddr()) != before
	})
	t.Logf("rotated certificate served after %v", took.Round(time.Millisecond))

	echoLine("after rotation\n")
	if n := tunnels(onprem); n != 1 {
		t.Fatalf("onprem1 holds %d tunnels after rotation", n)
	}
	if strings.Contains(onprem.logs.String(), "tunnel down") || strings.Contains(cloud.logs.String(), "tunnel down") {
		t.Fatal("a tunnel went down during the rotation")
	}
	if err := roundTrip(onprem.AcceptAddr("server-b"), "new connection after rotation\n"); err != nil {
		t.Fatal(err)
	}
}
