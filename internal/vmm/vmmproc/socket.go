package vmmproc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/firesandbox/firesandbox/internal/vmm"
	"golang.org/x/sys/unix"
)

// WaitSocket waits until the unix socket at path accepts connections, p
// exits (an error wrapping vmm.ErrExited), or ctx ends. It watches the
// socket's directory with inotify rather than polling for the file; a short
// retry covers the gap between the VMM's bind (the file appears) and its
// listen.
func WaitSocket(ctx context.Context, path string, p *Process) error {
	in, err := newDirWatch(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer in.Close()
	events := make(chan struct{}, 1)
	go func() {
		buf := make([]byte, 4096)
		for {
			if _, err := in.Read(buf); err != nil {
				return
			}
			select {
			case events <- struct{}{}:
			default:
			}
		}
	}()
	retry := time.NewTimer(time.Hour)
	defer retry.Stop()
	for {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			c.Close()
			return nil
		}
		var retryC <-chan time.Time
		if errors.Is(err, syscall.ECONNREFUSED) {
			// Bound but not yet listening.
			retry.Reset(2 * time.Millisecond)
			retryC = retry.C
		}
		select {
		case <-events:
		case <-retryC:
		case <-p.Exited():
			return fmt.Errorf("%w before its socket %s appeared: %v", vmm.ErrExited, filepath.Base(path), p.Err())
		case <-ctx.Done():
			return fmt.Errorf("wait for socket %s: %w", path, ctx.Err())
		}
	}
}

// newDirWatch returns an inotify file that becomes readable when entries
// are created in dir. It is non-blocking, so closing it ends a pending Read.
func newDirWatch(dir string) (*os.File, error) {
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_CREATE|unix.IN_MOVED_TO); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("watch %s: %w", dir, err)
	}
	return os.NewFile(uintptr(fd), "inotify:"+dir), nil
}

// Tail returns the last n bytes of the file at path ("" if unreadable).
func Tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	off := max(fi.Size()-int64(n), 0)
	b := make([]byte, fi.Size()-off)
	k, _ := f.ReadAt(b, off)
	return string(b[:k])
}
