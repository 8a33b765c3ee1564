package network

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/firesandbox/firesandbox/internal/testutil"
)

// The test world, all in namespaces the test makes (nothing else is ever
// a destination):
//
//	guest ns (10.0.2.15, a tap relayed to the VM's tap)   one per "VM"
//	   |
//	VM ns (made by Host.Create)  --veth-->  "up" ns: plays the host
//	                                          198.51.100.1/24 (a host address)
//	                                          HTTP on :8080 (a host service)
//	                                            |
//	                                        "inet" ns: the internet
//	                                          198.51.100.2, and on lo:
//	                                          203.0.113.10 allowed.test
//	                                          203.0.113.20 denied.test
//	                                          203.0.113.30 other.test
//	                                          169.254.169.254 (metadata)
//	                                          10.99.0.1 (a private host)
//	                                          HTTP :80, TLS :443, UDP echo :7
//
// The "up" namespace has no default route, so a packet that escaped the
// rules would have nowhere to go. DNS upstream: a server on 127.0.0.1.
type world struct {
	t        *testing.T
	tag      string
	dir      string
	up, inet *os.File
	upName   string
	dnsAddr  string
}

const (
	ipAllowed = "203.0.113.10"
	ipDenied  = "203.0.113.20"
	ipOther   = "203.0.113.30"
	ipMeta    = "169.254.169.254"
	ipPrivate = "10.99.0.1"
	ipHost    = "198.51.100.1"
)

var testNames = map[string]string{
	"allowed.test.":     ipAllowed,
	"www.allowed.test.": ipAllowed,
	"denied.test.":      ipDenied,
	"other.test.":       ipOther,
	"rebind.test.":      ipMeta,
}

func requireNetAdmin(t *testing.T) {
	t.Helper()
	testutil.RequireRoot(t)
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("skipped: no /dev/net/tun")
	}
}

func randTag() string {
	b := make([]byte, 3)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func newWorld(t *testing.T) *world {
	t.Helper()
	requireNetAdmin(t)
	w := &world{t: t, tag: randTag(), dir: "/run/netns"}
	if err := ensureNetnsDir(w.dir); err != nil {
		t.Fatal(err)
	}
	w.up = w.namespace("up")
	w.upName = "ftw-" + w.tag + "-up"
	w.inet = w.namespace("inet")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	upNL, err := netlink.NewHandleAt(netns.NsHandle(w.up.Fd()))
	must(err)
	defer upNL.Close()
	inNL, err := netlink.NewHandleAt(netns.NsHandle(w.inet.Fd()))
	must(err)
	defer inNL.Close()
	la := netlink.NewLinkAttrs()
	la.Name = "up0"
	must(upNL.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "in0", PeerNamespace: netlink.NsFd(int(w.inet.Fd()))}))
	addr := func(h *netlink.Handle, link, cidr string) {
		t.Helper()
		l, err := h.LinkByName(link)
		must(err)
		must(h.AddrAdd(l, &netlink.Addr{IPNet: ipnet(netip.MustParsePrefix(cidr))}))
		must(h.LinkSetUp(l))
	}
	addr(upNL, "up0", ipHost+"/24")
	addr(inNL, "in0", "198.51.100.2/24")
	addr(upNL, "lo", "127.0.0.1/8")
	addr(inNL, "lo", "127.0.0.1/8")
	for _, a := range []string{ipAllowed, ipDenied, ipOther, ipMeta, ipPrivate} {
		addr(inNL, "lo", a+"/32")
	}
	up0, _ := upNL.LinkByName("up0")
	for _, dst := range []string{"203.0.113.0/24", ipMeta + "/32", "10.99.0.0/24"} {
		must(upNL.RouteAdd(&netlink.Route{LinkIndex: up0.Attrs().Index, Dst: ipnet(netip.MustParsePrefix(dst)), Gw: net.ParseIP("198.51.100.2")}))
	}
	must(inNS(w.up, func() error { return writeSysctl("net/ipv4/ip_forward", "1") }))

	w.serveHTTP(w.inet, "0.0.0.0:80", false)
	w.serveHTTP(w.inet, "0.0.0.0:443", true)
	w.serveHTTP(w.up, ipHost+":8080", false)
	for _, a := range []string{ipAllowed, ipDenied, ipOther, ipMeta} {
		w.serveUDPEcho(w.inet, a+":7") // bound per address, so replies come from it
	}
	w.serveDNS()
	return w
}

// namespace makes ftw-<tag>-<name> and removes it at the end.
func (w *world) namespace(name string) *os.File {
	w.t.Helper()
	full := "ftw-" + w.tag + "-" + name
	f, err := createNamedNS(w.dir, full)
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() {
		f.Close()
		if err := deleteNamedNS(w.dir, full); err != nil {
			w.t.Errorf("delete %s: %v", full, err)
		}
	})
	return f
}

func (w *world) listen(ns *os.File, network, addr string) net.Listener {
	w.t.Helper()
	var l net.Listener
	if err := inNS(ns, func() (err error) { l, err = net.Listen(network, addr); return }); err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { l.Close() })
	return l
}

// serveHTTP answers "hello from <local address> host=<Host>".
func (w *world) serveHTTP(ns *os.File, addr string, useTLS bool) {
	l := w.listen(ns, "tcp4", addr)
	if useTLS {
		l = tls.NewListener(l, &tls.Config{Certificates: []tls.Certificate{selfSigned(w.t)}})
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		la := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
		host, _, _ := net.SplitHostPort(la.String())
		fmt.Fprintf(rw, "hello from %s host=%s", host, r.Host)
	}), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(l)
	w.t.Cleanup(func() { srv.Close() })
}

func (w *world) serveUDPEcho(ns *os.File, addr string) {
	var pc net.PacketConn
	if err := inNS(ns, func() (err error) { pc, err = net.ListenPacket("udp4", addr); return }); err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
}

func (w *world) serveDNS() {
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		w.t.Fatal(err)
	}
	w.dnsAddr = pc.LocalAddr().String()
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(rw dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		q := req.Question[0]
		ip, ok := testNames[strings.ToLower(q.Name)]
		switch {
		case !ok:
			m.Rcode = dns.RcodeNameError
		case q.Qtype == dns.TypeA:
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.ParseIP(ip)})
		case q.Qtype == dns.TypeTXT:
			m.Answer = append(m.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60}, Txt: []string{"hello"}})
		}
		rw.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	w.t.Cleanup(func() { srv.Shutdown() })
}

func selfSigned(t *testing.T) tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"allowed.test", "denied.test", "other.test"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func (w *world) hostConfig(t *testing.T) Config {
	return Config{
		RunDir:       t.TempDir(),
		Prefix:       "ft",
		UplinkNetns:  "/run/netns/" + w.upName,
		DNSUpstreams: []string{w.dnsAddr},
		PeekTimeout:  300 * time.Millisecond,
		DialTimeout:  3 * time.Second,
	}
}

func (w *world) newHost(t *testing.T) *Host {
	h, err := New(w.hostConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// guest stands in for a VM: a namespace with a tap whose frames are
// relayed to and from the VM's tap (opened with OpenTap, as QEMU does),
// configured as the agent configures the guest.
type guest struct {
	t    *testing.T
	ns   *os.File
	stop func()
}

func (w *world) attachGuest(v *VM, n int) *guest {
	t := w.t
	t.Helper()
	ns := w.namespace(fmt.Sprintf("g%d", n))
	g := v.Guest()
	var gtap *os.File
	err := inNS(ns, func() error {
		var err error
		gtap, err = openTap("eth0", false)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	nl, err := netlink.NewHandleAt(netns.NsHandle(ns.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	l, _ := nl.LinkByName("eth0")
	mac, _ := net.ParseMAC(g.MAC)
	nl.LinkSetHardwareAddr(l, mac)
	nl.AddrAdd(l, &netlink.Addr{IPNet: ipnet(g.Addr)})
	nl.LinkSetUp(l)
	lo, _ := nl.LinkByName("lo")
	nl.LinkSetUp(lo)
	if err := nl.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: g.Gateway.AsSlice()}); err != nil {
		t.Fatal(err)
	}
	vtap, err := v.OpenTap()
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	relay := func(dst, src *os.File) {
		defer wg.Done()
		buf := make([]byte, 65536+16)
		for {
			n, err := src.Read(buf)
			if err != nil {
				return
			}
			dst.Write(buf[:n])
		}
	}
	wg.Add(2)
	go relay(vtap, gtap)
	go relay(gtap, vtap)
	gs := &guest{t: t, ns: ns}
	var once sync.Once
	gs.stop = func() { once.Do(func() { vtap.Close(); gtap.Close(); wg.Wait() }) }
	t.Cleanup(gs.stop)
	return gs
}

// dial connects from inside the guest.
func (g *guest) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := inNS(g.ns, func() error {
		var err error
		d := net.Dialer{Timeout: 3 * time.Second}
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// get fetches url from the guest, connecting to ip (as a guest that has
// resolved or hard-coded it) and sending host as Host or SNI.
func (g *guest) get(scheme, ip, host string) (string, error) {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			port := "80"
			if scheme == "https" {
				port = "443"
			}
			return g.dial(ctx, "tcp4", net.JoinHostPort(ip, port))
		},
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true, ServerName: host},
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	resp, err := c.Get(scheme + "://" + host + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	return string(b), nil
}

// resolve asks the guest's resolver (or server, which the namespace
// redirects to it) for name's A records.
func (g *guest) resolve(server, name string, qtype uint16) (*dns.Msg, error) {
	var resp *dns.Msg
	err := inNS(g.ns, func() error {
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(name), qtype)
		m.SetEdns0(1232, false)
		var err error
		resp, _, err = (&dns.Client{Timeout: 3 * time.Second}).Exchange(m, net.JoinHostPort(server, "53"))
		return err
	})
	return resp, err
}

func (g *guest) udpEcho(ip string) error {
	c, err := g.dial(context.Background(), "udp4", net.JoinHostPort(ip, "7"))
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	buf := make([]byte, 16)
	n, err := c.Read(buf)
	if err != nil {
		return err
	}
	if string(buf[:n]) != "ping" {
		return fmt.Errorf("echo %q", buf[:n])
	}
	return nil
}

func aRecords(m *dns.Msg) []string {
	var out []string
	for _, rr := range m.Answer {
		if a, ok := rr.(*dns.A); ok {
			out = append(out, a.A.String())
		}
	}
	return out
}

// readAll reads a whole HTTP/1.0-style response from c.
func readResponse(c net.Conn) (string, error) {
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}
