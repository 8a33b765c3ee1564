package agent

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"golang.org/x/sys/unix"
)

// openPTY opens a new terminal pair in the commands' devpts instance (so
// the process sees its terminal as /dev/pts/N in its root), hands the
// terminal to uid and gid, and sets its size.
func (c *Config) openPTY(size agentproto.PTYSize, uid, gid int) (master, tty *os.File, err error) {
	ptmx := "/dev/ptmx"
	if c.Root != "" {
		ptmx = filepath.Join(c.Root, "dev/pts/ptmx")
	}
	mfd, err := unix.Open(ptmx, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open %s: %w", ptmx, err)
	}
	fail := func(err error) (*os.File, *os.File, error) {
		unix.Close(mfd)
		return nil, nil, err
	}
	if err := unix.IoctlSetPointerInt(mfd, unix.TIOCSPTLCK, 0); err != nil {
		return fail(fmt.Errorf("unlock pty: %w", err))
	}
	// TIOCGPTPEER opens the peer through the master, not by a path that
	// could name something else.
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(mfd), unix.TIOCGPTPEER, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC)
	if errno != 0 {
		return fail(fmt.Errorf("open pty peer: %w", errno))
	}
	sfd := int(r)
	if uid >= 0 {
		if err := unix.Fchown(sfd, uid, gid); err != nil {
			unix.Close(sfd)
			return fail(err)
		}
		_ = unix.Fchmod(sfd, 0o620)
	}
	if err := setWinsize(mfd, size); err != nil {
		unix.Close(sfd)
		return fail(err)
	}
	if err := unix.SetNonblock(mfd, true); err != nil { // for the poller: deadlines, Close unblocks Read
		unix.Close(sfd)
		return fail(err)
	}
	return os.NewFile(uintptr(mfd), "ptmx"), os.NewFile(uintptr(sfd), "pty"), nil
}

func setWinsize(fd int, size agentproto.PTYSize) error {
	if err := unix.IoctlSetWinsize(fd, unix.TIOCSWINSZ, &unix.Winsize{Row: size.Rows, Col: size.Cols}); err != nil {
		return fmt.Errorf("set terminal size: %w", err)
	}
	return nil
}

// resize sets the terminal size through master's descriptor without
// taking it out of the poller (as Fd would).
func resize(master *os.File, size agentproto.PTYSize) error {
	rc, err := master.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = setWinsize(int(fd), size) }); err != nil {
		return err
	}
	return serr
}
