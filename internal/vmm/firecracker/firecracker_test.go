package firecracker

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/vmm"
	"github.com/firesandbox/firesandbox/internal/vmm/firecracker/fctest"
	"github.com/firesandbox/firesandbox/internal/vmm/vmmtest"
)

// TestMain lets this test binary stand in for firecracker and jailer: the
// driver starts it (with MainEnv set) and it runs the strict fake, so the
// driver's real process handling is exercised.
func TestMain(m *testing.M) {
	if os.Getenv(fctest.MainEnv) == "1" {
		if slices.Contains(os.Args[1:], "--exec-file") {
			os.Exit(fctest.JailerMain(os.Args[1:]))
		}
		os.Exit(fctest.Main(os.Args[1:]))
	}
	os.Setenv(fctest.MainEnv, "1") // for the processes the driver starts
	os.Exit(m.Run())
}

func self(t *testing.T) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return exe
}

func fakeDriver(t *testing.T, cfg Config, opts ...Option) *Driver {
	t.Helper()
	cfg.Binary = self(t)
	return New(cfg, append([]Option{WithStopGrace(2 * time.Second)}, opts...)...)
}

// fixture makes a kernel, an initrd and disks (files whose content the
// fake does not care about) and a machine config using them.
func fixture(t *testing.T, id string, disks ...string) vmm.Config {
	t.Helper()
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cfg := vmm.Config{
		ID:        id,
		Kernel:    write("vmlinux", "\x7fELF fake kernel"),
		Initrd:    write("initrd.cpio", "070701 fake initrd"),
		Cmdline:   []string{"fs.root=" + DiskDevice(0)},
		VCPUs:     1,
		MemoryMiB: 128,
		RunDir:    filepath.Join(dir, "run"),
	}
	for i, d := range disks {
		cfg.Disks = append(cfg.Disks, vmm.Disk{ID: d, Path: write(d+".img", "disk "+d), ReadOnly: i == 0})
	}
	return cfg
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// echo runs `echo hi` through the agent behind m's vsock.
func echo(t *testing.T, ctx context.Context, m vmm.Machine) {
	t.Helper()
	conn, err := m.DialAgent(ctx)
	if err != nil {
		t.Fatalf("DialAgent: %v", err)
	}
	c := agentproto.NewClient(conn)
	defer c.Close()
	if _, err := c.WaitHello(ctx); err != nil {
		t.Fatalf("WaitHello: %v", err)
	}
	var out bytes.Buffer
	res, err := c.Exec(ctx, agentproto.ExecRequest{Argv: []string{"echo", "hi"}}, &out, nil)
	if err != nil {
		t.Fatalf("Exec: %v", err)
	}
	if res.Code != 0 || out.String() != "hi\n" {
		t.Fatalf("echo hi: code %d, output %q", res.Code, out.String())
	}
}

func requireGone(t *testing.T, pid int, runDir string) {
	t.Helper()
	if pid > 0 {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("process %d still exists after Stop (kill 0: %v)", pid, err)
		}
	}
	if _, err := os.Stat(runDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("run dir %s still exists after Stop (%v)", runDir, err)
	}
}

func TestVersion(t *testing.T) {
	d := fakeDriver(t, Config{})
	v, err := d.Version(ctxT(t))
	if err != nil || v != fctest.DefaultVersion {
		t.Fatalf("Version = %q, %v; want %q", v, err, fctest.DefaultVersion)
	}
	if _, err := New(Config{Binary: "/nonexistent/firecracker"}).Version(ctxT(t)); !errors.Is(err, vmm.ErrUnavailable) {
		t.Fatalf("Version of a missing binary: %v, want ErrUnavailable", err)
	}
	if d.Name() != "firecracker" || d.Capabilities() != (vmm.Capabilities{Snapshot: true, MemorySharing: true, Vsock: true}) {
		t.Fatalf("Name/Capabilities = %q, %+v", d.Name(), d.Capabilities())
	}
}

// TestLifecycle boots, talks to the agent, pauses, snapshots, restores
// twice from the snapshot (while the original still exists: no socket or
// disk clashes) and stops everything.
func TestLifecycle(t *testing.T) {
	ctx := ctxT(t)
	d := fakeDriver(t, Config{})
	cfg := fixture(t, "vm1", "image", "scratch")
	m, err := d.Boot(ctx, cfg)
	if err != nil {
		t.Fatalf("Boot: %v", err)
	}
	defer m.Stop(ctx)
	if m.State() != vmm.StateRunning || m.PID() == 0 || m.ID() != "vm1" {
		t.Fatalf("after Boot: state %s, pid %d, id %s", m.State(), m.PID(), m.ID())
	}
	echo(t, ctx, m)

	con := m.Console(4096)
	for _, want := range []string{"console=ttyS0 reboot=k panic=1 pci=off", "fs.root=/dev/vda", "fs.channel=vsock:1024", "fs.modules=vsock,vmw_vsock_virtio_transport_common,vmw_vsock_virtio_transport"} {
		if !strings.Contains(con, want) {
			t.Errorf("console lacks %q:\n%s", want, con)
		}
	}

	snap := t.TempDir()
	if err := m.Snapshot(ctx, snap); !errors.Is(err, vmm.ErrInvalidState) {
		t.Fatalf("Snapshot while running: %v, want ErrInvalidState", err)
	}
	if err := m.Resume(ctx); !errors.Is(err, vmm.ErrInvalidState) {
		t.Fatalf("Resume while running: %v, want ErrInvalidState", err)
	}
	if err := m.Pause(ctx); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	if m.State() != vmm.StatePaused {
		t.Fatalf("state after Pause: %s", m.State())
	}
	if _, err := m.DialAgent(ctx); !errors.Is(err, vmm.ErrInvalidState) {
		t.Fatalf("DialAgent while paused: %v, want ErrInvalidState", err)
	}
	if err := m.Snapshot(ctx, snap); err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	if err := m.Snapshot(ctx, snap); err == nil {
		t.Fatal("Snapshot into a non-empty directory succeeded")
	}
	drives, uds, err := fctest.ReadState(filepath.Join(snap, vmm.SnapshotStateFile))
	if err != nil {
		t.Fatal(err)
	}
	// Relative paths: each restore resolves them in its own RunDir.
	if want := []string{"drives/image", "drives/scratch"}; !slices.Equal(drives, want) || uds != "v.sock" {
		t.Fatalf("snapshot recorded drives %q and vsock %q; want %q and v.sock", drives, uds, want)
	}
	if _, err := os.Stat(filepath.Join(snap, vmm.SnapshotMemoryFile)); err != nil {
		t.Fatal(err)
	}

	// Restore two clones, each with its own writable disk.
	var clones []vmm.Machine
	for _, id := range []string{"clone-a", "clone-b"} {
		rc := fixture(t, id, "image", "scratch")
		rm, err := d.Restore(ctx, snap, rc)
		if err != nil {
			t.Fatalf("Restore %s: %v", id, err)
		}
		defer rm.Stop(ctx)
		if rm.State() != vmm.StateRunning {
			t.Fatalf("%s state after Restore: %s", id, rm.State())
		}
		target, err := os.Readlink(filepath.Join(rc.RunDir, "drives", "scratch"))
		if err != nil || target != rc.Disks[1].Path {
			t.Fatalf("%s: scratch disk placed at %q (%v), want a link to %s", id, target, err, rc.Disks[1].Path)
		}
		echo(t, ctx, rm)
		clones = append(clones, rm)
	}

	if err := m.Resume(ctx); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	echo(t, ctx, m) // the snapshot reset the old connection; a new one works

	pid := m.PID()
	if err := m.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	requireGone(t, pid, cfg.RunDir)
	if m.State() != vmm.StateStopped || m.PID() != 0 {
		t.Fatalf("after Stop: state %s, pid %d", m.State(), m.PID())
	}
	if err := m.Stop(ctx); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if err := m.Pause(ctx); !errors.Is(err, vmm.ErrInvalidState) {
		t.Fatalf("Pause after Stop: %v, want ErrInvalidState", err)
	}
	if err := m.Wait(ctx); err != nil {
		t.Fatalf("Wait after Stop: %v", err)
	}
	if !strings.Contains(m.Console(1<<20), "fs.channel=vsock:1024") {
		t.Error("Console after Stop lost the boot log")
	}
	for _, c := range clones {
		pid := c.PID()
		if err := c.Stop(ctx); err != nil {
			t.Fatalf("Stop %s: %v", c.ID(), err)
		}
		requireGone(t, pid, "")
	}
}

func TestBootEarlyExit(t *testing.T) {
	ctx := ctxT(t)
	d := fakeDriver(t, Config{ExtraArgs: []string{fctest.FlagCrash}})
	cfg := fixture(t, "crash", "image")
	_, err := d.Boot(ctx, cfg)
	if !errors.Is(err, vmm.ErrExited) {
		t.Fatalf("Boot of a crashing VMM: %v, want ErrExited", err)
	}
	if !strings.Contains(err.Error(), "simulated crash (KVM_CREATE_VM: Permission denied)") {
		t.Fatalf("error lacks the VMM's own message: %v", err)
	}
	requireGone(t, 0, cfg.RunDir)
}

func TestStopEscalatesToKill(t *testing.T) {
	ctx := ctxT(t)
	d := fakeDriver(t, Config{ExtraArgs: []string{fctest.FlagIgnoreTerm}}, WithStopGrace(300*time.Millisecond))
	cfg := fixture(t, "stubborn")
	m, err := d.Boot(ctx, cfg)
	if err != nil {
		t.Fatalf("Boot: %v", err)
	}
	pid := m.PID()
	// A cancelled request context must not cut Stop short.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	start := time.Now()
	if err := m.Stop(cctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if time.Since(start) < 300*time.Millisecond {
		t.Errorf("Stop took %s: it did not wait the grace period before SIGKILL", time.Since(start))
	}
	requireGone(t, pid, cfg.RunDir)
}

func TestVMMDiesUnderneath(t *testing.T) {
	ctx := ctxT(t)
	d := fakeDriver(t, Config{})
	cfg := fixture(t, "dies", "image")
	m, err := d.Boot(ctx, cfg)
	if err != nil {
		t.Fatalf("Boot: %v", err)
	}
	defer m.Stop(ctx)
	if err := syscall.Kill(m.PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := m.Wait(ctx); !errors.Is(err, vmm.ErrExited) {
		t.Fatalf("Wait after the VMM was killed: %v, want ErrExited", err)
	}
	if m.State() != vmm.StateStopped || m.PID() != 0 {
		t.Fatalf("state %s, pid %d after the VMM died", m.State(), m.PID())
	}
	if err := m.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	requireGone(t, 0, cfg.RunDir)
}

func TestWaitHonoursContext(t *testing.T) {
	ctx := ctxT(t)
	m, err := fakeDriver(t, Config{}).Boot(ctx, fixture(t, "waiter"))
	if err != nil {
		t.Fatalf("Boot: %v", err)
	}
	defer m.Stop(ctx)
	wctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := m.Wait(wctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait on a running VM: %v, want DeadlineExceeded", err)
	}
}

func TestRunDirInUse(t *testing.T) {
	ctx := ctxT(t)
	d := fakeDriver(t, Config{})
	cfg := fixture(t, "first")
	m, err := d.Boot(ctx, cfg)
	if err != nil {
		t.Fatalf("Boot: %v", err)
	}
	defer m.Stop(ctx)
	cfg.ID = "second"
	if _, err := d.Boot(ctx, cfg); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("Boot into a busy run dir: %v", err)
	}
	echo(t, ctx, m) // the failed boot did not disturb the first machine
}

func TestRestoreErrors(t *testing.T) {
	ctx := ctxT(t)
	d := fakeDriver(t, Config{})
	cfg := fixture(t, "orig", "image")
	if _, err := d.Restore(ctx, t.TempDir(), cfg); !errors.Is(err, vmm.ErrIncompatible) {
		t.Fatalf("Restore from an empty dir: %v, want ErrIncompatible", err)
	}
	m, err := d.Boot(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Stop(ctx)
	snap := t.TempDir()
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Snapshot(ctx, snap); err != nil {
		t.Fatal(err)
	}
	// The snapshot has a drive "image"; a restore without it must fail
	// cleanly (Firecracker refuses the load and exits).
	rc := fixture(t, "nodisk")
	_, err = d.Restore(ctx, snap, rc)
	if !errors.Is(err, vmm.ErrIncompatible) || !strings.Contains(err.Error(), "drive image") {
		t.Fatalf("Restore without the snapshot's disk: %v", err)
	}
	requireGone(t, 0, rc.RunDir)
}

func TestBootInvalidConfig(t *testing.T) {
	ctx := ctxT(t)
	cfg := fixture(t, "Bad_ID")
	if _, err := fakeDriver(t, Config{}).Boot(ctx, cfg); !errors.Is(err, vmm.ErrInvalidConfig) {
		t.Fatalf("Boot with a bad id: %v, want ErrInvalidConfig", err)
	}
	if _, err := os.Stat(cfg.RunDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a refused Boot created its run dir")
	}
	cfg = fixture(t, "ok")
	if _, err := fakeDriver(t, Config{ExtraArgs: []string{"--api-sock=/x"}}).Boot(ctx, cfg); !errors.Is(err, vmm.ErrInvalidConfig) {
		t.Fatalf("Boot with a driver-owned extra arg: %v, want ErrInvalidConfig", err)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string // substring of the error; "" means valid
	}{
		{"defaults", Config{}, ""},
		{"jailer defaults", Config{UseJailer: true, UID: 1000, GID: 1000}, ""},
		{"jailer full", Config{UseJailer: true, UID: 1000, GID: 1000, ChrootBase: "/srv/j", CgroupVersion: "2",
			Cgroups: map[string]string{"cpu.max": "100000 100000", "memory.max": "1G"}, NetNS: "/var/run/netns/fs", NewPIDNS: true}, ""},
		{"port any", Config{VsockPort: 0xFFFFFFFF}, "VMADDR_PORT_ANY"},
		{"api-sock is ours", Config{ExtraArgs: []string{"--api-sock", "/tmp/x"}}, "--api-sock"},
		{"blank boot arg", Config{BootArgs: []string{"console=ttyS0 quiet"}}, "blanks"},
		{"cgroups without jailer", Config{Cgroups: map[string]string{"cpu.max": "max"}}, "need use_jailer"},
		{"netns without jailer", Config{NetNS: "/var/run/netns/x"}, "need use_jailer"},
		{"negative uid", Config{UseJailer: true, UID: -1, GID: 0}, "uid -1"},
		{"relative chroot", Config{UseJailer: true, ChrootBase: "srv/jailer"}, "not absolute"},
		{"long chroot", Config{UseJailer: true, ChrootBase: "/" + strings.Repeat("x", 60)}, "too long"},
		{"cgroup version", Config{UseJailer: true, CgroupVersion: "3"}, "cgroup version"},
		{"cgroup key", Config{UseJailer: true, Cgroups: map[string]string{"cpu max": "1"}}, "cgroup setting"},
		{"exec name", Config{UseJailer: true, Binary: "/usr/bin/fc"}, "contains \"firecracker\""},
		{"relative netns", Config{UseJailer: true, NetNS: "netns/x"}, "netns"},
		{"parent cgroup escape", Config{UseJailer: true, ParentCgroup: "../x"}, "parent cgroup"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if !errors.Is(err, vmm.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v; want ErrInvalidConfig mentioning %q", err, tc.want)
			}
		})
	}
}

func TestBootArgsAndDisks(t *testing.T) {
	d := New(Config{VsockPort: 52})
	got := d.bootArgs(vmm.Config{Cmdline: []string{"fs.root=/dev/vda", "fs.channel=virtio-port:x"}})
	want := strings.Join(DefaultBootArgs(), " ") + " fs.root=/dev/vda fs.channel=virtio-port:x fs.channel=vsock:52 fs.modules=vsock,vmw_vsock_virtio_transport_common,vmw_vsock_virtio_transport"
	if got != want {
		t.Fatalf("bootArgs:\n got %s\nwant %s", got, want)
	}
	d = New(Config{BootArgs: []string{"console=ttyS0"}})
	if got := d.bootArgs(vmm.Config{}); !strings.HasPrefix(got, "console=ttyS0 fs.channel=vsock:1024 ") {
		t.Fatalf("bootArgs with BootArgs override: %s", got)
	}
	for i, want := range map[int]string{0: "/dev/vda", 1: "/dev/vdb", 25: "/dev/vdz", 26: "/dev/vdaa", 27: "/dev/vdab"} {
		if got := DiskDevice(i); got != want {
			t.Errorf("DiskDevice(%d) = %s, want %s", i, got, want)
		}
	}
	if got := driveID("scratch-disk-2"); got != "scratch_disk_2" {
		t.Errorf("driveID = %s", got)
	}
}

func TestDiagnoseReportsEverything(t *testing.T) {
	dg := Diagnose(ctxT(t), Config{Binary: "/nonexistent/firecracker", UseJailer: true, JailerBinary: "/nonexistent/jailer", UID: 1000, GID: 1000})
	if dg.Usable || dg.Driver != "firecracker" {
		t.Fatalf("Diagnose with missing binaries: %+v", dg)
	}
	all := strings.Join(dg.Problems, "\n")
	for _, want := range []string{"firecracker binary", "jailer binary"} {
		if !strings.Contains(all, want) {
			t.Errorf("problems lack %q:\n%s", want, all)
		}
	}
	dg = Diagnose(ctxT(t), Config{Binary: self(t)})
	if dg.Version != fctest.DefaultVersion {
		t.Errorf("Diagnose version = %q, want %q (problems: %q)", dg.Version, fctest.DefaultVersion, dg.Problems)
	}
	t.Logf("diagnosis on this host: %+v", dg)
}

// TestConformanceWithFake runs the shared suite against the driver and the
// fake: the guest is the agent on this host, so "guest memory" (a file in
// /tmp) trivially survives the restore, but every driver path the suite
// takes is real.
func TestConformanceWithFake(t *testing.T) {
	fx := fixture(t, "fx", "root")
	base, err := os.MkdirTemp("", "fcc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	for _, m := range []string{"/tmp/marker", "/tmp/marker2"} {
		if _, err := os.Stat(m); err == nil {
			t.Skipf("%s exists; the suite's marker files would clash", m)
		}
		t.Cleanup(func() { os.Remove(m) })
	}
	vmmtest.Run(t, fakeDriver(t, Config{}), vmmtest.Fixtures{
		Kernel: fx.Kernel, Initrd: fx.Initrd, Layers: []string{fx.Disks[0].Path}, RootFS: "squashfs", RunBase: base,
	})
}
