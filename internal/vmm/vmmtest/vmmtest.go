// Package vmmtest is the conformance suite every vmm.Driver passes:
//
//	func TestConformance(t *testing.T) {
//		vmmtest.Run(t, mydriver.New(...), vmmtest.FixturesFromEnv(t))
//	}
//
// It boots real VMs, so it is kept to two boots and one restore.
package vmmtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/testutil"
	"github.com/firesandbox/firesandbox/internal/vmm"
)

// Fixtures are the files a conformance run boots.
type Fixtures struct {
	Kernel, Initrd string
	// Layers are the image's read-only layers, bottom first.
	Layers []string
	RootFS string // squashfs, erofs or ext4
	// RunBase is where per-VM run directories go.
	RunBase string
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
	base, err := os.MkdirTemp("/tmp", "vmt-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	return Fixtures{
		Kernel: fx.Kernel.Vmlinux, Initrd: fx.Kernel.Initramfs,
		Layers: paths, RootFS: fx.Python.Format, RunBase: base,
	}
}

func config(d vmm.Driver, fx Fixtures, id string) vmm.Config {
	var disks []vmm.Disk
	var refs []string
	for i, p := range fx.Layers {
		did := fmt.Sprintf("layer%d", i)
		disks = append(disks, vmm.Disk{ID: did, Path: p, ReadOnly: true})
		refs = append(refs, vmm.GuestDiskRef(d.Capabilities(), i, did))
	}
	return vmm.Config{
		ID: id, Kernel: fx.Kernel, Initrd: fx.Initrd, VCPUs: 1, MemoryMiB: 256,
		Disks: disks,
		Cmdline: []string{
			"fs.root=" + strings.Join(refs, ","),
			"fs.rootfs=" + fx.RootFS,
		},
		RunDir: filepath.Join(fx.RunBase, id),
	}
}

const readyTimeout = 90 * time.Second

func connect(t *testing.T, m vmm.Machine) *agentproto.Client {
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

func sh(t *testing.T, c *agentproto.Client, script string) string {
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

// checkGone asserts a stopped machine left nothing behind.
func checkGone(t *testing.T, m vmm.Machine, pid int, runDir string) {
	t.Helper()
	if s := m.State(); s != vmm.StateStopped {
		t.Errorf("state after Stop: %s", s)
	}
	if m.PID() != 0 {
		t.Errorf("PID after Stop: %d", m.PID())
	}
	if pid > 0 && syscall.Kill(pid, 0) == nil {
		t.Errorf("VMM process %d still alive after Stop", pid)
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

// Run runs the suite against d.
func Run(t *testing.T, d vmm.Driver, fx Fixtures) {
	ctx := context.Background()

	t.Run("InvalidConfig", func(t *testing.T) {
		cfg := config(d, fx, "bad")
		cfg.VCPUs = 0
		if _, err := d.Boot(ctx, cfg); !errors.Is(err, vmm.ErrInvalidConfig) {
			t.Fatalf("Boot with 0 vCPUs: %v, want ErrInvalidConfig", err)
		}
		if _, err := os.Stat(cfg.RunDir); !os.IsNotExist(err) {
			t.Fatalf("a refused Boot left %s", cfg.RunDir)
		}
	})

	t.Run("Lifecycle", func(t *testing.T) {
		if _, err := d.Version(ctx); err != nil {
			t.Fatalf("Version: %v", err)
		}
		cfg := config(d, fx, "life")
		m, err := d.Boot(ctx, cfg)
		if err != nil {
			t.Fatalf("Boot: %v", err)
		}
		defer m.Stop(ctx)
		if m.State() != vmm.StateRunning || m.PID() <= 0 {
			t.Fatalf("after Boot: state %s pid %d", m.State(), m.PID())
		}
		c := connect(t, m)
		defer c.Close()
		if got := sh(t, c, "echo hi"); got != "hi\n" {
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
		if err := m.Resume(ctx); err != nil {
			t.Fatalf("Resume: %v", err)
		}
		if got := sh(t, c, "echo again"); got != "again\n" {
			t.Fatalf("after resume: %q", got)
		}

		if !d.Capabilities().Snapshot {
			pid := m.PID()
			if err := m.Stop(ctx); err != nil {
				t.Fatalf("Stop: %v", err)
			}
			checkGone(t, m, pid, cfg.RunDir)
			return
		}

		// State in guest memory must survive a snapshot and restore.
		sh(t, c, "echo remembered > /tmp/marker")
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
		c.Close()
		pid := m.PID()
		if err := m.Stop(ctx); err != nil {
			t.Fatalf("Stop: %v", err)
		}
		checkGone(t, m, pid, cfg.RunDir)

		rcfg := config(d, fx, "restored")
		r, err := d.Restore(ctx, snapDir, rcfg)
		if err != nil {
			t.Fatalf("Restore: %v", err)
		}
		defer r.Stop(ctx)
		if r.State() != vmm.StateRunning {
			t.Fatalf("state after Restore: %s", r.State())
		}
		rc := connect(t, r)
		defer rc.Close()
		if got := sh(t, rc, "cat /tmp/marker"); got != "remembered\n" {
			t.Fatalf("restored guest memory: %q", got)
		}

		// A restored machine can be snapshotted and restored again
		// (hibernating a sandbox that started from a snapshot).
		sh(t, rc, "echo second > /tmp/marker2")
		rc.Close()
		if err := r.Pause(ctx); err != nil {
			t.Fatalf("Pause restored: %v", err)
		}
		snap2 := t.TempDir()
		if err := r.Snapshot(ctx, snap2); err != nil {
			t.Fatalf("Snapshot of a restored machine: %v", err)
		}
		rpid := r.PID()
		if err := r.Stop(ctx); err != nil {
			t.Fatalf("Stop restored: %v", err)
		}
		checkGone(t, r, rpid, rcfg.RunDir)

		r2cfg := config(d, fx, "restored2")
		r2, err := d.Restore(ctx, snap2, r2cfg)
		if err != nil {
			t.Fatalf("Restore of a restored machine's snapshot: %v", err)
		}
		defer r2.Stop(ctx)
		r2c := connect(t, r2)
		defer r2c.Close()
		if got := sh(t, r2c, "cat /tmp/marker /tmp/marker2"); got != "remembered\nsecond\n" {
			t.Fatalf("twice-restored guest memory: %q", got)
		}
		r2pid := r2.PID()
		if err := r2.Stop(ctx); err != nil {
			t.Fatalf("Stop: %v", err)
		}
		checkGone(t, r2, r2pid, r2cfg.RunDir)
	})

	t.Run("RestoreRejectsMissingSnapshot", func(t *testing.T) {
		if !d.Capabilities().Snapshot {
			t.Skip("driver has no snapshots")
		}
		cfg := config(d, fx, "nosnap")
		_, err := d.Restore(ctx, t.TempDir(), cfg)
		if err == nil {
			t.Fatal("Restore from an empty directory succeeded")
		}
		if !strings.Contains(err.Error(), "snapshot") && !errors.Is(err, vmm.ErrIncompatible) {
			t.Fatalf("Restore error does not say what is wrong: %v", err)
		}
		if _, err := os.Stat(cfg.RunDir); !os.IsNotExist(err) {
			t.Fatalf("a failed Restore left %s", cfg.RunDir)
		}
	})
}
