package disk

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	mib      = int64(1 << 20)
	baseSize = 64 * mib  // the shared pristine disk
	diskSize = 128 * mib // each VM's disk: the rest of it is the zero target
)

// TestGuestLayeredDisks checks the device-mapper layering's claims on a
// real kernel (run by TestDeviceMapperInGuest): a new VM's CoW file starts
// empty, a VM's writes grow only its own CoW file, the base is never
// written, a fork reads its parent's data and the two then diverge, a
// discard gives blocks back, and a detached chain attaches again intact.
func TestGuestLayeredDisks(t *testing.T) {
	if !inGuest() {
		t.Skip("runs inside a guest VM: see TestDeviceMapperInGuest")
	}
	ctx := context.Background()
	mp := NewMapper()
	if err := mp.Available(ctx); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	base := filepath.Join(dir, "base.ext4")
	pattern := func(seed byte, n int64) []byte { return bytes.Repeat([]byte{seed, seed ^ 0x5a, 0, 1}, int(n/4)) }
	// A sparse base with data in its first 8 MiB.
	baseData := make([]byte, 8*mib)
	rand.Read(baseData)
	if err := os.WriteFile(base, baseData, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(base, baseSize); err != nil {
		t.Fatal(err)
	}
	baseSum, baseTime := fileSum(t, base), mtime(t, base)

	cow := func(name string) string {
		p := filepath.Join(dir, name)
		if err := NewCoW(p, diskSize); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cowA, cowB := cow("a.cow"), cow("b.cow")
	if n := alloc(t, cowA); n != 0 {
		t.Fatalf("a new CoW file takes %d bytes", n)
	}
	a, err := mp.Attach(ctx, "vm-a", Chain{Base: base, SizeBytes: diskSize, Layers: []string{cowA}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := mp.Attach(ctx, "vm-b", Chain{Base: base, SizeBytes: diskSize, Layers: []string{cowB}})
	if err != nil {
		t.Fatal(err)
	}
	empty := alloc(t, cowA)
	t.Logf("a CoW file just attached takes %d KiB (the store's header)", empty>>10)
	if empty > 64<<10 {
		t.Fatalf("a freshly attached CoW file takes %d KiB: it should hold only a header", empty>>10)
	}
	if got := readAt(t, a.Path, 0, 8*mib); !bytes.Equal(got, baseData) {
		t.Fatal("the layered disk does not read the base's data")
	}
	if got := readAt(t, a.Path, 96*mib, mib); !bytes.Equal(got, make([]byte, mib)) {
		t.Fatal("beyond the base the disk does not read zeros")
	}
	if sz := devSize(t, a.Path); sz != diskSize {
		t.Fatalf("disk is %d bytes, want %d", sz, diskSize)
	}

	// A's writes land in A's CoW file only.
	writeAt(t, a.Path, mib, pattern(0xA1, 4*mib))
	writeAt(t, a.Path, 100*mib, pattern(0xA2, mib)) // in the zero-backed part
	if grown := alloc(t, cowA) - empty; grown < 5*mib {
		t.Fatalf("writing 5 MiB grew A's CoW file by %d KiB", grown>>10)
	}
	if n := alloc(t, cowB); n > empty {
		t.Fatalf("A's writes grew B's CoW file to %d KiB", n>>10)
	}
	if got := readAt(t, b.Path, mib, 4*mib); !bytes.Equal(got, baseData[mib:5*mib]) {
		t.Fatal("B sees A's writes")
	}
	if got := readAt(t, a.Path, 100*mib, mib); !bytes.Equal(got, pattern(0xA2, mib)) {
		t.Fatal("a write beyond the base did not read back")
	}

	// Fork A: the child reads what A wrote; afterwards they diverge.
	aSum := fileSum(t, cowA)
	frozen, err := mp.Freeze(ctx, a, filepath.Join(dir, "a2.cow"))
	if err != nil {
		t.Fatal(err)
	}
	if len(frozen.Layers) != 1 || len(a.Chain.Layers) != 2 {
		t.Fatalf("after the fork: frozen %v, parent %v", frozen.Layers, a.Chain.Layers)
	}
	cowC := cow("c.cow")
	c, err := mp.Attach(ctx, "vm-c", frozen.With(cowC))
	if err != nil {
		t.Fatal(err)
	}
	if got := readAt(t, c.Path, mib, 4*mib); !bytes.Equal(got, pattern(0xA1, 4*mib)) {
		t.Fatal("the fork does not read its parent's data")
	}
	if got := readAt(t, a.Path, mib, 4*mib); !bytes.Equal(got, pattern(0xA1, 4*mib)) {
		t.Fatal("the parent lost its data in the fork")
	}
	writeAt(t, a.Path, mib, pattern(0xB1, mib))
	writeAt(t, c.Path, 20*mib, pattern(0xC1, mib))
	if got := readAt(t, c.Path, mib, mib); !bytes.Equal(got, pattern(0xA1, mib)) {
		t.Fatal("the child sees the parent's write after the fork")
	}
	// 20 MiB is past the base's data: the parent reads zeros there.
	if got := readAt(t, a.Path, 20*mib, mib); !bytes.Equal(got, make([]byte, mib)) {
		t.Fatal("the parent sees the child's write")
	}
	if fileSum(t, cowA) != aSum {
		t.Fatal("the frozen layer changed after the fork")
	}
	if alloc(t, a.Chain.Layers[1]) < mib {
		t.Fatal("the parent's write after the fork did not go to its new CoW file")
	}

	// A discard in the VM gives the blocks back to the host.
	writeAt(t, c.Path, 40*mib, pattern(0xC2, 8*mib))
	before := alloc(t, cowC)
	discard(t, c.Path, 40*mib, 8*mib)
	after := alloc(t, cowC)
	t.Logf("discarding 8 MiB: child's CoW file %d KiB -> %d KiB", before>>10, after>>10)
	if before-after < 6*mib {
		t.Fatalf("discarding 8 MiB freed only %d KiB of the CoW file", (before-after)>>10)
	}

	// Detached (hibernated) and attached again (resumed), from the files.
	chainA := a.Chain
	for _, d := range []*Device{c, b, a} {
		if err := mp.Detach(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	a, err = mp.Attach(ctx, "vm-a", chainA)
	if err != nil {
		t.Fatal(err)
	}
	if got := readAt(t, a.Path, mib, 2*mib); !bytes.Equal(got, append(pattern(0xB1, mib), pattern(0xA1, 2*mib)[mib:]...)) {
		t.Fatal("the reattached chain lost data")
	}
	if got := readAt(t, a.Path, 100*mib, mib); !bytes.Equal(got, pattern(0xA2, mib)) {
		t.Fatal("the reattached chain lost the write beyond the base")
	}
	if err := mp.Detach(ctx, a); err != nil {
		t.Fatal(err)
	}

	if fileSum(t, base) != baseSum || mtime(t, base) != baseTime {
		t.Fatal("the base was written")
	}
	if out, _ := exec.Command("dmsetup", "ls").CombinedOutput(); !strings.Contains(string(out), "No devices found") {
		t.Fatalf("devices left after detach:\n%s", out)
	}
	if out, _ := exec.Command("losetup", "-a").CombinedOutput(); len(bytes.TrimSpace(out)) != 0 {
		t.Fatalf("loop devices left after detach:\n%s", out)
	}
}

// TestGuestFreezeFailureKeepsTheDisk: a fork whose new layer cannot be
// made leaves the parent's disk working and unchanged.
func TestGuestFreezeFailureKeepsTheDisk(t *testing.T) {
	if !inGuest() {
		t.Skip("runs inside a guest VM: see TestDeviceMapperInGuest")
	}
	ctx := context.Background()
	mp := NewMapper()
	dir := t.TempDir()
	base := filepath.Join(dir, "base")
	if err := os.WriteFile(base, bytes.Repeat([]byte{7}, int(mib)), 0o600); err != nil {
		t.Fatal(err)
	}
	top := filepath.Join(dir, "top.cow")
	if err := NewCoW(top, 4*mib); err != nil {
		t.Fatal(err)
	}
	d, err := mp.Attach(ctx, "vm-f", Chain{Base: base, SizeBytes: 4 * mib, Layers: []string{top}})
	if err != nil {
		t.Fatal(err)
	}
	defer mp.Detach(ctx, d)
	writeAt(t, d.Path, 0, bytes.Repeat([]byte{9}, 4096))
	// The new layer's file already exists: Freeze must refuse before
	// touching the device.
	if _, err := mp.Freeze(ctx, d, top); err == nil {
		t.Fatal("freeze onto an existing file succeeded")
	}
	writeAt(t, d.Path, 4096, bytes.Repeat([]byte{8}, 4096))
	if got := readAt(t, d.Path, 0, 8192); !bytes.Equal(got, append(bytes.Repeat([]byte{9}, 4096), bytes.Repeat([]byte{8}, 4096)...)) {
		t.Fatal("the disk does not work after a failed fork")
	}
}

func fileSum(t *testing.T, p string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

func mtime(t *testing.T, p string) int64 {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.ModTime().UnixNano()
}

func alloc(t *testing.T, p string) int64 {
	t.Helper()
	n, err := Allocated(p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func readAt(t *testing.T, dev string, off, n int64) []byte {
	t.Helper()
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatalf("read %s at %d: %v", dev, off, err)
	}
	return b
}

func writeAt(t *testing.T, dev string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatalf("write %s at %d: %v", dev, off, err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

func devSize(t *testing.T, dev string) int64 {
	t.Helper()
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n, err := f.Seek(0, 2)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func discard(t *testing.T, dev string, off, n int64) {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := [2]uint64{uint64(off), uint64(n)}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKDISCARD, uintptr(unsafe.Pointer(&r[0]))); e != 0 {
		ds, _ := filepath.Glob("/sys/block/*")
		for _, d := range ds {
			mx, _ := os.ReadFile(d + "/queue/discard_max_bytes")
			ro, _ := os.ReadFile(d + "/ro")
			name, _ := os.ReadFile(d + "/dm/name")
			t.Logf("%s discard_max=%s ro=%s name=%s", d, bytes.TrimSpace(mx), bytes.TrimSpace(ro), bytes.TrimSpace(name))
		}
		t.Fatalf("discard %s: %v", dev, e)
	}
}
