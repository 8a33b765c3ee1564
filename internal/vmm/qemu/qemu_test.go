package qemu_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/firesandbox/firesandbox/internal/testutil"
	"github.com/firesandbox/firesandbox/internal/vmm"
	"github.com/firesandbox/firesandbox/internal/vmm/qemu"
	"github.com/firesandbox/firesandbox/internal/vmm/vmmtest"
)

// newDriver returns a driver with its own memory dir, confined when the
// test runs as root (the default configuration needs root).
func newDriver(t *testing.T, cfg qemu.Config) *qemu.Driver {
	t.Helper()
	if cfg.MemoryDir == "" {
		cfg.MemoryDir = filepath.Join(t.TempDir(), "mem")
	}
	if os.Geteuid() != 0 {
		cfg.Unconfined = true
	}
	d, err := qemu.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestConformance(t *testing.T) {
	fx := vmmtest.FixturesFromEnv(t)
	testutil.RequireQEMU(t)
	accel := testutil.RequireVMs(t).Accel
	vmmtest.Run(t, func(t *testing.T) vmm.Driver { return newDriver(t, qemu.Config{Accel: accel}) }, fx)
}

// A VMM that dies at start must fail Boot with QEMU's own words and
// leave no run directory or RAM file behind.
func TestBootFailureCleansUp(t *testing.T) {
	testutil.RequireBinary(t, "qemu-system-x86_64")
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk")
	if err := os.WriteFile(junk, []byte("not a kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	mem := filepath.Join(t.TempDir(), "mem")
	d := newDriver(t, qemu.Config{Accel: qemu.AccelTCG, MemoryDir: mem})
	run := filepath.Join(dir, "run")
	_, err := d.Boot(context.Background(), vmm.Config{
		ID: "junk", Kernel: junk, Initrd: junk, VCPUs: 1, MemoryMiB: 128, RunDir: run,
	})
	if !errors.Is(err, vmm.ErrExited) || !strings.Contains(err.Error(), "qemu:") {
		t.Fatalf("Boot of a junk kernel: %v; want ErrExited with QEMU's log", err)
	}
	if _, err := os.Stat(run); !os.IsNotExist(err) {
		t.Errorf("run dir left behind")
	}
	if ents, _ := os.ReadDir(mem); len(ents) > 1 { // the uid lease file may stay
		t.Errorf("RAM file left behind: %v", ents)
	}
	for _, e := range mustReadDir(t, mem) {
		if strings.HasSuffix(e, ".ram") {
			t.Errorf("RAM file left behind: %s", e)
		}
	}
}

func mustReadDir(t *testing.T, dir string) []string {
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  qemu.Config
		want string
	}{
		{qemu.Config{Accel: "hvf"}, "accel"},
		{qemu.Config{TBSizeMiB: -1}, "tb size"},
		{qemu.Config{MemoryDir: "shm"}, "not absolute"},
		{qemu.Config{UIDBase: 100}, "1000 and up"},
	} {
		if err := tc.cfg.Validate(); !errors.Is(err, vmm.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%+v) = %v, want ErrInvalidConfig mentioning %q", tc.cfg, err, tc.want)
		}
	}
	if _, err := qemu.New(qemu.Config{Accel: "hvf"}); !errors.Is(err, vmm.ErrInvalidConfig) {
		t.Fatalf("New with accel hvf: %v", err)
	}
}

func TestBaseCmdline(t *testing.T) {
	testutil.RequireBinary(t, "qemu-system-x86_64")
	tcg := newDriver(t, qemu.Config{Accel: qemu.AccelTCG, TSCKHz: 2500000})
	args := strings.Join(tcg.BaseCmdline(), " ")
	// Without these the microvm guest hangs or keeps 4 ms time (MEASURED.md).
	for _, want := range []string{"tsc_early_khz=2500000", "tsc=reliable", "fs.channel=virtio-port:" + qemu.AgentPortName, "panic=-1", "mitigations=off"} {
		if !strings.Contains(args, want) {
			t.Errorf("TCG base cmdline lacks %q: %s", want, args)
		}
	}
	// Under KVM the guest kernel keeps its mitigations: there the
	// hardware boundary is what they protect.
	kvm := newDriver(t, qemu.Config{Accel: qemu.AccelKVM})
	if args := strings.Join(kvm.BaseCmdline(), " "); strings.Contains(args, "mitigations") {
		t.Errorf("KVM base cmdline turns mitigations off: %s", args)
	}
	if kvm.Capabilities().Accel != vmm.AccelKVM || tcg.Capabilities().Accel != vmm.AccelTCG {
		t.Errorf("Capabilities().Accel: kvm driver %q, tcg driver %q", kvm.Capabilities().Accel, tcg.Capabilities().Accel)
	}
	if tcg.Version() == "" {
		t.Error("Version is empty")
	}
}

// The attack on the memory dir itself: another user makes it first (a
// directory of theirs, or a symlink to one) so that RAM files land where
// they can read them. New refuses.
func TestMemoryDirHijack(t *testing.T) {
	testutil.RequireBinary(t, "qemu-system-x86_64")
	testutil.RequireRoot(t)
	shared, err := os.MkdirTemp("", "shm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(shared) })
	os.Chmod(shared, 0o1777)
	theirs := filepath.Join(shared, "firesandbox")
	runAs(t, 65534, "mkdir", "-m", "0777", theirs)
	if _, err := qemu.New(qemu.Config{MemoryDir: theirs}); !errors.Is(err, vmm.ErrUnsafe) {
		t.Fatalf("New with another user's memory dir: %v, want ErrUnsafe", err)
	}
	link := filepath.Join(shared, "firesandbox2")
	runAs(t, 65534, "ln", "-s", theirs, link)
	if _, err := qemu.New(qemu.Config{MemoryDir: link}); !errors.Is(err, vmm.ErrUnsafe) {
		t.Fatalf("New with a symlinked memory dir: %v, want ErrUnsafe", err)
	}
}
