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

func TestConformance(t *testing.T) {
	fx := vmmtest.FixturesFromEnv(t)
	testutil.RequireQEMU(t)
	d, err := qemu.New(qemu.Config{Accel: testutil.RequireVMs(t).Accel})
	if err != nil {
		t.Fatal(err)
	}
	vmmtest.Run(t, d, fx)
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
	mem := t.TempDir()
	d, err := qemu.New(qemu.Config{Accel: qemu.AccelTCG, MemoryDir: mem})
	if err != nil {
		t.Fatal(err)
	}
	run := filepath.Join(dir, "run")
	_, err = d.Boot(context.Background(), vmm.Config{
		ID: "junk", Kernel: junk, Initrd: junk, VCPUs: 1, MemoryMiB: 128, RunDir: run,
	})
	if !errors.Is(err, vmm.ErrExited) || !strings.Contains(err.Error(), "qemu:") {
		t.Fatalf("Boot of a junk kernel: %v; want ErrExited with QEMU's log", err)
	}
	if _, err := os.Stat(run); !os.IsNotExist(err) {
		t.Errorf("run dir left behind")
	}
	if ents, _ := os.ReadDir(mem); len(ents) != 0 {
		t.Errorf("RAM file left behind: %v", ents)
	}
}

func TestConfigValidate(t *testing.T) {
	if _, err := qemu.New(qemu.Config{Accel: "hvf"}); !errors.Is(err, vmm.ErrInvalidConfig) {
		t.Fatalf("accel hvf: %v", err)
	}
}

func TestBaseCmdlineHasRequiredArgs(t *testing.T) {
	d, err := qemu.New(qemu.Config{Accel: qemu.AccelTCG, TSCKHz: 2500000})
	if err != nil {
		t.Fatal(err)
	}
	args := strings.Join(d.BaseCmdline(), " ")
	// Without these the microvm guest hangs or keeps 4 ms time (MEASURED.md).
	for _, want := range []string{"tsc_early_khz=2500000", "tsc=reliable", "fs.channel=virtio-port:" + qemu.AgentPortName, "panic=-1"} {
		if !strings.Contains(args, want) {
			t.Errorf("base cmdline lacks %q: %s", want, args)
		}
	}
}
