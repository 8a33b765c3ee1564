package snapshot

import (
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
	a, b := testSpec(), testSpec()
	b.KernelID = "k2"
	if d := a.diff(b); !strings.Contains(d, "kernel k1 (this host: k2)") {
		t.Fatalf("diff %q", d)
	}
}

func writeManifest(t *testing.T, dir string, m *Manifest) {
	t.Helper()
	b, err := jsonMarshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, manifestFile), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestParseManifestRejectsUntrusted(t *testing.T) {
	spec := testSpec()
	good := `{"key":"` + spec.Key() + `","spec":{"language":"python","driver":"qemu","driver_version":"10.0.2","machine":"tcg","kernel_id":"k1","image_id":"python-abc","vcpus":1,"memory_mib":512,"agent_protocol":1},"files":{"memory":{"size":3,"sha256":"` + strings.Repeat("a", 64) + `"}},"created":"2026-01-01T00:00:00Z"}`
	if _, err := ParseManifest([]byte(good)); err != nil {
		t.Fatalf("good manifest: %v", err)
	}
	for name, bad := range map[string]string{
		"traversal":     strings.Replace(good, `"memory":{`, `"../evil":{`, 1),
		"manifest name": strings.Replace(good, `"memory":{`, `"manifest.json":{`, 1),
		"bad digest":    strings.Replace(good, strings.Repeat("a", 64), "zz", 1),
		"negative size": strings.Replace(good, `"size":3`, `"size":-1`, 1),
		"unknown field": strings.Replace(good, `"created"`, `"extra":1,"created"`, 1),
		"no files":      strings.Replace(good, `{"memory":{"size":3,"sha256":"`+strings.Repeat("a", 64)+`"}}`, `{}`, 1),
		"not json":      "{",
	} {
		if _, err := ParseManifest([]byte(bad)); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
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
