package agent

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/firesandbox/firesandbox/internal/agentproto"
)

// handleNetConfig answers MsgNetConfig: it sets the guest's address,
// default route and resolver. The host sends it after boot and after every
// restore; clones share the snapshot's MAC and address, each in its own
// namespace on the host.
func (srv *Server) handleNetConfig(s *session, f agentproto.Frame) {
	var r agentproto.NetConfigRequest
	if !decode(s, f, &r) {
		return
	}
	s.goOp(func() {
		p, err := r.Parse()
		if err == nil {
			err = netConfigure(p)
		}
		if err != nil {
			srv.log.Info("network configuration failed", "err", err)
		}
		s.answer(r.ID, agentproto.MsgFileData, agentproto.FileData{ID: r.ID}, err)
	})
}

// netConfigure applies a configuration to this machine's network: only as
// the guest's init, never when the agent runs as a host process in tests.
var netConfigure = func(p agentproto.ParsedNetConfig) error {
	if os.Getpid() != 1 {
		return errors.New("network configuration is applied by the guest's init (PID 1) only")
	}
	return applyNetConfig(p, NewRoot)
}

// The kernel modules the virtio-net device needs, in load order.
var netModules = []string{"failover", "net_failover", "virtio_net"}

// applyNetConfig configures the interface with p's MAC in the calling
// thread's network namespace and writes etc/resolv.conf inside root, the
// commands' root (the agent's own /etc is the initramfs's, which no
// command sees).
func applyNetConfig(p agentproto.ParsedNetConfig, root string) error {
	links, err := netlink.LinkList()
	if err != nil {
		return fmt.Errorf("list interfaces: %w", err)
	}
	var link netlink.Link
	for _, l := range links {
		if l.Attrs().HardwareAddr.String() == p.MAC.String() {
			link = l
		}
		if l.Attrs().Name == "lo" {
			if err := netlink.LinkSetUp(l); err != nil {
				return fmt.Errorf("up lo: %w", err)
			}
		}
	}
	if link == nil {
		return fmt.Errorf("no interface with MAC %s: the VM has no virtio-net device, or its driver is not loaded (modules %s)", p.MAC, strings.Join(netModules, ", "))
	}
	name := link.Attrs().Name
	if p.MTU > 0 && link.Attrs().MTU != p.MTU {
		if err := netlink.LinkSetMTU(link, p.MTU); err != nil {
			return fmt.Errorf("mtu of %s: %w", name, err)
		}
	}
	// A restored clone still has the snapshot's configuration: replace
	// whatever addresses differ.
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("addresses of %s: %w", name, err)
	}
	want := &net.IPNet{IP: p.Addr.Addr().AsSlice(), Mask: net.CIDRMask(p.Addr.Bits(), 32)}
	for _, a := range addrs {
		if a.IPNet.String() != want.String() {
			if err := netlink.AddrDel(link, &a); err != nil {
				return fmt.Errorf("remove %s from %s: %w", a.IPNet, name, err)
			}
		}
	}
	if err := netlink.AddrReplace(link, &netlink.Addr{IPNet: want}); err != nil {
		return fmt.Errorf("address %s on %s: %w", want, name, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("up %s: %w", name, err)
	}
	if err := netlink.RouteReplace(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: p.Gateway.AsSlice(), Dst: nil}); err != nil {
		return fmt.Errorf("default route via %s: %w", p.Gateway, err)
	}
	// A restored clone's neighbour cache is the snapshot's: forget it, so
	// a gateway with another MAC is asked for afresh, not waited out.
	neighs, err := netlink.NeighList(link.Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("neighbours of %s: %w", name, err)
	}
	for _, n := range neighs {
		if n.State&netlink.NUD_PERMANENT == 0 {
			netlink.NeighDel(&n)
		}
	}
	var b strings.Builder
	b.WriteString("# written by the firesandbox agent\n")
	for _, d := range p.DNS {
		fmt.Fprintf(&b, "nameserver %s\n", d)
	}
	b.WriteString("options timeout:2 attempts:2\n")
	return writeResolvConf(root, b.String())
}

// writeResolvConf replaces root's etc/resolv.conf with content, atomically
// (readers see the old file or the new one). Paths resolve inside root,
// so a symlink in the guest's tree (resolv.conf is often one) is replaced,
// never followed out of it.
func writeResolvConf(root, content string) error {
	r, err := os.OpenRoot(root)
	if err != nil {
		return fmt.Errorf("write resolver configuration: %w", err)
	}
	defer r.Close()
	if err := r.MkdirAll("etc", 0o755); err != nil {
		return fmt.Errorf("write resolver configuration: %w", err)
	}
	const tmp = "etc/.resolv.conf.firesandbox"
	r.Remove(tmp) // a leftover of an interrupted write
	f, err := r.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("write resolver configuration: %w", err)
	}
	_, err = f.WriteString(content)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = r.Rename(tmp, "etc/resolv.conf")
	}
	if err != nil {
		r.Remove(tmp)
		return fmt.Errorf("write resolver configuration: %w", err)
	}
	return nil
}
