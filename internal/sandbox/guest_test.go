package sandbox

import (
	"testing"

	"github.com/firesandbox/firesandbox/internal/testutil/guesttest"
)

// TestMain runs the tests; in a guest VM booted by guesttest (the
// TestGuest* tests, on the guest kernel's device-mapper), as its init.
func TestMain(m *testing.M) { guesttest.Main(m) }
