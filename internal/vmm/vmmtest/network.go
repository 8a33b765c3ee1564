package vmmtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/vmm"
	"github.com/firesandbox/firesandbox/internal/vmm/vmmproc"

	"github.com/firesandbox/firesandbox/internal/netns"
)

// The guest side of the test link, as internal/network gives every VM.
const (
	guestMAC  = "06:fe:00:00:00:01"
	guestAddr = "10.0.2.15/24"
	gateway   = "10.0.2.2"
	tapName   = "tap0"
	// gatewayMAC is the tap's: the same in every namespace, as
	// internal/network makes it, so a restored guest's neighbour cache
	// (the snapshot's) is right in every clone.
	gatewayMAC = "06:fe:00:00:00:02"
)

// netHost stands in for what internal/network makes for one VM: a
// network namespace of the test's own (bound at a file in a temp dir)
// holding a tap with the gateway's address, and an HTTP server there
// that answers with the namespace's name. Nothing outside the namespace
// is reachable from it, or reaches it.
type netHost struct {
	name, path string
}

func newNetHost(t *testing.T, name string) *netHost {
	t.Helper()
	path := filepath.Join(t.TempDir(), "netns-"+name)
	if err := netns.Create(path); err != nil {
		t.Fatalf("network namespace: %v", err)
	}
	t.Cleanup(func() { netns.Delete(path) })
	var ln net.Listener
	err := vmmproc.InNetns(path, func() error {
		lo, err := netlink.LinkByName("lo")
		if err == nil {
			err = netlink.LinkSetUp(lo)
		}
		if err != nil {
			return err
		}
		tap := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: tapName}, Mode: netlink.TUNTAP_MODE_TAP,
			Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR}
		if err := netlink.LinkAdd(tap); err != nil {
			return fmt.Errorf("add tap: %w", err)
		}
		l, err := netlink.LinkByName(tapName)
		if err != nil {
			return err
		}
		mac, _ := net.ParseMAC(gatewayMAC)
		if err := netlink.LinkSetHardwareAddr(l, mac); err != nil {
			return err
		}
		addr, _ := netlink.ParseAddr(gateway + "/24")
		if err := netlink.AddrAdd(l, addr); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		ln, err = net.Listen("tcp4", gateway+":8080")
		return err
	})
	if err != nil {
		t.Fatalf("network namespace %s: %v", name, err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "hello from %s", name)
	}), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return &netHost{name: name, path: path}
}

func (h *netHost) device() *vmm.NetDevice {
	return &vmm.NetDevice{MAC: guestMAC, Tap: tapName, Netns: h.path}
}

// fetch runs in the guest: an HTTP GET of the gateway's server.
// It may take a while under TCG (a first python3, a first ARP), hence its
// own time limit.
func fetch(t *testing.T, c *agentproto.Client) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out, errb strings.Builder
	res, err := c.Exec(ctx, agentproto.ExecRequest{
		Argv:   []string{"python3", "-c", "import urllib.request as u; print(u.urlopen('http://" + gateway + ":8080/', timeout=30).read().decode())"},
		Limits: agentproto.Limits{WallMillis: 90_000},
	}, &out, &errb)
	if err != nil || res.Code != 0 {
		t.Fatalf("fetch from the guest: %v, %+v, stdout %q, stderr %q", err, res, out.String(), errb.String())
	}
	return out.String()
}

// Network runs the suite's network case alone, for a driver variant that
// differs in how it reaches a tap (Firecracker without its jailer).
func Network(t *testing.T, newDriver Factory, fx Fixtures) {
	network(t, newDriver(t), fx, runBase(t))
}

// network: a machine with a network device reaches its tap's namespace,
// a snapshot of it restores only with a device, onto another namespace's
// tap, and a missing tap fails Boot cleanly.
func network(t *testing.T, d vmm.Driver, fx Fixtures, base string) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root (network namespaces and taps)")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("skipped: %v", err)
	}
	ctx := ctxFor(t, 10*time.Minute)
	a := newNetHost(t, "a")
	cfg := Config(d, fx, base, "net")
	cfg.Net = a.device()
	m := boot(t, d, cfg)
	c := Connect(t, m)
	if !fx.HostGuest {
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		err := c.ConfigureNetwork(cctx, agentproto.NetConfigRequest{MAC: guestMAC, Addr: guestAddr, Gateway: gateway})
		cancel()
		if err != nil {
			t.Fatalf("configure the guest's network: %v\nconsole:\n%s", err, m.Console(2048))
		}
		if got := fetch(t, c); got != "hello from a\n" {
			t.Fatalf("guest fetch through its tap: %q", got)
		}
	}
	c.Close()
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	snap := t.TempDir()
	if err := m.Snapshot(ctx, snap); err != nil {
		t.Fatalf("Snapshot of a machine with a network device: %v", err)
	}
	stop(t, m, cfg.RunDir)

	// The snapshot's machine had a device: a restore without one fails,
	// and leaves nothing behind.
	bare := Config(d, fx, base, "net-bare")
	if r, err := d.Restore(ctx, snap, bare); err == nil {
		r.Stop(context.Background())
		t.Fatal("Restore without the snapshot's network device succeeded")
	}
	if _, err := os.Stat(bare.RunDir); !os.IsNotExist(err) {
		t.Errorf("a failed Restore left %s", bare.RunDir)
	}
	if left := vmmProcesses(bare.ID); len(left) > 0 {
		t.Errorf("a failed Restore left VMM processes %v", left)
	}

	// A clone gets another namespace's tap under the same name, and the
	// guest keeps the snapshot's address and MAC: its traffic goes there.
	b := newNetHost(t, "b")
	rcfg := Config(d, fx, base, "net-b")
	rcfg.Net = b.device()
	r, err := d.Restore(ctx, snap, rcfg)
	if err != nil {
		t.Fatalf("Restore onto another namespace's tap: %v", err)
	}
	t.Cleanup(func() { r.Stop(context.Background()) })
	rc := Connect(t, r)
	if !fx.HostGuest {
		if got := fetch(t, rc); got != "hello from b\n" {
			t.Fatalf("restored guest's fetch: %q, want b's server", got)
		}
	}
	rc.Close()
	stop(t, r, rcfg.RunDir)

	// A tap that is not there fails Boot, before the VM starts.
	missing := Config(d, fx, base, "net-missing")
	missing.Net = &vmm.NetDevice{MAC: guestMAC, Tap: "tap9", Netns: a.path}
	if m, err := d.Boot(ctx, missing); err == nil {
		m.Stop(context.Background())
		t.Fatal("Boot onto a missing tap succeeded")
	} else if !strings.Contains(err.Error(), "tap9") {
		t.Errorf("Boot onto a missing tap: %v, want an error naming it", err)
	}
	if _, err := os.Stat(missing.RunDir); !os.IsNotExist(err) {
		t.Errorf("a failed Boot left %s", missing.RunDir)
	}
	if left := vmmProcesses(missing.ID); len(left) > 0 {
		t.Errorf("a failed Boot left VMM processes %v", left)
	}

	// A bad device is a configuration error.
	badMAC := Config(d, fx, base, "net-badmac")
	badMAC.Net = &vmm.NetDevice{MAC: "01:00:5e:00:00:01", Tap: tapName, Netns: a.path}
	if _, err := d.Boot(ctx, badMAC); !errors.Is(err, vmm.ErrInvalidConfig) {
		t.Errorf("Boot with a multicast MAC: %v, want ErrInvalidConfig", err)
	}
}
