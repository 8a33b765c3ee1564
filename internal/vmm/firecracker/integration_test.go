package firecracker

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/vmm/vmmtest"
)

// TestIntegration runs the shared conformance suite against a real
// Firecracker. It runs only where `firecracker` is in PATH and /dev/kvm is
// usable, and skips naming exactly what is missing; the guest fixtures come
// from vmmtest.FixturesFromEnv (FIRESANDBOX_VM_TESTS=1, FIRESANDBOX_DATA).
// See README.md.
func TestIntegration(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := Config{} // the real binary from PATH, not this test binary
	if dg := Diagnose(ctx, cfg); !dg.Usable {
		t.Skipf("firecracker integration test skipped: %s", strings.Join(dg.Problems, "; "))
	}
	vmmtest.Run(t, New(cfg), vmmtest.FixturesFromEnv(t))
}
