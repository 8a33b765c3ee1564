// Package disktest is the conformance suite every disk.Layerer passes:
// what a sandbox relies on of its writable disk, whichever way it is
// layered.
//
//	func TestCloneLayers(t *testing.T) {
//		disktest.Run(t, disktest.Harness{New: func(t *testing.T, root string) disk.Layerer { return disk.CloneLayers{} }})
//	}
package disktest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/firesandbox/firesandbox/internal/disk"
)

// Harness makes the Layerer under test.
type Harness struct {
	// New returns a Layerer whose files all live under root (a fresh
	// temporary directory per test).
	New func(t *testing.T, root string) disk.Layerer
	// Leftovers lists what of the Layerer's kind is still attached on the
	// host for files under root (device-mapper devices, loop devices);
	// nil when attaching leaves nothing but files.
	Leftovers func(t *testing.T, root string) []string
}

const (
	mib      = int64(1 << 20)
	baseSize = 4 * mib
	diskSize = 8 * mib
)

type fixture struct {
	t      *testing.T
	h      Harness
	l      disk.Layerer
	root   string
	base   disk.Base
	data   []byte // the base's first MiB
	sum    [32]byte
	before os.FileInfo
}

func newFixture(t *testing.T, h Harness) *fixture {
	t.Helper()
	root := t.TempDir()
	f := &fixture{t: t, h: h, root: root, l: h.New(t, root), data: make([]byte, mib)}
	rand.Read(f.data)
	f.base = disk.Base{Path: filepath.Join(root, "snapshot", "disk.ext4")}
	if err := os.MkdirAll(filepath.Dir(f.base.Path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.base.Path, f.data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(f.base.Path, baseSize); err != nil {
		t.Fatal(err)
	}
	f.sum = sum(t, f.base.Path)
	f.base.Digest = hexOf(f.sum)
	f.before, _ = os.Stat(f.base.Path)
	t.Cleanup(func() {
		if t.Failed() {
			return
		}
		if got := sum(t, f.base.Path); got != f.sum {
			t.Error("the base changed")
		}
		if after, _ := os.Stat(f.base.Path); !after.ModTime().Equal(f.before.ModTime()) {
			t.Error("the base was written")
		}
		f.noLeftovers("at the end")
	})
	return f
}

func (f *fixture) create(name string) string {
	f.t.Helper()
	p := filepath.Join(f.root, name, "disk.ext4")
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		f.t.Fatal(err)
	}
	if err := f.l.Create(context.Background(), f.base, diskSize, p); err != nil {
		f.t.Fatal(err)
	}
	return p
}

func (f *fixture) attach(vm, p string) disk.Attached {
	f.t.Helper()
	a, err := f.l.Attach(context.Background(), vm, p)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { a.Close(context.Background()) })
	return a
}

func (f *fixture) noLeftovers(when string) {
	f.t.Helper()
	if f.h.Leftovers == nil {
		return
	}
	if left := f.h.Leftovers(f.t, f.root); len(left) > 0 {
		f.t.Errorf("%s, still attached: %v", when, left)
	}
}

// Run runs the suite against h.
func Run(t *testing.T, h Harness) {
	ctx := context.Background()
	t.Run("WritesVisibleAndSizeExtended", func(t *testing.T) {
		f := newFixture(t, h)
		p := f.create("a")
		a := f.attach("a", p)
		if got := readAt(t, a.Path(), 0, mib); !bytes.Equal(got, f.data) {
			t.Fatal("the disk does not read the base's data")
		}
		if n := size(t, a.Path()); n != diskSize {
			t.Fatalf("the disk has %d bytes, want %d (the base has %d)", n, diskSize, baseSize)
		}
		if got := readAt(t, a.Path(), 6*mib, 4096); !bytes.Equal(got, make([]byte, 4096)) {
			t.Fatal("beyond the base the disk does not read zeros")
		}
		writeAt(t, a.Path(), 0, []byte("written at 0"))
		writeAt(t, a.Path(), 6*mib, []byte("written beyond the base"))
		if err := a.Close(ctx); err != nil {
			t.Fatal(err)
		}
		f.noLeftovers("after Close")
		b := f.attach("a", p)
		if got := string(readAt(t, b.Path(), 0, 12)); got != "written at 0" {
			t.Fatalf("after attaching again the disk reads %q", got)
		}
		if got := string(readAt(t, b.Path(), 6*mib, 23)); got != "written beyond the base" {
			t.Fatalf("after attaching again the disk reads %q beyond the base", got)
		}
		if got := readAt(t, b.Path(), 12, mib-12); !bytes.Equal(got, f.data[12:]) {
			t.Fatal("the base's other data is gone")
		}
	})
	t.Run("TwoLayersOfOneBaseAreIsolated", func(t *testing.T) {
		f := newFixture(t, h)
		a := f.attach("a", f.create("a"))
		b := f.attach("b", f.create("b"))
		writeAt(t, a.Path(), 4096, []byte("aaaa"))
		writeAt(t, b.Path(), 4096, []byte("bbbb"))
		if got := string(readAt(t, a.Path(), 4096, 4)); got != "aaaa" {
			t.Fatalf("a reads %q", got)
		}
		if got := string(readAt(t, b.Path(), 4096, 4)); got != "bbbb" {
			t.Fatalf("b reads %q", got)
		}
		if got := sum(t, f.base.Path); got != f.sum {
			t.Fatal("a write reached the base")
		}
	})
	t.Run("SaveAndCopyStartFromTheParent", func(t *testing.T) {
		f := newFixture(t, h)
		parent := f.attach("parent", f.create("parent"))
		writeAt(t, parent.Path(), 8192, []byte("before the fork"))
		saved := filepath.Join(f.root, "fork", "disk.ext4")
		os.MkdirAll(filepath.Dir(saved), 0o700)
		if err := parent.Save(ctx, saved); err != nil {
			t.Fatal(err)
		}
		// The parent runs on after the save, and writes.
		writeAt(t, parent.Path(), 8192, []byte("parent, after!!"))
		childP := filepath.Join(f.root, "child", "disk.ext4")
		os.MkdirAll(filepath.Dir(childP), 0o700)
		if err := f.l.Copy(ctx, saved, childP); err != nil {
			t.Fatal(err)
		}
		if err := f.l.Remove(saved); err != nil {
			t.Fatal(err)
		}
		child := f.attach("child", childP)
		if got := string(readAt(t, child.Path(), 8192, 15)); got != "before the fork" {
			t.Fatalf("the child reads %q", got)
		}
		writeAt(t, child.Path(), 8192, []byte("the child's own"))
		if got := string(readAt(t, parent.Path(), 8192, 15)); got != "parent, after!!" {
			t.Fatalf("the parent reads %q", got)
		}
		if got := readAt(t, child.Path(), 0, mib); !bytes.Equal(got[:8192], f.data[:8192]) {
			t.Fatal("the child does not read the base")
		}
	})
	t.Run("FlattenIsAnImageOfItsOwn", func(t *testing.T) {
		f := newFixture(t, h)
		p := f.create("a")
		a := f.attach("a", p)
		writeAt(t, a.Path(), 4096, []byte("written"))
		writeAt(t, a.Path(), 6*mib, []byte("far out"))
		if err := a.Close(ctx); err != nil {
			t.Fatal(err)
		}
		flat := filepath.Join(f.root, "flat.img")
		if err := f.l.Flatten(ctx, "flatten", p, flat); err != nil {
			t.Fatal(err)
		}
		f.noLeftovers("after Flatten")
		fi, err := os.Stat(flat)
		if err != nil || !fi.Mode().IsRegular() || fi.Size() != diskSize {
			t.Fatalf("the flattened disk: %v, %v; want a %d-byte file", fi, err, diskSize)
		}
		want := append(append([]byte(nil), f.data...), make([]byte, diskSize-mib)...)
		copy(want[4096:], "written")
		copy(want[6*mib:], "far out")
		if got := readAt(t, flat, 0, diskSize); !bytes.Equal(got, want) {
			t.Fatal("the flattened disk does not hold the disk's data")
		}
		// It is an image: any Layerer attaches it as it is.
		b := f.attach("b", flat)
		if got := string(readAt(t, b.Path(), 4096, 7)); got != "written" {
			t.Fatalf("the flattened disk, attached, reads %q", got)
		}
	})
	t.Run("TheBaseOutlivesItsSnapshot", func(t *testing.T) {
		f := newFixture(t, h)
		// A template snapshot of its own, which the store then evicts.
		snap := disk.Base{Path: filepath.Join(f.root, "evicted", "disk.ext4"), Digest: f.base.Digest}
		os.MkdirAll(filepath.Dir(snap.Path), 0o700)
		if err := os.WriteFile(snap.Path, f.data, 0o600); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(f.root, "a", "disk.ext4")
		os.MkdirAll(filepath.Dir(p), 0o700)
		if err := f.l.Create(ctx, snap, diskSize, p); err != nil {
			t.Fatal(err)
		}
		if err := os.RemoveAll(filepath.Dir(snap.Path)); err != nil {
			t.Fatal(err)
		}
		a := f.attach("a", p)
		if got := readAt(t, a.Path(), 0, mib); !bytes.Equal(got, f.data) {
			t.Fatal("after its snapshot went, the disk does not read the base's data")
		}
	})
	t.Run("CloseAndRemoveLeaveNothing", func(t *testing.T) {
		f := newFixture(t, h)
		p := f.create("a")
		a := f.attach("a", p)
		writeAt(t, a.Path(), 0, []byte("x"))
		if err := a.Close(ctx); err != nil {
			t.Fatal(err)
		}
		if err := a.Close(ctx); err != nil {
			t.Fatalf("a second Close: %v", err)
		}
		f.noLeftovers("after Close")
		if !f.l.Exists(p) {
			t.Fatal("Close removed the disk")
		}
		if err := f.l.Remove(p); err != nil {
			t.Fatal(err)
		}
		if f.l.Exists(p) {
			t.Fatal("the disk exists after Remove")
		}
		if left, _ := filepath.Glob(filepath.Join(f.root, "a", "*")); len(left) > 0 {
			t.Fatalf("Remove left %v", left)
		}
	})
	t.Run("FailureMidwayLeavesNothing", func(t *testing.T) {
		f := newFixture(t, h)
		// A create over a base that is not there.
		p := filepath.Join(f.root, "a", "disk.ext4")
		os.MkdirAll(filepath.Dir(p), 0o700)
		missing := f.base
		missing.Path += ".gone"
		if err := f.l.Create(ctx, missing, diskSize, p); err == nil {
			t.Fatal("a create over a missing base succeeded")
		}
		if left, _ := filepath.Glob(filepath.Join(f.root, "a", "*")); len(left) > 0 {
			t.Fatalf("a failed create left %v", left)
		}
		// An attach whose data file is gone: the stack below it is
		// built before the layer fails.
		p = f.create("b")
		os.Remove(p)
		os.Remove(p + ".cow")
		if a, err := f.l.Attach(ctx, "b", p); err == nil {
			a.Close(ctx)
			t.Fatal("an attach of a disk without its data succeeded")
		}
		f.noLeftovers("after a failed attach")
		// A save onto an existing file keeps the disk working.
		q := f.create("c")
		a := f.attach("c", q)
		if err := a.Save(ctx, q); err == nil {
			t.Fatal("a save onto the disk itself succeeded")
		}
		writeAt(t, a.Path(), 0, []byte("still works"))
		if got := string(readAt(t, a.Path(), 0, 11)); got != "still works" {
			t.Fatalf("after a failed save the disk reads %q", got)
		}
	})
	t.Run("SweepRemovesWhatADeadProcessLeft", func(t *testing.T) {
		f := newFixture(t, h)
		live := f.attach("live", f.create("live"))
		dead, err := f.l.Attach(ctx, "dead", f.create("dead"))
		if err != nil {
			t.Fatal(err)
		}
		_ = dead // its process was killed: nobody closes it
		if err := f.l.Sweep(ctx, disk.SweepScope{Alive: func(vm string) bool { return vm == "live" }, Alone: true}); err != nil {
			t.Fatal(err)
		}
		writeAt(t, live.Path(), 0, []byte("live"))
		if got := string(readAt(t, live.Path(), 0, 4)); got != "live" {
			t.Fatalf("a live disk reads %q after the sweep", got)
		}
		if err := live.Close(ctx); err != nil {
			t.Fatal(err)
		}
		f.noLeftovers("after the sweep")
	})
}

func hexOf(b [32]byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 64)
	for i, c := range b {
		out[2*i], out[2*i+1] = digits[c>>4], digits[c&15]
	}
	return string(out)
}

func sum(t *testing.T, p string) [32]byte {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s
}

func size(t *testing.T, p string) int64 {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func readAt(t *testing.T, p string, off, n int64) []byte {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatalf("read %s at %d: %v", p, off, err)
	}
	return b
}

func writeAt(t *testing.T, p string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatalf("write %s at %d: %v", p, off, err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}
