package firecracker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// process is the running VMM: either our child (firecracker, or a jailer
// that exec'd into it) or, with the jailer's --new-pid-ns, a process we did
// not fork and watch through a pidfd. One goroutine owns the wait and
// closes exited; err is set before that.
type process struct {
	pid    int
	exited chan struct{}
	err    error // how it ended; valid once exited is closed
	signal func(syscall.Signal) error
}

// startChild starts cmd and watches it.
func startChild(cmd *exec.Cmd) (*process, error) {
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &process{
		pid:    cmd.Process.Pid,
		exited: make(chan struct{}),
		signal: func(s syscall.Signal) error { return cmd.Process.Signal(s) },
	}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// watchPID watches a process that is not our child (it was forked by the
// jailer into its own PID namespace). A pidfd keeps the pid from being
// reused under us and tells us when it exits.
func watchPID(pid int) (*process, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("open pidfd of %d: %w", pid, err)
	}
	p := &process{
		pid:    pid,
		exited: make(chan struct{}),
		signal: func(s syscall.Signal) error { return unix.PidfdSendSignal(fd, s, nil, 0) },
	}
	go func() {
		defer close(p.exited)
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			_, err := unix.Poll(fds, -1)
			if err == nil || !errors.Is(err, unix.EINTR) {
				break
			}
		}
		// Not our child: its exit status belongs to its new parent.
		p.err = errors.New("process exited (status unknown: not our child)")
		// The fd stays open until here so that signal never hits a
		// recycled pid.
		unix.Close(fd)
	}()
	return p, nil
}

func (p *process) done() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// stop ends the process: SIGTERM, then SIGKILL after grace (or as soon as
// ctx ends). It returns once the process has exited.
func (p *process) stop(ctx context.Context, grace time.Duration) {
	if p.done() {
		return
	}
	_ = p.signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.exited:
		return
	case <-t.C:
	case <-ctx.Done():
	}
	_ = p.signal(syscall.SIGKILL)
	<-p.exited
}

// waitSocket waits until the unix socket at path accepts connections, the
// process exits, or ctx ends. It watches the socket's directory with
// inotify rather than polling for the file; a short retry covers the gap
// between the VMM's bind (file appears) and listen.
func waitSocket(ctx context.Context, path string, p *process) error {
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
	retry := time.NewTimer(0)
	defer retry.Stop()
	<-retry.C
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
		case <-p.exited:
			return fmt.Errorf("%w before its API socket appeared: %v", errExitedEarly, p.err)
		case <-ctx.Done():
			return fmt.Errorf("wait for API socket %s: %w", path, ctx.Err())
		}
	}
}

var errExitedEarly = errors.New("firecracker exited")

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

// tail returns the last n bytes of the file at path ("" if unreadable).
func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	off := fi.Size() - int64(n)
	if off < 0 {
		off = 0
	}
	b, err := io.ReadAll(io.NewSectionReader(f, off, fi.Size()-off))
	if err != nil {
		return ""
	}
	return string(b)
}

// cleanupStack runs registered functions in reverse unless released, so a
// failed Boot undoes exactly what it did.
type cleanupStack struct {
	mu  sync.Mutex
	fns []func()
}

func (c *cleanupStack) add(f func()) {
	c.mu.Lock()
	c.fns = append(c.fns, f)
	c.mu.Unlock()
}

func (c *cleanupStack) clean() {
	c.mu.Lock()
	fns := c.fns
	c.fns = nil
	c.mu.Unlock()
	for i := len(fns) - 1; i >= 0; i-- {
		fns[i]()
	}
}

func (c *cleanupStack) release() {
	c.mu.Lock()
	c.fns = nil
	c.mu.Unlock()
}
