package drivers

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/firesandbox/firesandbox/internal/vmm"
	"github.com/firesandbox/firesandbox/internal/vmm/firecracker"
	"github.com/firesandbox/firesandbox/internal/vmm/qemu"
)

// fakeDriver is a vmm.Driver that boots nothing: the Chooser only builds
// drivers and asks them their name, version and capabilities.
type fakeDriver struct {
	vmm.Driver
	name, accel string
}

func (f *fakeDriver) Name() string    { return f.name }
func (f *fakeDriver) Version() string { return "1.0" }
func (f *fakeDriver) Capabilities() vmm.Capabilities {
	return vmm.Capabilities{Accel: f.accel}
}

// world counts what the Chooser does to the host.
type world struct {
	qemuBuilt, fcBuilt atomic.Int32
	kvmOpens           error
	fcUsable           bool
	failQEMU           atomic.Int32 // builds to fail before one succeeds
}

func newChooser(t *testing.T, w *world, cfg Config, opts ...Option) *Chooser {
	t.Helper()
	t.Setenv(AccelEnv, "")
	os.Unsetenv(AccelEnv)
	c, err := New(cfg, opts...)
	if err != nil {
		t.Fatal(err)
	}
	c.h = hooks{
		kvmOpen:  func() error { return w.kvmOpens },
		kvmGroup: func() bool { return true },
		newQEMU: func(qc qemu.Config, _ *slog.Logger) (vmm.Driver, error) {
			if w.failQEMU.Load() > 0 {
				w.failQEMU.Add(-1)
				return nil, errors.New("qemu-system-x86_64: not found")
			}
			w.qemuBuilt.Add(1)
			return &fakeDriver{name: "qemu", accel: qc.Accel}, nil
		},
		newFirecracker: func(firecracker.Config, *slog.Logger) (vmm.Driver, error) {
			w.fcBuilt.Add(1)
			return &fakeDriver{name: "firecracker", accel: vmm.AccelKVM}, nil
		},
		diagnoseFC: func(context.Context, firecracker.Config) vmm.Diagnosis {
			if w.fcUsable {
				return vmm.Diagnosis{Driver: "firecracker", Usable: true}
			}
			return vmm.Diagnosis{Driver: "firecracker", Problems: []string{"firecracker binary not found"}}
		},
		hostKernel: func() string { return "6.1.0-test" },
	}
	return c
}

// N first uses at once boot one probe VM, write accel.json once, and all
// get the same driver; a later process reuses the cached answer.
func TestConcurrentFirstUseProbesOnce(t *testing.T) {
	dir := t.TempDir()
	w := &world{}
	c := newChooser(t, w, Default(), WithAccelCache(dir))
	var probes atomic.Int32
	probe := Probe{Key: "kernel-1", Boot: func(ctx context.Context, d vmm.Driver) error {
		probes.Add(1)
		if d.Capabilities().Accel != vmm.AccelKVM {
			t.Errorf("probe booted with accel %q", d.Capabilities().Accel)
		}
		time.Sleep(50 * time.Millisecond)
		return errors.New("agent did not answer\nconsole: ...")
	}}
	const n = 20
	got := make([]vmm.Driver, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := c.Driver(context.Background(), probe)
			if err != nil {
				t.Errorf("Driver: %v", err)
			}
			got[i] = d
		}()
	}
	wg.Wait()
	if probes.Load() != 1 {
		t.Fatalf("%d probe VMs for %d concurrent first uses, want 1", probes.Load(), n)
	}
	for _, d := range got {
		if d != got[0] || d.Capabilities().Accel != vmm.AccelTCG {
			t.Fatalf("drivers differ or not TCG after a failed probe: %v", got)
		}
	}
	choice, err := ReadAccelChoice(dir)
	if err != nil || choice.Accel != vmm.AccelTCG || !strings.Contains(choice.Reason, "agent did not answer") || strings.Contains(choice.Reason, "console") {
		t.Fatalf("cached choice %+v, %v", choice, err)
	}
	if !strings.Contains(choice.Key, "6.1.0-test") || !strings.Contains(choice.Key, "kernel-1") {
		t.Fatalf("cache key %q lacks the host kernel or the probe's key", choice.Key)
	}

	c2 := newChooser(t, w, Default(), WithAccelCache(dir))
	if _, err := c2.Driver(context.Background(), probe); err != nil {
		t.Fatal(err)
	}
	if probes.Load() != 1 {
		t.Fatal("a second process probed again despite the cached answer")
	}
	// Another guest kernel is another question.
	c3 := newChooser(t, w, Default(), WithAccelCache(dir))
	probe.Key = "kernel-2"
	c3.Driver(context.Background(), probe)
	if probes.Load() != 2 {
		t.Fatal("a new guest kernel reused the old kernel's answer")
	}
}

// The first caller giving up does not fail the decision for the others.
func TestFirstCallerCancelled(t *testing.T) {
	w := &world{}
	c := newChooser(t, w, Default())
	release := make(chan struct{})
	var probes atomic.Int32
	probe := Probe{Key: "k", Boot: func(ctx context.Context, d vmm.Driver) error {
		probes.Add(1)
		<-release
		return nil
	}}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { _, err := c.Driver(ctx, probe); errc <- err }()
	time.Sleep(20 * time.Millisecond)
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled caller: %v", err)
	}
	go func() { time.Sleep(20 * time.Millisecond); close(release) }()
	d, err := c.Driver(context.Background(), probe)
	if err != nil || d.Capabilities().Accel != vmm.AccelKVM {
		t.Fatalf("second caller: %v, %v; want the KVM driver the probe proved", d, err)
	}
	if probes.Load() != 1 {
		t.Fatalf("%d probes", probes.Load())
	}
}

func TestChoice(t *testing.T) {
	for _, tc := range []struct {
		name     string
		cfg      Config
		w        *world
		env      string
		want     string // driver name and accel, or an error substring
		wantProb int32
	}{
		{name: "auto picks firecracker where usable", cfg: Default(), w: &world{fcUsable: true}, want: "firecracker/kvm"},
		{name: "auto falls back to qemu", cfg: Default(), w: &world{}, want: "qemu/kvm", wantProb: 1},
		{name: "firecracker configured but unusable", cfg: Config{Driver: Firecracker}, w: &world{}, want: "binary not found"},
		{name: "qemu with tcg configured never probes", cfg: Config{Driver: QEMU, Accel: vmm.AccelTCG}, w: &world{fcUsable: true}, want: "qemu/tcg"},
		{name: "no kvm means tcg without a probe", cfg: Config{Driver: QEMU}, w: &world{kvmOpens: errors.New("no /dev/kvm")}, want: "qemu/tcg"},
		{name: "environment wins", cfg: Config{Driver: QEMU, Accel: vmm.AccelKVM}, w: &world{}, env: "tcg", want: "qemu/tcg"},
		{name: "bad environment", cfg: Config{Driver: QEMU}, w: &world{}, env: "hvf", want: "want kvm or tcg"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newChooser(t, tc.w, tc.cfg)
			if tc.env != "" {
				t.Setenv(AccelEnv, tc.env)
			}
			var probes atomic.Int32
			d, err := c.Driver(context.Background(), Probe{Key: "k", Boot: func(context.Context, vmm.Driver) error { probes.Add(1); return nil }})
			got := ""
			if err != nil {
				got = err.Error()
			} else {
				got = d.Name() + "/" + d.Capabilities().Accel
			}
			if !strings.Contains(got, tc.want) {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
			if probes.Load() != tc.wantProb {
				t.Fatalf("%d probes, want %d", probes.Load(), tc.wantProb)
			}
		})
	}
}

func TestFailedDecisionIsRetried(t *testing.T) {
	w := &world{}
	w.failQEMU.Store(1)
	c := newChooser(t, w, Config{Driver: QEMU, Accel: vmm.AccelTCG})
	if _, err := c.Driver(context.Background(), Probe{}); err == nil {
		t.Fatal("first Driver succeeded although building QEMU failed")
	}
	d, err := c.Driver(context.Background(), Probe{})
	if err != nil || d.Name() != "qemu" {
		t.Fatalf("retry: %v, %v", d, err)
	}
}

func TestDiagnoseWarnsAboutTCG(t *testing.T) {
	w := &world{kvmOpens: errors.New("kvm: not usable: /dev/kvm: no such file")}
	c := newChooser(t, w, Default())
	dg := c.Diagnose(context.Background())
	if dg.Chosen != QEMU || dg.Accel != vmm.AccelTCG || len(dg.Drivers) != 2 {
		t.Fatalf("diagnosis %+v", dg)
	}
	if !strings.Contains(strings.Join(dg.Warnings, "\n"), "weaker boundary than KVM") {
		t.Fatalf("no TCG warning: %q", dg.Warnings)
	}
	w.fcUsable = true
	if dg := c.Diagnose(context.Background()); dg.Chosen != Firecracker || !dg.Usable() {
		t.Fatalf("with a usable firecracker: %+v", dg)
	}
}

func TestConfigValidate(t *testing.T) {
	bad := Config{Driver: "xen", Accel: "hvf", QEMU: qemu.Config{TBSizeMiB: -1}, Firecracker: firecracker.Config{ChrootBase: "relative"}}
	err := bad.Validate()
	for _, want := range []string{"driver \"xen\"", "accel \"hvf\"", "tb size", "chroot base"} {
		if !errors.Is(err, vmm.ErrInvalidConfig) || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate = %v; want every problem, including %q", err, want)
		}
	}
	if err := Default().Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if _, err := New(bad); !errors.Is(err, vmm.ErrInvalidConfig) {
		t.Fatalf("New with a bad config: %v", err)
	}
}

// Every key a config file may hold decodes into Config, and an unknown one
// is reported (the config loader turns that into an error).
func TestTOMLKeys(t *testing.T) {
	const file = `
driver = "qemu"
accel = "tcg"
[qemu]
binary = "/usr/bin/qemu-system-x86_64"
bios = "/usr/share/qemu/qboot.rom"
tb_size_mib = 128
memory_dir = "/dev/shm/fs"
tsc_khz = 2500000
stop_grace = "3s"
unconfined = false
uid_base = 1900001000
uid_count = 1000
gid = 1900000000
[firecracker]
binary = "/usr/local/bin/firecracker"
jailer_binary = "/usr/local/bin/jailer"
extra_args = ["--level", "Debug"]
boot_args = ["console=ttyS0"]
vsock_port = 1024
no_jailer = false
uid = 123
gid = 100
chroot_base = "/srv/jailer"
cgroup_version = "2"
parent_cgroup = "firesandbox"
netns = "/var/run/netns/fs"
host_pid_ns = false
[firecracker.cgroups]
"memory.max" = "1100M"
"cpu.max" = "200000 100000"
`
	cfg := Default()
	md, err := toml.Decode(file, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	if u := md.Undecoded(); len(u) > 0 {
		t.Fatalf("keys that do not map onto Config: %v", u)
	}
	if cfg.QEMU.StopGrace != 3*time.Second || cfg.Firecracker.Cgroups["memory.max"] != "1100M" || cfg.QEMU.UIDCount != 1000 || cfg.Firecracker.NetNS != "/var/run/netns/fs" {
		t.Fatalf("decoded %+v", cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("the sample config: %v", err)
	}
	md, err = toml.Decode("[qemu]\nconfine = true\n", &cfg)
	if err != nil || len(md.Undecoded()) != 1 || md.Undecoded()[0].String() != "qemu.confine" {
		t.Fatalf("an unknown key: %v, undecoded %v", err, md.Undecoded())
	}
	// accel lives at the top: qemu.accel is not a key.
	md, _ = toml.Decode("[qemu]\naccel = \"kvm\"\n", &cfg)
	if len(md.Undecoded()) != 1 {
		t.Fatalf("qemu.accel decoded: %v", md.Undecoded())
	}
}
