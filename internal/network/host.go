package network

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// GuestConfig is the guest's side of every VM link. It is the same for all
// VMs, so restored clones keep the snapshot's address and MAC: each VM has
// its own namespace, and the addresses never meet.
type GuestConfig struct {
	Addr    netip.Prefix `json:"addr" toml:"addr"`       // the guest's address and subnet
	Gateway netip.Addr   `json:"gateway" toml:"gateway"` // the tap's address: route and resolver
	MAC     string       `json:"mac" toml:"mac"`         // for the VMM's virtio-net device
	// GatewayMAC is the tap's own address. It is the same in every VM
	// too: a restored guest's neighbour cache still holds the
	// snapshot's gateway, and a tap with another address would drop
	// its frames until that entry went stale.
	GatewayMAC string `json:"gateway_mac" toml:"gateway_mac"`
	MTU        int    `json:"mtu" toml:"mtu"`
}

// DNS is the resolver address the guest should use (the gateway: our
// resolver listens there, and any DNS the guest sends elsewhere is
// redirected to it anyway).
func (g GuestConfig) DNS() netip.Addr { return g.Gateway }

// Config configures a Host. The zero value plus defaults is what serve
// uses on an ordinary host.
type Config struct {
	// RunDir holds the owner and address-slot locks (default
	// /run/firesandbox/network). Processes sharing a RunDir share the
	// address slots; each sweeps only owners that are dead.
	RunDir string `json:"run_dir,omitempty" toml:"run_dir"`
	// NetnsDir is where namespaces are bound (default /run/netns, where
	// `ip netns` and the Firecracker jailer look).
	NetnsDir string `json:"netns_dir,omitempty" toml:"netns_dir"`
	// Prefix starts every name this package gives a namespace, link or
	// table (default "fs", 1 to 4 lower-case letters).
	Prefix string `json:"prefix,omitempty" toml:"prefix"`
	// UplinkNetns is the namespace that plays the host: where the VM links'
	// host ends live and traffic is masqueraded. Default: the namespace
	// this process runs in.
	UplinkNetns string `json:"uplink_netns,omitempty" toml:"uplink_netns"`
	// LinkRange gives each VM a /30 for its link to the uplink (default
	// 10.200.0.0/16: 16384 VMs). Never reachable from a guest.
	LinkRange netip.Prefix `json:"link_range,omitzero" toml:"link_range"`
	// Guest is the guest side of every VM (default 10.0.2.15/24, gateway
	// 10.0.2.2, MAC 06:fe:00:00:00:01, gateway MAC 06:fe:00:00:00:02,
	// MTU 1500).
	Guest GuestConfig `json:"guest,omitzero" toml:"guest"`
	// DNSUpstreams are the resolvers our resolver asks, as host:port
	// (default: the nameservers in /etc/resolv.conf). Queried from this
	// process's namespace.
	DNSUpstreams []string `json:"dns_upstreams,omitempty" toml:"dns_upstreams"`
	// EnableForwarding turns on IPv4 forwarding on the uplink's
	// default-route interfaces at New (replies to masqueraded traffic are
	// forwarded back in through them). Without it, Diagnose reports when
	// it is off.
	EnableForwarding bool `json:"enable_forwarding,omitempty" toml:"enable_forwarding"`
	// ProxyPort is where the SNI/Host filter listens inside each VM
	// namespace (default 15001; the namespace is private, so one port
	// serves every VM).
	ProxyPort uint16 `json:"proxy_port,omitempty" toml:"proxy_port"`
	// PeekTimeout is how long the filter waits for a client's first bytes
	// before it decides without a name (default 1s). The first bytes are
	// still checked whenever they come.
	PeekTimeout time.Duration `json:"peek_timeout,omitempty" toml:"peek_timeout"`
	// DialTimeout bounds an outbound connection attempt (default 10s).
	DialTimeout time.Duration `json:"dial_timeout,omitempty" toml:"dial_timeout"`
	// MaxConns bounds a VM's open proxied connections (default 512).
	MaxConns int `json:"max_conns,omitempty" toml:"max_conns"`
}

func (c Config) withDefaults() Config {
	if c.RunDir == "" {
		c.RunDir = "/run/firesandbox/network"
	}
	if c.NetnsDir == "" {
		c.NetnsDir = "/run/netns"
	}
	if c.Prefix == "" {
		c.Prefix = "fs"
	}
	if !c.LinkRange.IsValid() {
		c.LinkRange = netip.MustParsePrefix("10.200.0.0/16")
	}
	if !c.Guest.Addr.IsValid() {
		c.Guest.Addr = netip.MustParsePrefix("10.0.2.15/24")
	}
	if !c.Guest.Gateway.IsValid() {
		c.Guest.Gateway = netip.MustParseAddr("10.0.2.2")
	}
	if c.Guest.MAC == "" {
		c.Guest.MAC = "06:fe:00:00:00:01"
	}
	if c.Guest.GatewayMAC == "" {
		c.Guest.GatewayMAC = "06:fe:00:00:00:02"
	}
	if c.Guest.MTU == 0 {
		c.Guest.MTU = 1500
	}
	if c.DNSUpstreams == nil {
		c.DNSUpstreams = resolvConfServers("/etc/resolv.conf")
	}
	if c.ProxyPort == 0 {
		c.ProxyPort = 15001
	}
	if c.PeekTimeout == 0 {
		c.PeekTimeout = time.Second
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = 10 * time.Second
	}
	if c.MaxConns == 0 {
		c.MaxConns = 512
	}
	return c
}

// Validate reports the first thing in the configuration that cannot work.
func (c Config) Validate() error {
	c = c.withDefaults()
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(format, args...))
	}
	if len(c.Prefix) > 4 || strings.Trim(c.Prefix, "abcdefghijklmnopqrstuvwxyz") != "" {
		return bad("prefix %q: 1 to 4 lower-case letters", c.Prefix)
	}
	if !c.LinkRange.Addr().Is4() || c.LinkRange.Bits() > 28 || c.LinkRange.Masked() != c.LinkRange {
		return bad("link_range %s: an IPv4 network of /28 or larger", c.LinkRange)
	}
	g := c.Guest
	if !g.Addr.Addr().Is4() || g.Addr.Bits() > 30 || !g.Gateway.Is4() || !g.Addr.Contains(g.Gateway) || g.Gateway == g.Addr.Addr() {
		return bad("guest %s via %s: an IPv4 address and a different gateway in its subnet", g.Addr, g.Gateway)
	}
	if g.Addr.Masked().Overlaps(c.LinkRange) {
		return bad("guest subnet %s overlaps link_range %s", g.Addr.Masked(), c.LinkRange)
	}
	if hw, err := net.ParseMAC(g.MAC); err != nil || len(hw) != 6 || hw[0]&1 != 0 {
		return bad("guest mac %q: a unicast Ethernet address", g.MAC)
	}
	if hw, err := net.ParseMAC(g.GatewayMAC); err != nil || len(hw) != 6 || hw[0]&1 != 0 || g.GatewayMAC == g.MAC {
		return bad("gateway mac %q: a unicast Ethernet address other than the guest's", g.GatewayMAC)
	}
	if g.MTU < 576 || g.MTU > 65535 {
		return bad("guest mtu %d: between 576 and 65535", g.MTU)
	}
	for _, u := range c.DNSUpstreams {
		if _, err := netip.ParseAddrPort(u); err != nil {
			return bad("dns upstream %q: an ip:port", u)
		}
	}
	if c.ProxyPort == 53 {
		return bad("proxy_port 53 is the resolver's")
	}
	if c.PeekTimeout < 0 || c.DialTimeout < 0 || c.MaxConns < 0 {
		return bad("timeouts and max_conns must not be negative")
	}
	return nil
}

// resolvConfServers returns the nameservers of a resolv.conf as ip:53.
func resolvConfServers(path string) []string {
	f, err := os.Open(path)
	if err != nil {
		return []string{}
	}
	defer f.Close()
	out := []string{}
	sc := bufio.NewScanner(io.LimitReader(f, 1<<16))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "nameserver" {
			if a, err := netip.ParseAddr(fields[1]); err == nil && a.Zone() == "" {
				out = append(out, netip.AddrPortFrom(a, 53).String())
			}
		}
	}
	return out
}

// Option sets a collaborator of the Host.
type Option func(*Host)

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(h *Host) { h.log = l } }

// Host makes VM networks on this machine. One per serve process: it owns a
// random owner tag, locked in RunDir for the life of the process, and
// every name it makes carries that tag, so a Sweep by any process removes
// exactly what dead owners left.
type Host struct {
	cfg       Config
	log       *slog.Logger
	owner     string
	ownerLock *os.File
	uplink    *os.File
	nl        *netlink.Handle // in the uplink namespace

	mu     sync.Mutex
	vms    map[*VM]struct{}
	closed bool
	next   int // where the next slot search starts
}

// New prepares the host side: the owner lock, the uplink's masquerade
// table and, with EnableForwarding, forwarding on the uplink. It needs
// CAP_NET_ADMIN and CAP_SYS_ADMIN (namespaces, mounts).
func New(cfg Config, opts ...Option) (*Host, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	h := &Host{cfg: cfg, log: slog.Default(), vms: map[*VM]struct{}{}}
	for _, o := range opts {
		o(h)
	}
	cu := cleanups{}
	defer cu.run()
	for _, d := range []string{h.ownersDir(), h.slotsDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
	}
	if err := h.takeOwner(); err != nil {
		return nil, err
	}
	cu.add(func() { os.Remove(filepath.Join(h.ownersDir(), h.owner)); h.ownerLock.Close() })
	uplink := cfg.UplinkNetns
	if uplink == "" {
		uplink = "/proc/self/ns/net"
	}
	f, err := os.Open(uplink)
	if err != nil {
		return nil, fmt.Errorf("%w: uplink namespace: %v", ErrUnavailable, err)
	}
	h.uplink = f
	cu.add(func() { f.Close() })
	if h.nl, err = netlink.NewHandleAt(netns.NsHandle(f.Fd())); err != nil {
		return nil, fmt.Errorf("%w: netlink in the uplink namespace: %v", ErrUnavailable, err)
	}
	cu.add(h.nl.Close)
	if err := ensureNetnsDir(cfg.NetnsDir); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())))
	if err != nil {
		return nil, fmt.Errorf("%w: nftables: %v", ErrUnavailable, err)
	}
	if err := installUplinkRules(c, h.uplinkTable(), cfg.LinkRange); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	cu.add(func() { h.deleteUplinkTable(h.owner) })
	if cfg.EnableForwarding {
		if err := h.enableForwarding(); err != nil {
			return nil, err
		}
	}
	cu.release()
	return h, nil
}

// Owner is this Host's tag, part of every name it makes.
func (h *Host) Owner() string { return h.owner }

// Config returns the configuration with defaults filled in.
func (h *Host) Config() Config { return h.cfg }

func (h *Host) ownersDir() string   { return filepath.Join(h.cfg.RunDir, "owners") }
func (h *Host) slotsDir() string    { return filepath.Join(h.cfg.RunDir, "slots") }
func (h *Host) uplinkTable() string { return h.cfg.Prefix + "_" + h.owner }

// Names. Interface names have at most 15 bytes: prefix (4) + owner (4) +
// "h" + slot in base 36 (at most 4 for a /16) = 13.
func (h *Host) nsName(owner string, slot int) string {
	return fmt.Sprintf("%s-%s-%d", h.cfg.Prefix, owner, slot)
}

func (h *Host) linkName(owner string, slot int) string {
	return h.cfg.Prefix + owner + "h" + strconv.FormatInt(int64(slot), 36)
}

const ownerAlphabet = "abcdefghijklmnopqrstuvwxyz0123456789"

func (h *Host) takeOwner() error {
	for range 100 {
		var b [4]byte
		if _, err := rand.Read(b[:]); err != nil {
			return err
		}
		for i := range b {
			b[i] = ownerAlphabet[int(b[i])%len(ownerAlphabet)]
		}
		path := filepath.Join(h.ownersDir(), string(b[:]))
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("%w: owner lock: %v", ErrUnavailable, err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			return fmt.Errorf("%w: lock %s: %v", ErrUnavailable, path, err)
		}
		fmt.Fprintf(f, "%d\n", os.Getpid())
		h.owner, h.ownerLock = string(b[:]), f
		return nil
	}
	return fmt.Errorf("%w: no free owner tag in %s", ErrUnavailable, h.ownersDir())
}

// slot is one /30 of LinkRange, held by an flock on its file while a VM
// uses it; a dead process's locks vanish with it.
type slot struct {
	n    int
	lock *os.File
}

func (h *Host) slotCount() int { return 1 << (32 - h.cfg.LinkRange.Bits()) / 4 }

func (h *Host) slotAddrs(n int) (hostEnd, peer netip.Addr) {
	base := h.cfg.LinkRange.Addr().As4()
	v := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	v += uint32(n) * 4
	at := func(x uint32) netip.Addr {
		return netip.AddrFrom4([4]byte{byte(x >> 24), byte(x >> 16), byte(x >> 8), byte(x)})
	}
	return at(v + 1), at(v + 2)
}

func (h *Host) takeSlot() (*slot, error) {
	h.mu.Lock()
	start := h.next
	h.mu.Unlock()
	n := h.slotCount()
	for i := range n {
		k := (start + i) % n
		f, err := os.OpenFile(filepath.Join(h.slotsDir(), strconv.Itoa(k)), os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("slot lock: %w", err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			continue
		}
		// A dead owner may have left this slot's link and namespace.
		prev, _ := io.ReadAll(io.LimitReader(f, 64))
		if old := strings.TrimSpace(string(prev)); old != "" && old != h.owner {
			h.removeSlotLeftovers(old, k)
		}
		if err := f.Truncate(0); err == nil {
			f.WriteAt([]byte(h.owner+"\n"), 0)
		}
		h.mu.Lock()
		h.next = k + 1
		h.mu.Unlock()
		return &slot{n: k, lock: f}, nil
	}
	return nil, fmt.Errorf("%w: all %d slots of %s are in use", ErrExhausted, n, h.cfg.LinkRange)
}

func (s *slot) release() {
	s.lock.Truncate(0)
	s.lock.Close() // drops the flock
}

func (h *Host) removeSlotLeftovers(owner string, n int) {
	if l, err := h.nl.LinkByName(h.linkName(owner, n)); err == nil {
		h.nl.LinkDel(l)
	}
	deleteNamedNS(h.cfg.NetnsDir, h.nsName(owner, n))
}

func (h *Host) deleteUplinkTable(owner string) error {
	c, err := nftables.New(nftables.WithNetNSFd(int(h.uplink.Fd())))
	if err != nil {
		return err
	}
	c.DelTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: h.cfg.Prefix + "_" + owner})
	return c.Flush()
}

// hostAddrs lists the uplink namespace's own addresses.
func (h *Host) hostAddrs() []netip.Addr {
	addrs, err := h.nl.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		h.log.Warn("list host addresses", "err", err)
		return nil
	}
	var out []netip.Addr
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			out = append(out, ip.Unmap())
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

func (h *Host) env() *Env {
	return &Env{HostAddrs: h.hostAddrs(), Reserved: []netip.Prefix{h.cfg.Guest.Addr.Masked(), h.cfg.LinkRange}}
}

// defaultRouteLinks names the uplink's interfaces that carry a default
// route: replies from the internet come back in through them.
func (h *Host) defaultRouteLinks() []string {
	routes, err := h.nl.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil
	}
	var out []string
	for _, r := range routes {
		if r.Dst != nil && !(r.Dst.IP.IsUnspecified() && r.Dst.Mask != nil && isZeroMask(r.Dst.Mask)) {
			continue
		}
		if l, err := h.nl.LinkByIndex(r.LinkIndex); err == nil && !slices.Contains(out, l.Attrs().Name) {
			out = append(out, l.Attrs().Name)
		}
	}
	return out
}

func isZeroMask(m net.IPMask) bool {
	ones, _ := m.Size()
	return ones == 0
}

func (h *Host) enableForwarding() error {
	links := h.defaultRouteLinks()
	return inNS(h.uplink, func() error {
		for _, l := range links {
			if err := writeSysctl("net/ipv4/conf/"+l+"/forwarding", "1"); err != nil {
				return fmt.Errorf("%w: %v", ErrUnavailable, err)
			}
		}
		return nil
	})
}

// Close closes every VM network this Host made, removes the uplink table
// and releases the owner tag.
func (h *Host) Close() error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil
	}
	h.closed = true
	vms := make([]*VM, 0, len(h.vms))
	for v := range h.vms {
		vms = append(vms, v)
	}
	h.mu.Unlock()
	var errs []error
	for _, v := range vms {
		errs = append(errs, v.Close())
	}
	errs = append(errs, h.deleteUplinkTable(h.owner))
	h.nl.Close()
	h.uplink.Close()
	os.Remove(filepath.Join(h.ownersDir(), h.owner))
	h.ownerLock.Close()
	return errors.Join(errs...)
}

// cleanups is a cleanup stack: run undoes in reverse unless released.
type cleanups struct{ fns []func() }

func (c *cleanups) add(f func()) { c.fns = append(c.fns, f) }
func (c *cleanups) release()     { c.fns = nil }
func (c *cleanups) run() {
	for i := len(c.fns) - 1; i >= 0; i-- {
		c.fns[i]()
	}
	c.fns = nil
}

// withTimeout is a small helper for bounded background work.
func withTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}
