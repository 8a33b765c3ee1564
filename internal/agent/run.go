package agent

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"golang.org/x/sys/unix"
)

// drainGrace is how long output pipes may stay open after the process tree
// was killed, e.g. by a process that escaped it; then they are closed.
const drainGrace = 2 * time.Second

// launch prepares and starts one request's process, registers it, and
// subscribes request id of session s to it (Started goes out before any
// output). The process then runs on its own (supervise); an error means
// it could not be started at all.
func (srv *Server) launch(s *session, id uint32, req *agentproto.ExecRequest) (*proc, error) {
	c := &srv.cfg
	if err := req.Validate(); err != nil {
		return nil, err
	}
	if srv.procs.len() >= agentproto.MaxProcesses {
		return nil, fmt.Errorf("%d processes are running, at most %d: %w", srv.procs.len(), agentproto.MaxProcesses, errBusy)
	}
	u, err := c.user(req.User)
	if err != nil {
		return nil, err
	}
	lim := c.limits(req.Limits)
	outCap := lim.OutputBytes
	if req.Background {
		if req.Limits.WallMillis == 0 {
			lim.WallMillis = 0 // a background process runs until it ends or is signalled
		}
		if req.Limits.OutputBytes == 0 {
			outCap = 0
		}
	}

	var cleanup []func() // run once the process has ended
	fail := func(err error) (*proc, error) {
		for i := len(cleanup) - 1; i >= 0; i-- {
			cleanup[i]()
		}
		return nil, err
	}
	dir := req.Dir
	if dir == "" {
		d, err := c.makeRunDir(id)
		if err != nil {
			return fail(err)
		}
		cleanup = append(cleanup, func() { os.RemoveAll(c.hostPath(d)) })
		dir = d
	}
	wd, err := c.openDir(dir, req.Dir != "")
	if err != nil {
		return fail(err)
	}
	err = c.writeFiles(wd, req.Files)
	wd.Close()
	if err != nil {
		return fail(err)
	}
	argv0, err := c.lookPath(req.Argv[0], req.Env)
	if err != nil {
		return fail(err)
	}
	home := dir
	if req.User != "" && u.home != "" {
		home = u.home
	}
	env := c.environ(req.Env, home)
	if req.PTY != nil && !hasEnv(req.Env, "TERM") {
		env = append(env, "TERM=xterm-256color")
	}
	cmd := &exec.Cmd{
		Path:        argv0,
		Args:        req.Argv,
		Env:         env,
		Dir:         dir,
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL},
	}
	if c.Root != "" {
		cmd.SysProcAttr.Chroot = c.Root
	}
	if u.uid >= 0 {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(u.uid), Gid: uint32(u.gid), Groups: []uint32{}}
	}
	var cg *cgroup
	if c.CgroupParent != "" {
		cg, err = newCgroup(filepath.Join(c.CgroupParent, fmt.Sprintf("exec-%d-%d", id, time.Now().UnixNano())), lim)
		if err != nil {
			return fail(err)
		}
		cleanup = append(cleanup, cg.remove)
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = cg.fd()
	}

	p := &proc{background: req.Background, cg: cg, done: make(chan struct{}), replay: req.Background || req.PTY != nil}
	var (
		outputs  []pumpSource
		childEnd []*os.File // the child's ends, closed once it started
		stdinW   *os.File
	)
	closeAll := func(fs []*os.File) {
		for _, f := range fs {
			f.Close()
		}
	}
	if req.PTY != nil {
		master, tty, err := c.openPTY(*req.PTY, u.uid, u.gid)
		if err != nil {
			return fail(err)
		}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
		cmd.SysProcAttr.Setpgid = false
		cmd.SysProcAttr.Setsid, cmd.SysProcAttr.Setctty, cmd.SysProcAttr.Ctty = true, true, 0
		childEnd = append(childEnd, tty)
		p.pty = master
		p.stdin = master
		outputs = append(outputs, pumpSource{master, agentproto.PTY, agentproto.StatusStdoutLimit})
	} else {
		var fs [6]*os.File
		var perr error
		for i := 0; i < 6 && perr == nil; i += 2 {
			fs[i], fs[i+1], perr = os.Pipe()
		}
		if perr != nil {
			closeAll(fs[:])
			return fail(perr)
		}
		stdinR, outR, outW, errR, errW := fs[0], fs[2], fs[3], fs[4], fs[5]
		stdinW = fs[1]
		// The program's ends belong to its user, so it may reopen them
		// (/dev/stdin, /proc/self/fd/0, as sqlite's .import does); a pipe
		// the agent made is root's and 0600 otherwise.
		if u.uid >= 0 {
			for _, f := range []*os.File{stdinR, outW, errW} {
				_ = f.Chown(u.uid, u.gid)
			}
		}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = stdinR, outW, errW
		childEnd = append(childEnd, stdinR, outW, errW)
		p.stdin = stdinW
		outputs = append(outputs,
			pumpSource{outR, agentproto.Stdout, agentproto.StatusStdoutLimit},
			pumpSource{errR, agentproto.Stderr, agentproto.StatusStderrLimit})
	}
	keepStdin := req.OpenStdin || req.PTY != nil
	if keepStdin {
		p.stdinQ = make(chan stdinOp, 8)
	}

	start := time.Now()
	started, err := srv.startProcess(req, cmd, cg, childEnd)
	closeAll(childEnd)
	if err != nil {
		p.stdin.Close()
		for _, o := range outputs {
			o.f.Close()
		}
		return fail(fmt.Errorf("start %s: %w", req.Argv[0], err))
	}
	cleanup = append(cleanup, started.done)
	if !started.began.IsZero() {
		start = started.began
	}
	if started.stdio != nil { // a spare: its pipes are the program's
		p.stdin.Close()
		p.stdin, stdinW = started.stdio[0], started.stdio[0]
		for i := range outputs {
			outputs[i].f.Close()
			outputs[i].f = started.stdio[1+i]
		}
	}
	p.pid = started.pid
	p.info = agentproto.ProcessInfo{
		PID: p.pid, Tag: req.Tag, Argv: req.Argv, Env: req.Env, Dir: dir, User: req.User,
		PTY: req.PTY != nil, Background: req.Background, StartedUnixMillis: start.UnixMilli(),
	}
	srv.procs.add(p)
	p.subscribe(s, id, false)

	// Initial stdin first; then, if kept open, what the host sends.
	go func() {
		if len(req.Stdin) > 0 {
			_ = p.stdin.SetWriteDeadline(time.Now().Add(stdinTimeout))
			_, _ = p.stdin.Write(req.Stdin) // EPIPE if the program never reads: fine
			_ = p.stdin.SetWriteDeadline(time.Time{})
		}
		if keepStdin {
			p.serveStdin()
		} else if stdinW != nil {
			stdinW.Close()
		}
	}()
	go srv.supervise(p, started, lim, outCap, outputs, start, func() {
		for i := len(cleanup) - 1; i >= 0; i-- {
			cleanup[i]()
		}
	})
	return p, nil
}

func hasEnv(env []string, key string) bool {
	for _, e := range env {
		if strings.HasPrefix(e, key+"=") {
			return true
		}
	}
	return false
}

// pumpSource is one output of a process.
type pumpSource struct {
	f      *os.File
	s      agentproto.Stream
	status agentproto.Status // the kill status when it passes its cap
}

// supervise runs a started process to its end: output, limits, exit, and
// the cleanup of everything it held.
func (srv *Server) supervise(p *proc, started *process, lim agentproto.Limits, outCap int64, outputs []pumpSource, start time.Time, cleanup func()) {
	// Everything the process held is released before its exit goes out:
	// the host's next exec may want it (the prewarmed runtime, above all).
	finish := func(res *agentproto.ExitResult) {
		cleanup()
		p.finish(res)
	}
	var readers sync.WaitGroup
	for _, o := range outputs {
		readers.Add(1)
		go func() {
			defer readers.Done()
			err := pump(o.f, o.s, outCap, p.emit)
			if errors.Is(err, errOutputLimit) {
				p.kill(o.status, fmt.Sprintf("%s passed its limit of %d bytes", o.s, outCap))
			} else if err != nil && !errors.Is(err, unix.EIO) { // EIO: a terminal whose last user closed it
				p.kill(agentproto.StatusInternal, fmt.Sprintf("forward %s: %v", o.s, err))
			}
		}()
	}
	var timer *time.Timer
	if lim.WallMillis > 0 {
		wall := time.Duration(lim.WallMillis) * time.Millisecond
		timer = time.AfterFunc(wall, func() {
			p.kill(agentproto.StatusTimeout, fmt.Sprintf("wall-clock limit of %s reached", wall))
		})
	}

	ws, cpu, maxRSS, waitErr := started.wait()
	wall := time.Since(start)
	if timer != nil {
		timer.Stop()
	}
	// The main process is gone: nothing it started may outlive it.
	_ = syscall.Kill(-p.pid, syscall.SIGKILL)
	if p.cg != nil {
		p.cg.kill()
	}
	drained := make(chan struct{})
	go func() { readers.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(drainGrace):
		for _, o := range outputs { // a straggler holds the pipe; stop listening to it
			o.f.Close()
		}
		<-drained
	}
	for _, o := range outputs {
		o.f.Close()
	}
	p.closeStdinQueue()
	if p.pty == nil {
		p.stdin.Close()
	}
	srv.procs.remove(p)

	res := &agentproto.ExitResult{PID: p.pid, WallMillis: wall.Milliseconds(), Prewarmed: started.prewarmed,
		CPUMillis: cpu.Milliseconds(), MemoryBytes: maxRSS}
	if waitErr != nil {
		res.Code, res.Status, res.Message = -1, agentproto.StatusInternal, fmt.Sprintf("wait: %v", waitErr)
		finish(res)
		return
	}
	res.Code = ws.ExitStatus()
	if ws.Signaled() {
		res.Signal = unix.SignalName(ws.Signal())
		res.Code = -1
	}
	oom := false
	if p.cg != nil {
		st := p.cg.stats()
		if st.cpu > 0 {
			res.CPUMillis = st.cpu.Milliseconds()
		}
		if st.peak > 0 {
			res.MemoryBytes = st.peak + started.memBase
		}
		oom = st.oomKills > 0
	}
	reason, message := p.killReason()
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
	finish(res)
}

// process is a started command, whichever way it was started.
type process struct {
	pid       int
	prewarmed bool
	wait      func() (syscall.WaitStatus, time.Duration, int64, error)
	done      func() // releases what starting it held
	// stdio, if set, replace the agent's ends of the exec's stdin, stdout
	// and stderr pipes: a spare came with pipes of its own.
	stdio []*os.File
	// memBase is memory the process had before it joined its cgroup (a
	// spare's loaded runtime), charged elsewhere; it counts in the peak.
	memBase int64
	// began, if set, is when the program started: waiting for a spare is
	// not part of its wall time.
	began time.Time
}

// startProcess starts a request's command: forked from the prewarmed
// runtime when asked and possible, else executed, under no_new_privs and
// the user filter when the agent confines commands.
func (srv *Server) startProcess(req *agentproto.ExecRequest, cmd *exec.Cmd, cg *cgroup, stdio []*os.File) (*process, error) {
	c := &srv.cfg
	if req.Prewarmed && req.PTY == nil {
		uid := -1
		if cr := cmd.SysProcAttr.Credential; cr != nil {
			uid = int(cr.Uid)
		}
		p, err := srv.runSpare(req.Argv, cmd.Env, cmd.Dir, uid, cg)
		if err == nil {
			return p, nil
		}
		if !errors.Is(err, errPrewarmUnavailable) {
			srv.log.Warn("prewarmed runtime not used", "err", err)
		}
	}
	if req.Prewarmed && req.PTY == nil && c.prewarm.alive() && c.prewarm.mu.TryLock() {
		pp, err := c.prewarm.spawn(req.Argv, cmd.Env, cmd.Dir, stdio[0], stdio[1], stdio[2])
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
		srv.log.Warn("prewarmed runtime not used", "err", err)
		if !errors.Is(err, errPrewarmUnavailable) {
			c.prewarm.stopLocked() // out of step with us: never use it again
		}
		c.prewarm.mu.Unlock()
		// fall through: run it the ordinary way
	}
	release := func() {}
	if c.Confine {
		r, err := startConfined(cmd.Start)
		if err != nil {
			return nil, err
		}
		release = r
	} else if err := cmd.Start(); err != nil {
		return nil, err
	}
	return &process{pid: cmd.Process.Pid, done: release, wait: func() (syscall.WaitStatus, time.Duration, int64, error) {
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
