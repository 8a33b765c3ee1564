package snapshot

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// hibernationSpec is the Spec of a hibernated sandbox with a 1 GiB disk.
func hibernationSpec() Spec { return hibernationSpecDisk(1024) }

func hibernationSpecDisk(diskMiB int) Spec {
	s := testSpec()
	s.DiskMiB = diskMiB
	return s
}

// writeHibernation fills dir as Hibernate leaves it: memory (sparse),
// device state and the sandbox's sparse writable 1 GiB disk image.
func writeHibernation(t *testing.T, dir string) map[string][]byte {
	return writeHibernationDisk(t, dir, 1024)
}

func writeHibernationDisk(t *testing.T, dir string, diskMiB int64) map[string][]byte {
	t.Helper()
	mem := make([]byte, 8<<20)
	copy(mem[1<<20:], remoteTestBytes(20, 300<<10))
	files := map[string][]byte{"memory": mem, "vmstate": remoteTestBytes(21, 70000)}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeSparse(t, filepath.Join(dir, "upper.ext4"), diskMiB<<20, map[int64][]byte{0: remoteTestBytes(22, 4096), diskMiB << 19: remoteTestBytes(23, 2<<20)})
	return files
}

// writeSparse makes a sparse file of size bytes holding data at offsets.
func writeSparse(t *testing.T, p string, size int64, data map[int64][]byte) {
	t.Helper()
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for off, b := range data {
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
}

func TestSealCheck(t *testing.T) {
	dir := t.TempDir()
	writeHibernation(t, dir)
	spec := hibernationSpec()
	before := digestedBytes.Load()
	m, err := Seal(dir, spec)
	if err != nil {
		t.Fatal(err)
	}
	// The 1 GiB disk holds 2 MiB of data and memory 300 KiB: what is
	// hashed is a few blocks, not the apparent 1.1 GiB.
	if hashed := digestedBytes.Load() - before; hashed > 8<<20 {
		t.Errorf("Seal hashed %d MiB for ~2.5 MiB of data", hashed>>20)
	}
	if len(m.Files) != 3 || m.Files["upper.ext4"].Size != 1<<30 || m.Key != spec.Key() {
		t.Fatalf("manifest %+v", m)
	}
	if _, err := Check(dir, spec); err != nil {
		t.Fatalf("Check right after Seal: %v", err)
	}
	before = digestedBytes.Load()
	if _, err := Check(dir, spec); err != nil {
		t.Fatal(err)
	}
	if hashed := digestedBytes.Load() - before; hashed != 0 {
		t.Errorf("Check of unchanged files hashed %d bytes, want none (digests are remembered per file version)", hashed)
	}
}

// After a VMM or kernel upgrade a hibernated sandbox must not resume, and
// the error must say what changed; its data stays where it is.
func TestCheckNamesWhatChanged(t *testing.T) {
	dir := t.TempDir()
	writeHibernationDisk(t, dir, 64)
	spec := hibernationSpecDisk(64)
	if _, err := Seal(dir, spec); err != nil {
		t.Fatal(err)
	}
	snapshotOf := func() map[string][]byte {
		got := map[string][]byte{}
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			b, err := os.ReadFile(filepath.Join(dir, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			got[e.Name()] = b
		}
		return got
	}
	was := snapshotOf()

	host := spec
	host.DriverVersion = "10.1.0"
	host.KernelID = "k2"
	_, err := Check(dir, host)
	var mm *MismatchError
	if !errors.As(err, &mm) || !errors.Is(err, ErrIncompatible) {
		t.Fatalf("Check after an upgrade = %v, want a *MismatchError", err)
	}
	for _, want := range []string{"driver version 10.0.2 -> 10.1.0", "kernel k1 -> k2", dir} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if len(mm.Changes) != 2 {
		t.Errorf("changes %v, want exactly the driver version and the kernel", mm.Changes)
	}
	now := snapshotOf()
	for name, b := range was {
		if !bytes.Equal(now[name], b) {
			t.Errorf("%s changed or went away after a refused Check", name)
		}
	}
	if _, err := Check(dir, spec); err != nil {
		t.Errorf("Check with the original spec after a refusal: %v", err)
	}
}

func TestCheckDetectsDamage(t *testing.T) {
	for name, harm := range map[string]func(dir string) error{
		"disk byte in a hole": func(dir string) error {
			f, err := os.OpenFile(filepath.Join(dir, "upper.ext4"), os.O_WRONLY, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = f.WriteAt([]byte{1}, 900<<20)
			return err
		},
		"disk grown":      func(dir string) error { return os.Truncate(filepath.Join(dir, "upper.ext4"), 1<<30+4096) },
		"memory replaced": func(dir string) error { return os.WriteFile(filepath.Join(dir, "memory"), make([]byte, 8<<20), 0o600) },
		"state missing":   func(dir string) error { return os.Remove(filepath.Join(dir, "vmstate")) },
		"manifest missing": func(dir string) error {
			return os.Remove(filepath.Join(dir, manifestFile))
		},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			writeHibernation(t, dir)
			if _, err := Seal(dir, hibernationSpec()); err != nil {
				t.Fatal(err)
			}
			if _, err := Check(dir, hibernationSpec()); err != nil {
				t.Fatal(err)
			}
			if err := harm(dir); err != nil {
				t.Fatal(err)
			}
			_, err := Check(dir, hibernationSpec())
			want := ErrCorrupt
			if name == "manifest missing" {
				want = ErrNotFound
			}
			if !errors.Is(err, want) {
				t.Fatalf("Check after damage = %v, want %v", err, want)
			}
		})
	}
}

func TestSealRefuses(t *testing.T) {
	t.Run("larger than its spec", func(t *testing.T) {
		dir := t.TempDir()
		writeHibernation(t, dir)
		spec := hibernationSpec()
		spec.DiskMiB = 256 // the disk is 1 GiB: more than memory, disk and state allow
		if _, err := Seal(dir, spec); !errors.Is(err, ErrInvalid) {
			t.Fatalf("Seal = %v, want ErrInvalid", err)
		}
		if _, err := os.Stat(filepath.Join(dir, manifestFile)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("a refused Seal left a manifest (%v)", err)
		}
	})
	t.Run("unexpected entry", func(t *testing.T) {
		dir := t.TempDir()
		writeHibernation(t, dir)
		if err := os.Mkdir(filepath.Join(dir, "sub"), 0o700); err != nil {
			t.Fatal(err)
		}
		if _, err := Seal(dir, hibernationSpec()); !errors.Is(err, ErrInvalid) {
			t.Fatalf("Seal of a directory with a subdirectory = %v, want ErrInvalid", err)
		}
	})
	t.Run("invalid spec", func(t *testing.T) {
		dir := t.TempDir()
		writeHibernation(t, dir)
		spec := hibernationSpec()
		spec.MemoryMiB = 0
		if _, err := Seal(dir, spec); !errors.Is(err, ErrInvalid) {
			t.Fatalf("Seal with no memory = %v, want ErrInvalid", err)
		}
	})
}

// A directory sealed again (a sandbox hibernated anew) loses the
// signature and pull record that vouched for its old contents.
func TestResealDropsSignature(t *testing.T) {
	dir := t.TempDir()
	writeHibernation(t, dir)
	if _, err := Seal(dir, hibernationSpec()); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{signatureFile, originFile} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("{}"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Check(dir, hibernationSpec()); !errors.Is(err, ErrUnsigned) && !errors.Is(err, ErrSignature) {
		t.Fatalf("Check of a directory marked pulled, without trust = %v, want it refused", err)
	}
	if _, err := Seal(dir, hibernationSpec()); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{signatureFile, originFile} {
		if _, err := os.Stat(filepath.Join(dir, name)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s survived a new Seal", name)
		}
	}
	if _, err := Check(dir, hibernationSpec()); err != nil {
		t.Fatal(err)
	}
}
