// Package nettest is a small internet for tests of VM networking, made of
// network namespaces the test creates and removes: nothing outside this
// machine is ever a destination. Tests of the packages above
// internal/network use it as the world a VM's policy is enforced against.
//
//	w := nettest.New(t)
//	h, _ := network.New(network.Config{RunDir: t.TempDir(), Prefix: "ft",
//		UplinkNetns: w.Uplink(), DNSUpstreams: []string{w.DNS()}})
//
// The layout:
//
//	"up" namespace: plays the host (the VMs' uplink)
//	   198.51.100.1/24 (a host address, HostIP), HTTP on HostIP:8080
//	   no default route: a packet that escaped the rules has nowhere to go
//	     |
//	"inet" namespace: plays the internet, HTTP on :80 of every address:
//	   203.0.113.10 allowed.test, www.allowed.test   (AllowedIP)
//	   203.0.113.20 denied.test                      (DeniedIP)
//	   203.0.113.30 other.test                       (OtherIP)
//	   169.254.169.254 (a cloud's metadata service)  (MetadataIP)
//	   10.99.0.1 (a private host)                    (PrivateIP)
//
// Each server answers "hello from <its address> host=<Host header>". The
// DNS upstream, on 127.0.0.1 of the test's own namespace, knows the names
// above and nothing else.
package nettest

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	fsnetns "github.com/firesandbox/firesandbox/internal/netns"
)

// Addresses of the world.
const (
	AllowedIP  = "203.0.113.10"
	DeniedIP   = "203.0.113.20"
	OtherIP    = "203.0.113.30"
	MetadataIP = "169.254.169.254"
	PrivateIP  = "10.99.0.1"
	HostIP     = "198.51.100.1"
	inetIP     = "198.51.100.2"
)

// Names is what the world's DNS server knows.
var Names = map[string]string{
	"allowed.test.":     AllowedIP,
	"www.allowed.test.": AllowedIP,
	"denied.test.":      DeniedIP,
	"other.test.":       OtherIP,
}

// World is the test's internet. See the package comment.
type World struct {
	t      *testing.T
	dir    string
	up     string
	dnsAdr string
}

// New builds the world, or skips the test where it cannot be built (not
// root). Everything is removed when the test ends.
func New(t *testing.T) *World {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root (network namespaces)")
	}
	w := &World{t: t, dir: t.TempDir()}
	up, upPath := w.namespace("up")
	inet, _ := w.namespace("inet")
	w.up = upPath
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("nettest: %v", err)
		}
	}
	upNL, err := netlink.NewHandleAt(netns.NsHandle(up.Fd()))
	must(err)
	defer upNL.Close()
	inNL, err := netlink.NewHandleAt(netns.NsHandle(inet.Fd()))
	must(err)
	defer inNL.Close()
	la := netlink.NewLinkAttrs()
	la.Name = "up0"
	must(upNL.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "in0", PeerNamespace: netlink.NsFd(int(inet.Fd()))}))
	addr := func(h *netlink.Handle, link, cidr string) {
		t.Helper()
		l, err := h.LinkByName(link)
		must(err)
		must(h.AddrAdd(l, &netlink.Addr{IPNet: ipnet(cidr)}))
		must(h.LinkSetUp(l))
	}
	addr(upNL, "up0", HostIP+"/24")
	addr(inNL, "in0", inetIP+"/24")
	addr(upNL, "lo", "127.0.0.1/8")
	addr(inNL, "lo", "127.0.0.1/8")
	for _, a := range []string{AllowedIP, DeniedIP, OtherIP, MetadataIP, PrivateIP} {
		addr(inNL, "lo", a+"/32")
	}
	up0, err := upNL.LinkByName("up0")
	must(err)
	for _, dst := range []string{"203.0.113.0/24", MetadataIP + "/32", "10.99.0.0/24"} {
		must(upNL.RouteAdd(&netlink.Route{LinkIndex: up0.Attrs().Index, Dst: ipnet(dst), Gw: net.ParseIP(inetIP)}))
	}
	must(inNS(up, func() error { return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644) }))
	w.serveHTTP(inet, "0.0.0.0:80")
	w.serveHTTP(up, HostIP+":8080")
	w.serveDNS()
	return w
}

// Uplink is the namespace that plays the host: network.Config.UplinkNetns.
func (w *World) Uplink() string { return w.up }

// DNS is the upstream resolver, ip:port: network.Config.DNSUpstreams.
func (w *World) DNS() string { return w.dnsAdr }

// namespace makes a network namespace bound at a file of the test's.
func (w *World) namespace(name string) (*os.File, string) {
	t := w.t
	t.Helper()
	path := filepath.Join(w.dir, name)
	if err := fsnetns.Create(path); err != nil {
		t.Fatalf("nettest: namespace %s: %v", name, err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		f.Close()
		fsnetns.Delete(path)
	})
	return f, path
}

// inNS runs fn on a thread in namespace ns; the thread is discarded
// afterwards rather than trusted to have left it.
func inNS(ns *os.File, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return <-errc
}

func (w *World) serveHTTP(ns *os.File, addr string) {
	var ln net.Listener
	if err := inNS(ns, func() (err error) { ln, err = net.Listen("tcp4", addr); return }); err != nil {
		w.t.Fatalf("nettest: listen %s: %v", addr, err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		la, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
		host := ""
		if la != nil {
			host, _, _ = net.SplitHostPort(la.String())
		}
		fmt.Fprintf(rw, "hello from %s host=%s", host, r.Host)
	}), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	w.t.Cleanup(func() { srv.Close() })
}

func (w *World) serveDNS() {
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		w.t.Fatal(err)
	}
	w.dnsAdr = pc.LocalAddr().String()
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(rw dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		if len(req.Question) != 1 {
			m.Rcode = dns.RcodeFormatError
			rw.WriteMsg(m)
			return
		}
		q := req.Question[0]
		ip, ok := Names[strings.ToLower(q.Name)]
		switch {
		case !ok:
			m.Rcode = dns.RcodeNameError
		case q.Qtype == dns.TypeA:
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.ParseIP(ip)})
		}
		rw.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	w.t.Cleanup(func() { srv.Shutdown() })
}

func ipnet(cidr string) *net.IPNet {
	p := netip.MustParsePrefix(cidr)
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
