package agent

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/testutil"
)

func TestNetConfigRequest(t *testing.T) {
	var got []agentproto.ParsedNetConfig
	orig := netConfigure
	netConfigure = func(p agentproto.ParsedNetConfig) error { got = append(got, p); return nil }
	defer func() { netConfigure = orig }()
	c := startAgent(t, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req := agentproto.NetConfigRequest{MAC: "06:fe:00:00:00:01", Addr: "10.0.2.15/24", Gateway: "10.0.2.2", DNS: []string{"10.0.2.2"}, MTU: 1500}
	if err := c.ConfigureNetwork(ctx, req); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Addr.String() != "10.0.2.15/24" {
		t.Fatalf("applied %+v", got)
	}
	netConfigure = orig
	err := c.ConfigureNetwork(ctx, req)
	if err == nil || !strings.Contains(err.Error(), "PID 1") {
		t.Fatalf("as a host process: %v, want the PID 1 refusal", err)
	}
}

// TestApplyNetConfig configures a dummy interface in a throwaway network
// namespace, twice (as after a restore), and checks address, route and
// resolv.conf.
func TestApplyNetConfig(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir() // the commands' root
	resolv := filepath.Join(dir, "etc", "resolv.conf")
	// Images often have resolv.conf as a symlink (to systemd's stub, which
	// does not exist here): it is replaced, never followed.
	os.MkdirAll(filepath.Join(dir, "etc"), 0o755)
	outside := filepath.Join(t.TempDir(), "outside")
	if err := os.Symlink(outside, resolv); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with its namespace
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		mac, _ := net.ParseMAC("06:fe:00:00:00:01")
		la := netlink.NewLinkAttrs()
		la.Name, la.HardwareAddr = "eth0", mac
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "peer0"}); err != nil { // no dummy module on every host
			errc <- err
			return
		}
		if err := netlink.LinkSetUp(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "peer0"}}); err != nil {
			errc <- err
			return
		}
		first := agentproto.NetConfigRequest{MAC: "06:fe:00:00:00:01", Addr: "10.9.0.5/24", Gateway: "10.9.0.1", DNS: []string{"10.9.0.1"}}
		second := agentproto.NetConfigRequest{MAC: "06:fe:00:00:00:01", Addr: "10.0.2.15/24", Gateway: "10.0.2.2", DNS: []string{"10.0.2.2"}, MTU: 1400}
		// The last one is a restore's: same address, but the snapshot's
		// guest knew a gateway MAC this host's tap may not have.
		for i, r := range []agentproto.NetConfigRequest{first, second, second} {
			p, err := r.Parse()
			if err == nil {
				err = applyNetConfig(p, dir)
			}
			if err != nil {
				errc <- err
				return
			}
			if i == 1 {
				l, _ := netlink.LinkByName("eth0")
				old, _ := net.ParseMAC("06:fe:00:00:00:02")
				if err := netlink.NeighAdd(&netlink.Neigh{LinkIndex: l.Attrs().Index, State: netlink.NUD_REACHABLE, IP: net.ParseIP("10.0.2.2"), HardwareAddr: old}); err != nil {
					errc <- err
					return
				}
				if ns, _ := netlink.NeighList(l.Attrs().Index, netlink.FAMILY_V4); len(ns) != 1 {
					errc <- fmt.Errorf("the test's neighbour entry is not there: %v", ns)
					return
				}
			}
		}
		netlink.LinkSetUp(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "peer0"}})
		l, _ := netlink.LinkByName("eth0")
		addrs, _ := netlink.AddrList(l, netlink.FAMILY_V4)
		routes, _ := netlink.RouteList(l, netlink.FAMILY_V4)
		var rs []string
		for _, r := range routes {
			if ones, _ := func() (int, int) {
				if r.Dst == nil {
					return 0, 0
				}
				return r.Dst.Mask.Size()
			}(); ones == 0 {
				rs = append(rs, "default via "+r.Gw.String())
			}
		}
		neighs, _ := netlink.NeighList(l.Attrs().Index, netlink.FAMILY_V4)
		switch {
		case len(neighs) != 0:
			errc <- fmt.Errorf("neighbours kept across a reconfiguration: %v", neighs)
		case len(addrs) != 1 || addrs[0].IPNet.String() != "10.0.2.15/24":
			errc <- fmt.Errorf("addresses %v", addrs)
		case len(rs) != 1 || rs[0] != "default via 10.0.2.2":
			errc <- fmt.Errorf("routes %v", rs)
		case l.Attrs().MTU != 1400 || l.Attrs().Flags&net.FlagUp == 0:
			errc <- fmt.Errorf("link %+v", l.Attrs())
		default:
			errc <- nil
		}
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(resolv)
	if err != nil || !strings.Contains(string(b), "nameserver 10.0.2.2\n") || strings.Contains(string(b), "10.9.0.1") {
		t.Fatalf("resolv.conf = %q %v", b, err)
	}
	if _, err := os.Lstat(outside); !os.IsNotExist(err) {
		t.Fatalf("the write followed resolv.conf's symlink out of the root: %v", err)
	}
	p, _ := (&agentproto.NetConfigRequest{MAC: "06:fe:00:00:00:09", Addr: "10.0.2.15/24", Gateway: "10.0.2.2"}).Parse()
	go func() {
		runtime.LockOSThread()
		unix.Unshare(unix.CLONE_NEWNET)
		errc <- applyNetConfig(p, dir)
	}()
	if err := <-errc; err == nil || !strings.Contains(err.Error(), "virtio_net") {
		t.Fatalf("no such MAC: %v, want an error naming the driver", err)
	}
}
