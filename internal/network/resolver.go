package network

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// resolver is the VM's DNS server: it listens on the gateway inside the
// VM's namespace (and gets every query the guest sends anywhere, through a
// redirect), answers only names the policy allows, and remembers the
// addresses it gave out so the SNI/Host filter can tell a name's own
// addresses from a hard-coded one.
type resolver struct {
	v        *VM
	servers  []*dns.Server
	sem      chan struct{}
	mu       sync.Mutex
	answered map[string]map[netip.Addr]time.Time // name -> address -> until
}

const (
	maxConcurrentQueries = 32
	maxRemembered        = 4096 // names per VM
	minRemember          = 5 * time.Minute
	maxRemember          = 24 * time.Hour
	upstreamTimeout      = 2 * time.Second
)

func newResolver(v *VM, udp net.PacketConn, tcp net.Listener) *resolver {
	r := &resolver{v: v, sem: make(chan struct{}, maxConcurrentQueries), answered: map[string]map[netip.Addr]time.Time{}}
	var wg sync.WaitGroup
	for _, s := range []*dns.Server{
		{PacketConn: udp, Handler: r, UDPSize: dns.DefaultMsgSize},
		{Listener: tcp, Handler: r, MaxTCPQueries: 128, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second},
	} {
		wg.Add(1)
		s.NotifyStartedFunc = wg.Done
		r.servers = append(r.servers, s)
		go s.ActivateAndServe()
	}
	wg.Wait()
	return r
}

func (r *resolver) close() {
	for _, s := range r.servers {
		s.Shutdown()
	}
}

// ServeDNS answers one query.
func (r *resolver) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	reply := new(dns.Msg)
	reply.SetReply(req)
	reply.RecursionAvailable = true
	reply.Authoritative = false
	size := dns.MinMsgSize
	if o := req.IsEdns0(); o != nil {
		size = max(int(o.UDPSize()), dns.MinMsgSize)
		reply.SetEdns0(uint16(min(size, dns.DefaultMsgSize)), false)
	}
	write := func() {
		if _, ok := w.RemoteAddr().(*net.UDPAddr); ok {
			reply.Truncate(size)
		}
		w.WriteMsg(reply)
	}
	if req.Opcode != dns.OpcodeQuery || req.Response {
		reply.Rcode = dns.RcodeNotImplemented
		write()
		return
	}
	if len(req.Question) != 1 {
		reply.Rcode = dns.RcodeFormatError
		write()
		return
	}
	q := req.Question[0]
	if q.Qclass != dns.ClassINET {
		reply.Rcode = dns.RcodeRefused
		write()
		return
	}
	name, ok := canonicalName(q.Name)
	st := r.v.state.Load()
	if !ok {
		reply.Rcode = dns.RcodeNameError
		write()
		return
	}
	if v := st.rules.resolvable(name); !v.Allowed {
		reply.Rcode = dns.RcodeNameError
		blocked(reply, v.Reason)
		write()
		return
	}
	switch q.Qtype {
	case dns.TypeAXFR, dns.TypeIXFR, dns.TypeANY:
		reply.Rcode = dns.RcodeRefused
		write()
		return
	case dns.TypeAAAA:
		// The guest has IPv4 only: an empty answer sends clients to A.
		write()
		return
	}
	select {
	case r.sem <- struct{}{}:
		defer func() { <-r.sem }()
	default:
		reply.Rcode = dns.RcodeServerFailure
		write()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*upstreamTimeout)
	defer cancel()
	resp, err := r.v.h.exchange(ctx, name, q.Qtype)
	if err != nil {
		reply.Rcode = dns.RcodeServerFailure
		write()
		return
	}
	reply.Rcode = resp.Rcode
	byName := st.rules.allowedByName(name)
	var ips []netip.Addr
	var ttl uint32
	for _, rr := range resp.Answer {
		switch a := rr.(type) {
		case *dns.A:
			ip, ok := netip.AddrFromSlice(a.A.To4())
			if !ok {
				continue
			}
			// A name allowed by pattern may point anywhere but at a denied
			// address; a name resolvable only because the policy is broad
			// must point at an allowed address. (Rebinding a public name
			// to 169.254.169.254 gets nowhere either way.)
			if byName && st.rules.denyIP(ip, st.env) != "" || !byName && !st.rules.CheckIP(ip, st.env).Allowed || slices.Contains(st.deniedByName, ip) {
				continue
			}
			ips = append(ips, ip)
			ttl = max(ttl, a.Hdr.Ttl)
		case *dns.AAAA:
			continue
		}
		reply.Answer = append(reply.Answer, rr)
	}
	if len(ips) > 0 {
		r.remember(name, ips, time.Duration(ttl)*time.Second)
	}
	write()
}

// blocked adds an Extended DNS Error (RFC 8914) saying why.
func blocked(m *dns.Msg, reason string) {
	o := m.IsEdns0()
	if o == nil {
		return
	}
	o.Option = append(o.Option, &dns.EDNS0_EDE{InfoCode: dns.ExtendedErrorCodeBlocked, ExtraText: "firesandbox policy: " + reason})
}

func (r *resolver) remember(name string, ips []netip.Addr, ttl time.Duration) {
	until := time.Now().Add(min(max(ttl, minRemember), maxRemember))
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.answered[name]
	if m == nil {
		if len(r.answered) >= maxRemembered {
			r.expireLocked()
			if len(r.answered) >= maxRemembered {
				return
			}
		}
		m = map[netip.Addr]time.Time{}
		r.answered[name] = m
	}
	for _, ip := range ips {
		m[ip] = until
	}
}

func (r *resolver) expireLocked() {
	now := time.Now()
	for n, m := range r.answered {
		for ip, until := range m {
			if now.After(until) {
				delete(m, ip)
			}
		}
		if len(m) == 0 {
			delete(r.answered, n)
		}
	}
}

// gaveOut reports whether the resolver answered name with ip lately.
func (r *resolver) gaveOut(name string, ip netip.Addr) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	until, ok := r.answered[name][ip]
	return ok && time.Now().Before(until)
}

// gaveOutAllowed reports whether ip was given out for some name the
// current rules allow by pattern.
func (r *resolver) gaveOutAllowed(rules *Rules, ip netip.Addr) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	for n, m := range r.answered {
		if until, ok := m[ip]; ok && now.Before(until) && rules.allowedByName(n) {
			return true
		}
	}
	return false
}

// exchange asks the upstreams, in order, one question; over TCP again
// when the UDP answer was truncated.
func (h *Host) exchange(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	m.RecursionDesired = true
	m.SetEdns0(dns.DefaultMsgSize, false)
	var last error = errNoUpstream
	for _, u := range h.cfg.DNSUpstreams {
		c := &dns.Client{Net: "udp", Timeout: upstreamTimeout, UDPSize: dns.DefaultMsgSize}
		resp, _, err := c.ExchangeContext(ctx, m, u)
		if err == nil && resp.Truncated {
			c.Net = "tcp"
			resp, _, err = c.ExchangeContext(ctx, m, u)
		}
		if err == nil && resp.Id == m.Id {
			return resp, nil
		}
		last = err
	}
	return nil, last
}

var errNoUpstream = &net.DNSError{Err: "no DNS upstream configured", IsNotFound: true}

// lookupA resolves a name's IPv4 addresses through the upstreams.
func (h *Host) lookupA(ctx context.Context, name string) []netip.Addr {
	resp, err := h.exchange(ctx, name, dns.TypeA)
	if err != nil || resp.Rcode != dns.RcodeSuccess {
		return nil
	}
	var out []netip.Addr
	for _, rr := range resp.Answer { // the A records at the end of any CNAME chain
		if a, ok := rr.(*dns.A); ok {
			if ip, ok := netip.AddrFromSlice(a.A.To4()); ok {
				out = append(out, ip)
			}
		}
	}
	return out
}
