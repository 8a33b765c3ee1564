package network

import (
	"fmt"
	"net/netip"
	"slices"
	"sync/atomic"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The VM namespace's ruleset, as `nft list ruleset` shows it there (the
// sets hold IPv4 intervals; IPv6 is off in the namespace):
//
//	table inet firesandbox {
//	  set reserved, deny, hosts, opened, special, allow
//	  chain egress_check {                       # what no packet may reach
//	    ip daddr @reserved drop; ip daddr @deny drop; ip daddr @hosts drop
//	    ip daddr @opened accept; ip daddr @special drop
//	  }
//	  chain guard    { prerouting -150: from the tap, only the guest's IPv4 source }
//	  chain redirect { prerouting nat: tap udp/tcp 53 -> resolver; tap tcp -> proxy }
//	  chain input    { policy drop: lo, replies, resolver and redirected proxy
//	                   connections from the tap, ping of the gateway }
//	  chain forward  { policy drop: replies to the tap; tap -> uplink through
//	                   egress_check, then @allow; the rest rejected }
//	  chain output   { to the uplink through egress_check (the proxy's dials) }
//	  chain snat     { postrouting nat: to the uplink masquerade }
//	}
//
// Policy changes replace the set contents in one netlink batch, which the
// kernel applies as one transaction: no packet sees half a policy.
const vmTable = "firesandbox"

const (
	tapName  = "tap0"
	peerName = "eth0"
)

// vmSets are the set contents for one policy.
type vmSets struct {
	reserved, deny, hosts, opened, special, allow []netip.Prefix
}

func newVMSets(r *Rules, env *Env, deniedByName []netip.Addr) vmSets {
	s := vmSets{
		reserved: env.Reserved,
		deny:     slices.Clone(r.deny),
		opened:   r.opened,
		special:  specialRanges,
		allow:    r.allow,
	}
	for _, a := range deniedByName {
		s.deny = append(s.deny, netip.PrefixFrom(a, a.BitLen()))
	}
	for _, a := range env.HostAddrs {
		if !slices.Contains(r.singles, a) {
			s.hosts = append(s.hosts, netip.PrefixFrom(a, a.BitLen()))
		}
	}
	return s
}

func ipSet(t *nftables.Table, name string) *nftables.Set {
	return &nftables.Set{Table: t, Name: name, KeyType: nftables.TypeIPAddr, Interval: true, ID: setIDs.Add(1)}
}

// setIDs numbers the sets we add (a set's ID names it within its netlink
// batch). nftables would number a set without one from a package counter
// it increments unguarded, a data race when VMs' networks are made at
// once (a fork's children).
var setIDs atomic.Uint32

// intervalElements writes IPv4 prefixes as nftables interval elements:
// merged ranges, each a start and an end one past it (none past
// 255.255.255.255).
func intervalElements(ps []netip.Prefix) []nftables.SetElement {
	type rng struct{ lo, hi uint64 }
	var rs []rng
	for _, p := range ps {
		if !p.Addr().Is4() {
			continue
		}
		b := p.Masked().Addr().As4()
		lo := uint64(b[0])<<24 | uint64(b[1])<<16 | uint64(b[2])<<8 | uint64(b[3])
		rs = append(rs, rng{lo, lo + 1<<(32-p.Bits())})
	}
	slices.SortFunc(rs, func(a, b rng) int {
		switch {
		case a.lo < b.lo:
			return -1
		case a.lo > b.lo:
			return 1
		}
		return 0
	})
	var merged []rng
	for _, r := range rs {
		if n := len(merged); n > 0 && r.lo <= merged[n-1].hi {
			merged[n-1].hi = max(merged[n-1].hi, r.hi)
			continue
		}
		merged = append(merged, r)
	}
	key := func(v uint64) []byte { return []byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)} }
	var out []nftables.SetElement
	for _, r := range merged {
		out = append(out, nftables.SetElement{Key: key(r.lo)})
		if r.hi <= 0xffffffff {
			out = append(out, nftables.SetElement{Key: key(r.hi), IntervalEnd: true})
		}
	}
	return out
}

func ifname(n string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, n)
	return b
}

// Expression builders, named after the nft syntax they stand for.
func iif(n string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(n)},
	}
}

func oif(n string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(n)},
	}
}

func isIPv4() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
	}
}

func isIPv6() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV6}},
	}
}

func daddrIn(set *nftables.Set) []expr.Any {
	return append(isIPv4(),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
	)
}

func daddrIs(a netip.Addr) []expr.Any {
	b := a.As4()
	return append(isIPv4(),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b[:]},
	)
}

func saddrIsNot(a netip.Addr) []expr.Any {
	b := a.As4()
	return append(isIPv4(),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: b[:]},
	)
}

func saddrInNet(p netip.Prefix) []expr.Any {
	m := make([]byte, 4)
	for i := 0; i < p.Bits(); i++ {
		m[i/8] |= 0x80 >> (i % 8)
	}
	a := p.Masked().Addr().As4()
	return append(isIPv4(),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: m, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a[:]},
	)
}

func daddrNotInNet(p netip.Prefix) []expr.Any {
	m := make([]byte, 4)
	for i := 0; i < p.Bits(); i++ {
		m[i/8] |= 0x80 >> (i % 8)
	}
	a := p.Masked().Addr().As4()
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: m, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: a[:]},
	}
}

func l4proto(p byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
	}
}

func dport(p byte, port uint16) []expr.Any {
	return append(l4proto(p),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
	)
}

func ctState(bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(bits), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
	}
}

// ipsDstNAT is IPS_DST_NAT from linux/netfilter/nf_conntrack_common.h.
const ipsDstNAT = 1 << 5

func ctDNAT() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATUS},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(ipsDstNAT), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
	}
}

func icmpEchoRequest() []expr.Any {
	return append(l4proto(unix.IPPROTO_ICMP),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{8}},
	)
}

func redirectTo(port uint16) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
		&expr.Redir{RegisterProtoMin: 1},
	}
}

var (
	accept  = &expr.Verdict{Kind: expr.VerdictAccept}
	drop    = &expr.Verdict{Kind: expr.VerdictDrop}
	rejectA = &expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_ADMIN_PROHIBITED}
)

func jump(chain string) *expr.Verdict { return &expr.Verdict{Kind: expr.VerdictJump, Chain: chain} }

func rule(parts ...any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		switch v := p.(type) {
		case []expr.Any:
			out = append(out, v...)
		case expr.Any:
			out = append(out, v)
		default:
			panic(fmt.Sprintf("rule: %T", p))
		}
	}
	return out
}

// vmRuleset describes what installVMRules needs.
type vmRuleset struct {
	guest, gateway netip.Addr
	proxyPort      uint16
	sets           vmSets
}

// installVMRules creates the VM namespace's table in one transaction.
func installVMRules(c *nftables.Conn, rs vmRuleset) error {
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: vmTable})
	sets := map[string]*nftables.Set{}
	for name, elems := range map[string][]netip.Prefix{
		"reserved": rs.sets.reserved, "deny": rs.sets.deny, "hosts": rs.sets.hosts,
		"opened": rs.sets.opened, "special": rs.sets.special, "allow": rs.sets.allow,
	} {
		s := ipSet(t, name)
		if err := c.AddSet(s, intervalElements(elems)); err != nil {
			return fmt.Errorf("add set %s: %w", name, err)
		}
		sets[name] = s
	}
	chain := func(name string, typ nftables.ChainType, hook *nftables.ChainHook, prio *nftables.ChainPriority, policy nftables.ChainPolicy) *nftables.Chain {
		ch := &nftables.Chain{Name: name, Table: t}
		if hook != nil {
			ch.Type, ch.Hooknum, ch.Priority, ch.Policy = typ, hook, prio, &policy
		}
		return c.AddChain(ch)
	}
	add := func(ch *nftables.Chain, e []expr.Any) { c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: e}) }

	check := chain("egress_check", "", nil, nil, 0)
	add(check, rule(daddrIn(sets["reserved"]), drop))
	add(check, rule(daddrIn(sets["deny"]), drop))
	add(check, rule(daddrIn(sets["hosts"]), drop))
	add(check, rule(daddrIn(sets["opened"]), accept))
	add(check, rule(daddrIn(sets["special"]), drop))

	guard := chain("guard", nftables.ChainTypeFilter, nftables.ChainHookPrerouting, nftables.ChainPriorityMangle, nftables.ChainPolicyAccept)
	add(guard, rule(iif(tapName), isIPv6(), drop))
	add(guard, rule(iif(tapName), saddrIsNot(rs.guest), drop))

	redir := chain("redirect", nftables.ChainTypeNAT, nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest, nftables.ChainPolicyAccept)
	add(redir, rule(iif(tapName), dport(unix.IPPROTO_UDP, 53), redirectTo(53)))
	add(redir, rule(iif(tapName), dport(unix.IPPROTO_TCP, 53), redirectTo(53)))
	add(redir, rule(iif(tapName), l4proto(unix.IPPROTO_TCP), redirectTo(rs.proxyPort)))

	in := chain("input", nftables.ChainTypeFilter, nftables.ChainHookInput, nftables.ChainPriorityFilter, nftables.ChainPolicyDrop)
	add(in, rule(iif("lo"), accept))
	add(in, rule(ctState(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED), accept))
	add(in, rule(iif(tapName), daddrIs(rs.gateway), dport(unix.IPPROTO_UDP, 53), accept))
	add(in, rule(iif(tapName), daddrIs(rs.gateway), dport(unix.IPPROTO_TCP, 53), accept))
	add(in, rule(iif(tapName), daddrIs(rs.gateway), dport(unix.IPPROTO_TCP, rs.proxyPort), ctDNAT(), accept))
	add(in, rule(iif(tapName), daddrIs(rs.gateway), icmpEchoRequest(), accept))

	fwd := chain("forward", nftables.ChainTypeFilter, nftables.ChainHookForward, nftables.ChainPriorityFilter, nftables.ChainPolicyDrop)
	add(fwd, rule(iif(peerName), oif(tapName), ctState(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED), accept))
	add(fwd, rule(iif(tapName), oif(peerName), jump("egress_check")))
	add(fwd, rule(iif(tapName), oif(peerName), daddrIn(sets["allow"]), accept))
	add(fwd, rule(iif(tapName), rejectA))

	out := chain("output", nftables.ChainTypeFilter, nftables.ChainHookOutput, nftables.ChainPriorityFilter, nftables.ChainPolicyAccept)
	add(out, rule(oif(peerName), isIPv6(), drop))
	add(out, rule(oif(peerName), jump("egress_check")))

	snat := chain("snat", nftables.ChainTypeNAT, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource, nftables.ChainPolicyAccept)
	add(snat, rule(oif(peerName), &expr.Masq{}))

	if err := c.Flush(); err != nil {
		return fmt.Errorf("install VM rules: %w", err)
	}
	return nil
}

// updateVMSets swaps a policy's set contents in one transaction.
func updateVMSets(c *nftables.Conn, s vmSets) error {
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: vmTable}
	for name, elems := range map[string][]netip.Prefix{"deny": s.deny, "hosts": s.hosts, "opened": s.opened, "allow": s.allow} {
		set := ipSet(t, name)
		c.FlushSet(set)
		if el := intervalElements(elems); len(el) > 0 {
			if err := c.SetAddElements(set, el); err != nil {
				return fmt.Errorf("set %s: %w", name, err)
			}
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("update VM rules: %w", err)
	}
	return nil
}

// installUplinkRules creates the owner's table in the uplink namespace:
// traffic from the VM links leaving for elsewhere is masqueraded.
func installUplinkRules(c *nftables.Conn, table string, links netip.Prefix) error {
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: table})
	policy := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{Name: "snat", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &policy})
	c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: rule(saddrInNet(links), daddrNotInNet(links), &expr.Masq{})})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("install uplink rules: %w", err)
	}
	return nil
}
