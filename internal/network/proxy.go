package network

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// proxy is the VM's SNI/Host filter: the namespace redirects every TCP
// connection from the guest to it. It reads the original destination,
// peeks at the first bytes for a TLS ServerName or an HTTP Host, decides
// by the policy, and only then dials the destination from the VM's
// namespace and splices the two.
type proxy struct {
	v     *VM
	l     net.Listener
	sem   chan struct{}
	mu    sync.Mutex
	conns map[*pconn]struct{}
	wg    sync.WaitGroup
	done  chan struct{}
}

// pconn is one proxied connection, kept so a policy change can re-judge
// it.
type pconn struct {
	guest net.Conn
	dst   netip.AddrPort
	mu    sync.Mutex
	name  string
	out   net.Conn
}

func (c *pconn) setName(n string)  { c.mu.Lock(); c.name = n; c.mu.Unlock() }
func (c *pconn) setOut(o net.Conn) { c.mu.Lock(); c.out = o; c.mu.Unlock() }

func (c *pconn) closeBoth() {
	c.mu.Lock()
	out := c.out
	c.mu.Unlock()
	resetClose(c.guest)
	if out != nil {
		out.Close()
	}
}

const maxPeek = 16 << 10

func newProxy(v *VM, l net.Listener) *proxy {
	p := &proxy{v: v, l: l, sem: make(chan struct{}, v.h.cfg.MaxConns), conns: map[*pconn]struct{}{}, done: make(chan struct{})}
	p.wg.Add(1)
	go p.serve()
	return p
}

func (p *proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			select {
			case <-p.done:
				return
			case <-time.After(10 * time.Millisecond): // EMFILE and such: back off
			}
			continue
		}
		select {
		case p.sem <- struct{}{}:
		default:
			resetClose(c) // too many at once for this VM
			continue
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer func() { <-p.sem }()
			p.handle(c)
		}()
	}
}

func (p *proxy) close() {
	close(p.done)
	p.l.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.closeBoth()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// recheck closes the connections the policy now in force refuses.
func (p *proxy) recheck() {
	st := p.v.state.Load()
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.mu.Lock()
		name := c.name
		c.mu.Unlock()
		if v := p.decide(st, c.dst, name); !v.Allowed {
			p.v.log.Info("connection closed by policy change", "op", "proxy", "dst", c.dst, "name", name, "reason", v.Reason)
			c.closeBoth()
		}
	}
}

// decide judges a connection to dst that announced name ("" if none).
func (p *proxy) decide(st *policyState, dst netip.AddrPort, name string) Verdict {
	r, ip := st.rules, dst.Addr()
	if reason := r.denyIP(ip, st.env); reason != "" {
		return Verdict{false, reason}
	}
	if slices.Contains(st.deniedByName, ip) {
		return Verdict{false, "address of a name in deny_out"}
	}
	if n, ok := canonicalName(name); ok {
		nv := r.CheckName(n)
		if !nv.Allowed && strings.HasPrefix(nv.Reason, "in deny_out") {
			return nv
		}
		if nv.Allowed && p.addressOf(n, ip) {
			return nv
		}
		if r.CheckIP(ip, st.env).Allowed {
			return Verdict{true, "allowed by CIDR"}
		}
		if nv.Allowed {
			return Verdict{false, fmt.Sprintf("%s is not an address of %s", ip, n)}
		}
		return Verdict{false, "name " + n + " not in allow_out"}
	}
	if v := r.CheckIP(ip, st.env); v.Allowed {
		return v
	}
	if p.v.resolver.gaveOutAllowed(r, ip) {
		return Verdict{true, "address of an allowed name"}
	}
	return Verdict{false, "not in allow_out"}
}

// addressOf: did our resolver give ip out for name, or does name resolve
// to it now?
func (p *proxy) addressOf(name string, ip netip.Addr) bool {
	if p.v.resolver.gaveOut(name, ip) {
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*upstreamTimeout)
	defer cancel()
	ips := p.v.h.lookupA(ctx, name)
	if len(ips) > 0 {
		p.v.resolver.remember(name, ips, 0)
	}
	return slices.Contains(ips, ip)
}

func (p *proxy) handle(c net.Conn) {
	log := p.v.log.With("op", "proxy")
	dst, err := originalDst(c)
	if err != nil {
		resetClose(c)
		return
	}
	st := p.v.state.Load()
	if reason := st.rules.denyIP(dst.Addr(), st.env); reason != "" || slices.Contains(st.deniedByName, dst.Addr()) {
		log.Debug("refused", "dst", dst, "reason", reason)
		resetClose(c) // no name can make this address allowed
		return
	}
	pc := &pconn{guest: c, dst: dst}
	p.mu.Lock()
	select {
	case <-p.done:
		p.mu.Unlock()
		resetClose(c)
		return
	default:
	}
	p.conns[pc] = struct{}{}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.conns, pc)
		p.mu.Unlock()
		pc.closeBoth()
	}()

	var first []byte
	seen := false // have the client's first bytes been judged?
	if st.rules.HasNames() {
		var name string
		var complete bool
		c.SetReadDeadline(time.Now().Add(p.v.h.cfg.PeekTimeout))
		first, name, complete = peek(c, nil)
		if !complete && len(first) > 0 {
			// A client-first protocol that is slow, or trickling on
			// purpose: wait for the whole first message.
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			first, name, complete = peek(c, first)
		}
		c.SetReadDeadline(time.Time{})
		seen = len(first) > 0 // incomplete bytes are judged without a name
		pc.setName(name)
	}
	pc.mu.Lock()
	name := pc.name
	pc.mu.Unlock()
	if v := p.decide(p.v.state.Load(), dst, name); !v.Allowed {
		log.Debug("refused", "dst", dst, "name", name, "reason", v.Reason)
		refuse(c, first, v.Reason)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.v.h.cfg.DialTimeout)
	out, err := p.v.dialOut(ctx, dst)
	cancel()
	if err != nil {
		log.Debug("dial failed", "dst", dst, "err", err)
		resetClose(c)
		return
	}
	pc.setOut(out)
	if len(first) > 0 {
		if _, err := out.Write(first); err != nil {
			return
		}
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // destination -> guest
		defer wg.Done()
		io.Copy(c, out)
		closeWrite(c)
	}()
	if !seen && st.rules.HasNames() {
		// Nothing came before the deadline (a server-first protocol, or a
		// client waiting on purpose): judge the first bytes when they come.
		buf, n, _ := peek(c, nil)
		if n != "" {
			pc.setName(n)
			if v := p.decide(p.v.state.Load(), dst, n); !v.Allowed {
				log.Debug("refused late", "dst", dst, "name", n, "reason", v.Reason)
				pc.closeBoth()
				wg.Wait()
				return
			}
		}
		if len(buf) > 0 {
			if _, err := out.Write(buf); err != nil {
				pc.closeBoth()
				wg.Wait()
				return
			}
		}
	}
	io.Copy(out, c) // guest -> destination
	closeWrite(out)
	wg.Wait()
}

// peek reads the client's first message: a TLS ClientHello or HTTP request
// headers. It returns the bytes read, the name they announce, and whether
// it finished (a full hello or header block, or bytes that are neither).
// A read error or deadline ends it early with complete=false.
func peek(c net.Conn, buf []byte) (data []byte, name string, complete bool) {
	tmp := make([]byte, 4096)
	for {
		if len(buf) > 0 {
			if n, done := parseFirst(buf); done {
				return buf, n, true
			}
			if len(buf) >= maxPeek {
				return buf, "", true
			}
		}
		k, err := c.Read(tmp[:min(len(tmp), maxPeek-len(buf))])
		buf = append(buf, tmp[:k]...)
		if err != nil {
			if len(buf) > 0 {
				if n, done := parseFirst(buf); done {
					return buf, n, true
				}
			}
			return buf, "", false
		}
	}
}

var httpMethods = []string{"GET ", "POST ", "PUT ", "HEAD ", "DELETE ", "OPTIONS ", "PATCH ", "CONNECT ", "TRACE "}

// parseFirst finds the name in a client's first bytes; done is false while
// more bytes could still change the answer.
func parseFirst(b []byte) (name string, done bool) {
	if b[0] == 0x16 { // TLS handshake record
		if len(b) < 5 {
			return "", false
		}
		n, ok := sniFromClientHello(b)
		return n, ok
	}
	for _, m := range httpMethods {
		switch {
		case len(b) < len(m) && strings.HasPrefix(m, string(b)):
			return "", false
		case bytes.HasPrefix(b, []byte(m)):
			end := bytes.Index(b, []byte("\r\n\r\n"))
			if end < 0 {
				return "", false
			}
			req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(b[:end+4])))
			if err != nil {
				return "", true
			}
			host := req.Host
			if h, _, err := net.SplitHostPort(host); err == nil {
				host = h
			}
			return host, true
		}
	}
	return "", true // neither TLS nor HTTP: no name to check
}

var errHelloSeen = errors.New("hello seen")

// sniFromClientHello lets crypto/tls parse the ClientHello in b and
// returns its ServerName; ok is false until the whole hello is there.
func sniFromClientHello(b []byte) (name string, ok bool) {
	var hello *tls.ClientHelloInfo
	_ = tls.Server(&replayConn{r: bytes.NewReader(b)}, &tls.Config{
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			hello = h
			return nil, errHelloSeen
		},
	}).Handshake()
	if hello == nil {
		return "", false
	}
	return hello.ServerName, true
}

// replayConn feeds recorded bytes to a TLS server and swallows its
// replies.
type replayConn struct{ r io.Reader }

func (c *replayConn) Read(p []byte) (int, error)         { return c.r.Read(p) }
func (c *replayConn) Write(p []byte) (int, error)        { return len(p), nil }
func (c *replayConn) Close() error                       { return nil }
func (c *replayConn) LocalAddr() net.Addr                { return &net.TCPAddr{} }
func (c *replayConn) RemoteAddr() net.Addr               { return &net.TCPAddr{} }
func (c *replayConn) SetDeadline(t time.Time) error      { return nil }
func (c *replayConn) SetReadDeadline(t time.Time) error  { return nil }
func (c *replayConn) SetWriteDeadline(t time.Time) error { return nil }

// originalDst reads where the guest meant to connect before the redirect
// (SO_ORIGINAL_DST, a sockaddr_in).
func originalDst(c net.Conn) (netip.AddrPort, error) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("not a TCP connection")
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var out netip.AddrPort
	var serr error
	err = rc.Control(func(fd uintptr) {
		m, err := unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, unix.SO_ORIGINAL_DST)
		if err != nil {
			serr = err
			return
		}
		a := m.Multiaddr
		out = netip.AddrPortFrom(netip.AddrFrom4([4]byte{a[4], a[5], a[6], a[7]}), uint16(a[2])<<8|uint16(a[3]))
	})
	if err == nil {
		err = serr
	}
	return out, err
}

// refuse ends a refused connection: an HTTP client gets a 403 that says
// why, anything else a reset.
func refuse(c net.Conn, first []byte, reason string) {
	if len(first) > 0 && first[0] != 0x16 {
		if _, done := parseFirst(first); done && slices.ContainsFunc(httpMethods, func(m string) bool { return bytes.HasPrefix(first, []byte(m)) }) {
			body := "firesandbox: denied by the sandbox's network policy: " + reason + "\n"
			c.SetWriteDeadline(time.Now().Add(2 * time.Second))
			fmt.Fprintf(c, "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
			c.Close()
			return
		}
	}
	resetClose(c)
}

func resetClose(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

func closeWrite(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite()
		return
	}
	c.Close()
}
