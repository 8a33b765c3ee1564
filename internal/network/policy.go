package network

import (
	"fmt"
	"math/big"
	"net/netip"
	"slices"
	"strings"
)

// Limits on a policy, so a request cannot make the host build huge rule
// sets or match names against thousands of patterns per connection.
const (
	MaxEntries     = 256 // per list, as a client writes it
	maxEntryLength = 256
	// maxCompiled bounds a policy built by a mapping (FromE2B writes
	// "everything but these CIDRs" as up to 32 prefixes per CIDR).
	maxCompiled = 33 * MaxEntries
)

// Policy is a VM's egress policy as clients write it: each entry is an IP
// ("1.2.3.4"), a CIDR ("1.2.3.0/24"), a domain ("example.com", that name
// only) or a wildcard ("*.example.com", every name below it, not the name
// itself). Deny wins over allow. The zero Policy allows nothing, and a VM
// with that policy gets no network device at all (see Enabled).
//
// Some ranges are denied even when a broad entry such as 0.0.0.0/0 covers
// them: loopback, link-local (with the cloud metadata address), private
// (RFC 1918, CGNAT, ULA), multicast, reserved, and the host's own
// addresses. An allow entry that lies inside such a range opens that part
// of it ("10.1.0.0/16", "169.254.169.254", a host address as a /32). The
// guest's own subnet and the ranges firesandbox uses for its links are
// never reachable.
type Policy struct {
	AllowOut []string `json:"allow_out,omitempty"`
	DenyOut  []string `json:"deny_out,omitempty"`
}

// Enabled reports whether the policy lets anything out. A VM whose policy
// is not enabled should get no network device: that is the default.
func (p Policy) Enabled() bool { return len(p.AllowOut) > 0 }

// Validate checks a policy as a client wrote it: at most MaxEntries per
// list, every entry valid. The error wraps ErrInvalidPolicy and names the
// first bad entry.
func (p Policy) Validate() error {
	if len(p.AllowOut) > MaxEntries {
		return fmt.Errorf("%w: allow_out has %d entries, at most %d are allowed", ErrInvalidPolicy, len(p.AllowOut), MaxEntries)
	}
	if len(p.DenyOut) > MaxEntries {
		return fmt.Errorf("%w: deny_out has %d entries, at most %d are allowed", ErrInvalidPolicy, len(p.DenyOut), MaxEntries)
	}
	_, err := p.Compile()
	return err
}

// Compile validates the policy and builds the matcher every enforcement
// point uses. It accepts the longer lists a mapping such as FromE2B makes.
func (p Policy) Compile() (*Rules, error) {
	if len(p.AllowOut) > maxCompiled || len(p.DenyOut) > maxCompiled {
		return nil, fmt.Errorf("%w: more than %d entries", ErrInvalidPolicy, maxCompiled)
	}
	r := &Rules{}
	for i, s := range p.AllowOut {
		e, err := parseEntry(s)
		if err != nil {
			return nil, fmt.Errorf("%w: allow_out[%d]: %v", ErrInvalidPolicy, i, err)
		}
		r.add(e, true)
	}
	for i, s := range p.DenyOut {
		e, err := parseEntry(s)
		if err != nil {
			return nil, fmt.Errorf("%w: deny_out[%d]: %v", ErrInvalidPolicy, i, err)
		}
		r.add(e, false)
	}
	r.rawAllow, r.rawDeny = sortedPrefixes(r.allow), sortedPrefixes(r.deny)
	for _, a := range r.rawAllow {
		if insideAny(a, specialRanges) {
			r.opened = append(r.opened, a)
		}
		if a.IsSingleIP() {
			r.singles = append(r.singles, a.Addr())
		}
	}
	r.opened = normalize(r.opened)
	r.allow = normalize(r.allow)
	r.deny = normalize(r.deny)
	r.allowNames = dedupeNames(r.allowNames)
	r.denyNames = dedupeNames(r.denyNames)
	r.publicDNS = broadAllow(r.allow, r.deny)
	return r, nil
}

// entry is one parsed policy entry: a prefix or a name pattern.
type entry struct {
	prefix netip.Prefix
	name   namePattern
	isName bool
}

// namePattern is a lower-case domain without its trailing dot; wildcard
// means "any name below it".
type namePattern struct {
	Name     string
	Wildcard bool
}

func (n namePattern) String() string {
	if n.Wildcard {
		return "*." + n.Name
	}
	return n.Name
}

func (n namePattern) match(name string) bool {
	if n.Wildcard {
		return len(name) > len(n.Name) && strings.HasSuffix(name, n.Name) && name[len(name)-len(n.Name)-1] == '.'
	}
	return name == n.Name
}

// Rules is a compiled Policy. It is immutable and safe to share.
type Rules struct {
	rawAllow, rawDeny     []netip.Prefix // as written, sorted and deduplicated
	allow, deny           []netip.Prefix // normalised: sorted, none inside another
	opened                []netip.Prefix // allow entries that open part of a special range
	singles               []netip.Addr   // single-address allow entries: they open a host address
	allowNames, denyNames []namePattern
	// publicDNS: the policy allows most of the IPv4 internet, so names
	// outside allowNames resolve too (a narrow CIDR policy gets no DNS,
	// which would only be a channel to leak data through).
	publicDNS bool
}

func (r *Rules) add(e entry, allow bool) {
	switch {
	case e.isName && allow:
		r.allowNames = append(r.allowNames, e.name)
	case e.isName:
		r.denyNames = append(r.denyNames, e.name)
	case allow:
		r.allow = append(r.allow, e.prefix)
	default:
		r.deny = append(r.deny, e.prefix)
	}
}

// Policy returns the canonical form of the policy: entries lower-cased,
// deduplicated and sorted, prefixes in their shortest form. Store this one.
func (r *Rules) Policy() Policy {
	var p Policy
	for _, a := range r.rawAllow {
		p.AllowOut = append(p.AllowOut, prefixString(a))
	}
	for _, n := range r.allowNames {
		p.AllowOut = append(p.AllowOut, n.String())
	}
	for _, d := range r.rawDeny {
		p.DenyOut = append(p.DenyOut, prefixString(d))
	}
	for _, n := range r.denyNames {
		p.DenyOut = append(p.DenyOut, n.String())
	}
	return p
}

// HasNames reports whether any entry is a domain: then TCP connections must
// be inspected for their TLS SNI or HTTP Host.
func (r *Rules) HasNames() bool { return len(r.allowNames)+len(r.denyNames) > 0 }

// Verdict is the outcome of a check, with the reason for logs and errors.
type Verdict struct {
	Allowed bool
	Reason  string
}

// Env is what the rules need to know about the host: its own addresses
// (denied unless allowed as a /32) and the ranges firesandbox itself uses
// (never reachable).
type Env struct {
	HostAddrs []netip.Addr
	Reserved  []netip.Prefix
}

// CheckIP decides a destination address on its own, as nftables does for
// packets the kernel forwards.
func (r *Rules) CheckIP(ip netip.Addr, env *Env) Verdict {
	v := r.denyIP(ip, env)
	if v != "" {
		return Verdict{false, v}
	}
	if containsAddr(r.opened, ip) {
		return Verdict{true, "explicitly allowed"}
	}
	if containsAddr(r.allow, ip) {
		return Verdict{true, "allowed by CIDR"}
	}
	return Verdict{false, "not in allow_out"}
}

// denyIP returns why ip is denied whatever names say, or "".
func (r *Rules) denyIP(ip netip.Addr, env *Env) string {
	ip = ip.Unmap()
	if !ip.IsValid() {
		return "invalid address"
	}
	if env != nil && containsAddr(env.Reserved, ip) {
		return "firesandbox's own network"
	}
	if containsAddr(r.deny, ip) {
		return "in deny_out"
	}
	if env != nil && slices.Contains(env.HostAddrs, ip) && !slices.Contains(r.singles, ip) {
		return "the host's own address"
	}
	if containsAddr(r.opened, ip) {
		return ""
	}
	if containsAddr(specialRanges, ip) {
		return "private, loopback, link-local or reserved range"
	}
	return ""
}

// CheckName decides whether a name may be resolved or connected to by
// name. Deny patterns win.
func (r *Rules) CheckName(name string) Verdict {
	name, ok := canonicalName(name)
	if !ok {
		return Verdict{false, "not a valid name"}
	}
	for _, d := range r.denyNames {
		if d.match(name) {
			return Verdict{false, "in deny_out (" + d.String() + ")"}
		}
	}
	for _, a := range r.allowNames {
		if a.match(name) {
			return Verdict{true, "allowed by name (" + a.String() + ")"}
		}
	}
	return Verdict{false, "name not in allow_out"}
}

// allowedByName reports whether a name is allowed by an allow pattern (and
// not denied by a deny pattern).
func (r *Rules) allowedByName(name string) bool { return r.CheckName(name).Allowed }

// resolvable: may the resolver forward a query for this name?
func (r *Rules) resolvable(name string) Verdict {
	v := r.CheckName(name)
	if v.Allowed || strings.HasPrefix(v.Reason, "in deny_out") || v.Reason == "not a valid name" {
		return v
	}
	if r.publicDNS {
		return Verdict{true, "public DNS (allow_out covers the internet)"}
	}
	return v
}

// denyNameList returns the exact names (and wildcard apexes) whose
// addresses are denied too: a guest that dials a denied name by its IP is
// refused.
func (r *Rules) denyNameList() []string {
	var out []string
	for _, d := range r.denyNames {
		out = append(out, d.Name)
	}
	return out
}

// parseEntry parses one policy entry.
func parseEntry(s string) (entry, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return entry{}, fmt.Errorf("empty entry")
	}
	if len(s) > maxEntryLength {
		return entry{}, fmt.Errorf("entry of %d bytes is too long (at most %d)", len(s), maxEntryLength)
	}
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return entry{}, fmt.Errorf("%q is not a valid CIDR (like 10.0.0.0/8 or 2001:db8::/32)", s)
		}
		if p.Addr().Zone() != "" {
			return entry{}, fmt.Errorf("%q: a CIDR cannot have an IPv6 zone", s)
		}
		if p.Masked() != p {
			return entry{}, fmt.Errorf("%q has host bits set: the network is %s", s, p.Masked())
		}
		if p.Addr().Is4In6() { // masked, so at least /96
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		return entry{prefix: p}, nil
	}
	if a, err := netip.ParseAddr(s); err == nil {
		if a.Zone() != "" {
			return entry{}, fmt.Errorf("%q: an address cannot have an IPv6 zone", s)
		}
		a = a.Unmap()
		return entry{prefix: netip.PrefixFrom(a, a.BitLen())}, nil
	}
	n, err := parseNamePattern(s)
	if err != nil {
		return entry{}, err
	}
	return entry{name: n, isName: true}, nil
}

func parseNamePattern(s string) (namePattern, error) {
	wild := false
	rest := s
	if strings.HasPrefix(s, "*.") {
		wild, rest = true, s[2:]
	}
	name, err := validName(rest)
	if err != nil {
		return namePattern{}, fmt.Errorf("%q is not an IP, a CIDR, a domain or a *.domain: %v", s, err)
	}
	return namePattern{Name: name, Wildcard: wild}, nil
}

// validName checks a DNS name (letters, digits, '-' and '_', labels of 1 to
// 63 bytes, at most 253 bytes) and returns it lower-cased without its
// trailing dot.
func validName(s string) (string, error) {
	s = strings.TrimSuffix(strings.ToLower(s), ".")
	if s == "" {
		return "", fmt.Errorf("empty name")
	}
	if len(s) > 253 {
		return "", fmt.Errorf("longer than 253 bytes")
	}
	allDigits := true
	for label := range strings.SplitSeq(s, ".") {
		if label == "" {
			return "", fmt.Errorf("empty label")
		}
		if len(label) > 63 {
			return "", fmt.Errorf("label longer than 63 bytes")
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return "", fmt.Errorf("label %q starts or ends with '-'", label)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			switch {
			case c >= 'a' && c <= 'z', c == '-', c == '_':
				allDigits = false
			case c >= '0' && c <= '9':
			case c == '*':
				return "", fmt.Errorf("'*' is only allowed as the first label, as in *.example.com")
			case c >= 0x80:
				return "", fmt.Errorf("non-ASCII name: write it in punycode (xn--...)")
			default:
				return "", fmt.Errorf("character %q not allowed in a name", c)
			}
		}
	}
	if allDigits {
		return "", fmt.Errorf("all-numeric name (not a valid IP address either)")
	}
	return s, nil
}

// canonicalName lower-cases a name seen on the wire (a query, an SNI, a
// Host header) and reports whether it is a valid name.
func canonicalName(s string) (string, bool) {
	n, err := validName(s)
	return n, err == nil
}

// specialRanges are denied even under a broad allow, unless an allow entry
// inside them opens part of them.
var specialRanges = mustPrefixes(
	"0.0.0.0/8",      // "this network"
	"10.0.0.0/8",     // RFC 1918
	"100.64.0.0/10",  // CGNAT (and Alibaba's metadata 100.100.100.200)
	"127.0.0.0/8",    // loopback
	"169.254.0.0/16", // link-local, cloud metadata 169.254.169.254
	"172.16.0.0/12",  // RFC 1918
	"192.0.0.0/24",   // IETF protocol assignments
	"192.168.0.0/16", // RFC 1918
	"198.18.0.0/15",  // benchmarking
	"224.0.0.0/4",    // multicast
	"240.0.0.0/4",    // reserved, broadcast
	"::/127",         // unspecified, loopback
	"::ffff:0:0/96",  // IPv4-mapped
	"64:ff9b::/96",   // NAT64: would reach IPv4 ranges by another name
	"100::/64",       // discard
	"fc00::/7",       // ULA (and fd00:ec2::254, AWS metadata)
	"fe80::/10",      // link-local
	"fec0::/10",      // site-local
	"ff00::/8",       // multicast
)

func mustPrefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

func containsAddr(ps []netip.Prefix, ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, p := range ps {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// inside reports whether a lies entirely within b.
func inside(a, b netip.Prefix) bool {
	return a.Addr().Is4() == b.Addr().Is4() && a.Bits() >= b.Bits() && b.Contains(a.Addr())
}

func insideAny(a netip.Prefix, bs []netip.Prefix) bool {
	for _, b := range bs {
		if inside(a, b) {
			return true
		}
	}
	return false
}

// normalize sorts prefixes and drops those inside another, so the result
// has no overlaps (two prefixes either nest or are disjoint).
func normalize(ps []netip.Prefix) []netip.Prefix {
	ps = slices.Clone(ps)
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	out := ps[:0]
	for _, p := range ps {
		if len(out) > 0 && inside(p, out[len(out)-1]) {
			continue
		}
		out = append(out, p)
	}
	return slices.Clip(out)
}

func sortedPrefixes(ps []netip.Prefix) []netip.Prefix {
	ps = slices.Clone(ps)
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return slices.Compact(ps)
}

func dedupeNames(ns []namePattern) []namePattern {
	slices.SortFunc(ns, func(a, b namePattern) int { return strings.Compare(a.String(), b.String()) })
	return slices.Compact(ns)
}

// broadAllow reports whether allow minus deny covers at least half of the
// IPv4 space.
func broadAllow(allow, deny []netip.Prefix) bool {
	total := new(big.Int)
	for _, p := range subtract(v4only(allow), v4only(deny)) {
		total.Add(total, new(big.Int).Lsh(big.NewInt(1), uint(32-p.Bits())))
	}
	return total.Cmp(new(big.Int).Lsh(big.NewInt(1), 31)) >= 0
}

func v4only(ps []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if p.Addr().Is4() {
			out = append(out, p)
		}
	}
	return out
}

// subtract returns the IPv4 prefixes covering base minus cut.
func subtract(base, cut []netip.Prefix) []netip.Prefix {
	type rng struct{ lo, hi uint64 }
	toRange := func(p netip.Prefix) rng {
		b := p.Masked().Addr().As4()
		lo := uint64(b[0])<<24 | uint64(b[1])<<16 | uint64(b[2])<<8 | uint64(b[3])
		return rng{lo, lo + 1<<(32-p.Bits()) - 1}
	}
	var cur []rng
	for _, p := range normalize(base) {
		cur = append(cur, toRange(p))
	}
	for _, c := range normalize(cut) {
		cr := toRange(c)
		var next []rng
		for _, r := range cur {
			if cr.hi < r.lo || cr.lo > r.hi {
				next = append(next, r)
				continue
			}
			if cr.lo > r.lo {
				next = append(next, rng{r.lo, cr.lo - 1})
			}
			if cr.hi < r.hi {
				next = append(next, rng{cr.hi + 1, r.hi})
			}
		}
		cur = next
	}
	var out []netip.Prefix
	for _, r := range cur {
		for lo := r.lo; lo <= r.hi; {
			bits := 32
			for bits > 0 {
				size := uint64(1) << (32 - bits + 1)
				if lo%size != 0 || lo+size-1 > r.hi {
					break
				}
				bits--
			}
			a := netip.AddrFrom4([4]byte{byte(lo >> 24), byte(lo >> 16), byte(lo >> 8), byte(lo)})
			out = append(out, netip.PrefixFrom(a, bits))
			lo += uint64(1) << (32 - bits)
		}
	}
	return out
}

// prefixString writes a single address without "/32" or "/128".
func prefixString(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}
