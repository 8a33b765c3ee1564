package network

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// VM is one VM's network: its namespace, the tap the VMM attaches to, the
// link to the uplink, the rules, and the resolver and SNI/Host filter that
// serve it. Everything that enforces the policy lives outside the guest.
type VM struct {
	h      *Host
	id     string
	log    *slog.Logger
	slot   *slot
	name   string // namespace name
	ns     *os.File
	nl     *netlink.Handle // in the VM namespace
	nft    *nftables.Conn
	hostIf string
	hostIP netip.Addr
	peerIP netip.Addr

	mu       sync.Mutex // serialises policy changes
	state    atomic.Pointer[policyState]
	resolver *resolver
	proxy    *proxy
	stop     chan struct{}
	done     sync.WaitGroup
	closed   atomic.Bool
	phases   []Phase
}

// Phase is one step of Create and how long it took.
type Phase struct {
	Name     string        `json:"name"`
	Duration time.Duration `json:"duration"`
}

// SetupPhases says how long each step of Create took: namespace, link,
// tap and addresses, rules, resolver and filter.
func (v *VM) SetupPhases() []Phase { return slices.Clone(v.phases) }

// policyState is what the enforcement points read for each packet,
// query and connection; it is replaced whole.
type policyState struct {
	rules        *Rules
	env          *Env
	deniedByName []netip.Addr // addresses of deny_out names
}

// Create builds a VM's network for policy p. id names the VM in logs only.
// The namespace exists, with the tap in it, when Create returns: start the
// VMM attached to it (OpenTap for QEMU, NetnsPath and TapName for
// Firecracker). Close it when the VM stops.
func (h *Host) Create(ctx context.Context, id string, p Policy) (*VM, error) {
	rules, err := p.Compile()
	if err != nil {
		return nil, err
	}
	h.mu.Lock()
	closed := h.closed
	h.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	cu := cleanups{}
	defer cu.run()
	var phases []Phase
	last := time.Now()
	mark := func(name string) {
		now := time.Now()
		phases = append(phases, Phase{name, now.Sub(last)})
		last = now
	}
	s, err := h.takeSlot()
	if err != nil {
		return nil, err
	}
	cu.add(s.release)
	v := &VM{h: h, id: id, slot: s, name: h.nsName(h.owner, s.n), hostIf: h.linkName(h.owner, s.n), stop: make(chan struct{})}
	v.log = h.log.With("vm", id, "netns", v.name)
	v.hostIP, v.peerIP = h.slotAddrs(s.n)
	mark("slot")

	if v.ns, err = createNamedNS(h.cfg.NetnsDir, v.name); err != nil {
		return nil, err
	}
	cu.add(func() { v.ns.Close(); deleteNamedNS(h.cfg.NetnsDir, v.name) })
	if v.nl, err = netlink.NewHandleAt(netns.NsHandle(v.ns.Fd())); err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", v.name, err)
	}
	cu.add(v.nl.Close)
	mark("namespace")

	// The link: host end in the uplink, peer end created straight in the
	// VM namespace.
	la := netlink.NewLinkAttrs()
	la.Name = v.hostIf
	veth := &netlink.Veth{LinkAttrs: la, PeerName: peerName, PeerNamespace: netlink.NsFd(int(v.ns.Fd()))}
	if err := h.nl.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("add link %s: %w", v.hostIf, err)
	}
	cu.add(func() { h.nl.LinkDel(veth) })
	if err := v.setupUplinkEnd(); err != nil {
		return nil, err
	}
	mark("link")
	if err := v.setupNamespace(); err != nil {
		return nil, err
	}
	mark("tap and addresses")
	env := h.env()
	st := &policyState{rules: rules, env: env, deniedByName: v.resolveDenied(ctx, rules)}
	v.state.Store(st)
	if v.nft, err = nftables.New(nftables.WithNetNSFd(int(v.ns.Fd()))); err != nil {
		return nil, fmt.Errorf("nftables in %s: %w", v.name, err)
	}
	g := h.cfg.Guest
	if err := installVMRules(v.nft, vmRuleset{guest: g.Addr.Addr(), gateway: g.Gateway, proxyPort: h.cfg.ProxyPort, sets: newVMSets(rules, env, st.deniedByName)}); err != nil {
		return nil, err
	}
	mark("rules")
	if err := v.startServices(); err != nil {
		return nil, err
	}
	cu.add(v.stopServices)
	mark("resolver and filter")
	v.phases = phases

	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil, ErrClosed
	}
	h.vms[v] = struct{}{}
	h.mu.Unlock()
	cu.release()
	v.done.Add(1)
	go v.refreshDenied()
	v.log.Debug("network up", "op", "create", "link", v.hostIf, "peer", v.peerIP)
	return v, nil
}

func (v *VM) setupUplinkEnd() error {
	h := v.h
	l, err := h.nl.LinkByName(v.hostIf)
	if err != nil {
		return fmt.Errorf("find link %s: %w", v.hostIf, err)
	}
	if err := h.nl.AddrAdd(l, &netlink.Addr{IPNet: ipnet(netip.PrefixFrom(v.hostIP, 30))}); err != nil {
		return fmt.Errorf("address %s: %w", v.hostIf, err)
	}
	if err := h.nl.LinkSetUp(l); err != nil {
		return fmt.Errorf("up %s: %w", v.hostIf, err)
	}
	// Forward what comes in from this VM only: the uplink's global
	// setting stays as it is.
	return inNS(h.uplink, func() error { return writeSysctl("net/ipv4/conf/"+v.hostIf+"/forwarding", "1") })
}

func (v *VM) setupNamespace() error {
	g := v.h.cfg.Guest
	err := inNS(v.ns, func() error {
		for _, kv := range [][2]string{
			{"net/ipv6/conf/all/disable_ipv6", "1"},
			{"net/ipv6/conf/default/disable_ipv6", "1"},
			{"net/ipv4/ip_forward", "1"},
		} {
			if err := writeSysctl(kv[0], kv[1]); err != nil {
				return err
			}
		}
		f, err := openTap(tapName, true /* persist */)
		if err != nil {
			return err
		}
		return f.Close()
	})
	if err != nil {
		return fmt.Errorf("prepare %s: %w", v.name, err)
	}
	lo, err := v.nl.LinkByName("lo")
	if err == nil {
		err = v.nl.LinkSetUp(lo)
	}
	if err != nil {
		return fmt.Errorf("lo in %s: %w", v.name, err)
	}
	peer, err := v.nl.LinkByName(peerName)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", peerName, v.name, err)
	}
	if err := v.nl.AddrAdd(peer, &netlink.Addr{IPNet: ipnet(netip.PrefixFrom(v.peerIP, 30))}); err != nil {
		return fmt.Errorf("address %s: %w", peerName, err)
	}
	if err := v.nl.LinkSetUp(peer); err != nil {
		return fmt.Errorf("up %s: %w", peerName, err)
	}
	if err := v.nl.RouteAdd(&netlink.Route{LinkIndex: peer.Attrs().Index, Gw: v.hostIP.AsSlice()}); err != nil {
		return fmt.Errorf("default route in %s: %w", v.name, err)
	}
	tap, err := v.nl.LinkByName(tapName)
	if err != nil {
		return fmt.Errorf("find %s: %w", tapName, err)
	}
	if err := v.nl.LinkSetMTU(tap, g.MTU); err != nil {
		return fmt.Errorf("mtu %s: %w", tapName, err)
	}
	gwMAC, _ := net.ParseMAC(g.GatewayMAC) // validated
	if err := v.nl.LinkSetHardwareAddr(tap, gwMAC); err != nil {
		return fmt.Errorf("mac %s: %w", tapName, err)
	}
	if err := v.nl.AddrAdd(tap, &netlink.Addr{IPNet: ipnet(netip.PrefixFrom(g.Gateway, g.Addr.Bits()))}); err != nil {
		return fmt.Errorf("address %s: %w", tapName, err)
	}
	if err := v.nl.LinkSetUp(tap); err != nil {
		return fmt.Errorf("up %s: %w", tapName, err)
	}
	return nil
}

func ipnet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func (v *VM) startServices() error {
	g := v.h.cfg.Guest
	var udp net.PacketConn
	var tcpDNS, tcpProxy net.Listener
	err := inNS(v.ns, func() error {
		var err error
		dnsAddr := net.JoinHostPort(g.Gateway.String(), "53")
		if udp, err = net.ListenPacket("udp4", dnsAddr); err != nil {
			return err
		}
		if tcpDNS, err = net.Listen("tcp4", dnsAddr); err != nil {
			return err
		}
		tcpProxy, err = net.Listen("tcp4", net.JoinHostPort(g.Gateway.String(), strconv.Itoa(int(v.h.cfg.ProxyPort))))
		return err
	})
	if err != nil {
		if udp != nil {
			udp.Close()
		}
		if tcpDNS != nil {
			tcpDNS.Close()
		}
		if tcpProxy != nil {
			tcpProxy.Close()
		}
		return fmt.Errorf("listen in %s: %w", v.name, err)
	}
	v.resolver = newResolver(v, udp, tcpDNS)
	v.proxy = newProxy(v, tcpProxy)
	return nil
}

func (v *VM) stopServices() {
	if v.resolver != nil {
		v.resolver.close()
	}
	if v.proxy != nil {
		v.proxy.close()
	}
}

// ID is the VM id given to Create.
func (v *VM) ID() string { return v.id }

// NetnsPath is the namespace's path: for the Firecracker jailer's --netns
// or for running a VMM inside it.
func (v *VM) NetnsPath() string { return filepath.Join(v.h.cfg.NetnsDir, v.name) }

// TapName is the tap inside the namespace (the same in every VM, so a
// snapshot's device configuration restores anywhere).
func (v *VM) TapName() string { return tapName }

// Guest is the guest's side of the link: what the agent configures.
func (v *VM) Guest() GuestConfig { return v.h.cfg.Guest }

// HostLink is the host end of the VM's link in the uplink namespace, and
// the address the VM's traffic leaves with before masquerading.
func (v *VM) HostLink() (name string, vmAddr netip.Addr) { return v.hostIf, v.peerIP }

// OpenTap opens the VM's tap and returns the fd for the VMM (QEMU:
// -netdev tap,fd=N,vnet_hdr=on), so the VMM itself can stay outside the
// namespace. Only one open fd can be attached at a time.
func (v *VM) OpenTap() (*os.File, error) {
	if v.closed.Load() {
		return nil, ErrClosed
	}
	var f *os.File
	err := inNS(v.ns, func() error {
		var err error
		f, err = openTap(tapName, false)
		return err
	})
	return f, err
}

// Policy returns the policy in force, in canonical form.
func (v *VM) Policy() Policy { return v.state.Load().rules.Policy() }

// SetPolicy changes a running VM's policy. The kernel's sets change in one
// transaction and the resolver and filter switch at once; open proxied
// connections the new policy refuses are closed.
func (v *VM) SetPolicy(ctx context.Context, p Policy) error {
	rules, err := p.Compile()
	if err != nil {
		return err
	}
	if v.closed.Load() {
		return ErrClosed
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	st := &policyState{rules: rules, env: v.h.env(), deniedByName: v.resolveDenied(ctx, rules)}
	if err := v.apply(st); err != nil {
		return err
	}
	v.log.Info("policy changed", "op", "set-policy", "allow_out", len(p.AllowOut), "deny_out", len(p.DenyOut))
	return nil
}

func (v *VM) apply(st *policyState) error {
	if err := updateVMSets(v.nft, newVMSets(st.rules, st.env, st.deniedByName)); err != nil {
		return err
	}
	v.state.Store(st)
	v.proxy.recheck()
	return nil
}

// resolveDenied looks up the exact names in deny_out, so their addresses
// are denied too.
func (v *VM) resolveDenied(ctx context.Context, r *Rules) []netip.Addr {
	names := r.denyNameList()
	if len(names) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	var out []netip.Addr
	for _, n := range names {
		out = append(out, v.h.lookupA(ctx, n)...)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// refreshDenied re-resolves deny_out names every minute while they are in
// the policy.
func (v *VM) refreshDenied() {
	defer v.done.Done()
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-v.stop:
			return
		case <-t.C:
		}
		v.mu.Lock()
		cur := v.state.Load()
		if len(cur.rules.denyNames) == 0 {
			v.mu.Unlock()
			continue
		}
		ips := v.resolveDenied(context.Background(), cur.rules)
		if !slices.Equal(ips, cur.deniedByName) {
			if err := v.apply(&policyState{rules: cur.rules, env: v.h.env(), deniedByName: ips}); err != nil {
				v.log.Warn("refresh denied names", "err", err)
			}
		}
		v.mu.Unlock()
	}
}

// DialGuest connects to a TCP port of the guest from inside the VM's
// namespace: the port proxy's way in. Nothing outside the namespace can
// reach the guest otherwise.
func (v *VM) DialGuest(ctx context.Context, port int) (net.Conn, error) {
	if v.closed.Load() {
		return nil, ErrClosed
	}
	if port < 1 || port > 65535 {
		return nil, fmt.Errorf("port %d out of range", port)
	}
	addr := net.JoinHostPort(v.h.cfg.Guest.Addr.Addr().String(), strconv.Itoa(port))
	var c net.Conn
	err := inNS(v.ns, func() error {
		var err error
		d := net.Dialer{Timeout: v.h.cfg.DialTimeout}
		c, err = d.DialContext(ctx, "tcp4", addr)
		return err
	})
	return c, err
}

// dialOut connects to dst from the VM namespace (source: the VM's link
// address), so the namespace's output rules apply as a backstop.
func (v *VM) dialOut(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
	var c net.Conn
	err := inNS(v.ns, func() error {
		var err error
		d := net.Dialer{Timeout: v.h.cfg.DialTimeout}
		c, err = d.DialContext(ctx, "tcp4", dst.String())
		return err
	})
	return c, err
}

// Close removes everything the VM's network consists of. Call it after the
// VMM has stopped; it is idempotent.
func (v *VM) Close() error {
	if !v.closed.CompareAndSwap(false, true) {
		return nil
	}
	close(v.stop)
	v.stopServices()
	v.done.Wait()
	// One link deletion (the veth: both its ends go, so the host end's
	// name is free for the slot's next user at once); the tap and the
	// rules go with the namespace, which the kernel tears down in the
	// background once the VMM has let go of the tap. Each deletion waits
	// for an RCU grace period (20-40 ms here), hence only one.
	var errs []error
	if l, err := v.h.nl.LinkByName(v.hostIf); err == nil {
		if err := v.h.nl.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("delete link %s: %w", v.hostIf, err))
		}
	}
	v.nft.CloseLasting()
	v.nl.Close()
	v.ns.Close()
	if err := deleteNamedNS(v.h.cfg.NetnsDir, v.name); err != nil {
		errs = append(errs, err)
	}
	v.slot.release()
	v.h.mu.Lock()
	delete(v.h.vms, v)
	v.h.mu.Unlock()
	v.log.Debug("network down", "op", "close")
	return errors.Join(errs...)
}
