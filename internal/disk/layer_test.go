package disk_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/firesandbox/firesandbox/internal/disk"
	"github.com/firesandbox/firesandbox/internal/disk/disktest"
)

func TestCloneLayers(t *testing.T) {
	if os.Getpid() == 1 {
		t.Skip("host test")
	}
	disktest.Run(t, disktest.Harness{New: func(*testing.T, string) disk.Layerer { return disk.CloneLayers{} }})
}

// TestDMLayers runs the suite on this host's device-mapper, where it has
// one (TestGuestDMLayers runs it inside a guest on every host).
func TestDMLayers(t *testing.T) {
	if os.Getpid() == 1 {
		t.Skip("host test: see TestGuestDMLayers")
	}
	if os.Geteuid() != 0 {
		t.Skip("SKIP: device-mapper needs root")
	}
	if err := disk.NewMapper().Available(context.Background()); err != nil {
		t.Skipf("SKIP: this host cannot layer disks (%v); TestDeviceMapperInGuest runs the suite in a guest", err)
	}
	disktest.Run(t, dmHarness)
}

// TestGuestDMLayers is the suite on a real device-mapper, in the guest
// TestDeviceMapperInGuest boots.
func TestGuestDMLayers(t *testing.T) {
	if os.Getpid() != 1 {
		t.Skip("runs inside a guest VM: see TestDeviceMapperInGuest")
	}
	disktest.Run(t, dmHarness)
}

var dmHarness = disktest.Harness{
	New: func(t *testing.T, root string) disk.Layerer {
		l, err := disk.NewDMLayers(root)
		if err != nil {
			t.Fatal(err)
		}
		return l
	},
	Leftovers: dmLeftovers,
}

// dmLeftovers lists the device-mapper devices named for root and the loop
// devices backed by files under it.
func dmLeftovers(t *testing.T, root string) []string {
	l, err := disk.NewDMLayers(root)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("dmsetup", "ls").CombinedOutput()
	if err != nil {
		t.Fatalf("dmsetup ls: %v: %s", err, out)
	}
	var left []string
	for _, line := range strings.Split(string(out), "\n") {
		if name, _, _ := strings.Cut(line, "\t"); strings.HasPrefix(name, "fs-"+l.Prefix+"-") {
			left = append(left, name)
		}
	}
	return append(left, loopsUnder(root)...)
}

func loopsUnder(root string) []string {
	var left []string
	loops, _ := filepath.Glob("/sys/block/loop*")
	for _, sys := range loops {
		b, err := os.ReadFile(filepath.Join(sys, "loop", "backing_file"))
		if err == nil && strings.HasPrefix(string(b), root+"/") {
			left = append(left, "/dev/"+filepath.Base(sys)+" on "+strings.TrimSpace(string(b)))
		}
	}
	return left
}

// The sweep's loop half works on any host with loop devices: a loop
// device on a file under the data directory that no device-mapper table
// holds (a process killed between losetup and dmsetup) is detached; one
// on a file elsewhere is not touched.
func TestDMSweepDetachesIdleLoops(t *testing.T) {
	if os.Getpid() == 1 {
		t.Skip("host test")
	}
	if os.Geteuid() != 0 {
		t.Skip("SKIP: loop devices need root")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skipf("SKIP: no loop devices: %v", err)
	}
	root, other := t.TempDir(), t.TempDir()
	mine, theirs := filepath.Join(root, "a.cow"), filepath.Join(other, "b.cow")
	for _, p := range []string{mine, theirs} {
		if err := disk.NewCoW(p, 1<<20); err != nil {
			t.Fatal(err)
		}
	}
	attach := func(p string) string {
		out, err := exec.Command("losetup", "--find", "--show", p).CombinedOutput()
		if err != nil {
			t.Skipf("SKIP: losetup: %v: %s", err, out)
		}
		dev := strings.TrimSpace(string(out))
		t.Cleanup(func() { exec.Command("losetup", "--detach", dev).Run() })
		return dev
	}
	attach(mine)
	attach(theirs)
	l, err := disk.NewDMLayers(root)
	if err != nil {
		t.Fatal(err)
	}
	run := l.Mapper.Run
	l.Mapper.Run = func(ctx context.Context, name string, args ...string) ([]byte, error) {
		if name == "dmsetup" { // no device-mapper here: nothing to list
			return []byte("No devices found\n"), nil
		}
		return run(ctx, name, args...)
	}
	if err := l.Sweep(context.Background(), disk.SweepScope{Alive: func(string) bool { return false }, Alone: true}); err != nil {
		t.Fatal(err)
	}
	if left := loopsUnder(root); len(left) > 0 {
		t.Fatalf("the sweep left %v", left)
	}
	if left := loopsUnder(other); len(left) != 1 {
		t.Fatalf("the sweep touched a loop device outside its data directory: %v", left)
	}
}

// TestLoopLayers runs the suite on the loop-device Layerer the VM tests
// use on hosts without device-mapper.
func TestLoopLayers(t *testing.T) {
	if os.Getpid() == 1 {
		t.Skip("host test")
	}
	if os.Geteuid() != 0 {
		t.Skip("SKIP: loop devices need root")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skipf("SKIP: no loop devices: %v", err)
	}
	disktest.Run(t, disktest.Harness{
		New:       func(*testing.T, string) disk.Layerer { return &disktest.LoopLayers{} },
		Leftovers: func(_ *testing.T, root string) []string { return disktest.LoopsUnder(root) },
	})
}

// Many creates over one base at once (sandboxes created right after
// their template's snapshot) all succeed, each disk holding the base's
// blocks under a name of its own, so that the base outlives its snapshot
// as long as any disk needs it.
func TestDMCreatesShareTheBase(t *testing.T) {
	if os.Getpid() == 1 {
		t.Skip("host test")
	}
	root := t.TempDir()
	l, err := disk.NewDMLayers(root)
	if err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(root, "snapshot", "disk.ext4")
	os.MkdirAll(filepath.Dir(base), 0o700)
	if err := os.WriteFile(base, []byte("pristine"), 0o600); err != nil {
		t.Fatal(err)
	}
	b := disk.Base{Path: base, Digest: strings.Repeat("ab", 32)}
	errs := make(chan error, 8)
	disks := make([]string, 8)
	for i := range disks {
		disks[i] = filepath.Join(root, "d"+string(rune('0'+i)), "disk.ext4")
		os.MkdirAll(filepath.Dir(disks[i]), 0o700)
		go func() { errs <- l.Create(context.Background(), b, 1<<20, disks[i]) }()
	}
	for range disks {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	orig, _ := os.Stat(base)
	os.RemoveAll(filepath.Dir(base)) // the snapshot store evicts the template
	for _, p := range disks {
		if !disk.Layered(p) {
			t.Fatalf("%s is not a layered disk", p)
		}
		fi, err := os.Stat(p + ".base")
		if err != nil || !os.SameFile(fi, orig) {
			t.Fatalf("%s does not keep the base's blocks: %v", p, err)
		}
	}
	// A fork's copy keeps them too; removing every disk frees them.
	child := filepath.Join(root, "child", "disk.ext4")
	os.MkdirAll(filepath.Dir(child), 0o700)
	if err := l.Copy(context.Background(), disks[0], child); err != nil {
		t.Fatal(err)
	}
	for _, p := range append(disks, child) {
		if err := l.Remove(p); err != nil {
			t.Fatal(err)
		}
		if left, _ := filepath.Glob(p + "*"); len(left) > 0 {
			t.Fatalf("Remove left %v", left)
		}
	}
}
