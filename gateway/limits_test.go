package gateway

import (
	"bufio"
	"net"
	"testing"
	"time"

	"github.com/sitebridge/sitebridge/config"
)

// TestServiceConnectionLimit: with services[].max-connections 2 on the
// connect side, a third concurrent connection is refused (overloaded, and
// the client is closed), while the two carry on; once one closes, a new one
// gets through.
func TestServiceConnectionLimit(t *testing.T) {
	e := newEnv(t, "cloud/cloud1", "onprem/onprem1")
	cloud := e.start(cloudYAML("cloud1", e.echoB), func(c *config.Config) {
		listenOn("127.0.0.1:0", "127.0.0.1:0")(c)
		c.Limits.OpenTimeout = config.Duration(time.Second)
	})
	onprem := e.start(onpremYAML("onprem1", e.echoA, wssURL(cloud.TunnelAddr())), func(c *config.Config) {
		listenOn("", "127.0.0.1:0")(c)
		for i := range c.Services {
			if c.Services[i].Name == "server-a" {
				c.Services[i].MaxConnections = 2
			}
		}
	})
	waitFor(t, "tunnel up", 5*time.Second, func() bool { return tunnels(cloud) == 1 && tunnels(onprem) == 1 })
	addr := cloud.AcceptAddr("server-a")

	// hold opens a connection and checks it echoes; it stays open.
	hold := func() (net.Conn, error) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return nil, err
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("ping\n")); err != nil {
			c.Close()
			return nil, err
		}
		if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
			c.Close()
			return nil, err
		}
		c.SetDeadline(time.Time{})
		return c, nil
	}
	a, err := hold()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := hold()
	if err != nil {
		t.Fatal(err)
	}
	if c, err := hold(); err == nil {
		c.Close()
		t.Fatal("a third connection got through a limit of 2")
	}
	if _, err := a.Write([]byte("still here\n")); err != nil {
		t.Fatal(err)
	}
	b.Close()
	waitFor(t, "a slot free again", 5*time.Second, func() bool {
		c, err := hold()
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}
