package vmmproc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/firesandbox/firesandbox/internal/vmm"
	"golang.org/x/sys/unix"
)

// Process is a running VMM: our child, or (Follow) a process we did not
// fork, such as a Firecracker the jailer started in its own PID
// namespace. One goroutine owns the wait and closes the exit channel;
// Err is valid once it is closed.
type Process struct {
	pid     int
	start   uint64 // start time, clock ticks after boot (/proc/<pid>/stat)
	child   bool
	signal  func(syscall.Signal) error
	exited  chan struct{}
	err     error
	drained chan struct{} // closed once the output pipes reached EOF
	stopped atomic.Bool   // Stop ended it: its exit is not a failure
	stop    sync.Once
}

// Start starts cmd with its stdout and stderr (either may be nil) going
// into rings through pipes that a goroutine drains, and watches it.
// cmd.Stdout and cmd.Stderr must be unset.
func Start(cmd *exec.Cmd, stdout, stderr *Ring) (*Process, error) {
	var parentEnds, childEnds []*os.File
	closeAll := func(fs []*os.File) {
		for _, f := range fs {
			f.Close()
		}
	}
	pipe := func(ring *Ring) (*os.File, error) {
		if ring == nil {
			return nil, nil
		}
		r, w, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		parentEnds, childEnds = append(parentEnds, r), append(childEnds, w)
		return w, nil
	}
	rings := []*Ring{stdout, stderr}
	for i, ring := range rings {
		w, err := pipe(ring)
		if err != nil {
			closeAll(parentEnds)
			closeAll(childEnds)
			return nil, fmt.Errorf("output pipe: %w", err)
		}
		if w != nil {
			if i == 0 {
				cmd.Stdout = w
			} else {
				cmd.Stderr = w
			}
		}
	}
	err := cmd.Start()
	closeAll(childEnds) // the child has its copies
	if err != nil {
		closeAll(parentEnds)
		return nil, err
	}
	p := &Process{
		pid:     cmd.Process.Pid,
		child:   true,
		signal:  func(s syscall.Signal) error { return cmd.Process.Signal(s) },
		exited:  make(chan struct{}),
		drained: make(chan struct{}),
	}
	p.start, _ = startTime(p.pid)
	var drains sync.WaitGroup
	i := 0
	for _, ring := range rings {
		if ring == nil {
			continue
		}
		r := parentEnds[i]
		i++
		drains.Add(1)
		go func() {
			defer drains.Done()
			_, _ = io.Copy(ring, r)
			r.Close()
		}()
	}
	go func() { drains.Wait(); close(p.drained) }()
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// Follow watches pid, a process that is not our child. A pidfd keeps the
// pid from being reused under us and tells when it exits; its exit status
// belongs to its parent, so Err only says that it exited.
func Follow(pid int) (*Process, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("open pidfd of %d: %w", pid, err)
	}
	p := &Process{
		pid:     pid,
		signal:  func(s syscall.Signal) error { return unix.PidfdSendSignal(fd, s, nil, 0) },
		exited:  make(chan struct{}),
		drained: make(chan struct{}),
	}
	close(p.drained)
	p.start, _ = startTime(pid)
	go func() {
		defer close(p.exited)
		waitPidfd(fd, -1)
		p.err = errors.New("exited (status unknown: not our child)")
		// The fd stays open until here, so signal never hits a
		// recycled pid.
		unix.Close(fd)
	}()
	return p, nil
}

// waitPidfd waits until the process behind fd exits, or timeout (ms, -1
// for none) passes; it reports whether it exited.
func waitPidfd(fd int, timeout int) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, timeout)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return err == nil && n > 0
	}
}

// PID is the process id.
func (p *Process) PID() int { return p.pid }

// Exited is closed once the process has exited.
func (p *Process) Exited() <-chan struct{} { return p.exited }

// Done reports whether the process has exited.
func (p *Process) Done() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// Err is how the process ended (nil for exit status 0); valid once Exited
// is closed.
func (p *Process) Err() error { return p.err }

// Stopped reports whether Stop ended the process.
func (p *Process) Stopped() bool { return p.stopped.Load() }

// Signal sends sig unless the process has exited.
func (p *Process) Signal(sig syscall.Signal) error {
	if p.Done() {
		return os.ErrProcessDone
	}
	return p.signal(sig)
}

// Stop ends the process: SIGTERM, then SIGKILL after grace. It returns
// once the process has exited. It takes no context on purpose: a
// cancelled request must not leave a half-stopped VMM. Concurrent and
// repeated calls all wait for the same end.
func (p *Process) Stop(grace time.Duration) {
	p.stop.Do(func() {
		if p.Done() {
			return // it died by itself: Wait still says so
		}
		p.stopped.Store(true)
		_ = p.signal(syscall.SIGTERM)
		t := time.NewTimer(grace)
		defer t.Stop()
		select {
		case <-p.exited:
			return
		case <-t.C:
		}
		_ = p.signal(syscall.SIGKILL)
	})
	<-p.exited
}

// Wait blocks until the process exits or ctx ends. It returns nil if the
// process exited with status 0 or was ended by Stop, else an error
// wrapping vmm.ErrExited with how it ended.
func (p *Process) Wait(ctx context.Context) error {
	select {
	case <-p.exited:
	case <-ctx.Done():
		return ctx.Err()
	}
	return p.ExitError()
}

// ExitError is Wait's answer for a process that has exited: nil after a
// clean exit or Stop, else an error wrapping vmm.ErrExited. It is nil
// while the process runs.
func (p *Process) ExitError() error {
	if !p.Done() || p.stopped.Load() || p.err == nil {
		return nil
	}
	return fmt.Errorf("%w: %v", vmm.ErrExited, p.err)
}

// Drained waits up to d for the output pipes to reach EOF, so a ring holds
// everything the process wrote before it exited.
func (p *Process) Drained(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.drained:
	case <-t.C:
	}
}

// Bound returns a context that is cancelled, with cause vmm.ErrExited,
// when the process exits, so a wait for something the VMM should do (a
// monitor greeting, an API answer) ends as soon as it dies.
func (p *Process) Bound(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(ctx)
	go func() {
		select {
		case <-p.exited:
			cancel(fmt.Errorf("%w: %v", vmm.ErrExited, p.err))
		case <-ctx.Done():
		}
	}()
	return ctx, func() { cancel(context.Canceled) }
}

// startTime reads a process's start time (field 22 of /proc/<pid>/stat),
// which together with the pid names one process for the life of a boot.
func startTime(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold anything,
	// spaces and parentheses included: count fields after the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); start time is field 22.
	if len(f) < 20 {
		return 0, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(f))
	}
	return strconv.ParseUint(f[19], 10, 64)
}
