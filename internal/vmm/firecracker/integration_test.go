package firecracker

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/vmm"
	"github.com/firesandbox/firesandbox/internal/vmm/vmmtest"
)

// TestIntegration runs the shared conformance suite against a real
// Firecracker under its jailer. It runs only where `firecracker` and
// `jailer` are in PATH and /dev/kvm is usable, and skips naming exactly
// what is missing; the guest fixtures come from vmmtest.FixturesFromEnv
// (FIRESANDBOX_VM_TESTS=1, FIRESANDBOX_DATA). See README.md.
func TestIntegration(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := Config{} // the real binaries from PATH, not this test binary
	if dg := Diagnose(ctx, cfg); !dg.Usable {
		t.Skipf("firecracker integration test skipped: %s", strings.Join(dg.Problems, "; "))
	}
	vmmtest.Run(t, func(t *testing.T) vmm.Driver {
		d, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}, vmmtest.FixturesFromEnv(t))
}
