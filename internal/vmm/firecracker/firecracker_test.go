package firecracker

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/vmm"
	"github.com/firesandbox/firesandbox/internal/vmm/firecracker/fctest"
	"github.com/firesandbox/firesandbox/internal/vmm/vmmproc"
	"github.com/firesandbox/firesandbox/internal/vmm/vmmtest"
)

// daemonEnv makes the test binary act as a daemon that boots one VM and
// waits to be killed (see TestSweepAfterDaemonKilled).
const daemonEnv = "FCTEST_DAEMON"

// TestMain lets this test binary stand in for firecracker and jailer: the
// driver starts it (with MainEnv set) and it runs the strict fake, so the
// driver's real process handling is exercised.
func TestMain(m *testing.M) {
	if spec := os.Getenv(daemonEnv); spec != "" {
		os.Exit(daemonMain(spec))
	}
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

// testIDs are the ids a jailed fake runs as: an unprivileged uid when the
// tests run as root (the fake jailer then really drops to it), else ours.
func testIDs() (uid, gid int) {
	if os.Geteuid() == 0 {
		return 1_900_000_123, 1_900_000_124
	}
	return os.Getuid(), os.Getgid()
}

// fakeConfig fills in what a test driver needs: this binary as both
// firecracker and jailer, a short chroot base of its own, and test ids.
// Without root the fake cannot make network namespaces, so it stays in
// the host's.
func fakeConfig(t *testing.T, cfg Config) Config {
	t.Helper()
	cfg.Binary = self(t)
	if !cfg.NoJailer {
		cfg.JailerBinary = self(t)
		if cfg.ChrootBase == "" {
			base, err := os.MkdirTemp("", "fcj") // short: socket paths live under it
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(base) })
			cfg.ChrootBase = base
		}
		if cfg.UID == 0 {
			cfg.UID, cfg.GID = testIDs()
		}
		if os.Geteuid() != 0 && cfg.NetNS == "" {
			cfg.NetNS = NetNSHost
		}
	}
	return cfg
}

func fakeDriver(t *testing.T, cfg Config, opts ...Option) *Driver {
	t.Helper()
	d, err := New(fakeConfig(t, cfg), append([]Option{WithStopGrace(2 * time.Second)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return d
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
		deadline := time.Now().Add(5 * time.Second)
		for syscall.Kill(pid, 0) == nil && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond) // a process not our child is reaped by init
		}
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("process %d still exists after Stop (kill 0: %v)", pid, err)
		}
	}
	if runDir != "" {
		if _, err := os.Stat(runDir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("run dir %s still exists after Stop (%v)", runDir, err)
		}
	}
}

func TestVersionAndCapabilities(t *testing.T) {
	d := fakeDriver(t, Config{})
	if v := d.Version(); v != fctest.DefaultVersion {
		t.Fatalf("Version = %q; want %q", v, fctest.DefaultVersion)
	}
	if _, err := New(Config{Binary: "/nonexistent/firecracker"}); !errors.Is(err, vmm.ErrUnavailable) {
		t.Fatalf("New with a missing binary: %v, want ErrUnavailable", err)
	}
	c := d.Capabilities()
	if d.Name() != "firecracker" || !c.Snapshot || !c.MemorySharing || !c.Vsock || c.Accel != vmm.AccelKVM || !strings.HasPrefix(c.Confinement, "jailer:") {
		t.Fatalf("Name/Capabilities = %q, %+v", d.Name(), c)
	}
	if c := fakeDriver(t, Config{NoJailer: true}).Capabilities(); strings.HasPrefix(c.Confinement, "jailer:") {
		t.Fatalf("an unjailed driver claims %q", c.Confinement)
	}
}

// TestLifecycle boots, talks to the agent, pauses, snapshots, restores
// twice from the snapshot (while the original still exists: no socket or
// disk clashes) and stops everything, with and without the jailer.
func TestLifecycle(t *testing.T) {
	for _, jailed := range []bool{true, false} {
		t.Run(map[bool]string{true: "jailed", false: "no-jailer"}[jailed], func(t *testing.T) {
			lifecycle(t, fakeDriver(t, Config{NoJailer: !jailed}))
		})
	}
}

func lifecycle(t *testing.T, d *Driver) {
	ctx := ctxT(t)
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
	// Relative paths: each restore resolves them in its own root.
	if want := []string{"drives/image", "drives/scratch"}; !slices.Equal(drives, want) || uds != "v.sock" {
		t.Fatalf("snapshot recorded drives %q and vsock %q; want %q and v.sock", drives, uds, want)
	}
	for _, f := range []string{vmm.SnapshotStateFile, vmm.SnapshotMemoryFile} {
		fi, err := os.Stat(filepath.Join(snap, f))
		if err != nil {
			t.Fatal(err)
		}
		if d.cfg.jailed() {
			st := fi.Sys().(*syscall.Stat_t)
			if int(st.Uid) != os.Geteuid() || int(st.Gid) != d.cfg.GID || fi.Mode().Perm() != 0o640 {
				t.Errorf("snapshot %s: owner %d:%d mode %v; want ours, group %d, 0640", f, st.Uid, st.Gid, fi.Mode().Perm(), d.cfg.GID)
			}
		}
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
		placed := filepath.Join(rc.RunDir, "drives", "scratch")
		if d.cfg.jailed() {
			placed = filepath.Join(jailDir(d.cfg, id), "root", "drives", "scratch")
		}
		a, err := os.Stat(placed)
		b, _ := os.Stat(rc.Disks[1].Path)
		if err != nil || !os.SameFile(a, b) {
			t.Fatalf("%s: scratch disk placed at %s (%v) is not %s", id, placed, err, rc.Disks[1].Path)
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
	if d.cfg.jailed() {
		if _, err := os.Stat(jailDir(d.cfg, "vm1")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("jail survived Stop")
		}
	}
	if m.State() != vmm.StateStopped || m.PID() != 0 {
		t.Fatalf("after Stop: state %s, pid %d", m.State(), m.PID())
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

// TestJailerLayout checks, through the record the fake jailer leaves and
// through /proc, that a default driver really confines the VMM: dropped
// ids, its own network and PID namespaces, and the exec file copied into
// a jail whose root the VMM owns.
func TestJailerLayout(t *testing.T) {
	ctx := ctxT(t)
	d := fakeDriver(t, Config{})
	cfg := fixture(t, "jailed", "image", "scratch")
	m, err := d.Boot(ctx, cfg)
	if err != nil {
		t.Fatalf("Boot: %v", err)
	}
	defer m.Stop(ctx)
	jail := jailDir(d.cfg, "jailed")
	b, err := os.ReadFile(filepath.Join(jail, fctest.JailRecordName))
	if err != nil {
		t.Fatal(err)
	}
	var rec fctest.JailRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatal(err)
	}
	if rec.UID != d.cfg.UID || rec.GID != d.cfg.GID || !rec.NewPIDNS {
		t.Errorf("jailer record %+v: want uid %d gid %d and a new PID namespace", rec, d.cfg.UID, d.cfg.GID)
	}
	for _, f := range []string{"vmlinux", "initrd", "drives/image", "drives/scratch", "v.sock", "api.sock", "vmm.log", filepath.Base(d.cfg.Binary)} {
		if _, err := os.Lstat(filepath.Join(jail, "root", f)); err != nil {
			t.Errorf("jail lacks %s: %v", f, err)
		}
	}
	if os.Geteuid() != 0 {
		t.Skip("the rest needs root: the fake jailer drops ids and makes namespaces only as root")
	}
	if !rec.Dropped || rec.NetNS == rec.HostNetNS || rec.NetNS == "" {
		t.Errorf("jailer record %+v: want dropped ids and a network namespace other than the host's", rec)
	}
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", m.PID()))
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("Uid:\t%d\t%d\t%d\t%d", d.cfg.UID, d.cfg.UID, d.cfg.UID, d.cfg.UID); !strings.Contains(string(st), want) {
		t.Errorf("the VMM runs as\n%s\nwant %q", st, want)
	}
	ours, _ := os.Readlink("/proc/self/ns/pid")
	its, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", m.PID()))
	if ours == its {
		t.Errorf("the VMM shares our PID namespace")
	}
	echo(t, ctx, m) // and it works as that user
}

// The driver starts the jailer in a new network namespace unless told
// otherwise; with NetNS "host" it stays in ours, and with a path the jailer
// is asked to join it.
func TestJailerNetNS(t *testing.T) {
	cfg := Config{Binary: "/usr/bin/firecracker", UID: 5, GID: 5, ChrootBase: "/srv/jailer", NetNS: "/var/run/netns/vm"}.withDefaults()
	if args := JailerArgs(cfg, "x", nil); !slices.Contains(args, "--netns") {
		t.Errorf("a netns path is not passed: %q", args)
	}
	cfg.NetNS = NetNSHost
	if args := JailerArgs(cfg, "x", nil); slices.Contains(args, "--netns") {
		t.Errorf("netns host passed as a path: %q", args)
	}
}

func TestBootEarlyExit(t *testing.T) {
	for _, jailed := range []bool{true, false} {
		ctx := ctxT(t)
		d := fakeDriver(t, Config{NoJailer: !jailed, ExtraArgs: []string{fctest.FlagCrash}})
		cfg := fixture(t, "crash", "image")
		_, err := d.Boot(ctx, cfg)
		if !errors.Is(err, vmm.ErrExited) {
			t.Fatalf("Boot of a crashing VMM (jailed %v): %v, want ErrExited", jailed, err)
		}
		if !strings.Contains(err.Error(), "simulated crash (KVM_CREATE_VM: Permission denied)") {
			t.Fatalf("error lacks the VMM's own message: %v", err)
		}
		requireGone(t, 0, cfg.RunDir)
		if jailed {
			if _, err := os.Stat(jailDir(d.cfg, "crash")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a failed Boot left its jail")
			}
		}
	}
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

// A guest that floods its serial console costs a bounded ring: no file
// grows with it, and the console keeps only its tail.
func TestConsoleFloodIsBounded(t *testing.T) {
	ctx := ctxT(t)
	const flood = 16 << 20
	d := fakeDriver(t, Config{ExtraArgs: []string{fctest.FlagFlood + "=" + strconv.Itoa(flood)}})
	cfg := fixture(t, "flood", "image")
	m, err := d.Boot(ctx, cfg)
	if err != nil {
		t.Fatalf("Boot: %v", err)
	}
	defer m.Stop(ctx)
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(m.Console(100), "flood done") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(m.Console(100), "flood done") {
		t.Fatalf("the flood did not finish: console ends %q", m.Console(100))
	}
	if n := len(m.Console(1 << 30)); n > consoleKeep {
		t.Errorf("console keeps %d bytes, more than its bound %d", n, consoleKeep)
	}
	for _, dir := range []string{cfg.RunDir, jailDir(d.cfg, "flood")} {
		filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
			if err == nil && !e.IsDir() {
				if fi, err := e.Info(); err == nil && fi.Mode().IsRegular() && fi.Size() > 1<<20 && !strings.HasSuffix(p, filepath.Base(d.cfg.Binary)) {
					t.Errorf("%s grew to %d bytes with the console flood", p, fi.Size())
				}
			}
			return nil
		})
	}
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

// A snapshot made without the jailer (files owned by root, mode 0600)
// restores under it: the driver gives the files to the jailed VMMs' group.
func TestUnjailedSnapshotRestoresJailed(t *testing.T) {
	ctx := ctxT(t)
	plain := fakeDriver(t, Config{NoJailer: true})
	m, err := plain.Boot(ctx, fixture(t, "plain", "image"))
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
	r, err := fakeDriver(t, Config{}).Restore(ctx, snap, fixture(t, "jailed-restore", "image"))
	if err != nil {
		t.Fatalf("jailed Restore of an unjailed snapshot: %v", err)
	}
	defer r.Stop(ctx)
	echo(t, ctx, r)
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
	if _, err := New(fakeConfig(t, Config{ExtraArgs: []string{"--api-sock=/x"}})); !errors.Is(err, vmm.ErrInvalidConfig) {
		t.Fatalf("New with a driver-owned extra arg: %v, want ErrInvalidConfig", err)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string // substring of the error; "" means valid
	}{
		{"defaults", Config{}, ""},
		{"no jailer", Config{NoJailer: true}, ""},
		{"jailer full", Config{UID: 1000, GID: 1000, ChrootBase: "/srv/j", CgroupVersion: "2",
			Cgroups: map[string]string{"cpu.max": "100000 100000", "memory.max": "1G"}, NetNS: "/var/run/netns/fs"}, ""},
		{"netns host", Config{NetNS: "host"}, ""},
		{"port any", Config{VsockPort: 0xFFFFFFFF}, "VMADDR_PORT_ANY"},
		{"api-sock is ours", Config{ExtraArgs: []string{"--api-sock", "/tmp/x"}}, "--api-sock"},
		{"blank boot arg", Config{BootArgs: []string{"console=ttyS0 quiet"}}, "blanks"},
		{"cgroups without jailer", Config{NoJailer: true, Cgroups: map[string]string{"cpu.max": "max"}}, "need the jailer"},
		{"netns without jailer", Config{NoJailer: true, NetNS: "/var/run/netns/x"}, "need the jailer"},
		{"negative uid", Config{UID: -1, GID: 5}, "uid -1"},
		{"relative chroot", Config{ChrootBase: "srv/jailer"}, "not absolute"},
		{"long chroot", Config{ChrootBase: "/" + strings.Repeat("x", 60)}, "too long"},
		{"cgroup version", Config{CgroupVersion: "3"}, "cgroup version"},
		{"cgroup key", Config{Cgroups: map[string]string{"cpu max": "1"}}, "cgroup setting"},
		{"exec name", Config{Binary: "/usr/bin/fc"}, "contains \"firecracker\""},
		{"relative netns", Config{NetNS: "netns/x"}, "netns"},
		{"parent cgroup escape", Config{ParentCgroup: "../x"}, "parent cgroup"},
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
	// By default the jailer is on, in new namespaces, with unprivileged ids.
	def := Config{}.withDefaults()
	if !def.jailed() || def.HostPIDNS || def.NetNS != "" || def.UID != DefaultUID || def.GID != DefaultGID || def.UID == 0 {
		t.Fatalf("defaults %+v: want the jailer, own namespaces, ids %d:%d", def, DefaultUID, DefaultGID)
	}
}

func TestBootArgsAndDisks(t *testing.T) {
	d := &Driver{cfg: Config{VsockPort: 52}.withDefaults()}
	got := d.bootArgs(vmm.Config{Cmdline: []string{"fs.root=/dev/vda", "fs.channel=virtio-port:x"}})
	want := strings.Join(DefaultBootArgs(), " ") + " fs.root=/dev/vda fs.channel=virtio-port:x fs.channel=vsock:52 " + agentproto.AgentGODEBUG + " fs.modules=vsock,vmw_vsock_virtio_transport_common,vmw_vsock_virtio_transport"
	if got != want {
		t.Fatalf("bootArgs:\n got %s\nwant %s", got, want)
	}
	if strings.Contains(got, "mitigations") {
		t.Fatalf("Firecracker guests run under KVM and keep their mitigations: %s", got)
	}
	d = &Driver{cfg: Config{BootArgs: []string{"console=ttyS0"}}.withDefaults()}
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
	dg := Diagnose(ctxT(t), Config{Binary: "/nonexistent/firecracker", JailerBinary: "/nonexistent/jailer", UID: 1000, GID: 1000})
	if dg.Usable || dg.Driver != "firecracker" {
		t.Fatalf("Diagnose with missing binaries: %+v", dg)
	}
	all := strings.Join(dg.Problems, "\n")
	for _, want := range []string{"firecracker binary", "jailer binary"} {
		if !strings.Contains(all, want) {
			t.Errorf("problems lack %q:\n%s", want, all)
		}
	}
	dg = Diagnose(ctxT(t), Config{Binary: self(t), NoJailer: true})
	if dg.Version != fctest.DefaultVersion {
		t.Errorf("Diagnose version = %q, want %q (problems: %q)", dg.Version, fctest.DefaultVersion, dg.Problems)
	}
	if !strings.Contains(strings.Join(dg.Warnings, "\n"), "without its jailer") {
		t.Errorf("an unjailed configuration is not warned about: %+v", dg)
	}
}

// TestNetworkWithoutJailer: without the jailer the driver starts the VMM
// inside the device's namespace itself, where it opens the tap as root.
func TestNetworkWithoutJailer(t *testing.T) {
	fx := fixture(t, "fx", "root")
	vmmtest.Network(t, func(t *testing.T) vmm.Driver { return fakeDriver(t, Config{NoJailer: true}) }, vmmtest.Fixtures{
		Kernel: fx.Kernel, Initrd: fx.Initrd, Layers: []string{fx.Disks[0].Path}, RootFS: "squashfs", HostGuest: true})
}

// TestConformanceWithFake runs the shared suite against the driver and the
// fake, jailed as by default. The fake's guest is the agent on this host,
// so its files are host files (HostGuest), but every driver path the suite
// takes is real.
func TestConformanceWithFake(t *testing.T) {
	fx := fixture(t, "fx", "root")
	vmmtest.Run(t, func(t *testing.T) vmm.Driver { return fakeDriver(t, Config{}) }, vmmtest.Fixtures{
		Kernel: fx.Kernel, Initrd: fx.Initrd, Layers: []string{fx.Disks[0].Path}, RootFS: "squashfs", HostGuest: true,
	})
}

// TestSweepAfterDaemonKilled is what happens when serve is SIGKILLed: a
// daemon process boots a jailed VM and is killed. Firecracker has no
// parent-death signal, so the VMM lives on; the sweep a new daemon runs
// must kill exactly it and remove its jail and run dir.
func TestSweepAfterDaemonKilled(t *testing.T) {
	cfg := fakeConfig(t, Config{})
	vm := fixture(t, "orphan", "image")
	spec, _ := json.Marshal(daemonSpec{Driver: cfg, VM: vm})
	cmd := exec.Command(self(t))
	cmd.Env = append(os.Environ(), daemonEnv+"="+string(spec))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("daemon: %v", err)
	}
	var vmmPID int
	if _, err := fmt.Sscanf(line, "READY %d", &vmmPID); err != nil {
		t.Fatalf("daemon said %q", line)
	}
	cmd.Process.Kill()
	cmd.Wait()
	time.Sleep(100 * time.Millisecond)
	if syscall.Kill(vmmPID, 0) != nil {
		t.Fatalf("the VMM %d died with its daemon: nothing left to sweep", vmmPID)
	}
	jail := jailDir(cfg.withDefaults(), "orphan")
	killed, err := vmmproc.Sweep(vm.RunDir)
	if err != nil || !killed {
		t.Fatalf("Sweep = %v, %v; want the orphaned VMM killed", killed, err)
	}
	requireGone(t, vmmPID, vm.RunDir)
	if _, err := os.Stat(jail); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the sweep left the jail %s", jail)
	}
}

type daemonSpec struct {
	Driver Config
	VM     vmm.Config
}

func daemonMain(spec string) int {
	var s daemonSpec
	if err := json.Unmarshal([]byte(spec), &s); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	os.Unsetenv(daemonEnv) // the processes it starts are the fake's
	os.Setenv(fctest.MainEnv, "1")
	d, err := New(s.Driver)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	m, err := d.Boot(context.Background(), s.VM)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	fmt.Printf("READY %d\n", m.PID())
	time.Sleep(time.Minute)
	return 0
}

// A layered disk is a block device: the jailed VMM, which has dropped
// root, opens it read-write through its own node in the jail, and a
// restore does the same with the snapshot's relative drive path.
func TestJailedBlockDeviceDisk(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIP: needs root (loop devices, a jailed user)")
	}
	ctx := ctxT(t)
	cfg := fixture(t, "blockdisk", "image", "upper")
	backing := filepath.Join(t.TempDir(), "upper.raw")
	if err := os.WriteFile(backing, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", backing).CombinedOutput()
	if err != nil {
		t.Skipf("SKIP: no loop device: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	defer exec.Command("losetup", "--detach", dev).Run()
	cfg.Disks[1].Path = dev
	d := fakeDriver(t, Config{})
	m, err := d.Boot(ctx, cfg)
	if err != nil {
		t.Fatalf("Boot with a block-device disk: %v", err)
	}
	defer m.Stop(ctx)
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(jailDir(d.cfg, "blockdisk"), "root", "drives", "upper"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFBLK || int(st.Uid) != d.cfg.UID {
		t.Fatalf("the jail's drive: mode %o uid %d, want a block device of uid %d", st.Mode, st.Uid, d.cfg.UID)
	}
	echo(t, ctx, m)
	snap := t.TempDir()
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Snapshot(ctx, snap); err != nil {
		t.Fatal(err)
	}
	m.Stop(ctx)
	requireGone(t, 0, "")
	rcfg := cfg
	rcfg.ID, rcfg.RunDir = "blockdisk2", filepath.Join(t.TempDir(), "run")
	r, err := d.Restore(ctx, snap, rcfg)
	if err != nil {
		t.Fatalf("Restore with a block-device disk: %v", err)
	}
	defer r.Stop(ctx)
	echo(t, ctx, r)
}
