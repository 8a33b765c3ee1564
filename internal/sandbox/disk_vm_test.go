package sandbox

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
)

func allocated(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// A disk-backed writable layer is sparse on the host, grows as the guest
// writes, and shrinks again when the guest deletes (discard punches holes
// in the host file). It travels with a hibernated sandbox.
func TestDiskLayerGivesSpaceBack(t *testing.T) {
	m := snapshotManager(t)
	defer noLeftovers(t, m)
	ctx := context.Background()
	e, _ := m.catalog.Lookup("python", "")
	tmpl, err := m.Template(ctx, e, Shape{DiskMiB: 512})
	if err != nil {
		t.Fatal(err)
	}
	// A sandbox's disk: where its owner says, and kept across hibernation.
	disk := filepath.Join(t.TempDir(), "disk.ext4")
	vm, err := m.Start(ctx, tmpl, StartOptions{Disk: disk})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	if vm.disk != disk {
		t.Fatalf("VM's writable disk is %q, want %q", vm.disk, disk)
	}
	sh := func(script string) {
		t.Helper()
		res, err := vm.Agent.Exec(ctx, agentproto.ExecRequest{Argv: []string{"sh", "-c", script}, Dir: "/home/sandbox"}, nil, nil)
		if err != nil || res.Code != 0 {
			t.Fatalf("%q: %v %+v", script, err, res)
		}
	}
	base := allocated(t, disk)
	if base > 64<<20 {
		t.Fatalf("a fresh 512 MiB disk already takes %d MiB on the host: not sparse", base>>20)
	}
	sh("dd if=/dev/urandom of=big bs=1M count=64 2>/dev/null && sync")
	if grown := allocated(t, disk) - base; grown < 60<<20 {
		t.Fatalf("after writing 64 MiB the disk grew by only %d MiB", grown>>20)
	}
	sh("rm big && sync")
	deadline := time.Now().Add(30 * time.Second)
	for allocated(t, disk)-base > 16<<20 {
		if time.Now().After(deadline) {
			t.Fatalf("deleting 64 MiB in the guest freed nothing on the host: %d MiB above the fresh disk", (allocated(t, disk)-base)>>20)
		}
		time.Sleep(200 * time.Millisecond) // discards reach the host file asynchronously
	}

	// The disk stays with a hibernated sandbox and comes back with it.
	sh("echo persisted > keep.txt && sync")
	dir := t.TempDir()
	if err := m.Hibernate(ctx, vm, dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(disk); err != nil {
		t.Fatalf("hibernation lost the disk: %v", err)
	}
	// A resume that fails must not lose the sandbox's only disk.
	state := filepath.Join(dir, "vmstate")
	good, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(state, good[:len(good)/2], 0o600)
	if _, err := m.Resume(ctx, tmpl, dir, disk); err == nil {
		t.Fatal("resume from a truncated device state succeeded")
	}
	if _, err := os.Stat(disk); err != nil {
		t.Fatalf("a failed resume lost the disk: %v", err)
	}
	os.WriteFile(state, good, 0o600)
	back, err := m.Resume(ctx, tmpl, dir, disk)
	if err != nil {
		t.Fatal(err)
	}
	defer back.Close()
	got, err := back.Agent.ReadFile(ctx, "/home/sandbox/keep.txt", 100)
	if err != nil || string(got) != "persisted\n" {
		t.Fatalf("after resume: %q %v", got, err)
	}
	back.Close()
	if _, err := os.Stat(disk); err != nil {
		t.Fatalf("closing a sandbox's VM removed the disk its owner keeps: %v", err)
	}
	// A VM's private disk goes with it.
	priv, err := m.AcquireShape(ctx, e, false, Shape{DiskMiB: 512})
	if err != nil {
		t.Fatal(err)
	}
	p := priv.disk
	priv.Close()
	if _, err := os.Stat(p); p == "" || !os.IsNotExist(err) {
		t.Fatalf("closing the VM left its private disk %q", p)
	}
}
