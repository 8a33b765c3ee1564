package qemu

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/firesandbox/firesandbox/internal/vmm"
)

// Spares serve only machines whose every input they were started with:
// never one with a network device or a writable disk (those are per VM),
// and never a snapshot replaced at the same path.
func TestSpareKey(t *testing.T) {
	dir := t.TempDir()
	write := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(name), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	mem := write("memory")
	layer := write("layer")
	open := func() *os.File {
		f, err := os.Open(mem)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	base := vmm.Config{ID: "a", RunDir: "/run/x/a", VCPUs: 1, MemoryMiB: 256, Disks: []vmm.Disk{{ID: "layer0", Path: layer, ReadOnly: true}}}
	k := spareKey(dir, base, open())
	if k == "" {
		t.Fatal("no key for a machine with read-only disks only")
	}
	other := base
	other.ID, other.RunDir = "b", "/run/x/b"
	if spareKey(dir, other, open()) != k {
		t.Error("the machine's id and run dir changed the key")
	}
	for name, c := range map[string]vmm.Config{
		"writable disk":  func() vmm.Config { c := base; c.Disks = []vmm.Disk{{ID: "d", Path: layer}}; return c }(),
		"network device": func() vmm.Config { c := base; c.Net = &vmm.NetDevice{MAC: "02:00:00:00:00:01", Tap: "tap0"}; return c }(),
	} {
		if spareKey(dir, c, open()) != "" {
			t.Errorf("%s: a spare could serve it", name)
		}
	}
	if spareKey(dir, base, nil) != "" {
		t.Error("RAM in the state file: a spare could serve it")
	}
	bigger := base
	bigger.MemoryMiB = 512
	if spareKey(dir, bigger, open()) == k {
		t.Error("another shape has the same key")
	}
	os.Remove(mem)
	write("memory") // the snapshot replaced at the same path
	if spareKey(dir, base, open()) == k {
		t.Error("a replaced memory file has the old key")
	}
}
