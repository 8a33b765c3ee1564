package disk

// Device-mapper cannot run on this host's kernel, but the guest kernel has
// it as modules. So the dm tests run inside a real guest
// (TestDeviceMapperInGuest, see guesttest): the TestGuest* tests skip
// anywhere else.

import (
	"testing"

	"github.com/firesandbox/firesandbox/internal/testutil/guesttest"
)

// guestModules are the modules layered disks need, dependencies first.
var guestModules = []string{
	"drivers/md/dm-mod.ko.xz", "drivers/md/dm-bufio.ko.xz", "drivers/md/dm-snapshot.ko.xz",
	"drivers/md/dm-zero.ko.xz", "drivers/block/loop.ko.xz",
}

func TestMain(m *testing.M) { guesttest.Main(m) }

func inGuest() bool { return guesttest.InGuest() }

// TestDeviceMapperInGuest boots a guest that runs the TestGuest* tests
// against the real device-mapper of the guest kernel.
func TestDeviceMapperInGuest(t *testing.T) {
	guesttest.Run(t, guesttest.Options{Modules: guestModules, Tools: []string{"dmsetup", "losetup"}, Run: "^TestGuest",
		MustPass: []string{"TestGuestLayeredDisks", "TestGuestFreezeFailureKeepsTheDisk", "TestGuestDMLayers"}})
}
