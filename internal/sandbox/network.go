// This file connects VMs to internal/network: which VMs get a network
// device, the network object of each VM, the policy of a sandbox, and the
// way into a sandbox's ports.

package sandbox

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/network"
	"github.com/firesandbox/firesandbox/internal/snapshot"
	"github.com/firesandbox/firesandbox/internal/state"
	"github.com/firesandbox/firesandbox/internal/vmm"
)

// Who gets a network device, and why:
//
//   - A device cannot be added to a running microvm (no hotplug), and a
//     restore needs exactly the devices of its snapshot. So the device is
//     part of the template (Shape.Network, recorded in Spec.Network): a
//     template with one has a snapshot of its own.
//   - One-shot runs default to no device at all: the default template,
//     its snapshot and its warm pool are what they were, and a run pays
//     nothing for networking. A run that asks for network (RunRequest.
//     Network; Judge0's enable_network) uses the template with a device.
//   - Sandboxes may change their policy while they run, so every sandbox
//     gets the device when this server has a network: with no policy its
//     namespace lets nothing out (deny-all rules), which costs a namespace,
//     a tap and their rules per sandbox (make bench measures it).
//   - Every VM with a device gets its own namespace, created before its
//     VMM starts or restores, with deny-all rules; its policy is applied
//     right after. The guest is told its address, route and resolver when
//     it boots. A restored guest already has them, from its snapshot: the
//     Spec records them (Spec.Network), so a snapshot is only restored
//     where every VM's link is the same (clones all carry the snapshot's
//     address and MAC, and the gateway's MAC is the same everywhere; their
//     namespaces keep them apart). Telling it again would cost a round
//     trip and, under TCG, ~180 ms of code translation per restore. The
//     namespace goes with the VM, and a killed serve's are swept by the
//     next (network.Host.Sweep).

// networking is the Manager's side of it: the host's VM networks, if
// this server has them.
type networking struct {
	netHost atomic.Pointer[network.Host]
}

// UseNetwork gives VMs of templates with a network device their networks
// from h (nil: none, the default; such templates then fail with
// ErrNoNetwork). The Service calls it once, before serving.
func (m *Manager) UseNetwork(h *network.Host) { m.netHost.Store(h) }

// HasNetwork says whether this Manager can give VMs a network device.
func (m *Manager) HasNetwork() bool { return m.netHost.Load() != nil }

// vmNet is one VM's network: what internal/network made for it, and the
// connections the port proxy opened into the guest, which are closed with
// it so none outlives the VM (or keeps its namespace alive).
type vmNet struct {
	v *network.VM

	mu     sync.Mutex
	conns  map[*guestConn]struct{}
	closed bool
}

// attachNetwork gives a VM of t its network before its VMM starts or
// restores: a namespace that lets nothing out yet, and cfg's device on its
// tap. Templates without a device get nothing.
func (m *Manager) attachNetwork(ctx context.Context, vm *VM, t *Template, cfg *vmm.Config) error {
	if !t.Shape.Network {
		return nil
	}
	h := m.netHost.Load()
	if h == nil {
		return fmt.Errorf("%w: template %s has a network device", ErrNoNetwork, t.Spec.Key())
	}
	v, err := h.Create(ctx, cfg.ID, network.Policy{})
	if err != nil {
		return fmt.Errorf("network of %s: %w", cfg.ID, err)
	}
	vm.net = &vmNet{v: v, conns: map[*guestConn]struct{}{}}
	g := v.Guest()
	cfg.Net = &vmm.NetDevice{MAC: g.MAC, Tap: v.TapName(), Netns: v.NetnsPath()}
	return nil
}

// networkSpec is Spec.Network for a template of shape: the guest's side
// of every VM link, which a restored guest has from its snapshot.
func (m *Manager) networkSpec(shape Shape) string {
	if !shape.Network {
		return ""
	}
	h := m.netHost.Load()
	if h == nil {
		return "virtio-net (no network on this server)"
	}
	g := h.Config().Guest
	return fmt.Sprintf("virtio-net %s %s via %s %s mtu %d", g.MAC, g.Addr, g.Gateway, g.GatewayMAC, g.MTU)
}

// configureGuestNetwork tells a booted guest its address, route and
// resolver (restored guests have them from their snapshot: see above).
func (m *Manager) configureGuestNetwork(ctx context.Context, vm *VM) error {
	if vm.net == nil {
		return nil
	}
	g := vm.net.v.Guest()
	ctx, cancel := context.WithTimeout(ctx, restoreTimeout)
	defer cancel()
	err := vm.Agent.ConfigureNetwork(ctx, agentproto.NetConfigRequest{
		MAC: g.MAC, Addr: g.Addr.String(), Gateway: g.Gateway.String(), DNS: []string{g.DNS().String()}, MTU: g.MTU,
	})
	if err != nil {
		return fmt.Errorf("configure the guest's network: %w", err)
	}
	return nil
}

// closeNetwork removes the VM's network; call it once the VMM is gone.
func (v *VM) closeNetwork() error {
	if v.net == nil {
		return nil
	}
	n := v.net
	n.mu.Lock()
	n.closed = true
	conns := n.conns
	n.conns = nil
	n.mu.Unlock()
	for c := range conns {
		c.Conn.Close()
	}
	return n.v.Close()
}

// SetPolicy changes what the VM may reach, at once. A VM without a
// device refuses any policy that lets something out.
func (v *VM) SetPolicy(ctx context.Context, p network.Policy) error {
	if v.net == nil {
		if p.Enabled() {
			return fmt.Errorf("%w: this VM has no network device", ErrNoNetwork)
		}
		return nil
	}
	return v.net.v.SetPolicy(ctx, p)
}

// DialGuest connects to a TCP port of the guest from its namespace.
func (v *VM) DialGuest(ctx context.Context, port int) (net.Conn, error) {
	if v.net == nil {
		return nil, fmt.Errorf("%w: this VM has no network device, so its ports cannot be reached", ErrNoNetwork)
	}
	return v.net.dial(ctx, port, nil)
}

func (n *vmNet) dial(ctx context.Context, port int, touch func()) (net.Conn, error) {
	c, err := n.v.DialGuest(ctx, port)
	if err != nil {
		return nil, err
	}
	gc := &guestConn{Conn: c, n: n, touch: touch}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		c.Close()
		return nil, network.ErrClosed
	}
	n.conns[gc] = struct{}{}
	return gc, nil
}

// guestConn is a connection into the guest, forgotten by its VM's network
// when closed; each read and write counts as use of its sandbox (a long
// WebSocket is not idleness).
type guestConn struct {
	net.Conn
	n     *vmNet
	touch func()
	once  sync.Once
}

func (c *guestConn) Read(b []byte) (int, error) {
	if c.touch != nil {
		c.touch()
	}
	return c.Conn.Read(b)
}

func (c *guestConn) Write(b []byte) (int, error) {
	if c.touch != nil {
		c.touch()
	}
	return c.Conn.Write(b)
}

func (c *guestConn) Close() error {
	c.once.Do(func() {
		c.n.mu.Lock()
		delete(c.n.conns, c)
		c.n.mu.Unlock()
	})
	return c.Conn.Close()
}

// takeForRun returns a VM for a one-shot run: the pool's or the default
// template's when the run asks for no network (every run so far), else a
// VM of the template with a device, restored with nothing allowed and
// then given the run's policy.
func (m *Manager) takeForRun(ctx context.Context, e *image.Entry, req *RunRequest) (*VM, bool, error) {
	if req.Network == nil || !req.Network.Enabled() {
		return m.take(ctx, e, req.Cold, req.Mounts)
	}
	if err := req.Network.Validate(); err != nil {
		return nil, false, err
	}
	if !m.HasNetwork() {
		return nil, false, fmt.Errorf("%w: this run asks for network", ErrNoNetwork)
	}
	t, err := m.Template(ctx, e, Shape{Network: true})
	if err != nil {
		return nil, false, err
	}
	vm, err := m.Start(ctx, t, StartOptions{Cold: req.Cold, Mounts: req.Mounts})
	if err != nil {
		return nil, false, err
	}
	if err := vm.SetPolicy(ctx, *req.Network); err != nil {
		vm.Close()
		return nil, false, err
	}
	return vm, false, nil
}

// --- sandboxes ---

// encodePolicy is a policy as the state database keeps it: canonical
// JSON, or "" for none.
func encodePolicy(p *network.Policy) (string, error) {
	if p == nil || (len(p.AllowOut) == 0 && len(p.DenyOut) == 0) {
		return "", nil
	}
	if err := p.Validate(); err != nil {
		return "", err
	}
	r, err := p.Compile()
	if err != nil {
		return "", err
	}
	b, err := json.Marshal(r.Policy())
	return string(b), err
}

// decodePolicy reads a stored policy; "" is none.
func decodePolicy(s string) (network.Policy, error) {
	var p network.Policy
	if s == "" {
		return p, nil
	}
	if err := json.Unmarshal([]byte(s), &p); err != nil {
		return p, fmt.Errorf("stored network policy: %w", err)
	}
	return p, nil
}

// PolicyOf returns a sandbox record's network policy.
func PolicyOf(sb state.Sandbox) (network.Policy, error) { return decodePolicy(sb.Network) }

// createNetwork checks a new sandbox's policy and says whether it gets a
// device (always, where this server has a network).
func (s *Sandboxes) createNetwork(req *CreateRequest) (policy string, device bool, err error) {
	if policy, err = encodePolicy(req.Network); err != nil {
		return "", false, err
	}
	if req.Network != nil && req.Network.Enabled() && !s.mgr.HasNetwork() {
		return "", false, fmt.Errorf("%w: the sandbox asks for network", ErrNoNetwork)
	}
	return policy, s.mgr.HasNetwork(), nil
}

// resumeVM resumes a hibernated sandbox's VM and applies its policy.
func (s *Sandboxes) resumeVM(ctx context.Context, sb state.Sandbox, t *Template, disk string) (*VM, error) {
	vm, err := s.mgr.Resume(ctx, t, sb.SnapshotDir, disk)
	if err != nil {
		return nil, err
	}
	if err := s.applyPolicy(ctx, sb, vm); err != nil {
		vm.Close()
		return nil, fmt.Errorf("resume: %w", err)
	}
	return vm, nil
}

func (s *Sandboxes) applyPolicy(ctx context.Context, sb state.Sandbox, vm *VM) error {
	p, err := decodePolicy(sb.Network)
	if err != nil {
		return err
	}
	if vm.net == nil && !p.Enabled() {
		return nil
	}
	return vm.SetPolicy(ctx, p)
}

// liveShape is the shape of a running sandbox's VM (its template's: with
// the device it really has), else that of its hibernation.
func (s *Sandboxes) liveShape(sb state.Sandbox) Shape {
	if b, err := s.boxFor(sb.ID); err == nil {
		b.mu.RLock()
		vm := b.vm
		b.mu.RUnlock()
		if vm != nil {
			return vm.Template.Shape
		}
	}
	return resumeShape(sb)
}

// resumeShape is the shape of a hibernated sandbox's VM: its record's
// size, with a network device exactly when the hibernated VM had one
// (a sandbox made before this server had a network keeps having none).
func resumeShape(sb state.Sandbox) Shape {
	return Shape{VCPUs: sb.VCPUs, MemoryMiB: sb.MemoryMiB, DiskMiB: sb.DiskMiB, Network: hibernatedWithNetwork(sb.SnapshotDir)}
}

// hibernatedWithNetwork reads a hibernation's manifest: did its VM have a
// network device? An unreadable one says no; the resume's own check then
// names what is wrong with it.
func hibernatedWithNetwork(dir string) bool {
	if dir == "" {
		return false
	}
	f, err := os.Open(filepath.Join(dir, "manifest.json"))
	if err != nil {
		return false
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 1<<20))
	if err != nil {
		return false
	}
	m, err := snapshot.ParseManifest(b)
	return err == nil && m.Spec.Network != ""
}

// SetNetwork replaces a sandbox's network policy. A running sandbox's
// takes effect at once (open connections it refuses are closed); a
// hibernated one's at its resume. The stored policy is the canonical form
// (entries lower-cased, deduplicated, sorted). A bad entry is
// network.ErrInvalidPolicy; a policy that lets something out on a server
// (or for a sandbox) without a network device is ErrNoNetwork.
func (s *Sandboxes) SetNetwork(ctx context.Context, tenant, id string, p network.Policy) (state.Sandbox, error) {
	enc, err := encodePolicy(&p)
	if err != nil {
		return state.Sandbox{}, err
	}
	sb, err := s.Get(ctx, tenant, id)
	if err != nil {
		return sb, err
	}
	if err := usable(sb); err != nil {
		return sb, err
	}
	if p.Enabled() && !s.mgr.HasNetwork() {
		return sb, fmt.Errorf("%w: this server gives sandboxes no network", ErrNoNetwork)
	}
	b, err := s.boxFor(id)
	if err != nil {
		return sb, err
	}
	// One change at a time per sandbox; execs go on meanwhile, while a
	// hibernation, resume or deletion waits for the change (and the other
	// way round), so the record and the live VM agree.
	b.netMu.Lock()
	defer b.netMu.Unlock()
	b.mu.RLock()
	defer b.mu.RUnlock()
	cur, err := s.db.Get(ctx, id)
	if err != nil {
		return cur, err
	}
	if err := usable(cur); err != nil {
		return cur, err
	}
	if err := s.db.SetNetwork(context.WithoutCancel(ctx), id, enc); err != nil {
		return cur, err
	}
	if vm := b.vm; vm != nil && cur.State == state.Running {
		if err := vm.SetPolicy(ctx, p); err != nil {
			if rerr := s.db.SetNetwork(context.WithoutCancel(ctx), id, cur.Network); rerr != nil {
				s.log.Warn("restore the stored network policy", "sandbox", id, "err", rerr)
			}
			return cur, fmt.Errorf("set network of %s: %w", id, err)
		}
	}
	s.log.Info("network policy changed", "op", "set-network", "sandbox", id, "allow_out", len(p.AllowOut), "deny_out", len(p.DenyOut))
	return s.db.Get(ctx, id)
}

// PortDialer returns the way into a sandbox's TCP ports, for the port
// proxy: each dial finds the sandbox's live VM (resuming it if it is
// hibernated) and connects from its namespace. The sandbox must be
// tenant's, or the dial fails with ErrNoSandbox. Connections close when
// the VM stops, and count as use of the sandbox while data flows.
func (s *Sandboxes) PortDialer(tenant, id string) network.PortDialer {
	return sandboxPorts{s: s, tenant: tenant, id: id}
}

type sandboxPorts struct {
	s          *Sandboxes
	tenant, id string
}

func (p sandboxPorts) DialGuest(ctx context.Context, port int) (net.Conn, error) {
	var c net.Conn
	err := p.s.withVM(ctx, p.tenant, p.id, func(ctx context.Context, _ state.Sandbox, vm *VM) error {
		if vm.net == nil {
			return fmt.Errorf("%w: sandbox %s has no network device, so its ports cannot be reached", ErrNoNetwork, p.id)
		}
		b, err := p.s.boxFor(p.id)
		if err != nil {
			return err
		}
		now := p.s.now
		var last atomic.Int64 // touches the box at most once a second
		touch := func() {
			t := now().UnixNano()
			if t-last.Load() > int64(time.Second) {
				last.Store(t)
				b.lastUsed.Store(t)
			}
		}
		c, err = vm.net.dial(ctx, port, touch)
		return err
	})
	return c, err
}

// NetworkConfig says whether and how a Service gives VMs a network.
type NetworkConfig struct {
	// Mode is "auto" (the default: a network where this host can have
	// one, else none, with a warning saying why), "on" (fail to start
	// without one) or "off".
	Mode string `json:"mode" toml:"mode"`
	// Quiet reports, in auto mode, a host that cannot give VMs a network
	// at Info rather than Warn. The CLI's in-process commands set it: a
	// warning on every command would mix into the program's stderr, and a
	// sandbox that asks for a network is refused with the reason anyway.
	Quiet bool `json:"-" toml:"-"`
	// Host configures the VM networks; zero fields take
	// internal/network's defaults.
	network.Config
}

// Network modes.
const (
	NetworkAuto = "auto"
	NetworkOn   = "on"
	NetworkOff  = "off"
)

// Validate checks a NetworkConfig.
func (c *NetworkConfig) Validate() error {
	switch c.Mode {
	case "", NetworkAuto, NetworkOn, NetworkOff:
	default:
		return fmt.Errorf("%w: network mode %q: want auto, on or off", ErrBadRequest, c.Mode)
	}
	if c.Mode == NetworkOff {
		return nil
	}
	if err := c.Config.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	return nil
}

// openNetwork makes the Service's network host, if its configuration asks
// for one, and sweeps what a killed serve left (namespaces, links, rules).
// The host is checked first (network.Diagnose: privileges, tap, nftables,
// forwarding on the uplink, DNS): in auto mode a host that cannot give VMs
// a working network gives them none, with a warning saying why, and
// nothing of it is touched; in on mode that is an error.
func openNetwork(c *NetworkConfig, log *slog.Logger) (*network.Host, error) {
	if c == nil || c.Mode == NetworkOff {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lvl := slog.LevelWarn
	if c.Quiet {
		lvl = slog.LevelInfo
	}
	if dg := network.Diagnose(ctx, c.Config); !dg.Usable {
		if c.Mode == NetworkOn {
			return nil, fmt.Errorf("open network: %w: %s (see firesandbox doctor)", network.ErrUnavailable, strings.Join(dg.Problems, "; "))
		}
		log.Log(ctx, lvl, "VMs get no network on this host (sandboxes and runs that ask for one are refused); see firesandbox doctor", "problems", dg.Problems)
		return nil, nil
	}
	h, err := network.New(c.Config, network.WithLogger(log))
	if err != nil {
		if c.Mode == NetworkOn {
			return nil, fmt.Errorf("open network: %w (see firesandbox doctor)", err)
		}
		log.Log(ctx, lvl, "VMs get no network on this host (sandboxes and runs that ask for one are refused); see firesandbox doctor", "err", err)
		return nil, nil
	}
	rep, err := h.Sweep()
	if err != nil {
		log.Warn("network sweep", "err", err)
	}
	if len(rep.Owners) > 0 {
		log.Info("removed the networks of a killed serve", "owners", rep.Owners, "namespaces", len(rep.Namespaces), "links", len(rep.Links), "tables", len(rep.Tables))
	}
	return h, nil
}

// closeNetwork stops giving the Manager's VMs networks and removes what
// is left of them (none is, once every VM stopped).
func closeNetwork(m *Manager, h *network.Host) error {
	if h == nil {
		return nil
	}
	m.UseNetwork(nil)
	return h.Close()
}

// HasNetwork says whether sandboxes get a network device on this server.
func (s *Sandboxes) HasNetwork() bool { return s.mgr.HasNetwork() }
