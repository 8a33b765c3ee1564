package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"golang.org/x/sys/unix"
)

// drainGrace is how long output pipes may stay open after the process tree
// was killed, e.g. by a process that escaped it; then they are closed.
const drainGrace = 2 * time.Second

// run executes one request to completion (or until ctx is cancelled, which
// kills it) and reports how it ended. An error means the command could not
// be started at all.
func (c *Config) run(ctx context.Context, req *agentproto.ExecRequest, sink outputSink) (*agentproto.ExitResult, error) {
	if err := req.Validate(); err != nil {
		return nil, err
	}
	lim := c.limits(req.Limits)

	dir := req.Dir
	if dir == "" {
		d, err := c.makeRunDir(req.ID)
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(c.hostPath(d))
		dir = d
	}
	wd, err := c.openDir(dir, req.Dir != "")
	if err != nil {
		return nil, err
	}
	err = c.writeFiles(wd, req.Files)
	wd.Close()
	if err != nil {
		return nil, err
	}

	argv0, err := c.lookPath(req.Argv[0], req.Env)
	if err != nil {
		return nil, err
	}
	cmd := &exec.Cmd{
		Path: argv0,
		Args: req.Argv,
		Env:  c.environ(req.Env, dir),
		Dir:  dir,
		SysProcAttr: &syscall.SysProcAttr{
			Setpgid:   true,
			Pdeathsig: syscall.SIGKILL,
		},
	}
	if c.Root != "" {
		cmd.SysProcAttr.Chroot = c.Root
	}
	if c.UID >= 0 {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(c.UID), Gid: uint32(c.GID), Groups: []uint32{}}
	}

	var cg *cgroup
	if c.CgroupParent != "" {
		cg, err = newCgroup(filepath.Join(c.CgroupParent, fmt.Sprintf("exec-%d-%d", req.ID, time.Now().UnixNano())), lim)
		if err != nil {
			return nil, err
		}
		defer cg.remove()
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = cg.fd()
	}

	stdinR, stdinW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		stdinR.Close()
		stdinW.Close()
		return nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		for _, f := range []*os.File{stdinR, stdinW, outR, outW} {
			f.Close()
		}
		return nil, err
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdinR, outW, errW

	start := time.Now()
	proc, err := c.startProcess(req, cmd, cg, stdinR, outW, errW)
	stdinR.Close()
	outW.Close()
	errW.Close()
	if err != nil {
		stdinW.Close()
		outR.Close()
		errR.Close()
		return nil, fmt.Errorf("start %s: %w", req.Argv[0], err)
	}
	defer proc.done()

	// One kill for every reason; the first reason wins.
	var (
		killOnce sync.Once
		reason   agentproto.Status
		message  string
	)
	kill := func(st agentproto.Status, msg string) {
		killOnce.Do(func() {
			reason, message = st, msg
			_ = syscall.Kill(-proc.pid, syscall.SIGKILL)
			if cg != nil {
				cg.kill()
			}
		})
	}

	go func() {
		defer stdinW.Close()
		_, _ = stdinW.Write(req.Stdin) // EPIPE if the program never reads: fine
	}()

	var readers sync.WaitGroup
	for _, p := range []struct {
		f      *os.File
		s      agentproto.Stream
		status agentproto.Status
	}{{outR, agentproto.Stdout, agentproto.StatusStdoutLimit}, {errR, agentproto.Stderr, agentproto.StatusStderrLimit}} {
		readers.Add(1)
		go func() {
			defer readers.Done()
			err := pump(p.f, p.s, lim.OutputBytes, sink)
			if errors.Is(err, errOutputLimit) {
				kill(p.status, fmt.Sprintf("%s passed its limit of %d bytes", p.s, lim.OutputBytes))
			} else if err != nil {
				kill(agentproto.StatusInternal, fmt.Sprintf("forward %s: %v", p.s, err))
			}
		}()
	}

	timer := time.AfterFunc(time.Duration(lim.WallMillis)*time.Millisecond, func() {
		kill(agentproto.StatusTimeout, fmt.Sprintf("wall-clock limit of %s reached", time.Duration(lim.WallMillis)*time.Millisecond))
	})
	stopWatch := context.AfterFunc(ctx, func() { kill(agentproto.StatusSignal, "cancelled by the host") })

	ws, cpu, maxRSS, waitErr := proc.wait()
	wall := time.Since(start)
	timer.Stop()
	stopWatch()

	// The main process is gone: nothing it started may outlive it.
	_ = syscall.Kill(-proc.pid, syscall.SIGKILL)
	if cg != nil {
		cg.kill()
	}
	drained := make(chan struct{})
	go func() { readers.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(drainGrace):
		outR.Close() // a straggler holds the pipe; stop listening to it
		errR.Close()
		<-drained
	}
	outR.Close()
	errR.Close()

	res := &agentproto.ExitResult{ID: req.ID, WallMillis: wall.Milliseconds(), Prewarmed: proc.prewarmed,
		CPUMillis: cpu.Milliseconds(), MemoryBytes: maxRSS}
	if waitErr != nil {
		return nil, fmt.Errorf("wait: %w", waitErr)
	}
	res.Code = ws.ExitStatus()
	if ws.Signaled() {
		res.Signal = unix.SignalName(ws.Signal())
		res.Code = -1
	}
	oom := false
	if cg != nil {
		st := cg.stats()
		if st.cpu > 0 {
			res.CPUMillis = st.cpu.Milliseconds()
		}
		if st.peak > 0 {
			res.MemoryBytes = st.peak
		}
		oom = st.oomKills > 0
	}

	switch {
	case reason != "":
		res.Status, res.Message = reason, message
	case ws.Signaled():
		res.Status = agentproto.StatusSignal
		if oom {
			res.Message = fmt.Sprintf("killed: memory limit of %d bytes exceeded", lim.MemoryBytes)
		}
	case res.Code != 0:
		res.Status = agentproto.StatusRuntimeError
	}
	return res, nil
}

// process is a started command, whichever way it was started.
type process struct {
	pid       int
	prewarmed bool
	wait      func() (syscall.WaitStatus, time.Duration, int64, error)
	done      func() // releases what starting it held
}

// startProcess starts a request's command: forked from the prewarmed
// runtime when asked and possible, else executed.
func (c *Config) startProcess(req *agentproto.ExecRequest, cmd *exec.Cmd, cg *cgroup, stdin, stdout, stderr *os.File) (*process, error) {
	if req.Prewarmed && c.prewarm.alive() && c.prewarm.mu.TryLock() {
		pp, err := c.prewarm.spawn(req.Argv, cmd.Env, cmd.Dir, stdin, stdout, stderr)
		if err == nil && cg != nil {
			err = cg.add(pp.pid)
		}
		if err == nil {
			err = pp.release()
		}
		if err == nil {
			return &process{pid: pp.pid, prewarmed: true, wait: pp.wait, done: c.prewarm.mu.Unlock}, nil
		}
		if pp != nil { // forked but not released: kill it, collect its exit
			_ = syscall.Kill(pp.pid, syscall.SIGKILL)
			pp.gate.Close()
			_, _, _, _ = pp.wait()
		}
		if !errors.Is(err, errPrewarmUnavailable) {
			c.prewarm.stopLocked() // out of step with us: never use it again
		}
		c.prewarm.mu.Unlock()
		// fall through: run it the ordinary way
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return &process{pid: cmd.Process.Pid, done: func() {}, wait: func() (syscall.WaitStatus, time.Duration, int64, error) {
		state, err := cmd.Process.Wait()
		if err != nil {
			return 0, 0, 0, err
		}
		var cpu time.Duration
		var rss int64
		if ru, ok := state.SysUsage().(*syscall.Rusage); ok {
			cpu = time.Duration(ru.Utime.Nano()) + time.Duration(ru.Stime.Nano())
			rss = ru.Maxrss * 1024
		}
		return state.Sys().(syscall.WaitStatus), cpu, rss, nil
	}}, nil
}
