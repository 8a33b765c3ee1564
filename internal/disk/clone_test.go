package disk

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A clone has the source's bytes, takes only what the source has
// allocated, and is independent of it afterwards.
func TestCloneIsSparseAndIndependent(t *testing.T) {
	if inGuest() {
		t.Skip("host test")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(64 << 20)
	f.WriteAt(bytes.Repeat([]byte("a"), 1<<20), 0)
	f.WriteAt(bytes.Repeat([]byte("b"), 1<<20), 32<<20)
	f.Close()

	dst := filepath.Join(dir, "sub", "dst")
	method, err := Clone(context.Background(), src, dst)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cloned with %s", method)
	fi, _ := os.Stat(dst)
	if fi.Size() != 64<<20 {
		t.Fatalf("clone is %d bytes", fi.Size())
	}
	if n, _ := Allocated(dst); method == SparseCopy && n > 4<<20 {
		t.Fatalf("a sparse copy of 2 MiB of data takes %d KiB", n>>10)
	}
	got, _ := os.ReadFile(dst)
	want, _ := os.ReadFile(src)
	if !bytes.Equal(got, want) {
		t.Fatal("clone differs from its source")
	}
	g, _ := os.OpenFile(dst, os.O_WRONLY, 0)
	g.WriteAt([]byte("changed"), 0)
	g.Close()
	if b, _ := os.ReadFile(src); string(b[:7]) == "changed" {
		t.Fatal("writing the clone changed the source")
	}
	if _, err := Clone(context.Background(), src, dst); err == nil {
		t.Fatal("cloning over an existing file succeeded")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	other := filepath.Join(dir, "cancelled")
	if _, err := Clone(ctx, src, other); err == nil && method == SparseCopy {
		t.Fatal("a cancelled sparse copy succeeded")
	}
	if _, err := os.Stat(other); err == nil && method == SparseCopy {
		t.Fatal("a cancelled clone left its file")
	}
}

// A failure half-way through Attach removes what it had built, top first.
func TestAttachFailureDetachesWhatItBuilt(t *testing.T) {
	if inGuest() {
		t.Skip("host test")
	}
	dir := t.TempDir()
	base := filepath.Join(dir, "base")
	os.WriteFile(base, make([]byte, 4096), 0o600)
	var calls []string
	loops := 0
	m := &Mapper{Run: func(_ context.Context, name string, args ...string) ([]byte, error) {
		calls = append(calls, name+" "+strings.Join(args, " "))
		switch {
		case name == "losetup" && args[0] == "--find":
			loops++
			return []byte("/dev/loop" + string(rune('0'+loops)) + "\n"), nil
		case name == "dmsetup" && args[0] == "info":
			return []byte("254:0\n"), nil
		case name == "dmsetup" && args[0] == "create" && args[1] == "fs-vm-1-l0":
			return nil, errors.New("no memory")
		}
		return nil, nil
	}}
	_, err := m.Attach(context.Background(), "vm-1", Chain{Base: base, SizeBytes: 1 << 20,
		Layers: []string{filepath.Join(dir, "l0"), filepath.Join(dir, "l1")}})
	if err == nil {
		t.Fatal("attach succeeded")
	}
	tail := strings.Join(calls[len(calls)-3:], "\n")
	want := "dmsetup remove --retry fs-vm-1-base\nlosetup --detach /dev/loop2\nlosetup --detach /dev/loop1"
	if tail != want {
		t.Fatalf("cleanup:\n%s\nwant\n%s", tail, want)
	}
	// The base's table: linear over the base, zeros up to the disk size.
	for _, c := range calls {
		if strings.HasPrefix(c, "dmsetup create fs-vm-1-base") &&
			!strings.Contains(c, "--readonly --table 0 8 linear /dev/loop1 0\n8 2040 zero") {
			t.Fatalf("base table: %q", c)
		}
	}
}

// A target whose module is not loaded yet counts: the kernel loads it
// when a table first uses it. One the kernel has no module for does not.
func TestTargetsLoadableOnDemand(t *testing.T) {
	if inGuest() {
		t.Skip("host test")
	}
	for name, tc := range map[string]struct {
		modules map[string]bool
		ok      bool
	}{
		"all loadable":   {map[string]bool{"dm-snapshot": true, "dm-zero": true}, true},
		"no dm-snapshot": {map[string]bool{"dm-zero": true}, false},
	} {
		t.Run(name, func(t *testing.T) {
			m := &Mapper{Run: func(_ context.Context, tool string, args ...string) ([]byte, error) {
				switch tool {
				case "dmsetup":
					return []byte("striped          v1.7.0\nlinear           v1.4.0\nerror            v1.6.0\n"), nil
				case "modprobe":
					if tc.modules[args[len(args)-1]] {
						return nil, nil
					}
				}
				return nil, errors.New("not found")
			}}
			if err := m.targets(context.Background()); (err == nil) != tc.ok {
				t.Fatalf("targets: %v, want ok=%v", err, tc.ok)
			}
		})
	}
}
