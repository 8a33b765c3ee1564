package snapshot

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func testSpec() Spec {
	return Spec{Language: "python", Driver: "qemu", DriverVersion: "10.0.2", Machine: "tcg",
		KernelID: "k1", ImageID: "python-abc", VCPUs: 1, MemoryMiB: 512, AgentProtocol: 1}
}

func fill(files map[string]string) func(string) error {
	return func(dir string) error {
		for n, c := range files {
			if err := os.WriteFile(filepath.Join(dir, n), []byte(c), 0o600); err != nil {
				return err
			}
		}
		return nil
	}
}

func TestCreateGet(t *testing.T) {
	st := NewStore(t.TempDir(), 0)
	spec := testSpec()
	if _, err := st.Get(spec); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get before Create: %v, want ErrNotFound", err)
	}
	snap, err := st.Create(spec, fill(map[string]string{"memory": "RAM", "vmstate": "STATE"}))
	if err != nil {
		t.Fatal(err)
	}
	if snap.Key != spec.Key() || len(snap.Files) != 2 || snap.Files["memory"].Size != 3 {
		t.Fatalf("manifest %+v", snap.Manifest)
	}
	got, err := st.Get(spec)
	if err != nil {
		t.Fatal(err)
	}
	if got.Dir != snap.Dir {
		t.Fatalf("dir %s, want %s", got.Dir, snap.Dir)
	}
	if ents, _ := filepath.Glob(filepath.Join(st.Dir(), ".create-*")); len(ents) != 0 {
		t.Fatalf("temporary directories left: %v", ents)
	}
}

func TestKeyDependsOnEverySpecField(t *testing.T) {
	base := testSpec()
	seen := map[string]string{base.Key(): "base"}
	for name, mut := range map[string]func(*Spec){
		"driver version": func(s *Spec) { s.DriverVersion = "10.1" },
		"kernel":         func(s *Spec) { s.KernelID = "k2" },
		"image":          func(s *Spec) { s.ImageID = "python-def" },
		"memory":         func(s *Spec) { s.MemoryMiB = 1024 },
		"vcpus":          func(s *Spec) { s.VCPUs = 2 },
		"machine":        func(s *Spec) { s.Machine = "kvm" },
		"protocol":       func(s *Spec) { s.AgentProtocol = 2 },
		"runtime":        func(s *Spec) { s.Runtime = "prewarm-1" },
		"disk":           func(s *Spec) { s.DiskMiB = 1024 },
	} {
		s := base
		mut(&s)
		if other, dup := seen[s.Key()]; dup {
			t.Errorf("changing %s gives the same key as %s", name, other)
		}
		seen[s.Key()] = name
	}
}

func TestCorruptionIsDetected(t *testing.T) {
	for _, tc := range []struct {
		name string
		harm func(dir string) error
	}{
		{"flipped byte", func(dir string) error { return os.WriteFile(filepath.Join(dir, "memory"), []byte("RAN"), 0o600) }},
		{"truncated", func(dir string) error { return os.Truncate(filepath.Join(dir, "memory"), 1) }},
		{"missing file", func(dir string) error { return os.Remove(filepath.Join(dir, "vmstate")) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := NewStore(t.TempDir(), 0)
			spec := testSpec()
			snap, err := st.Create(spec, fill(map[string]string{"memory": "RAM", "vmstate": "STATE"}))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := st.Get(spec); err != nil { // verified once, cached
				t.Fatal(err)
			}
			if err := tc.harm(snap.Dir); err != nil {
				t.Fatal(err)
			}
			if _, err := st.Get(spec); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Get after damage: %v, want ErrCorrupt", err)
			}
		})
	}
}

func TestIncompatibleManifest(t *testing.T) {
	st := NewStore(t.TempDir(), 0)
	spec := testSpec()
	snap, err := st.Create(spec, fill(map[string]string{"memory": "RAM"}))
	if err != nil {
		t.Fatal(err)
	}
	// Someone copies a snapshot made for another kernel under this key.
	other := spec
	other.KernelID = "k-other"
	b, _ := os.ReadFile(filepath.Join(snap.Dir, manifestFile))
	m, _ := ParseManifest(b)
	m.Spec = other
	m.Key = spec.Key() // keeps the key, so ParseManifest must catch it
	writeManifest(t, snap.Dir, m)
	if _, err := st.Get(spec); !errors.Is(err, ErrInvalid) {
		t.Fatalf("manifest whose key does not match its spec: %v, want ErrInvalid", err)
	}
	// A consistent manifest for another spec stored under our key.
	m.Key = other.Key()
	writeManifest(t, snap.Dir, m)
	if _, err := st.Get(spec); !errors.Is(err, ErrInvalid) {
		t.Fatalf("manifest of another snapshot: %v, want ErrInvalid", err)
	}
}

func TestIncompatibleSpecMessage(t *testing.T) {
	snap, host := testSpec(), testSpec()
	host.DriverVersion, host.KernelID, host.Machine = "10.1.0", "k2", ""
	var err error = &MismatchError{What: "snapshot x", Changes: snap.Diff(host)}
	want := "snapshot incompatible with this host: snapshot x was made for another setup (snapshot -> this host): " +
		"driver version 10.0.2 -> 10.1.0, machine tcg -> (none), kernel k1 -> k2"
	if err.Error() != want {
		t.Errorf("error\n %s\nwant\n %s", err, want)
	}
	var mm *MismatchError
	if !errors.Is(err, ErrIncompatible) || !errors.As(err, &mm) || len(mm.Changes) != 3 {
		t.Errorf("%v: not ErrIncompatible with three changes", err)
	}
}

func writeManifest(t *testing.T, dir string, m *Manifest) {
	t.Helper()
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, manifestFile), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestEvictsLeastRecentlyUsed(t *testing.T) {
	st := NewStore(t.TempDir(), 0)
	big := strings.Repeat("x", 64<<10)
	specs := make([]Spec, 3)
	for i := range specs {
		specs[i] = testSpec()
		specs[i].ImageID = string(rune('a' + i))
		if _, err := st.Create(specs[i], fill(map[string]string{"memory": big})); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.Get(specs[0]); err != nil { // 0 is now the most recently used
		t.Fatal(err)
	}
	// Room for about two: creating a fourth evicts the least recently used (1).
	st.maxBytes = 2*(64<<10) + 32<<10
	s4 := testSpec()
	s4.ImageID = "d"
	if _, err := st.Create(s4, fill(map[string]string{"memory": big})); err != nil {
		t.Fatal(err)
	}
	for i, want := range []bool{true, false, false} {
		_, err := st.Get(specs[i])
		if got := err == nil; got != want {
			t.Errorf("snapshot %d present=%v, want %v (%v)", i, got, want, err)
		}
	}
	if _, err := st.Get(s4); err != nil {
		t.Errorf("the new snapshot was evicted: %v", err)
	}
}

func TestPrune(t *testing.T) {
	st := NewStore(t.TempDir(), 0)
	current, stale := testSpec(), testSpec()
	stale.KernelID = "old-kernel"
	for _, s := range []Spec{current, stale} {
		if _, err := st.Create(s, fill(map[string]string{"memory": "x"})); err != nil {
			t.Fatal(err)
		}
	}
	keep := func(s Spec) bool { return s.KernelID == current.KernelID }
	if gone, _ := st.Prune(keep, true); len(gone) != 1 || gone[0].Key != stale.Key() {
		t.Fatalf("dry run: %+v", gone)
	}
	if _, err := st.Get(stale); err != nil {
		t.Fatal("dry run removed a snapshot")
	}
	if _, err := st.Prune(keep, false); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Get(stale); !errors.Is(err, ErrNotFound) {
		t.Fatalf("stale snapshot still there: %v", err)
	}
	if _, err := st.Get(current); err != nil {
		t.Fatalf("current snapshot pruned: %v", err)
	}
}

// A pulled snapshot's signature is checked when it is adopted and again
// on every Get, so revoking a key or stripping a signature takes effect;
// snapshots the store made itself need no signature.
func TestStorePulledSnapshotsStayVerified(t *testing.T) {
	dir := t.TempDir()
	spec := testSpec()
	pulled := func(st *Store, sign bool) string {
		t.Helper()
		tmp, err := st.TempDir()
		if err != nil {
			t.Fatal(err)
		}
		if err := fill(map[string]string{"memory": "RAM", "vmstate": "STATE"})(tmp); err != nil {
			t.Fatal(err)
		}
		if _, err := Seal(tmp, spec); err != nil {
			t.Fatal(err)
		}
		if sign {
			raw, _ := os.ReadFile(filepath.Join(tmp, manifestFile))
			if err := os.WriteFile(filepath.Join(tmp, signatureFile), remoteTestSigner.Sign(spec.Key(), raw), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return tmp
	}

	trusting := NewStore(dir, 0, WithTrust(remoteTestTrust))
	if _, err := trusting.Adopt(pulled(trusting, false)); !errors.Is(err, ErrUnsigned) {
		t.Fatalf("Adopt of an unsigned snapshot = %v, want ErrUnsigned", err)
	}
	if _, err := trusting.Get(spec); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a refused Adopt left a snapshot: %v", err)
	}
	snap, err := trusting.Adopt(pulled(trusting, true))
	if err != nil {
		t.Fatalf("Adopt of a signed snapshot: %v", err)
	}
	if _, err := trusting.Get(spec); err != nil {
		t.Fatalf("Get: %v", err)
	}
	if _, err := NewStore(dir, 0).Get(spec); !errors.Is(err, ErrSignature) {
		t.Errorf("Get of a pulled snapshot by a store without trusted keys = %v, want ErrSignature", err)
	}
	revoked := NewTrust(nil, false)
	if _, err := NewStore(dir, 0, WithTrust(revoked)).Get(spec); !errors.Is(err, ErrSignature) {
		t.Errorf("Get after the key was revoked = %v, want ErrSignature", err)
	}
	if err := os.Remove(filepath.Join(snap.Dir, signatureFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := trusting.Get(spec); !errors.Is(err, ErrUnsigned) {
		t.Errorf("Get of a pulled snapshot whose signature went = %v, want ErrUnsigned", err)
	}

	// Made here: no signature, no trust needed.
	local := NewStore(t.TempDir(), 0)
	if _, err := local.Create(spec, fill(map[string]string{"memory": "RAM"})); err != nil {
		t.Fatal(err)
	}
	if _, err := local.Get(spec); err != nil {
		t.Errorf("Get of a snapshot made locally: %v", err)
	}
}
