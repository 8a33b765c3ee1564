package agentproto

import (
	"context"
	"fmt"
	"net"
	"net/netip"
)

// MsgNetConfig configures the guest's network interface; the agent
// answers with an empty FileData (or an Error) of the same id. Its number
// is far from the others so parallel additions do not collide.
const MsgNetConfig MsgType = 40 // host -> guest: NetConfigRequest

// MaxNameservers bounds NetConfigRequest.DNS.
const MaxNameservers = 3

// NetConfigRequest is the guest side of a VM's link: sent after boot and
// after every restore (all clones of a snapshot carry its MAC; each gets
// the same address in its own namespace on the host).
type NetConfigRequest struct {
	ID uint32 `json:"id"`
	// MAC picks the interface: the VMM's virtio-net device has it.
	MAC string `json:"mac"`
	// Addr is the guest's address with its prefix, "10.0.2.15/24".
	Addr string `json:"addr"`
	// Gateway is the default route, in Addr's subnet.
	Gateway string `json:"gateway"`
	// DNS are the nameservers for /etc/resolv.conf (the gateway runs the
	// host's resolver).
	DNS []string `json:"dns,omitempty"`
	MTU int      `json:"mtu,omitempty"`
}

// ParsedNetConfig is a validated NetConfigRequest.
type ParsedNetConfig struct {
	MAC     net.HardwareAddr
	Addr    netip.Prefix
	Gateway netip.Addr
	DNS     []netip.Addr
	MTU     int
}

// Parse validates the request: a unicast MAC, an IPv4 address and
// prefix, a gateway inside it, at most MaxNameservers IPv4 nameservers,
// and an MTU of 576-65535 (0: leave it).
func (r *NetConfigRequest) Parse() (ParsedNetConfig, error) {
	var p ParsedNetConfig
	mac, err := net.ParseMAC(r.MAC)
	if err != nil || len(mac) != 6 || mac[0]&1 != 0 {
		return p, fmt.Errorf("%w: mac %q is not a unicast Ethernet address", ErrMalformed, truncate(r.MAC, 40))
	}
	addr, err := netip.ParsePrefix(r.Addr)
	if err != nil || !addr.Addr().Is4() || addr.Bits() < 1 || addr.Bits() > 30 {
		return p, fmt.Errorf("%w: addr %q is not an IPv4 address/prefix", ErrMalformed, truncate(r.Addr, 40))
	}
	gw, err := netip.ParseAddr(r.Gateway)
	if err != nil || !gw.Is4() || !addr.Contains(gw) || gw == addr.Addr() {
		return p, fmt.Errorf("%w: gateway %q is not another address in %s", ErrMalformed, truncate(r.Gateway, 40), addr)
	}
	if len(r.DNS) > MaxNameservers {
		return p, fmt.Errorf("%w: %d nameservers, at most %d", ErrMalformed, len(r.DNS), MaxNameservers)
	}
	for _, d := range r.DNS {
		a, err := netip.ParseAddr(d)
		if err != nil || !a.Is4() {
			return p, fmt.Errorf("%w: nameserver %q is not an IPv4 address", ErrMalformed, truncate(d, 40))
		}
		p.DNS = append(p.DNS, a)
	}
	if r.MTU != 0 && (r.MTU < 576 || r.MTU > 65535) {
		return p, fmt.Errorf("%w: mtu %d, want 576-65535", ErrMalformed, r.MTU)
	}
	p.MAC, p.Addr, p.Gateway, p.MTU = mac, addr, gw, r.MTU
	return p, nil
}

// ConfigureNetwork sets the guest's address, default route and resolver,
// and waits until the agent has applied them.
func (c *Client) ConfigureNetwork(ctx context.Context, req NetConfigRequest) error {
	if _, err := req.Parse(); err != nil {
		return err
	}
	return c.roundTrip(ctx, MsgNetConfig, MsgFileData, nil, func(id uint32) any { req.ID = id; return req })
}
