// Package vmmtest is the conformance suite every vmm.Driver passes. Each
// case gets a fresh driver from the factory and its own run directory:
//
//	func TestConformance(t *testing.T) {
//		fx := vmmtest.FixturesFromEnv(t)
//		vmmtest.Run(t, func(t *testing.T) vmm.Driver { return mydriver.New(...) }, fx)
//	}
//
// It proves what vmm/doc.go promises: the lifecycle and its state checks,
// snapshots that restore (twice over), a context that bounds Boot but
// never the machine, Stop in every state, Wait after the VMM died,
// DialAgent while paused, a run directory that is already in use, and a
// network device (which a snapshot records and a restore must bring).
// Against a real VMM it boots few VMs, and waits for the agent in fewer.
package vmmtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/testutil"
	"github.com/firesandbox/firesandbox/internal/vmm"
)

// Factory returns a fresh driver for one case.
type Factory func(t *testing.T) vmm.Driver

// Fixtures are the files a conformance run boots.
type Fixtures struct {
	Kernel, Initrd string
	// Layers are the image's read-only layers, bottom first.
	Layers []string
	RootFS string // squashfs, erofs or ext4
	// HostGuest says the guest is a process on the host (a fake VMM whose
	// agent runs host commands): its files are host files, so the check
	// that state written in the guest lives in guest memory, and travels
	// with a snapshot, cannot mean anything and is skipped.
	HostGuest bool
}

// FixturesFromEnv returns the shared kernel, initramfs and python image
// (see testutil.RequireVMs), skipping or failing the test as that does.
func FixturesFromEnv(t *testing.T) Fixtures {
	fx := testutil.RequireVMs(t)
	layers, err := image.NewStore(fx.DataDir).Layers(fx.Python)
	if err != nil {
		t.Fatalf("VM tests: %v", err)
	}
	var paths []string
	for _, l := range layers {
		paths = append(paths, l.Path())
	}
	return Fixtures{Kernel: fx.Kernel.Vmlinux, Initrd: fx.Kernel.Initramfs, Layers: paths, RootFS: fx.Python.Format}
}

// runBase is a short directory for one case's run directories (unix
// socket paths are limited to 107 bytes, and t.TempDir's are long).
func runBase(t *testing.T) string {
	t.Helper()
	base, err := os.MkdirTemp("/tmp", "vmt-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	return base
}

// Config returns a machine config booting fx with d, its run dir in base.
func Config(d vmm.Driver, fx Fixtures, base, id string) vmm.Config {
	var disks []vmm.Disk
	var refs []string
	for i, p := range fx.Layers {
		did := fmt.Sprintf("layer%d", i)
		disks = append(disks, vmm.Disk{ID: did, Path: p, ReadOnly: true})
		refs = append(refs, vmm.GuestDiskRef(d.Capabilities(), i, did))
	}
	return vmm.Config{
		ID: id, Kernel: fx.Kernel, Initrd: fx.Initrd, VCPUs: 1, MemoryMiB: 256,
		Disks:   disks,
		Cmdline: agentproto.Boot{Root: refs, RootFS: fx.RootFS}.MustArgs(),
		RunDir:  filepath.Join(base, id),
	}
}

const readyTimeout = 90 * time.Second

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// Connect dials m's agent and waits for its Hello.
func Connect(t *testing.T, m vmm.Machine) *agentproto.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	conn, err := m.DialAgent(ctx)
	if err != nil {
		t.Fatalf("dial agent: %v", err)
	}
	c := agentproto.NewClient(conn)
	if _, err := c.WaitHello(ctx); err != nil {
		c.Close()
		t.Fatalf("agent hello: %v\nconsole:\n%s", err, m.Console(2048))
	}
	return c
}

// Sh runs a shell script in the guest and returns its stdout.
func Sh(t *testing.T, c *agentproto.Client, script string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	res, err := c.Exec(ctx, agentproto.ExecRequest{Argv: []string{"sh", "-c", script}}, &out, &errb)
	if err != nil {
		t.Fatalf("exec %q: %v", script, err)
	}
	if res.Code != 0 {
		t.Fatalf("exec %q: exit %d, stderr %q", script, res.Code, errb.String())
	}
	return out.String()
}

// vmmProcesses lists processes whose command line names the machine id
// (QEMU's -name, Firecracker's --id): what a Boot left running.
func vmmProcesses(id string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		for _, a := range bytes.Split(b, []byte{0}) {
			if string(a) == id || string(a) == "--id="+id {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// alive reports whether pid runs, waiting up to 5s for it to be gone: a
// VMM that is not our child (Firecracker in its own PID namespace) is
// reaped by init a moment after it exits, and a zombie counts as gone.
func alive(pid int) bool {
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return false
		}
		if i := bytes.LastIndexByte(b, ')'); i > 0 && i+2 < len(b) && b[i+2] == 'Z' {
			return false
		}
		if time.Now().After(deadline) {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// checkGone asserts a stopped machine left nothing behind.
func checkGone(t *testing.T, m vmm.Machine, pid int, runDir string) {
	t.Helper()
	if s := m.State(); s != vmm.StateStopped {
		t.Errorf("state after Stop: %s", s)
	}
	if m.PID() != 0 {
		t.Errorf("PID after Stop: %d", m.PID())
	}
	if pid > 0 && alive(pid) {
		t.Errorf("VMM process %d still alive after Stop", pid)
	}
	if left := vmmProcesses(m.ID()); len(left) > 0 {
		t.Errorf("processes naming %s still run after Stop: %v", m.ID(), left)
	}
	if _, err := os.Stat(runDir); !os.IsNotExist(err) {
		t.Errorf("run dir %s still exists after Stop (%v)", runDir, err)
	}
	if err := m.Stop(context.Background()); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if err := m.Pause(context.Background()); !errors.Is(err, vmm.ErrInvalidState) {
		t.Errorf("Pause after Stop: %v, want ErrInvalidState", err)
	}
}

func stop(t *testing.T, m vmm.Machine, runDir string) {
	t.Helper()
	pid := m.PID()
	if err := m.Stop(context.Background()); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	checkGone(t, m, pid, runDir)
}

// boot boots a machine that is stopped when the test ends.
func boot(t *testing.T, d vmm.Driver, cfg vmm.Config) vmm.Machine {
	t.Helper()
	m, err := d.Boot(ctxFor(t, readyTimeout), cfg)
	if err != nil {
		t.Fatalf("Boot %s: %v", cfg.ID, err)
	}
	t.Cleanup(func() { m.Stop(context.Background()) })
	return m
}

// Run runs the suite.
func Run(t *testing.T, newDriver Factory, fx Fixtures) {
	t.Run("InvalidConfig", func(t *testing.T) {
		d, base := newDriver(t), runBase(t)
		cfg := Config(d, fx, base, "bad")
		cfg.VCPUs = 0
		if _, err := d.Boot(ctxFor(t, time.Minute), cfg); !errors.Is(err, vmm.ErrInvalidConfig) {
			t.Fatalf("Boot with 0 vCPUs: %v, want ErrInvalidConfig", err)
		}
		if _, err := os.Stat(cfg.RunDir); !os.IsNotExist(err) {
			t.Fatalf("a refused Boot left %s", cfg.RunDir)
		}
	})
	t.Run("Lifecycle", func(t *testing.T) { lifecycle(t, newDriver(t), fx, runBase(t)) })
	t.Run("CancelDuringBoot", func(t *testing.T) { cancelDuringBoot(t, newDriver(t), fx, runBase(t)) })
	t.Run("CancelAfterBoot", func(t *testing.T) {
		d, base := newDriver(t), runBase(t)
		cfg := Config(d, fx, base, "after")
		ctx, cancel := context.WithCancel(context.Background())
		m, err := d.Boot(ctx, cfg)
		if err != nil {
			t.Fatalf("Boot: %v", err)
		}
		t.Cleanup(func() { m.Stop(context.Background()) })
		cancel()
		time.Sleep(200 * time.Millisecond)
		if m.State() != vmm.StateRunning || syscall.Kill(m.PID(), 0) != nil {
			t.Fatalf("cancelling Boot's context after it returned ended the VM: state %s, pid %d", m.State(), m.PID())
		}
		ctx2 := ctxFor(t, time.Minute)
		if err := m.Pause(ctx2); err != nil {
			t.Fatalf("Pause after the cancel: %v", err)
		}
		if err := m.Resume(ctx2); err != nil {
			t.Fatalf("Resume after the cancel: %v", err)
		}
		stop(t, m, cfg.RunDir)
	})
	t.Run("StopInEveryState", func(t *testing.T) { stopInEveryState(t, newDriver(t), fx, runBase(t)) })
	t.Run("WaitAfterDeath", func(t *testing.T) {
		d, base := newDriver(t), runBase(t)
		cfg := Config(d, fx, base, "dies")
		m := boot(t, d, cfg)
		pid := m.PID()
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		ctx := ctxFor(t, 30*time.Second)
		if err := m.Wait(ctx); !errors.Is(err, vmm.ErrExited) {
			t.Fatalf("Wait after the VMM was killed: %v, want ErrExited", err)
		}
		if err := m.Wait(ctx); !errors.Is(err, vmm.ErrExited) {
			t.Fatalf("second Wait: %v, want ErrExited again", err)
		}
		if m.State() != vmm.StateStopped || m.PID() != 0 {
			t.Fatalf("after the VMM died: state %s, pid %d", m.State(), m.PID())
		}
		if err := m.Pause(ctx); err == nil {
			t.Fatal("Pause of a dead VM succeeded")
		}
		stop(t, m, cfg.RunDir)
		if err := m.Wait(ctx); !errors.Is(err, vmm.ErrExited) {
			t.Fatalf("Wait after Stop of a VM that had died: %v, want ErrExited", err)
		}
	})
	t.Run("DialAgentWhilePaused", func(t *testing.T) {
		d, base := newDriver(t), runBase(t)
		cfg := Config(d, fx, base, "paused")
		m := boot(t, d, cfg)
		Connect(t, m).Close() // the agent is up
		ctx := ctxFor(t, readyTimeout)
		if err := m.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		type dialed struct {
			c   *agentproto.Client
			err error
		}
		got := make(chan dialed, 1)
		go func() {
			conn, err := m.DialAgent(ctx)
			if err != nil {
				got <- dialed{nil, err}
				return
			}
			c := agentproto.NewClient(conn)
			_, err = c.WaitHello(ctx)
			got <- dialed{c, err}
		}()
		time.Sleep(300 * time.Millisecond)
		if err := m.Resume(ctx); err != nil {
			t.Fatalf("Resume: %v", err)
		}
		r := <-got
		if r.err != nil {
			t.Fatalf("DialAgent while paused, then Resume: %v", r.err)
		}
		defer r.c.Close()
		if out := Sh(t, r.c, "echo awake"); out != "awake\n" {
			t.Fatalf("echo after the dial while paused: %q", out)
		}
		stop(t, m, cfg.RunDir)
	})
	t.Run("RunDirInUse", func(t *testing.T) {
		d, base := newDriver(t), runBase(t)
		cfg := Config(d, fx, base, "first")
		m := boot(t, d, cfg)
		other := Config(d, fx, base, "second")
		other.RunDir = cfg.RunDir
		if m2, err := d.Boot(ctxFor(t, time.Minute), other); !errors.Is(err, vmm.ErrInUse) {
			if err == nil {
				m2.Stop(context.Background())
			}
			t.Fatalf("Boot into a busy run dir: %v, want ErrInUse", err)
		}
		if left := vmmProcesses("second"); len(left) > 0 {
			t.Errorf("the refused Boot left processes: %v", left)
		}
		ctx := ctxFor(t, time.Minute)
		if err := m.Pause(ctx); err != nil {
			t.Fatalf("the first machine after the refused Boot: %v", err)
		}
		if err := m.Resume(ctx); err != nil {
			t.Fatal(err)
		}
		stop(t, m, cfg.RunDir)

		// What a dead machine left behind is taken over.
		stale := Config(d, fx, base, "stale")
		if err := os.MkdirAll(stale.RunDir, 0o700); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"api.sock", "qmp.sock", "agent.sock", "v.sock", "junk"} {
			os.WriteFile(filepath.Join(stale.RunDir, f), []byte("left by a dead VMM"), 0o600)
		}
		stop(t, boot(t, d, stale), stale.RunDir)
	})
	t.Run("Network", func(t *testing.T) { network(t, newDriver(t), fx, runBase(t)) })
	t.Run("RestoreRejectsMissingSnapshot", func(t *testing.T) {
		d, base := newDriver(t), runBase(t)
		if !d.Capabilities().Snapshot {
			t.Skip("driver has no snapshots")
		}
		cfg := Config(d, fx, base, "nosnap")
		_, err := d.Restore(ctxFor(t, time.Minute), t.TempDir(), cfg)
		if !errors.Is(err, vmm.ErrIncompatible) {
			t.Fatalf("Restore from an empty directory: %v, want ErrIncompatible", err)
		}
		if _, err := os.Stat(cfg.RunDir); !os.IsNotExist(err) {
			t.Fatalf("a failed Restore left %s", cfg.RunDir)
		}
	})
}

func lifecycle(t *testing.T, d vmm.Driver, fx Fixtures, base string) {
	ctx := ctxFor(t, 10*time.Minute)
	if d.Version() == "" || d.Name() == "" {
		t.Fatalf("Name %q, Version %q", d.Name(), d.Version())
	}
	if a := d.Capabilities().Accel; a != vmm.AccelKVM && a != vmm.AccelTCG {
		t.Fatalf("Capabilities().Accel = %q", a)
	}
	cfg := Config(d, fx, base, "life")
	m := boot(t, d, cfg)
	if m.State() != vmm.StateRunning || m.PID() <= 0 {
		t.Fatalf("after Boot: state %s pid %d", m.State(), m.PID())
	}
	c := Connect(t, m)
	defer c.Close()
	if got := Sh(t, c, "echo hi"); got != "hi\n" {
		t.Fatalf("echo: %q", got)
	}
	if err := m.Resume(ctx); !errors.Is(err, vmm.ErrInvalidState) {
		t.Errorf("Resume while running: %v, want ErrInvalidState", err)
	}
	snapDir := t.TempDir()
	if err := m.Snapshot(ctx, snapDir); !errors.Is(err, vmm.ErrInvalidState) {
		t.Errorf("Snapshot while running: %v, want ErrInvalidState", err)
	}
	if err := m.Pause(ctx); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	if m.State() != vmm.StatePaused {
		t.Fatalf("state after Pause: %s", m.State())
	}
	if err := m.Pause(ctx); !errors.Is(err, vmm.ErrInvalidState) {
		t.Errorf("Pause while paused: %v, want ErrInvalidState", err)
	}
	if err := m.Resume(ctx); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	if got := Sh(t, c, "echo again"); got != "again\n" {
		t.Fatalf("after resume: %q", got)
	}
	if !d.Capabilities().Snapshot {
		stop(t, m, cfg.RunDir)
		return
	}

	// State in guest memory must survive a snapshot and restore.
	marker := func(c *agentproto.Client, script string) {
		if !fx.HostGuest {
			Sh(t, c, script)
		}
	}
	expect := func(c *agentproto.Client, script, want string) {
		if fx.HostGuest {
			return
		}
		if got := Sh(t, c, script); got != want {
			t.Fatalf("%s: %q, want %q (guest memory lost)", script, got, want)
		}
	}
	marker(c, "echo remembered > /tmp/marker")
	if err := m.Pause(ctx); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	if err := m.Snapshot(ctx, snapDir); err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	for _, f := range []string{vmm.SnapshotMemoryFile, vmm.SnapshotStateFile} {
		if _, err := os.Stat(filepath.Join(snapDir, f)); err != nil {
			t.Fatalf("snapshot lacks %s: %v", f, err)
		}
	}
	if m.State() != vmm.StatePaused {
		t.Fatalf("state after Snapshot: %s, want paused", m.State())
	}
	c.Close()
	stop(t, m, cfg.RunDir)

	rcfg := Config(d, fx, base, "restored")
	began := time.Now()
	r, err := d.Restore(ctx, snapDir, rcfg)
	took := time.Since(began)
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	t.Cleanup(func() { r.Stop(context.Background()) })
	if r.State() != vmm.StateRunning {
		t.Fatalf("state after Restore: %s", r.State())
	}
	// The restore's parts are reported, and fit inside it.
	st := r.StartTimes()
	if st.Calls < 1 || st.Incoming <= 0 || (st.Process <= 0 && !st.Prestarted) {
		t.Errorf("restore's start times not filled: %+v", st)
	}
	if sum := st.Process + st.Incoming + st.Resume; sum > took {
		t.Errorf("restore's parts add up to %s, more than the %s it took: %+v", sum, took, st)
	}
	rc := Connect(t, r)
	defer rc.Close()
	expect(rc, "cat /tmp/marker", "remembered\n")

	// A restored machine can be snapshotted and restored again
	// (hibernating a sandbox that started from a snapshot).
	marker(rc, "echo second > /tmp/marker2")
	rc.Close()
	if err := r.Pause(ctx); err != nil {
		t.Fatalf("Pause restored: %v", err)
	}
	snap2 := t.TempDir()
	if err := r.Snapshot(ctx, snap2); err != nil {
		t.Fatalf("Snapshot of a restored machine: %v", err)
	}
	stop(t, r, rcfg.RunDir)

	r2cfg := Config(d, fx, base, "restored2")
	r2, err := d.Restore(ctx, snap2, r2cfg)
	if err != nil {
		t.Fatalf("Restore of a restored machine's snapshot: %v", err)
	}
	t.Cleanup(func() { r2.Stop(context.Background()) })
	r2c := Connect(t, r2)
	defer r2c.Close()
	if got := Sh(t, r2c, "echo alive"); got != "alive\n" {
		t.Fatalf("twice-restored guest: %q", got)
	}
	expect(r2c, "cat /tmp/marker /tmp/marker2", "remembered\nsecond\n")
	stop(t, r2, r2cfg.RunDir)
}

// cancelDuringBoot cancels Boot's context once the VMM process exists,
// while Boot still waits for it: Boot must fail with the context's error
// and leave nothing behind. Boot may win the race now and then (it is
// then stopped and the case tried again); it must lose at least once.
func cancelDuringBoot(t *testing.T, d vmm.Driver, fx Fixtures, base string) {
	cancelled := 0
	for attempt := 0; attempt < 10 && cancelled < 2; attempt++ {
		cfg := Config(d, fx, base, fmt.Sprintf("cancel%d", attempt))
		ctx, cancel := context.WithCancel(context.Background())
		watching := make(chan struct{})
		go func() {
			defer close(watching)
			deadline := time.Now().Add(30 * time.Second)
			for ctx.Err() == nil && time.Now().Before(deadline) {
				if len(vmmProcesses(cfg.ID)) > 0 {
					cancel()
					return
				}
				time.Sleep(time.Millisecond)
			}
		}()
		m, err := d.Boot(ctx, cfg)
		cancel()
		<-watching
		if err == nil {
			m.Stop(context.Background())
			continue
		}
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Boot cancelled while it waited for the VMM: %v, want context.Canceled", err)
		}
		cancelled++
		deadline := time.Now().Add(10 * time.Second)
		for len(vmmProcesses(cfg.ID)) > 0 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond) // a SIGKILLed VMM may take a moment to be reaped
		}
		if left := vmmProcesses(cfg.ID); len(left) > 0 {
			t.Fatalf("a cancelled Boot left VMM processes %v", left)
		}
		if _, err := os.Stat(cfg.RunDir); !os.IsNotExist(err) {
			t.Fatalf("a cancelled Boot left %s", cfg.RunDir)
		}
	}
	if cancelled == 0 {
		t.Fatal("every Boot finished before its context was cancelled: the case tested nothing")
	}
}

// stopInEveryState stops machines that are running, paused, snapshotted,
// dead and already stopped, and one from three goroutines at once.
func stopInEveryState(t *testing.T, d vmm.Driver, fx Fixtures, base string) {
	ctx := ctxFor(t, 5*time.Minute)
	for _, tc := range []struct {
		name string
		prep func(t *testing.T, m vmm.Machine)
	}{
		{"running", func(t *testing.T, m vmm.Machine) {}},
		{"paused", func(t *testing.T, m vmm.Machine) {
			if err := m.Pause(ctx); err != nil {
				t.Fatal(err)
			}
		}},
		{"snapshotted", func(t *testing.T, m vmm.Machine) {
			if !d.Capabilities().Snapshot {
				t.Skip("no snapshots")
			}
			if err := m.Pause(ctx); err != nil {
				t.Fatal(err)
			}
			if err := m.Snapshot(ctx, t.TempDir()); err != nil {
				t.Fatal(err)
			}
		}},
		{"dead", func(t *testing.T, m vmm.Machine) {
			syscall.Kill(m.PID(), syscall.SIGKILL)
			m.Wait(ctx)
		}},
		{"stopped", func(t *testing.T, m vmm.Machine) {
			if err := m.Stop(ctx); err != nil {
				t.Fatal(err)
			}
		}},
		{"concurrently", func(t *testing.T, m vmm.Machine) {
			errs := make(chan error, 3)
			for range 3 {
				go func() { errs <- m.Stop(ctx) }()
			}
			for range 3 {
				if err := <-errs; err != nil {
					t.Errorf("concurrent Stop: %v", err)
				}
				// Each one returned only once everything was gone.
				if _, err := os.Stat(filepath.Join(base, m.ID())); !os.IsNotExist(err) {
					t.Errorf("a concurrent Stop returned before the run dir was removed")
				}
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config(d, fx, base, "stop-"+tc.name)
			m := boot(t, d, cfg)
			pid := m.PID()
			tc.prep(t, m)
			cctx, cancel := context.WithCancel(ctx)
			cancel() // a cancelled request must not cut Stop short
			if err := m.Stop(cctx); err != nil {
				t.Fatalf("Stop: %v", err)
			}
			checkGone(t, m, pid, cfg.RunDir)
		})
	}
}
