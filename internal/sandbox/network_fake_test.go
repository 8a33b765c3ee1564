package sandbox

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/network"
	"github.com/firesandbox/firesandbox/internal/network/nettest"
	"github.com/firesandbox/firesandbox/internal/testutil"
	"github.com/firesandbox/firesandbox/internal/vmm"
	"github.com/firesandbox/firesandbox/internal/vmm/vmmfake"
)

// These tests run the sandboxes on the fake VMM driver with real VM
// networks (namespaces, taps, rules) made against a nettest world: the
// fake machines hold their taps as a VMM does. They need root.

const testNetPrefix = "fsn"

// netServiceConfig gives a Service its network on w's uplink, its locks
// in runDir.
func netServiceConfig(w *nettest.World, runDir string) ServiceConfig {
	return ServiceConfig{MaxVMs: 4, Network: &NetworkConfig{Mode: NetworkOn, Config: network.Config{
		RunDir: runDir, Prefix: testNetPrefix, UplinkNetns: w.Uplink(), DNSUpstreams: []string{w.DNS()},
	}}}
}

func fakeNetSandboxes(t *testing.T, w *nettest.World) (*Service, *vmmfake.Driver) {
	t.Helper()
	d := vmmfake.New()
	m, err := New(Config{DataDir: testutil.FakeDataDir(t, "python"), RunDir: t.TempDir()}, WithDriver(d))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := OpenService(m, netServiceConfig(w, t.TempDir()), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		svc.Close(context.Background())
		if live := d.Live(); len(live) != 0 {
			t.Errorf("%d machines still running after the test", len(live))
		}
	})
	return svc, d
}

// netLeftovers lists what VM networks of owner exist: namespaces, links
// in the uplink and uplink tables.
func netLeftovers(t *testing.T, w *nettest.World, owner string) []string {
	t.Helper()
	var out []string
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), testNetPrefix+"-"+owner+"-") {
			out = append(out, "namespace "+e.Name())
		}
	}
	up, err := os.Open(w.Uplink())
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	nl, err := netlink.NewHandleAt(netns.NsHandle(up.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	links, _ := nl.LinkList()
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, testNetPrefix+owner) {
			out = append(out, "link "+l.Attrs().Name)
		}
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(up.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	tables, _ := c.ListTables()
	for _, tb := range tables {
		if tb.Name == testNetPrefix+"_"+owner {
			out = append(out, "table "+tb.Name)
		}
	}
	return out
}

func liveVMOf(t *testing.T, s *Sandboxes, id string) *VM {
	t.Helper()
	b, err := s.boxFor(id)
	if err != nil {
		t.Fatal(err)
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.vm == nil {
		t.Fatalf("sandbox %s has no live VM", id)
	}
	return b.vm
}

func fakeMachine(t *testing.T, d *vmmfake.Driver, vm *VM) *vmmfake.Machine {
	t.Helper()
	for _, m := range d.Live() {
		if m.ID() == vm.Machine.ID() {
			return m
		}
	}
	t.Fatalf("no live fake machine %s", vm.Machine.ID())
	return nil
}

// A sandbox always has a device (in its own namespace, the guest told its
// address), nothing gets out until a policy says so, a policy change
// reaches the running VM, a hibernation drops the namespace and a resume
// makes a new one with the stored policy, and a delete leaves nothing.
func TestSandboxNetworkLifecycle(t *testing.T) {
	w := nettest.New(t)
	svc, d := fakeNetSandboxes(t, w)
	s := svc.Sandboxes
	ctx := context.Background()
	owner := svc.Network.Owner()

	sb, err := s.Create(ctx, CreateRequest{Tenant: "a", Language: "python"})
	if err != nil {
		t.Fatal(err)
	}
	vm := liveVMOf(t, s, sb.ID)
	if vm.net == nil || vm.Template.Spec.Network == "" {
		t.Fatalf("a sandbox on a server with a network has no device (spec %+v)", vm.Template.Spec)
	}
	// Restored from the template's snapshot, whose guest was told its
	// address at boot: the restore has it, as a real guest's memory has.
	fm := fakeMachine(t, d, vm)
	g := vm.net.v.Guest()
	if !strings.Contains(vm.Template.Spec.Network, g.Addr.String()) || !strings.Contains(vm.Template.Spec.Network, g.MAC) {
		t.Fatalf("the template's Spec does not record the guest link: %q", vm.Template.Spec.Network)
	}
	if nc := fm.NetConfig(); nc == nil || nc.MAC != g.MAC || nc.Addr != g.Addr.String() || nc.Gateway != g.Gateway.String() || !slices.Equal(nc.DNS, []string{g.DNS().String()}) {
		t.Fatalf("guest network configuration %+v, want %+v", nc, g)
	}
	if p := vm.net.v.Policy(); p.Enabled() {
		t.Fatalf("a sandbox without a policy lets %v out", p.AllowOut)
	}
	if got := netLeftovers(t, w, owner); len(got) != 3 { // its namespace and link, the host's table
		t.Fatalf("one sandbox's network: %v", got)
	}

	// A change reaches the running VM, canonical (lower case, sorted).
	sb, err = s.SetNetwork(ctx, "a", sb.ID, network.Policy{AllowOut: []string{"Allowed.TEST", nettest.OtherIP}, DenyOut: []string{"denied.test"}})
	if err != nil {
		t.Fatal(err)
	}
	want := network.Policy{AllowOut: []string{nettest.OtherIP, "allowed.test"}, DenyOut: []string{"denied.test"}}
	if got := vm.net.v.Policy(); !slices.Equal(got.AllowOut, want.AllowOut) || !slices.Equal(got.DenyOut, want.DenyOut) {
		t.Fatalf("live policy %+v, want %+v", got, want)
	}
	if p, _ := PolicyOf(sb); !slices.Equal(p.AllowOut, want.AllowOut) {
		t.Fatalf("stored policy %+v", p)
	}

	// Refusals: a bad entry, another tenant.
	if _, err := s.SetNetwork(ctx, "a", sb.ID, network.Policy{AllowOut: []string{"no spaces allowed"}}); !errors.Is(err, network.ErrInvalidPolicy) {
		t.Fatalf("bad entry: %v", err)
	}
	if _, err := s.SetNetwork(ctx, "b", sb.ID, network.Policy{AllowOut: []string{"allowed.test"}}); !errors.Is(err, ErrNoSandbox) {
		t.Fatalf("another tenant's change: %v", err)
	}
	if p := vm.net.v.Policy(); !slices.Equal(p.AllowOut, want.AllowOut) {
		t.Fatalf("a refused change changed the policy: %+v", p)
	}

	// Hibernation: the VM and its network go; the resume brings both back,
	// with the stored policy, in a new namespace.
	if _, err := s.Hibernate(ctx, "a", sb.ID); err != nil {
		t.Fatal(err)
	}
	if got := netLeftovers(t, w, owner); len(got) != 1 { // the host's table only
		t.Fatalf("a hibernated sandbox keeps %v", got)
	}
	// Changed while hibernated: applied at the resume.
	want = network.Policy{AllowOut: []string{"*.allowed.test"}}
	if _, err := s.SetNetwork(ctx, "a", sb.ID, want); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Resume(ctx, "a", sb.ID, 0); err != nil {
		t.Fatal(err)
	}
	rvm := liveVMOf(t, s, sb.ID)
	if rvm.net == nil || rvm == vm {
		t.Fatal("resumed without a network")
	}
	if got := rvm.net.v.Policy(); !slices.Equal(got.AllowOut, want.AllowOut) {
		t.Fatalf("resumed with policy %+v, want %+v", got, want)
	}
	if nc := fakeMachine(t, d, rvm).NetConfig(); nc == nil || nc.Addr != g.Addr.String() {
		t.Fatalf("the resumed guest lacks its address: %+v", nc)
	}

	// A port dial goes out of the guest's namespace to the guest's
	// address (the fake guest has no network stack: nobody answers ARP
	// there) and only for its tenant.
	if _, err := s.PortDialer("b", sb.ID).DialGuest(ctx, 8000); !errors.Is(err, ErrNoSandbox) {
		t.Fatalf("another tenant's port: %v", err)
	}
	if _, err := s.PortDialer("a", sb.ID).DialGuest(ctx, 8000); !errors.Is(err, syscall.EHOSTUNREACH) {
		t.Fatalf("dial into a fake guest: %v, want no route to host", err)
	}

	if err := s.Delete(ctx, "a", sb.ID); err != nil {
		t.Fatal(err)
	}
	if got := netLeftovers(t, w, owner); len(got) != 1 {
		t.Fatalf("a deleted sandbox left %v", got)
	}
	svc.Close(ctx)
	if got := netLeftovers(t, w, owner); len(got) != 0 {
		t.Fatalf("a closed Service left %v", got)
	}
}

// Without a network on the server: sandboxes have no device, and asking
// for network is refused rather than ignored.
func TestSandboxNetworkUnavailable(t *testing.T) {
	svc, _ := fakeSandboxes(t)
	s := svc.Sandboxes
	ctx := context.Background()
	if _, err := s.Create(ctx, CreateRequest{Tenant: "a", Language: "python", Network: &network.Policy{AllowOut: []string{"pypi.org"}}}); !errors.Is(err, ErrNoNetwork) {
		t.Fatalf("create with a policy: %v, want ErrNoNetwork", err)
	}
	sb, err := s.Create(ctx, CreateRequest{Tenant: "a", Language: "python"})
	if err != nil {
		t.Fatal(err)
	}
	if vm := liveVMOf(t, s, sb.ID); vm.net != nil || vm.Template.Spec.Network != "" {
		t.Fatal("a sandbox got a network device on a server without network")
	}
	if _, err := s.SetNetwork(ctx, "a", sb.ID, network.Policy{AllowOut: []string{"pypi.org"}}); !errors.Is(err, ErrNoNetwork) {
		t.Fatalf("set a policy: %v, want ErrNoNetwork", err)
	}
	if _, err := s.SetNetwork(ctx, "a", sb.ID, network.Policy{}); err != nil {
		t.Fatalf("clearing a policy needs no network: %v", err)
	}
	if _, err := s.PortDialer("a", sb.ID).DialGuest(ctx, 80); !errors.Is(err, ErrNoNetwork) {
		t.Fatalf("port of a VM without a device: %v", err)
	}
	if _, err := svc.Manager.Run(ctx, RunRequest{Language: "python", Files: []agentproto.File{{Content: []byte("1")}},
		Network: &network.Policy{AllowOut: []string{"0.0.0.0/0"}}}, Streams{}); !errors.Is(err, ErrNoNetwork) {
		t.Fatalf("run with network: %v, want ErrNoNetwork", err)
	}
}

// One-shot runs: no device by default (the template and snapshot they
// always had), a device of their own template and snapshot when the run
// asks for network, and the network gone with the run's VM.
func TestRunNetworkTemplates(t *testing.T) {
	w := nettest.New(t)
	svc, d := fakeNetSandboxes(t, w)
	m := svc.Manager
	ctx := context.Background()
	var specs []bool
	d.RestoreHook = func(_ context.Context, dir string, cfg vmm.Config) error {
		specs = append(specs, cfg.Net != nil)
		return nil
	}
	run := func(p *network.Policy) {
		t.Helper()
		if _, err := m.Run(ctx, RunRequest{Language: "python", Files: []agentproto.File{{Content: []byte("1")}}, Network: p}, Streams{}); err != nil {
			t.Fatal(err)
		}
	}
	run(nil)
	run(&network.Policy{}) // lets nothing out: no device either
	run(&network.Policy{AllowOut: []string{"allowed.test"}})
	if !slices.Equal(specs, []bool{false, false, true}) {
		t.Fatalf("restores with a device: %v, want only the run that asked for network", specs)
	}
	keys := map[string]bool{}
	for _, e := range mustList(t, m) {
		keys[e] = true
	}
	if len(keys) != 2 {
		t.Fatalf("snapshots %v: want the default one and the one with a device", keys)
	}
	if got := netLeftovers(t, w, svc.Network.Owner()); len(got) != 1 { // the host's table
		t.Fatalf("a finished run left %v", got)
	}
	if _, err := m.Run(ctx, RunRequest{Language: "python", Files: []agentproto.File{{Content: []byte("1")}},
		Network: &network.Policy{AllowOut: []string{"bad entry"}}}, Streams{}); !errors.Is(err, network.ErrInvalidPolicy) {
		t.Fatalf("a run with a bad policy: %v", err)
	}
}

func mustList(t *testing.T, m *Manager) []string {
	t.Helper()
	list, err := m.Snapshots().List()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range list {
		out = append(out, s.Key)
	}
	return out
}

// helperEnv makes this test binary a serve with one sandbox that waits
// to be killed (TestNetworkSweptAfterKill).
const netHelperEnv = "FS_SANDBOX_NET_HELPER"

func TestNetworkHelperServe(t *testing.T) {
	spec := os.Getenv(netHelperEnv)
	if spec == "" {
		t.Skip("helper process only")
	}
	parts := strings.Split(spec, "|")
	d := vmmfake.New()
	m, err := New(Config{DataDir: testutil.FakeDataDir(t, "python"), RunDir: t.TempDir()}, WithDriver(d))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := OpenService(m, ServiceConfig{MaxVMs: 4, Network: &NetworkConfig{Mode: NetworkOn, Config: network.Config{
		RunDir: parts[2], Prefix: testNetPrefix, UplinkNetns: parts[0], DNSUpstreams: []string{parts[1]},
	}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Sandboxes.Create(context.Background(), CreateRequest{Tenant: "a", Language: "python",
		Network: &network.Policy{AllowOut: []string{"allowed.test"}}}); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("owner %s\n", svc.Network.Owner())
	select {} // until killed
}

// A serve killed with SIGKILL leaves its sandboxes' namespaces, links and
// rules; the next one's Service sweeps them at start, and only them.
func TestNetworkSweptAfterKill(t *testing.T) {
	w := nettest.New(t)
	runDir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestNetworkHelperServe$", "-test.v")
	// The helper's temp dirs go under ours: it cannot clean up after a
	// SIGKILL.
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s|%s|%s", netHelperEnv, w.Uplink(), w.DNS(), runDir), "TMPDIR="+t.TempDir())
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var owner string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if o, ok := strings.CutPrefix(sc.Text(), "owner "); ok {
			owner = o
			break
		}
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if owner == "" {
		t.Fatal("the helper serve did not come up")
	}
	if got := netLeftovers(t, w, owner); len(got) != 3 { // namespace, link, table
		t.Fatalf("the killed serve left %v, want its sandbox's namespace and link and its table", got)
	}
	d := vmmfake.New()
	m, err := New(Config{DataDir: testutil.FakeDataDir(t, "python"), RunDir: t.TempDir()}, WithDriver(d))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := OpenService(m, netServiceConfig(w, runDir), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close(context.Background())
	if got := netLeftovers(t, w, owner); len(got) != 0 {
		t.Fatalf("after the next serve started: %v", got)
	}
	if got := netLeftovers(t, w, svc.Network.Owner()); len(got) != 1 { // its own table
		t.Fatalf("the new serve has %v", got)
	}
}

// A fork's children are clones of their parent, device included: each in
// a namespace of its own, with the parent's policy, and a network of
// their own to change.
func TestForkKeepsTheNetwork(t *testing.T) {
	w := nettest.New(t)
	svc, _ := fakeNetSandboxes(t, w)
	s := svc.Sandboxes
	ctx := context.Background()
	p := network.Policy{AllowOut: []string{"allowed.test"}}
	parent, err := s.Create(ctx, CreateRequest{Tenant: "a", Language: "python", Network: &p})
	if err != nil {
		t.Fatal(err)
	}
	kids, err := s.Fork(ctx, "a", parent.ID, ForkRequest{Count: 2})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{liveVMOf(t, s, parent.ID).net.v.NetnsPath(): true}
	for _, k := range kids {
		vm := liveVMOf(t, s, k.ID)
		if vm.net == nil {
			t.Fatalf("child %s has no network device", k.ID)
		}
		if got := vm.net.v.Policy(); !slices.Equal(got.AllowOut, p.AllowOut) {
			t.Fatalf("child %s has policy %+v, want the parent's", k.ID, got)
		}
		if ns := vm.net.v.NetnsPath(); seen[ns] {
			t.Fatalf("two sandboxes share namespace %s", ns)
		} else {
			seen[ns] = true
		}
	}
	if _, err := s.SetNetwork(ctx, "a", kids[0].ID, network.Policy{}); err != nil {
		t.Fatal(err)
	}
	if got := liveVMOf(t, s, parent.ID).net.v.Policy(); !slices.Equal(got.AllowOut, p.AllowOut) {
		t.Fatalf("a child's change reached the parent: %+v", got)
	}
	if got := liveVMOf(t, s, kids[1].ID).net.v.Policy(); !slices.Equal(got.AllowOut, p.AllowOut) {
		t.Fatalf("a child's change reached its sibling: %+v", got)
	}
	for _, id := range []string{parent.ID, kids[0].ID, kids[1].ID} {
		if err := s.Delete(ctx, "a", id); err != nil {
			t.Fatal(err)
		}
	}
	if got := netLeftovers(t, w, svc.Network.Owner()); len(got) != 1 { // the host's table
		t.Fatalf("left after the deletes: %v", got)
	}
}

// A host that cannot give VMs a working network (here: no DNS upstream)
// gets none in auto mode, touched in nothing, and refuses to start in on
// mode, saying why.
func TestNetworkModes(t *testing.T) {
	w := nettest.New(t)
	open := func(mode string) (*Service, error) {
		d := vmmfake.New()
		m, err := New(Config{DataDir: testutil.FakeDataDir(t, "python"), RunDir: t.TempDir()}, WithDriver(d))
		if err != nil {
			t.Fatal(err)
		}
		return OpenService(m, ServiceConfig{MaxVMs: 2, Network: &NetworkConfig{Mode: mode, Config: network.Config{
			RunDir: t.TempDir(), Prefix: testNetPrefix, UplinkNetns: w.Uplink(), DNSUpstreams: []string{}}}}, nil)
	}
	svc, err := open(NetworkAuto)
	if err != nil {
		t.Fatal(err)
	}
	if svc.Network != nil || svc.Manager.HasNetwork() {
		t.Fatal("auto mode made a network on a host that cannot have one")
	}
	svc.Close(context.Background())
	if _, err := open(NetworkOn); !errors.Is(err, network.ErrUnavailable) || !strings.Contains(err.Error(), "DNS upstream") {
		t.Fatalf("on mode without DNS: %v, want ErrUnavailable naming the problem", err)
	}
	svc, err = open(NetworkOff)
	if err != nil || svc.Network != nil {
		t.Fatalf("off: %v, network %v", err, svc.Network)
	}
	svc.Close(context.Background())
}
