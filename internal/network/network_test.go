package network

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

func mustVM(t *testing.T, h *Host, id string, p Policy) *VM {
	t.Helper()
	v, err := h.Create(context.Background(), id, p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	return v
}

func wantOK(t *testing.T, what string, body string, err error, want string) {
	t.Helper()
	if err != nil {
		t.Errorf("%s: %v, want it reachable", what, err)
		return
	}
	if !strings.Contains(body, want) {
		t.Errorf("%s: body %q, want %q", what, body, want)
	}
}

func wantRefused(t *testing.T, what string, body string, err error) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: reachable (%q), want refused", what, body)
	}
}

func TestNoNetworkByDefault(t *testing.T) {
	w := newWorld(t)
	// A VM without a policy gets no device: its guest has only lo.
	bare := w.namespace("bare")
	g := &guest{t: t, ns: bare}
	if _, err := g.dial(context.Background(), "tcp4", ipAllowed+":80"); !errors.Is(err, syscall.ENETUNREACH) {
		t.Fatalf("dial from a guest without a device = %v, want ENETUNREACH", err)
	}
	if (Policy{}).Enabled() {
		t.Fatal("the zero policy must not enable networking")
	}
	// And an empty policy, should one be set up anyway, lets nothing out.
	h := w.newHost(t)
	v := mustVM(t, h, "empty", Policy{})
	g = w.attachGuest(v, 1)
	body, err := g.get("http", ipAllowed, ipAllowed)
	wantRefused(t, "empty policy, http by IP", body, err)
	if m, err := g.resolve("10.0.2.2", "allowed.test", dns.TypeA); err != nil || m.Rcode != dns.RcodeNameError {
		t.Errorf("empty policy, DNS = %v %v, want NXDOMAIN", m, err)
	}
	if err := g.udpEcho(ipOther); err == nil {
		t.Error("empty policy: UDP got out")
	}
}

func TestPolicyEnforcement(t *testing.T) {
	w := newWorld(t)
	h := w.newHost(t)

	t.Run("cidr", func(t *testing.T) {
		v := mustVM(t, h, "cidr", Policy{AllowOut: []string{ipAllowed + "/32", ipOther}})
		g := w.attachGuest(v, 1)
		defer g.stop()
		body, err := g.get("http", ipAllowed, ipAllowed)
		wantOK(t, "allowed CIDR", body, err, "hello from "+ipAllowed)
		body, err = g.get("http", ipDenied, ipDenied)
		wantRefused(t, "IP outside allow_out", body, err)
		if err := g.udpEcho(ipOther); err != nil {
			t.Errorf("UDP to an allowed IP: %v", err)
		}
		if err := g.udpEcho(ipDenied); err == nil {
			t.Error("UDP to a denied IP got an answer")
		}
		// No domain is allowed, and a narrow CIDR policy gets no DNS.
		if m, err := g.resolve("10.0.2.2", "allowed.test", dns.TypeA); err != nil || m.Rcode != dns.RcodeNameError {
			t.Errorf("DNS under a CIDR-only policy = %v %v, want NXDOMAIN", m, err)
		}
	})

	t.Run("domain", func(t *testing.T) {
		v := mustVM(t, h, "domain", Policy{AllowOut: []string{"allowed.test"}})
		g := w.attachGuest(v, 2)
		defer g.stop()
		m, err := g.resolve("10.0.2.2", "allowed.test", dns.TypeA)
		if err != nil || m.Rcode != dns.RcodeSuccess || strings.Join(aRecords(m), ",") != ipAllowed {
			t.Fatalf("resolve allowed.test = %v %v", m, err)
		}
		m, err = g.resolve("10.0.2.2", "denied.test", dns.TypeA)
		if err != nil || m.Rcode != dns.RcodeNameError || len(m.Answer) != 0 {
			t.Errorf("resolve denied.test = %v %v, want NXDOMAIN", m, err)
		}
		// DNS sent to another server (a test host) is answered by ours.
		m, err = g.resolve(ipDenied, "denied.test", dns.TypeA)
		if err != nil || m.Rcode != dns.RcodeNameError {
			t.Errorf("DNS to another server = %v %v, want our NXDOMAIN", m, err)
		}
		m, err = g.resolve("10.0.2.2", "allowed.test", dns.TypeAAAA)
		if err != nil || m.Rcode != dns.RcodeSuccess || len(m.Answer) != 0 {
			t.Errorf("AAAA = %v %v, want an empty answer", m, err)
		}

		body, err := g.get("http", ipAllowed, "allowed.test")
		wantOK(t, "http://allowed.test", body, err, "host=allowed.test")
		body, err = g.get("https", ipAllowed, "allowed.test")
		wantOK(t, "https://allowed.test (SNI)", body, err, "hello from "+ipAllowed)
		body, err = g.get("http", ipDenied, "denied.test")
		wantRefused(t, "http://denied.test by its IP", body, err)
		body, err = g.get("https", ipDenied, "denied.test")
		wantRefused(t, "https://denied.test by its IP", body, err)
		body, err = g.get("http", ipDenied, "allowed.test")
		wantRefused(t, "Host: allowed.test sent to another IP (fronting)", body, err)
		body, err = g.get("https", ipAllowed, "denied.test")
		wantRefused(t, "SNI denied.test sent to allowed.test's IP", body, err)
		body, err = g.get("http", ipOther, ipOther)
		wantRefused(t, "an IP no allowed name resolved to", body, err)
		if err := g.udpEcho(ipAllowed); err == nil {
			t.Error("UDP to a domain-allowed address: domains allow TCP only")
		}
	})

	t.Run("internet, special ranges and denied names", func(t *testing.T) {
		v := mustVM(t, h, "internet", Policy{AllowOut: []string{"0.0.0.0/0"}, DenyOut: []string{"denied.test"}})
		g := w.attachGuest(v, 3)
		defer g.stop()
		body, err := g.get("http", ipOther, ipOther)
		wantOK(t, "a public address", body, err, "hello from "+ipOther)
		body, err = g.get("http", ipAllowed, "other.test")
		wantOK(t, "any name over the internet", body, err, "host=other.test")
		body, err = g.get("http", ipDenied, ipDenied)
		wantRefused(t, "the hard-coded IP of a denied name", body, err)
		body, err = g.get("http", ipAllowed, "denied.test")
		wantRefused(t, "Host: denied.test", body, err)
		body, err = g.get("http", ipMeta, ipMeta)
		wantRefused(t, "metadata 169.254.169.254", body, err)
		body, err = g.get("http", ipPrivate, ipPrivate)
		wantRefused(t, "a private address", body, err)
		c, err := g.dial(context.Background(), "tcp4", ipHost+":8080")
		if err == nil {
			fmt.Fprintf(c, "GET / HTTP/1.0\r\n\r\n")
			body, err = readResponse(c)
			c.Close()
		}
		wantRefused(t, "the host's own address", body, err)
		for _, addr := range []string{"10.200.0.1:8080", "10.0.2.2:22", "10.0.2.2:15001", "127.0.0.1:15001"} {
			c, err := g.dial(context.Background(), "tcp4", addr)
			if err == nil {
				fmt.Fprintf(c, "GET / HTTP/1.0\r\nHost: other.test\r\n\r\n")
				body, err = readResponse(c)
				c.Close()
			}
			wantRefused(t, "firesandbox's own address "+addr, body, err)
		}
		if m, err := g.resolve("10.0.2.2", "other.test", dns.TypeA); err != nil || strings.Join(aRecords(m), ",") != ipOther {
			t.Errorf("resolve other.test = %v %v", m, err)
		}
		if m, err := g.resolve("10.0.2.2", "denied.test", dns.TypeA); err != nil || m.Rcode != dns.RcodeNameError {
			t.Errorf("resolve denied.test = %v %v, want NXDOMAIN", m, err)
		}
		if m, err := g.resolve("10.0.2.2", "rebind.test", dns.TypeA); err != nil || len(aRecords(m)) != 0 {
			t.Errorf("a public name rebound to the metadata address = %v %v, want no address", m, err)
		}
		if err := g.udpEcho(ipMeta); err == nil {
			t.Error("UDP reached the metadata address")
		}
		if err := g.udpEcho(ipOther); err != nil {
			t.Errorf("UDP to a public address: %v", err)
		}

		// A client that waits out the peek before naming a denied host
		// is still judged by its first bytes.
		c, err = g.dial(context.Background(), "tcp4", ipAllowed+":80")
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * h.cfg.PeekTimeout)
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: denied.test\r\n\r\n")
		body, err = readResponse(c)
		c.Close()
		wantRefused(t, "Host: denied.test sent late", body, err)
	})

	t.Run("explicit metadata", func(t *testing.T) {
		v := mustVM(t, h, "meta", Policy{AllowOut: []string{ipMeta}})
		g := w.attachGuest(v, 4)
		defer g.stop()
		body, err := g.get("http", ipMeta, ipMeta)
		wantOK(t, "explicitly allowed metadata address", body, err, "hello from "+ipMeta)
	})
}

func TestClonesShareTheGuestAddress(t *testing.T) {
	w := newWorld(t)
	h := w.newHost(t)
	p := Policy{AllowOut: []string{"allowed.test"}}
	a, b := mustVM(t, h, "clone-a", p), mustVM(t, h, "clone-b", p)
	if a.Guest() != b.Guest() {
		t.Fatalf("clones differ: %+v %+v", a.Guest(), b.Guest())
	}
	// The gateway has one MAC everywhere: a restored guest's neighbour
	// cache, made in the snapshot's VM, stays right in every clone.
	for _, v := range []*VM{a, b} {
		l, err := v.nl.LinkByName(tapName)
		if err != nil {
			t.Fatal(err)
		}
		if got := l.Attrs().HardwareAddr.String(); got != v.Guest().GatewayMAC {
			t.Fatalf("tap of %s has MAC %s, want %s", v.ID(), got, v.Guest().GatewayMAC)
		}
	}
	_, ipA := a.HostLink()
	_, ipB := b.HostLink()
	if ipA == ipB {
		t.Fatalf("both clones use link address %s", ipA)
	}
	ga, gb := w.attachGuest(a, 1), w.attachGuest(b, 2)
	// Both open a connection and send their request at once (the filter
	// judges a flow by its first bytes, within PeekTimeout), then both read:
	// the two flows are alive at the same time from the same guest address.
	var conns []net.Conn
	for _, g := range []*guest{ga, gb} {
		c, err := g.dial(context.Background(), "tcp4", ipAllowed+":80")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n")
		conns = append(conns, c)
	}
	var wg sync.WaitGroup
	bodies := make([]string, 2)
	errs := make([]error, 2)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			bodies[i], errs[i] = readResponse(c)
		}()
	}
	wg.Wait()
	for i := range bodies {
		wantOK(t, fmt.Sprintf("clone %d", i), bodies[i], errs[i], "hello from "+ipAllowed)
	}
}

func TestPolicyChangeTakesEffect(t *testing.T) {
	w := newWorld(t)
	h := w.newHost(t)
	v := mustVM(t, h, "change", Policy{AllowOut: []string{ipAllowed}})
	g := w.attachGuest(v, 1)
	body, err := g.get("http", ipAllowed, ipAllowed)
	wantOK(t, "before", body, err, "hello")
	body, err = g.get("http", ipOther, ipOther)
	wantRefused(t, "before", body, err)

	// An open connection to what the new policy refuses is cut.
	open, err := g.dial(context.Background(), "tcp4", ipAllowed+":80")
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	fmt.Fprintf(open, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(open)
	if resp, err := http.ReadResponse(br, nil); err != nil {
		t.Fatal(err)
	} else {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}

	if err := v.SetPolicy(context.Background(), Policy{AllowOut: []string{ipOther}}); err != nil {
		t.Fatal(err)
	}
	body, err = g.get("http", ipOther, ipOther)
	wantOK(t, "after, newly allowed", body, err, "hello from "+ipOther)
	body, err = g.get("http", ipAllowed, ipAllowed)
	wantRefused(t, "after, no longer allowed", body, err)
	if err := g.udpEcho(ipOther); err != nil {
		t.Errorf("UDP after the change: %v", err)
	}
	open.SetReadDeadline(time.Now().Add(3 * time.Second))
	fmt.Fprintf(open, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if _, err := http.ReadResponse(br, nil); err == nil {
		t.Error("the connection opened under the old policy still works")
	}
	if got := v.Policy(); strings.Join(got.AllowOut, ",") != ipOther {
		t.Errorf("Policy() = %+v", got)
	}
	if err := v.SetPolicy(context.Background(), Policy{AllowOut: []string{"10.0.0.1/8"}}); !errors.Is(err, ErrInvalidPolicy) {
		t.Errorf("bad policy: %v", err)
	}
}

func TestPortProxy(t *testing.T) {
	w := newWorld(t)
	h := w.newHost(t)
	v := mustVM(t, h, "ports", Policy{AllowOut: []string{ipAllowed}})
	g := w.attachGuest(v, 1)
	// A web server in the guest, with a WebSocket-style upgrade that
	// echoes.
	var l net.Listener
	if err := inNS(g.ns, func() (err error) { l, err = net.Listen("tcp4", "0.0.0.0:8000"); return }); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") == "websocket" {
			c, brw, err := http.NewResponseController(rw).Hijack()
			if err != nil {
				return
			}
			defer c.Close()
			fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
			brw.Flush()
			line, _ := brw.ReadString('\n')
			fmt.Fprintf(brw, "echo %s", line)
			brw.Flush()
			return
		}
		fmt.Fprintf(rw, "guest server path=%s auth=%q", r.URL.Path, r.Header.Get("Authorization"))
	})}
	go srv.Serve(l)
	defer srv.Close()

	front := httptest.NewServer(http.StripPrefix("/v1/sandboxes/x/ports/8000", PortProxy(v, 8000, PortProxyConfig{})))
	defer front.Close()
	req, _ := http.NewRequest("GET", front.URL+"/v1/sandboxes/x/ports/8000/hello", nil)
	req.Header.Set("Authorization", "Bearer owner-key")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != `guest server path=/hello auth=""` {
		t.Fatalf("proxied GET = %d %q", resp.StatusCode, b)
	}

	c, err := net.Dial("tcp", strings.TrimPrefix(front.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "GET /v1/sandboxes/x/ports/8000/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
	br := bufio.NewReader(c)
	up, err := http.ReadResponse(br, nil)
	if err != nil || up.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade = %v %v", up, err)
	}
	fmt.Fprintf(c, "ping\n")
	if line, err := br.ReadString('\n'); err != nil || line != "echo ping\n" {
		t.Fatalf("after upgrade: %q %v", line, err)
	}

	resp, err = http.Get(front.URL + "/v1/sandboxes/x/ports/8000/../../9/x")
	if err == nil {
		resp.Body.Close()
	}
	bad := httptest.NewServer(PortProxy(v, 9, PortProxyConfig{}))
	defer bad.Close()
	resp, err = http.Get(bad.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(b), "nothing listens on port 9") {
		t.Fatalf("closed port = %d %q", resp.StatusCode, b)
	}
}

// leftovers lists what a Host with this owner left in the namespaces.
func leftovers(t *testing.T, w *world, cfg Config, owner string) []string {
	var out []string
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), cfg.Prefix+"-"+owner+"-") {
			out = append(out, "netns "+e.Name())
		}
	}
	nl, err := netlink.NewHandleAt(netns.NsHandle(w.up.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	links, _ := nl.LinkList()
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, cfg.Prefix+owner) {
			out = append(out, "link "+l.Attrs().Name)
		}
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(w.up.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	tables, _ := c.ListTables()
	for _, tb := range tables {
		if tb.Name == cfg.Prefix+"_"+owner {
			out = append(out, "table "+tb.Name)
		}
	}
	return out
}

func TestNothingLeftAfterClose(t *testing.T) {
	w := newWorld(t)
	cfg := w.hostConfig(t)
	h, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg = h.Config()
	var vms []*VM
	for i := range 3 {
		v, err := h.Create(context.Background(), fmt.Sprint(i), Policy{AllowOut: []string{"allowed.test"}})
		if err != nil {
			t.Fatal(err)
		}
		vms = append(vms, v)
	}
	if got := leftovers(t, w, cfg, h.Owner()); len(got) != 7 { // 3 namespaces, 3 links, 1 table
		t.Fatalf("while running: %v", got)
	}
	if err := vms[0].Close(); err != nil {
		t.Fatal(err)
	}
	if err := vms[0].Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if got := leftovers(t, w, cfg, h.Owner()); len(got) != 5 {
		t.Fatalf("after one VM closed: %v", got)
	}
	if err := h.Close(); err != nil { // closes the other two
		t.Fatal(err)
	}
	if got := leftovers(t, w, cfg, h.Owner()); len(got) != 0 {
		t.Fatalf("after Close: %v", got)
	}
	if _, err := h.Create(context.Background(), "late", Policy{AllowOut: []string{ipAllowed}}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Create after Close = %v", err)
	}
	if entries, _ := os.ReadDir(filepath.Join(cfg.RunDir, "owners")); len(entries) != 0 {
		t.Fatalf("owner files left: %v", entries)
	}
}

// TestSweepAfterKill starts a Host in a child process, kills it with
// SIGKILL, and sweeps what it left from another Host sharing the RunDir,
// while a third, live Host's VM is left alone.
func TestSweepAfterKill(t *testing.T) {
	w := newWorld(t)
	cfg := w.hostConfig(t)
	live := w.newHostWith(t, cfg)
	liveVM := mustVM(t, live, "live", Policy{AllowOut: []string{ipAllowed}})

	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperHost$")
	cmd.Env = append(os.Environ(), "FS_NET_HELPER_RUNDIR="+cfg.RunDir, "FS_NET_HELPER_UPLINK="+cfg.UplinkNetns)
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "owner ") {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("helper: %q %v", line, err)
	}
	dead := strings.TrimSpace(strings.TrimPrefix(line, "owner "))
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	full := cfg
	full.Prefix = "ft"
	if got := leftovers(t, w, full, dead); len(got) != 5 { // 2 namespaces, 2 links, 1 table
		t.Fatalf("the killed Host left %v, want 2 namespaces, 2 links and its table", got)
	}

	sweeper := w.newHostWith(t, cfg)
	rep, err := sweeper.Sweep()
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Owners) != 1 || rep.Owners[0] != dead || len(rep.Namespaces) != 2 || len(rep.Tables) != 1 {
		t.Fatalf("sweep report %+v", rep)
	}
	if got := leftovers(t, w, full, dead); len(got) != 0 {
		t.Fatalf("after sweep: %v", got)
	}
	if got := leftovers(t, w, full, live.Owner()); len(got) != 3 {
		t.Fatalf("the live Host lost something: %v", got)
	}
	g := w.attachGuest(liveVM, 1)
	body, err := g.get("http", ipAllowed, ipAllowed)
	wantOK(t, "the live Host's VM after the sweep", body, err, "hello")
	// The dead owner's slots are free again.
	v, err := sweeper.Create(context.Background(), "reuse", Policy{AllowOut: []string{ipAllowed}})
	if err != nil {
		t.Fatal(err)
	}
	v.Close()
}

func (w *world) newHostWith(t *testing.T, cfg Config) *Host {
	h, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// TestHelperHost is the child of TestSweepAfterKill: it makes two VM
// networks, says its owner tag and waits to be killed.
func TestHelperHost(t *testing.T) {
	dir := os.Getenv("FS_NET_HELPER_RUNDIR")
	if dir == "" {
		t.Skip("helper process for TestSweepAfterKill")
	}
	h, err := New(Config{RunDir: dir, Prefix: "ft", UplinkNetns: os.Getenv("FS_NET_HELPER_UPLINK"), DNSUpstreams: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if _, err := h.Create(context.Background(), fmt.Sprint(i), Policy{AllowOut: []string{"0.0.0.0/0"}}); err != nil {
			t.Fatal(err)
		}
	}
	fmt.Printf("owner %s\n", h.Owner())
	time.Sleep(time.Minute)
}

func TestDiagnose(t *testing.T) {
	w := newWorld(t)
	dg := Diagnose(context.Background(), w.hostConfig(t))
	if !dg.Usable || dg.Backend != BackendTap {
		t.Fatalf("Diagnose = %+v", dg)
	}
	bad := w.hostConfig(t)
	bad.DNSUpstreams = []string{}
	bad.Guest.MAC = "01:00:00:00:00:01"
	dg = Diagnose(context.Background(), bad)
	if dg.Usable || len(dg.Problems) < 2 {
		t.Fatalf("Diagnose(bad) = %+v, want the multicast MAC and the missing upstream", dg)
	}
}

// TestBenchSetup runs the setup benchmark briefly, so it keeps working;
// the numbers are for `make bench`, not asserted.
func TestBenchSetup(t *testing.T) {
	w := newWorld(t)
	runs := 5
	if n, err := strconv.Atoi(os.Getenv("FS_NET_BENCH_RUNS")); err == nil && n > 0 {
		runs = n
	}
	res, err := BenchSetup(context.Background(), w.hostConfig(t), Policy{AllowOut: []string{"0.0.0.0/0"}, DenyOut: []string{"denied.test"}}, runs)
	if err != nil {
		t.Fatal(err)
	}
	if res.Runs != runs || res.Create <= 0 || len(res.Phases) != 6 {
		t.Fatalf("BenchSetup = %+v", res)
	}
	t.Logf("create %v close %v phases %v", res.Create, res.Close, res.Phases)
}
