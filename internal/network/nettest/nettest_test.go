package nettest

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// From the uplink, every server of the world answers as itself, and the
// DNS upstream knows its names only.
func TestWorld(t *testing.T) {
	w := New(t)
	up, err := os.Open(w.Uplink())
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	get := func(addr string) (string, error) {
		// Dial from the uplink: the transport's own goroutines are not.
		tr := &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			var c net.Conn
			err := inNS(up, func() (err error) { c, err = (&net.Dialer{}).DialContext(ctx, network, a); return })
			return c, err
		}}
		c := http.Client{Timeout: 5 * time.Second, Transport: tr}
		resp, err := c.Get("http://" + addr + "/")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	for addr, want := range map[string]string{
		AllowedIP + ":80": "hello from " + AllowedIP + " host=" + AllowedIP, MetadataIP + ":80": "hello from " + MetadataIP,
		HostIP + ":8080": "hello from " + HostIP,
	} {
		got, err := get(addr)
		if err != nil || len(got) < len(want) || got[:len(want)] != want {
			t.Errorf("GET %s: %q %v, want %q", addr, got, err, want)
		}
	}
	m := new(dns.Msg)
	m.SetQuestion("allowed.test.", dns.TypeA)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := dns.ExchangeContext(ctx, m, w.DNS())
	if err != nil || len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != AllowedIP {
		t.Fatalf("DNS allowed.test: %v %v", r, err)
	}
	m.SetQuestion("example.com.", dns.TypeA)
	if r, err := dns.ExchangeContext(ctx, m, w.DNS()); err != nil || r.Rcode != dns.RcodeNameError {
		t.Fatalf("DNS example.com: %v %v, want NXDOMAIN", r, err)
	}
}
