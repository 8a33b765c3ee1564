package sandbox

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/firesandbox/firesandbox/internal/disk"
	"github.com/firesandbox/firesandbox/internal/disk/disktest"
)

// Disk sandboxes whose VMM gets a block device, on real VMs: device-mapper
// layers where the host has them, else loop devices over the images
// (what QEMU and the Manager do with a block device is the same). A
// create writes, a fork's child starts from the parent's files and the
// two diverge, pauses and resumes keep every file, and afterwards no
// device is left attached.
func TestBlockDeviceDisksOnVMs(t *testing.T) {
	m, _ := newTestManager(t)
	var inner disk.Layerer
	if err := disk.NewMapper().Available(context.Background()); err == nil {
		if inner, err = disk.Choose(context.Background(), disk.LayeringDM, m.cfg.DataDir); err != nil {
			t.Fatal(err)
		}
	} else {
		if os.Geteuid() != 0 {
			t.Skip("SKIP: no device-mapper and no root for loop devices")
		}
		if _, lerr := os.Stat("/dev/loop-control"); lerr != nil {
			t.Skipf("SKIP: neither device-mapper (%v) nor loop devices (%v)", err, lerr)
		}
		t.Logf("no device-mapper here (%v): loop devices over the images", err)
		inner = &disktest.LoopLayers{}
	}
	tr := disktest.NewTracked(inner, t.TempDir())
	m.layers = tr
	stateDir := t.TempDir()
	svc, err := OpenService(m, ServiceConfig{StateDir: stateDir, MaxVMs: 2}, nil)
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			svc.Close(context.Background())
		}
	})
	s := svc.Sandboxes
	ctx := context.Background()
	parent, err := s.Create(ctx, CreateRequest{Language: "python", DiskMiB: 256})
	if err != nil {
		t.Fatal(err)
	}
	sh(t, s, parent.ID, "echo parent > p.txt && sync")
	kids, err := s.Fork(ctx, "", parent.ID, ForkRequest{Count: 1})
	if err != nil {
		t.Fatal(err)
	}
	child := kids[0].ID
	if got := sh(t, s, child, "cat p.txt"); got != "parent\n" {
		t.Fatalf("the child reads %q", got)
	}
	sh(t, s, child, "echo child > c.txt && echo changed > p.txt && sync")
	if got := sh(t, s, parent.ID, "cat p.txt; ls c.txt 2>&1 || true"); strings.Contains(got, "changed") || !strings.Contains(got, "No such file") {
		t.Fatalf("the child's writes reached the parent: %q", got)
	}
	for i := range 3 {
		sh(t, s, parent.ID, "echo "+string(rune('a'+i))+" >> log.txt && sync")
		if _, err := s.Hibernate(ctx, "", parent.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Resume(ctx, "", parent.ID, 0); err != nil {
			t.Fatal(err)
		}
	}
	if got := sh(t, s, parent.ID, "cat p.txt log.txt"); got != "parent\na\nb\nc\n" {
		t.Fatalf("after 3 pauses the parent reads %q", got)
	}
	if got := sh(t, s, child, "cat c.txt p.txt"); got != "child\nchanged\n" {
		t.Fatalf("the child reads %q", got)
	}
	for _, id := range []string{child, parent.ID} {
		if err := s.Delete(ctx, "", id); err != nil {
			t.Fatal(err)
		}
	}
	svc.Close(ctx)
	closed = true
	noLeftovers(t, m)
	if open := tr.Open(); len(open) > 0 {
		t.Fatalf("disks still attached: %v", open)
	}
	for _, root := range []string{m.cfg.DataDir, stateDir} {
		if left := disktest.LoopsUnder(root); len(left) > 0 {
			t.Fatalf("loop devices left: %v", left)
		}
	}
	if inner.Kind() == disk.LayeringDM {
		if left := attachedUnder(t, m.cfg.DataDir); len(left) > 0 {
			t.Fatalf("devices left: %v", left)
		}
	}
}
