// Package testutil holds helpers that decide whether a test can run here
// and find the shared fixtures VM tests boot from.
package testutil

import (
	"os"
	"os/exec"
	"testing"

	"github.com/firesandbox/firesandbox/internal/guestkernel"
	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/vmm/kvm"
	"github.com/firesandbox/firesandbox/languages"
)

// RequireQEMU fails a VM test (they run on QEMU by default) when QEMU is
// missing: on the default path that is a broken setup, not a reason to skip.
func RequireQEMU(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Fatal("VM tests need qemu-system-x86_64: run `make deps`")
	}
}

// RequireBinary skips the test, saying why, if name is not in PATH.
func RequireBinary(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("skipped: %s not in PATH", name)
	}
	return p
}

// RequireRoot skips the test unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root")
	}
}

// VMFixtures are the kernel and image VM tests share: built once by
// `make kernel image`, never by a test.
type VMFixtures struct {
	DataDir string
	Kernel  *guestkernel.Kernel
	Python  *image.Image
	// Accel is the QEMU accelerator to use: $FIRESANDBOX_ACCEL, else what
	// the last KVM probe decided, else tcg.
	Accel string
}

// RequireVMs returns the shared fixtures. VM tests run when
// FIRESANDBOX_VM_TESTS=1 (make test sets it); then missing fixtures are a
// failure, not a skip, so a broken setup cannot pass as green.
func RequireVMs(t testing.TB) *VMFixtures {
	t.Helper()
	if os.Getenv("FIRESANDBOX_VM_TESTS") != "1" {
		t.Skip("VM test skipped: set FIRESANDBOX_VM_TESTS=1 (`make test` does) after `make kernel image`")
	}
	dataDir := os.Getenv("FIRESANDBOX_DATA")
	if dataDir == "" {
		dataDir = "/var/lib/firesandbox"
	}
	k, err := guestkernel.Load(dataDir)
	if err != nil {
		t.Fatalf("VM tests: %v", err)
	}
	cat, err := image.LoadCatalog(languages.FS)
	if err != nil {
		t.Fatal(err)
	}
	py, err := cat.Lookup("python", "")
	if err != nil {
		t.Fatal(err)
	}
	im, err := image.NewStore(dataDir).ForEntry(py, image.FormatSquashFS)
	if err != nil {
		t.Fatalf("VM tests: %v", err)
	}
	fx := &VMFixtures{DataDir: dataDir, Kernel: k, Python: im, Accel: "tcg"}
	if c, err := kvm.ReadAccelChoice(dataDir); err == nil {
		fx.Accel = c.Accel
	}
	if v := os.Getenv(kvm.AccelEnv); v != "" {
		fx.Accel = v
	}
	return fx
}
