package network

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Backend names.
const (
	BackendTap   = "tap"   // a tap in the VM's own namespace: QEMU and Firecracker
	BackendPasst = "passt" // user-mode networking: QEMU only, not provided yet
	BackendNone  = "none"
)

// Diagnosis says which network backend this host can give VMs, and why
// the others cannot run. It is plain data for `firesandbox doctor`.
type Diagnosis struct {
	// Backend is what VMs with a network policy get: BackendTap, or
	// BackendNone when Problems stop it.
	Backend  string   `json:"backend"`
	Usable   bool     `json:"usable"`
	Problems []string `json:"problems,omitempty"` // each says what to fix
	Notes    []string `json:"notes,omitempty"`
}

// Diagnose probes what Create needs, for real but inside a throwaway
// namespace: privileges, namespaces, veth and tap devices, nftables with
// NAT, masquerade and redirect, forwarding on the uplink, DNS upstreams,
// and whether passt is there as a fallback. It lists every problem.
func Diagnose(ctx context.Context, cfg Config) Diagnosis {
	dg := Diagnosis{Backend: BackendNone}
	problem := func(format string, args ...any) { dg.Problems = append(dg.Problems, fmt.Sprintf(format, args...)) }
	note := func(format string, args ...any) { dg.Notes = append(dg.Notes, fmt.Sprintf(format, args...)) }
	if err := cfg.Validate(); err != nil {
		problem("configuration: %v", err)
	}
	cfg = cfg.withDefaults()

	var caps unix.CapUserData
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	capsOK := true
	if err := unix.Capget(&hdr, &caps); err != nil {
		problem("read capabilities: %v", err)
		capsOK = false
	} else {
		for _, c := range []struct {
			bit  uint
			name string
		}{{unix.CAP_NET_ADMIN, "CAP_NET_ADMIN"}, {unix.CAP_SYS_ADMIN, "CAP_SYS_ADMIN"}} {
			if caps.Effective&(1<<c.bit) == 0 {
				problem("%s is missing (run serve as root): it is needed for namespaces, links and nftables", c.name)
				capsOK = false
			}
		}
	}
	tunOK := true
	if f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0); err != nil {
		problem("/dev/net/tun: %v (load the tun module, or give the container the device)", err)
		tunOK = false
	} else {
		f.Close()
	}
	if capsOK {
		for _, p := range probeNamespace(tunOK) {
			problem("%s", p)
		}
	}
	if capsOK {
		diagnoseUplink(cfg, problem, note)
	}
	if len(cfg.DNSUpstreams) == 0 {
		problem("no DNS upstream: set dns_upstreams, or a nameserver in /etc/resolv.conf (guests could not resolve allowed names)")
	} else {
		note("DNS upstreams: %s", strings.Join(cfg.DNSUpstreams, ", "))
	}
	if path, err := exec.LookPath("passt"); err == nil {
		note("passt at %s (user-mode fallback for QEMU where no tap is possible; not used by this version: the tap backend enforces the policy outside the guest)", path)
	} else {
		note("passt not installed (apt-get install passt): no user-mode fallback for hosts without /dev/net/tun")
	}
	note("Firecracker needs the tap backend (it has no user-mode networking)")
	if len(dg.Problems) == 0 {
		dg.Backend, dg.Usable = BackendTap, true
		note("backend tap: each VM gets a namespace with a tap, a veth to the uplink with masquerade, nftables rules, a resolver and an SNI/Host filter")
	}
	return dg
}

// probeNamespace creates a throwaway namespace and in it a veth pair, a
// tap, and an nftables table with the chains and expressions Create uses.
func probeNamespace(tun bool) []string {
	var problems []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			problems = append(problems, fmt.Sprintf("open own namespace: %v", err))
			runtime.UnlockOSThread()
			return
		}
		defer orig.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			problems = append(problems, fmt.Sprintf("network namespaces: unshare: %v", err))
			runtime.UnlockOSThread()
			return
		}
		problems = append(problems, probeInside(tun)...)
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			problems = append(problems, fmt.Sprintf("leave probe namespace: %v", err))
			return // this thread stays locked and is discarded
		}
		runtime.UnlockOSThread()
	}()
	<-done
	return problems
}

func probeInside(tun bool) []string {
	var problems []string
	la := netlink.NewLinkAttrs()
	la.Name = "probe0"
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "probe1"}); err != nil {
		problems = append(problems, fmt.Sprintf("veth links: %v (CONFIG_VETH)", err))
	}
	if tun {
		if f, err := openTap("probetap", false); err != nil {
			problems = append(problems, fmt.Sprintf("tap devices: %v", err))
		} else {
			f.Close()
		}
	}
	c, err := nftables.New()
	if err != nil {
		return append(problems, fmt.Sprintf("nftables: %v", err))
	}
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: "probe"})
	pol := nftables.ChainPolicyAccept
	s := ipSet(t, "s")
	if err := c.AddSet(s, intervalElements(mustPrefixes("10.0.0.0/8"))); err != nil {
		return append(problems, fmt.Sprintf("nftables sets: %v", err))
	}
	nat := c.AddChain(&nftables.Chain{Name: "n", Table: t, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest, Policy: &pol})
	c.AddRule(&nftables.Rule{Table: t, Chain: nat, Exprs: rule(l4proto(unix.IPPROTO_TCP), redirectTo(1))})
	post := c.AddChain(&nftables.Chain{Name: "p", Table: t, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &pol})
	c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: rule(daddrIn(s), &expr.Masq{})})
	f := c.AddChain(&nftables.Chain{Name: "f", Table: t, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &pol})
	c.AddRule(&nftables.Rule{Table: t, Chain: f, Exprs: rule(ctState(expr.CtStateBitESTABLISHED), rejectA)})
	if err := c.Flush(); err != nil {
		problems = append(problems, fmt.Sprintf("nftables with NAT, masquerade, redirect and reject: %v (CONFIG_NF_TABLES, NFT_NAT, NFT_MASQ, NFT_REDIR, NFT_REJECT, NFT_CT)", err))
	}
	return problems
}

func diagnoseUplink(cfg Config, problem, note func(string, ...any)) {
	path := cfg.UplinkNetns
	if path == "" {
		path = "/proc/self/ns/net"
	}
	f, err := os.Open(path)
	if err != nil {
		problem("uplink namespace %s: %v", path, err)
		return
	}
	defer f.Close()
	h := &Host{cfg: cfg, uplink: f}
	nl, err := netlinkAt(f)
	if err != nil {
		problem("netlink in the uplink: %v", err)
		return
	}
	defer nl.Close()
	h.nl = nl
	links := h.defaultRouteLinks()
	if len(links) == 0 {
		note("the uplink has no default route: guests reach only what its routes lead to")
		return
	}
	inNS(f, func() error {
		for _, l := range links {
			b, err := os.ReadFile("/proc/sys/net/ipv4/conf/" + l + "/forwarding")
			switch {
			case err != nil:
				problem("read forwarding of %s: %v", l, err)
			case strings.TrimSpace(string(b)) != "1" && !cfg.EnableForwarding:
				problem("IPv4 forwarding is off on %s, so replies to guests cannot come back: set enable_forwarding, or sysctl net.ipv4.conf.%s.forwarding=1", l, l)
			default:
				note("uplink %s: forwarding on (or enabled at start)", l)
			}
		}
		return nil
	})
}

func netlinkAt(f *os.File) (*netlink.Handle, error) {
	return netlink.NewHandleAt(netns.NsHandle(f.Fd()))
}
