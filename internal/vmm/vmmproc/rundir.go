package vmmproc

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/firesandbox/firesandbox/internal/vmm"
	"golang.org/x/sys/unix"
)

const lockFile = ".lock"

// Claim is a machine's hold on its RunDir: an exclusive lock on a file in
// it, held until Release. A driver may pass File to the VMM process, so
// the directory stays claimed as long as the VMM lives, even if this
// process dies first.
type Claim struct {
	dir  string
	File *os.File
}

// ClaimRunDir creates dir (0700) or takes over one a dead machine left,
// emptying it; it refuses, with vmm.ErrInUse, a dir that another machine
// holds or whose recorded VMM still runs, and with vmm.ErrUnsafe one that
// is a symlink or belongs to another user.
func ClaimRunDir(dir string) (*Claim, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create run dir: %w", err)
	}
	if err := checkPrivate(dir); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_CREATE|os.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock run dir: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("run dir %s: %w", dir, vmm.ErrInUse)
		}
		return nil, fmt.Errorf("lock run dir: %w", err)
	}
	if r, err := ReadRecord(dir); err == nil && r.Alive() {
		f.Close()
		return nil, fmt.Errorf("run dir %s: %w (pid %d)", dir, vmm.ErrInUse, r.PID)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		f.Close()
		return nil, err
	}
	for _, e := range ents {
		if e.Name() == lockFile {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			f.Close()
			return nil, fmt.Errorf("clear run dir: %w", err)
		}
	}
	return &Claim{dir: dir, File: f}, nil
}

// Release drops this process's hold (a VMM that inherited File keeps it).
func (c *Claim) Release() {
	if c.File != nil {
		c.File.Close()
		c.File = nil
	}
}

// Moved tells the claim its dir was renamed to dir (with the lock file
// in it, so the claim holds on).
func (c *Claim) Moved(dir string) { c.dir = dir }

// Remove deletes the run dir and releases the claim.
func (c *Claim) Remove() error {
	err := os.RemoveAll(c.dir)
	c.Release()
	return err
}
