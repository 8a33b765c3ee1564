package vmmproc

import (
	"errors"
	"fmt"
	"os"

	"github.com/firesandbox/firesandbox/internal/vmm"
	"golang.org/x/sys/unix"
)

// PrivateDir makes dir a directory only this process's user can enter:
// it is created with mode 0700 if missing (its parent must exist). An
// existing one must be a real directory, not a symlink, owned by this
// user; its mode is then reset to 0700. Anything else is vmm.ErrUnsafe:
// in a world-writable parent such as /dev/shm another user may have
// created it first, to read or replace what goes inside.
func PrivateDir(dir string) error {
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("create private dir: %w", err)
	}
	if err := checkPrivate(dir); err != nil {
		return err
	}
	return os.Chmod(dir, 0o700)
}

// CheckPrivateDir reports, without changing anything, whether PrivateDir
// would accept dir: nil if it is missing (and would be created) or is a
// directory of ours.
func CheckPrivateDir(dir string) error {
	if _, err := os.Lstat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return checkPrivate(dir)
}

// checkPrivate refuses a symlink, a non-directory, or a directory owned by
// another user.
func checkPrivate(dir string) error {
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return fmt.Errorf("stat %s: %w", dir, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("%w: %s is not a directory (a symlink?)", vmm.ErrUnsafe, dir)
	}
	if int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%w: %s belongs to uid %d, not to us (uid %d)", vmm.ErrUnsafe, dir, st.Uid, os.Geteuid())
	}
	return nil
}
