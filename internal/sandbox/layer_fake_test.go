package sandbox

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/firesandbox/firesandbox/internal/disk"
	"github.com/firesandbox/firesandbox/internal/disk/disktest"
	"github.com/firesandbox/firesandbox/internal/testutil"
	"github.com/firesandbox/firesandbox/internal/testutil/guesttest"
	"github.com/firesandbox/firesandbox/internal/vmm/vmmfake"
)

// Disk-backed sandboxes through each layering: the VMM gets the attached
// disk (not the stored one), a fork's child starts from its parent's disk,
// pause and resume keep every write, and once the sandboxes are deleted
// nothing is attached any more. The dm case runs on hosts with
// device-mapper (the guest test in internal/disk covers the layering
// itself everywhere).
func TestLayeredDiskSandboxes(t *testing.T) {
	if guesttest.InGuest() {
		t.Skip("host test: see TestGuestDMSandboxes")
	}
	for _, kind := range []disk.Layering{disk.LayeringClone, disk.LayeringDM} {
		t.Run(string(kind), func(t *testing.T) { layeredDiskSandboxes(t, kind) })
	}
}

// TestGuestDMSandboxes is TestLayeredDiskSandboxes's dm case on a real
// device-mapper, in the guest TestDMSandboxesInGuest boots.
func TestGuestDMSandboxes(t *testing.T) {
	if !guesttest.InGuest() {
		t.Skip("runs inside a guest VM: see TestDMSandboxesInGuest")
	}
	layeredDiskSandboxes(t, disk.LayeringDM)
	t.Run("SweepAfterKill", dmSweepAfterKill)
}

// TestDMSandboxesInGuest boots a guest with device-mapper, loop devices
// and mkfs.ext4 that runs this package's TestGuest* tests.
func TestDMSandboxesInGuest(t *testing.T) {
	guesttest.Run(t, guesttest.Options{
		Modules: []string{"drivers/md/dm-mod.ko.xz", "drivers/md/dm-bufio.ko.xz", "drivers/md/dm-snapshot.ko.xz",
			"drivers/md/dm-zero.ko.xz", "drivers/block/loop.ko.xz"},
		Tools: []string{"dmsetup", "losetup", "mkfs.ext4"}, Run: "^TestGuest", MustPass: []string{"TestGuestDMSandboxes", "TestGuestDMSandboxes/SweepAfterKill"},
		MemoryMiB: 1024,
	})
}

func layeredDiskSandboxes(t *testing.T, kind disk.Layering) {
	data := testutil.FakeDataDir(t, "python")
	inner, err := disk.Choose(context.Background(), kind, data)
	if err != nil {
		t.Skipf("SKIP: %v", err)
	}
	tr := disktest.NewTracked(inner, t.TempDir())
	d := vmmfake.New()
	d.Exec = diskExec
	m, err := New(Config{DataDir: data, RunDir: t.TempDir(), DiskLayering: string(kind)}, WithDriver(d), WithLayerer(tr))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := OpenService(m, ServiceConfig{MemoryBudgetMiB: 16 << 10 /* fake VMs; the guest has little memory */}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close(context.Background())
	testLayeredDisks(t, svc.Sandboxes, tr)
	svc.Close(context.Background())
	if open := tr.Open(); len(open) > 0 {
		t.Fatalf("disks still attached after the sandboxes are gone: %v", open)
	}
	if kind == disk.LayeringDM {
		if left := attachedUnder(t, data); len(left) > 0 {
			t.Fatalf("devices left: %v", left)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(m.disksDir(), "*")); len(left) != 0 {
		t.Fatalf("disks left: %v", left)
	}
}

func testLayeredDisks(t *testing.T, s *Sandboxes, tr *disktest.Tracked) {
	ctx := context.Background()
	parent, err := s.Create(ctx, CreateRequest{Language: "python", DiskMiB: 64})
	if err != nil {
		t.Fatal(err)
	}
	p := execOut(t, s, "", parent.ID, "dpath")
	if !strings.HasPrefix(p, tr.DevDir+"/") {
		t.Fatalf("the VM's disk is %s, not the attached disk in %s", p, tr.DevDir)
	}
	dev, _ := os.Readlink(p)
	t.Logf("the VM's disk: %s", dev)
	execOut(t, s, "", parent.ID, "dwrite", "before the fork")
	kids, err := s.Fork(ctx, "", parent.ID, ForkRequest{Count: 2})
	if err != nil {
		t.Fatal(err)
	}
	if tr.Saves() != 1 {
		t.Fatalf("the fork saved the parent's disk %d times, want once", tr.Saves())
	}
	for i, k := range kids {
		if got := execOut(t, s, "", k.ID, "dread"); got != "before the fork" {
			t.Fatalf("child %d reads %q", i, got)
		}
		execOut(t, s, "", k.ID, "dwrite", "child "+k.ID)
	}
	if got := execOut(t, s, "", parent.ID, "dread"); got != "before the fork" {
		t.Fatalf("after the children wrote, the parent reads %q", got)
	}
	for i := range 5 {
		want := "cycle " + string(rune('0'+i))
		execOut(t, s, "", parent.ID, "dwrite", want)
		if _, err := s.Hibernate(ctx, "", parent.ID); err != nil {
			t.Fatal(err)
		}
		if open := tr.Open(); len(open) != len(kids) {
			t.Fatalf("hibernated, %d disks attached (%v), want the %d children's", len(open), open, len(kids))
		}
		if _, err := s.Resume(ctx, "", parent.ID, 0); err != nil {
			t.Fatal(err)
		}
		if got := execOut(t, s, "", parent.ID, "dread"); got != want {
			t.Fatalf("after resume %d the parent reads %q, want %q", i, got, want)
		}
	}
	for _, k := range kids {
		if got := execOut(t, s, "", k.ID, "dread"); got != "child "+k.ID {
			t.Fatalf("child %s reads %q", k.ID, got)
		}
		if err := s.Delete(ctx, "", k.ID); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Delete(ctx, "", parent.ID); err != nil {
		t.Fatal(err)
	}
}

// attachedUnder lists device-mapper devices named for the data directory
// and loop devices on files under it.
func attachedUnder(t *testing.T, data string) []string {
	l, err := disk.NewDMLayers(data)
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	if out, err := exec.Command("dmsetup", "ls").Output(); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			if name, _, _ := strings.Cut(line, "\t"); strings.HasPrefix(name, "fs-"+l.Prefix+"-") {
				left = append(left, name)
			}
		}
	}
	loops, _ := filepath.Glob("/sys/block/loop*")
	for _, sys := range loops {
		if b, err := os.ReadFile(filepath.Join(sys, "loop", "backing_file")); err == nil && strings.HasPrefix(string(b), l.Root+"/") {
			left = append(left, strings.TrimSpace(string(b)))
		}
	}
	return left
}

// sweepRecorder is a Layerer that records whom its Sweep was asked about.
type sweepRecorder struct {
	disk.CloneLayers
	scope *disk.SweepScope
}

func (r *sweepRecorder) Sweep(_ context.Context, s disk.SweepScope) error {
	r.scope = &s
	return nil
}

// A new Manager asks its Layerer to sweep the devices of VMs whose owner
// died (after kill -9 of serve), and only theirs.
func TestManagerSweepsDeadVMsDisks(t *testing.T) {
	data, run := testutil.FakeDataDir(t, "python"), t.TempDir()
	d := vmmfake.New()
	m, err := New(Config{DataDir: data, RunDir: run}, WithDriver(d))
	if err != nil {
		t.Fatal(err)
	}
	live, err := m.claim("vm-0000000001")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(live)
	dead, _ := m.claim("vm-0000000002")
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(dead, []byte(strconv.Itoa(gone.ProcessState.Pid())), 0o600) // a process that ended
	rec := &sweepRecorder{}
	if _, err := New(Config{DataDir: data, RunDir: run}, WithDriver(d), WithLayerer(rec)); err != nil {
		t.Fatal(err)
	}
	if rec.scope == nil {
		t.Fatal("the Manager did not sweep layered disks")
	}
	for vm, want := range map[string]bool{"vm-0000000001": true, "vm-0000000002": false, "vm-0000000003": false, "../owners": false} {
		if got := rec.scope.Alive(vm); got != want {
			t.Errorf("alive(%s) = %v, want %v", vm, got, want)
		}
	}
	if !rec.scope.Alone {
		t.Error("with only this process's VMs alive, the sweep was not told it is alone")
	}
	// Another live process (our parent stands in for a second serve)
	// may be attaching: idle loop devices are not the sweep's then.
	other, _ := m.claim("vm-0000000004")
	defer os.Remove(other)
	os.WriteFile(other, []byte(strconv.Itoa(os.Getppid())), 0o600)
	if _, err := New(Config{DataDir: data, RunDir: run}, WithDriver(d), WithLayerer(rec)); err != nil {
		t.Fatal(err)
	}
	if rec.scope.Alone {
		t.Error("with another live owner, the sweep was told it is alone")
	}
}

// disk_layering = "dm" on a host without device-mapper is refused at
// start, saying why; "auto" falls back to clones there.
func TestDMLayeringNeedsDeviceMapper(t *testing.T) {
	if err := disk.NewMapper().Available(context.Background()); err == nil {
		t.Skip("SKIP: this host has device-mapper")
	}
	data, run := testutil.FakeDataDir(t, "python"), t.TempDir()
	_, err := New(Config{DataDir: data, RunDir: run, DiskLayering: "dm"}, WithDriver(vmmfake.New()))
	if err == nil || !strings.Contains(err.Error(), "device-mapper") {
		t.Fatalf("dm layering without device-mapper: %v", err)
	}
	m, err := New(Config{DataDir: data, RunDir: run}, WithDriver(vmmfake.New()))
	if err != nil {
		t.Fatal(err)
	}
	if k := m.layers.Kind(); k != disk.LayeringClone {
		t.Fatalf("auto chose %s on a host without device-mapper", k)
	}
	if _, err := New(Config{DataDir: data, RunDir: run, DiskLayering: "overlay"}); err == nil {
		t.Fatal("an unknown disk layering was accepted")
	}
}

// TestDMSweepAfterKill is dmSweepAfterKill on this host's device-mapper,
// where it has one (TestGuestDMSandboxes runs it in a guest).
func TestDMSweepAfterKill(t *testing.T) {
	if guesttest.InGuest() {
		t.Skip("host test: see TestGuestDMSandboxes")
	}
	if err := disk.NewMapper().Available(context.Background()); err != nil {
		t.Skipf("SKIP: %v; TestDMSandboxesInGuest runs this in a guest", err)
	}
	dmSweepAfterKill(t)
}

// dmSweepAfterKill: the owner of a VM with a layered disk dies without a
// word (kill -9 of serve); the next Manager on the data directory removes
// the VM's device stack and loop devices, and the sandbox's files stay.
func dmSweepAfterKill(t *testing.T) {
	data, run := testutil.FakeDataDir(t, "python"), t.TempDir()
	cfg := Config{DataDir: data, RunDir: run, DiskLayering: string(disk.LayeringDM)}
	d := vmmfake.New()
	d.Exec = diskExec
	m, err := New(cfg, WithDriver(d))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := OpenService(m, ServiceConfig{MemoryBudgetMiB: 16 << 10}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close(context.Background()) // its VM's devices are gone by then: errors only
	s := svc.Sandboxes
	sb, err := s.Create(context.Background(), CreateRequest{Language: "python", DiskMiB: 64})
	if err != nil {
		t.Fatal(err)
	}
	execOut(t, s, "", sb.ID, "dwrite", "before the kill")
	if len(attachedUnder(t, data)) == 0 {
		t.Fatal("a dm sandbox has no devices")
	}
	s.mu.Lock()
	vm := s.boxes[sb.ID].vm
	s.mu.Unlock()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	gone := exec.Command(self, "-test.run=^$") // a process that ends (the guest has no "true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	// Its owner is dead now, as if serve had been killed.
	if err := os.WriteFile(vm.owner, []byte(strconv.Itoa(gone.ProcessState.Pid())), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := New(cfg, WithDriver(vmmfake.New())); err != nil {
		t.Fatal(err)
	}
	if left := attachedUnder(t, data); len(left) > 0 {
		t.Fatalf("after the next start's sweep, still attached: %v", left)
	}
	if !disk.Layered(s.diskOf(sb.ID)) {
		t.Fatal("the sweep took the sandbox's disk")
	}
}
