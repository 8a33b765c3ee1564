package qemu_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/testutil"
	"github.com/firesandbox/firesandbox/internal/vmm"
	"github.com/firesandbox/firesandbox/internal/vmm/qemu"
	"github.com/firesandbox/firesandbox/internal/vmm/vmmproc"
	"github.com/firesandbox/firesandbox/internal/vmm/vmmtest"
)

// waitSpares waits until d keeps n QEMU processes started ahead.
func waitSpares(t *testing.T, d *qemu.Driver, n int) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for d.Spares() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d spare QEMUs, want %d", d.Spares(), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// spareRecords lists the spares' run dirs and records in a memory dir.
func spareRecords(t *testing.T, mem string) map[string]vmmproc.Record {
	t.Helper()
	out := map[string]vmmproc.Record{}
	files, _ := filepath.Glob(filepath.Join(mem, "spares", "*"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		r, err := vmmproc.ReadRecord(string(b))
		if err != nil {
			continue // still starting
		}
		out[string(b)] = r
	}
	return out
}

// snapshotFixture boots the fixture image with d, snapshots it into a
// new directory and stops it.
func snapshotFixture(t *testing.T, d *qemu.Driver, fx vmmtest.Fixtures, base string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	m, err := d.Boot(ctx, vmmtest.Config(d, fx, base, "tmpl"))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Stop(context.Background())
	c := vmmtest.Connect(t, m)
	c.Close()
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := m.Snapshot(ctx, dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

func restoreAndCheck(t *testing.T, d *qemu.Driver, fx vmmtest.Fixtures, base, snap, id string) vmm.Machine {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cfg := vmmtest.Config(d, fx, base, id)
	m, err := d.Restore(ctx, snap, cfg)
	if err != nil {
		t.Fatal(err)
	}
	c := vmmtest.Connect(t, m)
	if got := vmmtest.Sh(t, c, "echo ok"); got != "ok\n" {
		t.Fatalf("restored guest says %q", got)
	}
	c.Close()
	if m.ID() != id {
		t.Fatalf("machine id %q, want %q", m.ID(), id)
	}
	if _, err := os.Stat(filepath.Join(cfg.RunDir, "agent.sock")); err != nil {
		t.Fatalf("the machine's sockets are not in its run dir: %v", err)
	}
	return m
}

// A snapshot restored again and again gets a QEMU started ahead, which
// the next restore adopts (and skips starting QEMU); Close stops the
// spare and leaves nothing behind.
func TestPrestartedRestore(t *testing.T) {
	fx := vmmtest.FixturesFromEnv(t)
	testutil.RequireQEMU(t)
	accel := testutil.RequireVMs(t).Accel
	mem := filepath.Join(t.TempDir(), "mem")
	d := newDriver(t, qemu.Config{Accel: accel, Prestart: 1, MemoryDir: mem})
	base := shortDir(t)
	snap := snapshotFixture(t, d, fx, base)

	for i := 0; i < 2; i++ { // the second restore asks for a spare
		m := restoreAndCheck(t, d, fx, base, snap, fmt.Sprintf("r%d", i))
		if m.StartTimes().Prestarted {
			t.Fatalf("restore %d used a spare before any was asked for", i)
		}
		m.Stop(context.Background())
	}
	waitSpares(t, d, 1)
	m := restoreAndCheck(t, d, fx, base, snap, "r2")
	if st := m.StartTimes(); !st.Prestarted || st.Process != 0 || st.Incoming <= 0 {
		t.Fatalf("restore after a spare was ready: %+v, want it prestarted", st)
	}
	pid := m.PID()
	if err := m.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, 0); err == nil {
		t.Errorf("adopted QEMU %d runs after Stop", pid)
	}
	waitSpares(t, d, 1) // its replacement
	recs := spareRecords(t, mem)
	if len(recs) != 1 {
		t.Fatalf("spare records: %v", recs)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	for dir, r := range recs {
		if running(r) {
			t.Errorf("spare QEMU %d runs after Close", r.PID)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("spare run dir %s left after Close", dir)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(mem, "spares", "*")); len(left) != 0 {
		t.Errorf("spare records left after Close: %v", left)
	}
}

// A spare left by a process killed with SIGKILL is stopped, and its run
// dir removed, by the next driver on the same memory dir.
func TestPrestartedSweptAfterKill(t *testing.T) {
	if os.Getenv("PRESTART_HELPER") != "" {
		prestartHelper(t)
		return
	}
	fx := vmmtest.FixturesFromEnv(t)
	testutil.RequireQEMU(t)
	accel := testutil.RequireVMs(t).Accel
	mem := filepath.Join(t.TempDir(), "mem")
	d := newDriver(t, qemu.Config{Accel: accel, MemoryDir: mem})
	base := shortDir(t)
	snap := snapshotFixture(t, d, fx, base)

	cmd := exec.Command(os.Args[0], "-test.run", "^TestPrestartedSweptAfterKill$", "-test.v")
	cmd.Env = append(os.Environ(), "PRESTART_HELPER=1", "PRESTART_MEM="+mem, "PRESTART_BASE="+base, "PRESTART_SNAP="+snap, "PRESTART_ACCEL="+accel)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	sc := bufio.NewScanner(out)
	ready := false
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "SPARE READY") {
			ready = true
			break
		}
	}
	if !ready {
		cmd.Wait()
		t.Fatal("helper did not start a spare")
	}
	recs := spareRecords(t, mem)
	if len(recs) != 1 {
		t.Fatalf("spare records: %v", recs)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()

	_ = newDriver(t, qemu.Config{Accel: accel, MemoryDir: mem}) // sweeps
	for dir, r := range recs {
		if running(r) {
			t.Errorf("spare QEMU %d of a killed process still runs", r.PID)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("spare run dir %s left", dir)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(mem, "spares", "*")); len(left) != 0 {
		t.Errorf("spare records left: %v", left)
	}
}

func prestartHelper(t *testing.T) {
	fx := vmmtest.FixturesFromEnv(t)
	d := newDriver(t, qemu.Config{Accel: os.Getenv("PRESTART_ACCEL"), Prestart: 1, MemoryDir: os.Getenv("PRESTART_MEM")})
	base, snap := os.Getenv("PRESTART_BASE"), os.Getenv("PRESTART_SNAP")
	for i := 0; i < 2; i++ {
		m := restoreAndCheck(t, d, fx, base, snap, "k"+strconv.Itoa(i))
		m.Stop(context.Background())
	}
	waitSpares(t, d, 1)
	fmt.Println("SPARE READY")
	select {} // until killed
}

// running says the recorded process runs: alive and not a zombie that
// init has yet to reap (a spare's parent was killed).
func running(r vmmproc.Record) bool {
	if !r.Alive() {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", r.PID))
	if err != nil {
		return false
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndex(s, ")")+1:])
	return len(f) > 0 && f[0] != "Z" && f[0] != "X"
}

func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "qps-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
