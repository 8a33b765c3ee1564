package image

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"testing/fstest"

	"golang.org/x/sys/unix"
)

// What a layer's build deletes must become a whiteout in the layer, and a
// directory it replaces an opaque directory, so that stacked in the guest
// the layer hides what lies below it, and packing must keep both.
func TestLayerCapturesWhiteouts(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: overlay mounts need root")
	}
	if _, err := exec.LookPath("unsquashfs"); err != nil {
		t.Skip("skipped: unsquashfs not installed (squashfs-tools)")
	}
	dir := t.TempDir()
	lower, upper, work, merged := filepath.Join(dir, "lower"), filepath.Join(dir, "upper"), filepath.Join(dir, "work"), filepath.Join(dir, "merged")
	for _, d := range []string{lower + "/etc/old.d", upper, work, merged} {
		os.MkdirAll(d, 0o755)
	}
	os.WriteFile(filepath.Join(lower, "etc/keep"), []byte("base"), 0o644)
	os.WriteFile(filepath.Join(lower, "etc/drop"), []byte("base"), 0o644)
	os.WriteFile(filepath.Join(lower, "etc/old.d/x"), []byte("base"), 0o644)

	err := inOverlay(lower, upper, work, merged, func(*[]string) error {
		if err := os.Remove(filepath.Join(merged, "etc/drop")); err != nil {
			return err
		}
		if err := os.RemoveAll(filepath.Join(merged, "etc/old.d")); err != nil {
			return err
		}
		if err := os.Mkdir(filepath.Join(merged, "etc/old.d"), 0o755); err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(merged, "etc/new"), []byte("layer"), 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(upper, "etc/drop"), &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFCHR || st.Rdev != 0 {
		t.Fatalf("deleted file is not a 0/0 whiteout in the layer: %v mode %o rdev %d", err, st.Mode, st.Rdev)
	}
	if _, err := os.Stat(filepath.Join(upper, "etc/keep")); !os.IsNotExist(err) {
		t.Fatal("an untouched base file was copied into the layer")
	}
	opaque := make([]byte, 8)
	if n, err := unix.Lgetxattr(filepath.Join(upper, "etc/old.d"), "trusted.overlay.opaque", opaque); err != nil || string(opaque[:n]) != "y" {
		t.Fatalf("replaced directory is not opaque: %v", err)
	}

	out := filepath.Join(dir, "layer.squashfs")
	if err := Pack(context.Background(), FormatSquashFS, upper, out, io.Discard); err != nil {
		t.Fatal(err)
	}
	list, err := exec.Command("unsquashfs", "-lln", out).CombinedOutput()
	if err != nil {
		t.Fatalf("unsquashfs: %v %s", err, list)
	}
	var drop string
	for _, l := range strings.Split(string(list), "\n") {
		if strings.HasSuffix(l, "/etc/drop") {
			drop = l
		}
	}
	if !strings.HasPrefix(drop, "c") || !strings.Contains(drop, "0,  0") && !strings.Contains(drop, "0, 0") {
		t.Fatalf("packed layer lost the whiteout: %q\n%s", drop, list)
	}
	// The opaque xattr is checked after unpacking the layer again.
	unpacked := filepath.Join(dir, "unpacked")
	if b, err := exec.Command("unsquashfs", "-d", unpacked, out).CombinedOutput(); err != nil {
		t.Fatalf("unsquashfs: %v %s", err, b)
	}
	if n, err := unix.Lgetxattr(filepath.Join(unpacked, "etc/old.d"), "trusted.overlay.opaque", opaque); err != nil || string(opaque[:n]) != "y" {
		t.Fatalf("packed layer lost the opaque directory: %v", err)
	}
}

func TestLayerIDs(t *testing.T) {
	e := &Entry{Name: "python", Packages: []string{"python3"}}
	a := e.LayerID("base-1", FormatSquashFS)
	if a != e.LayerID("base-1", FormatSquashFS) || !strings.HasPrefix(a, "python-") {
		t.Fatalf("unstable or badly named id %q", a)
	}
	if a == e.LayerID("base-2", FormatSquashFS) || a == e.LayerID("base-1", FormatEROFS) {
		t.Fatal("layer id ignores its parent or format")
	}
	if baseID(DefaultBase, FormatSquashFS) == baseID(Base{Suite: "trixie", Variant: "minbase"}, FormatSquashFS) {
		t.Fatal("base id ignores the suite")
	}
}

func writeImage(t *testing.T, st *Store, m Manifest) {
	t.Helper()
	dir := filepath.Join(st.Dir, m.ID)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := st.commitManifestOnly(dir, m); err != nil {
		t.Fatal(err)
	}
}

func TestPruneKeepsWhatTheCatalogUses(t *testing.T) {
	st := NewStore(t.TempDir())
	cat, err := LoadCatalog(fstestCatalog())
	if err != nil {
		t.Fatal(err)
	}
	e, _ := cat.Lookup("python", "")
	base := baseID(DefaultBase, FormatSquashFS)
	writeImage(t, st, Manifest{ID: base, Language: "base", Format: FormatSquashFS})
	writeImage(t, st, Manifest{ID: e.ID(DefaultBase, FormatSquashFS), Language: "python", Format: FormatSquashFS, Parent: base})
	writeImage(t, st, Manifest{ID: "python-0000000000000000", Language: "python", Format: FormatSquashFS, Parent: base}) // stale
	writeImage(t, st, Manifest{ID: "base-0000000000000000", Language: "base", Format: FormatSquashFS})                   // orphan

	removed, err := st.Prune(cat, false)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, im := range removed {
		ids = append(ids, im.ID)
	}
	if strings.Join(ids, " ") != "base-0000000000000000 python-0000000000000000" && strings.Join(ids, " ") != "python-0000000000000000 base-0000000000000000" {
		t.Fatalf("removed %v", ids)
	}
	left, _ := st.List()
	if len(left) != 2 {
		t.Fatalf("%d images left, want the python image and its base", len(left))
	}
}

func fstestCatalog() fstest.MapFS {
	return fstest.MapFS{"python.toml": {Data: []byte(`name = "python"
version = "3"
packages = ["python3"]
file = "main.py"
run = ["python3", "main.py"]
[test]
code = "print(1)"
stdout = "1\n"
`)}}
}
