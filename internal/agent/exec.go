package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"golang.org/x/sys/unix"
)

// Config says how the agent isolates and bounds what it runs.
type Config struct {
	// Root is the directory commands are chrooted into; empty means no chroot.
	Root string
	// UID and GID commands run as; negative means the agent's own.
	UID, GID int
	// CgroupParent is a cgroup v2 directory under which each exec gets its
	// own cgroup (memory and pids limits, peak memory, kill of the whole
	// tree); empty means no cgroups.
	CgroupParent string
	// Defaults fill zero fields of a request's limits; Max clamps them.
	Defaults, Max agentproto.Limits
	// Version and Kernel are reported in Hello.
	Version, Kernel string
	// Shutdown is called on a Shutdown request (the guest powers off).
	Shutdown func()
	// Resync applies a ResyncRequest (clock, entropy, identity).
	Resync func(agentproto.ResyncRequest) error
	// BootTime is when the guest started, for Hello's uptime.
	BootTime time.Time

	prewarm *prewarmer // set by NewServer
}

// defaultPath is the PATH commands get unless the request sets one.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// drainGrace is how long output pipes may stay open after the process tree
// was killed, e.g. by a process that escaped it; then they are closed.
const drainGrace = 2 * time.Second

// limits are a request's effective limits under this agent's defaults
// and maxima.
func (c *Config) limits(req agentproto.Limits) agentproto.Limits {
	return req.Effective(orDefault(c.Defaults, agentproto.DefaultLimits), orDefault(c.Max, agentproto.MaxLimits))
}

// outputSink receives a running command's output.
type outputSink func(s agentproto.Stream, data []byte) error

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

func orDefault(l, d agentproto.Limits) agentproto.Limits {
	if l == (agentproto.Limits{}) {
		return d
	}
	return l
}

var errOutputLimit = errors.New("output limit")

// pump forwards r to sink in chunks until EOF, passing at most limit bytes.
// Past the limit it returns errOutputLimit after forwarding what fits.
func pump(r io.Reader, s agentproto.Stream, limit int64, sink outputSink) error {
	buf := make([]byte, 32<<10)
	var n int64
	for {
		k, err := r.Read(buf)
		if k > 0 {
			chunk := buf[:k]
			over := n+int64(k) > limit
			if over {
				chunk = chunk[:limit-n]
			}
			n += int64(len(chunk))
			if len(chunk) > 0 {
				if serr := sink(s, chunk); serr != nil {
					return serr
				}
			}
			if over {
				return errOutputLimit
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, os.ErrClosed) {
				return nil
			}
			return err
		}
	}
}

// hostPath maps a path inside the command's root to the agent's view.
func (c *Config) hostPath(p string) string {
	if c.Root == "" {
		return p
	}
	return filepath.Join(c.Root, p)
}

// makeRunDir creates a fresh, private working directory for one exec.
func (c *Config) makeRunDir(id uint32) (string, error) {
	base := c.hostPath("/tmp")
	if err := os.MkdirAll(base, 0o1777); err != nil {
		return "", err
	}
	host, err := os.MkdirTemp(base, fmt.Sprintf("run-%d-", id))
	if err != nil {
		return "", fmt.Errorf("make working directory: %w", err)
	}
	if c.UID >= 0 {
		if err := os.Chown(host, c.UID, c.GID); err != nil {
			os.RemoveAll(host)
			return "", err
		}
	}
	return path.Join("/tmp", filepath.Base(host)), nil
}

// openDir opens dir, a path inside the command's root, confined to that
// root: a symlink planted by an earlier command cannot redirect the agent
// (which runs as root, outside the chroot) anywhere else. With create, a
// missing dir is made and given to the command's user.
func (c *Config) openDir(dir string, create bool) (*os.Root, error) {
	top := c.Root
	if top == "" {
		top = "/"
	}
	root, err := os.OpenRoot(top)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	rel := strings.TrimPrefix(path.Clean("/"+dir), "/")
	if rel == "" {
		rel = "."
	}
	if create {
		if _, err := root.Lstat(rel); errors.Is(err, os.ErrNotExist) {
			if err := root.MkdirAll(rel, 0o755); err != nil {
				return nil, fmt.Errorf("create working directory %s: %w", dir, err)
			}
			if c.UID >= 0 {
				if err := root.Lchown(rel, c.UID, c.GID); err != nil {
					return nil, err
				}
			}
		}
	}
	d, err := root.OpenRoot(rel)
	if err != nil {
		return nil, fmt.Errorf("open working directory %s: %w", dir, err)
	}
	return d, nil
}

// writeFiles writes request files under dir, never outside it.
func (c *Config) writeFiles(root *os.Root, files []agentproto.File) error {
	for _, f := range files {
		if d := path.Dir(f.Path); d != "." {
			if err := root.MkdirAll(d, 0o755); err != nil {
				return fmt.Errorf("write %s: %w", f.Path, err)
			}
			if c.UID >= 0 {
				for p := d; p != "."; p = path.Dir(p) {
					_ = root.Lchown(p, c.UID, c.GID)
				}
			}
		}
		mode := os.FileMode(f.Mode & 0o777)
		if mode == 0 {
			mode = 0o644
		}
		if err := root.WriteFile(f.Path, f.Content, mode); err != nil {
			return fmt.Errorf("write %s: %w", f.Path, err)
		}
		if err := root.Chmod(f.Path, mode); err != nil { // WriteFile's mode is masked by umask
			return fmt.Errorf("write %s: %w", f.Path, err)
		}
		if c.UID >= 0 {
			if err := root.Lchown(f.Path, c.UID, c.GID); err != nil {
				return fmt.Errorf("write %s: %w", f.Path, err)
			}
		}
	}
	return nil
}

func (c *Config) writeFilesRequest(r *agentproto.WriteFilesRequest) error {
	if err := r.Validate(); err != nil {
		return err
	}
	d, err := c.openDir(r.Dir, true)
	if err != nil {
		return err
	}
	defer d.Close()
	return c.writeFiles(d, r.Files)
}

// readFile reads a regular file inside the command's root, never through
// a symlink that leads out of it.
func (c *Config) readFile(r *agentproto.ReadFileRequest) ([]byte, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	d, err := c.openDir(path.Dir(r.Path), false)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	f, err := d.Open(path.Base(r.Path))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", r.Path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("read %s: not a regular file", r.Path)
	}
	if fi.Size() > r.MaxBytes {
		return nil, fmt.Errorf("read %s: %d bytes, more than the %d allowed: %w", r.Path, fi.Size(), r.MaxBytes, errTooLarge)
	}
	b, err := io.ReadAll(io.LimitReader(f, r.MaxBytes+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > r.MaxBytes {
		return nil, fmt.Errorf("read %s: grew past the %d allowed: %w", r.Path, r.MaxBytes, errTooLarge)
	}
	return b, nil
}

func (c *Config) environ(env []string, dir string) []string {
	out := []string{"PATH=" + defaultPath, "HOME=" + dir, "LANG=C.UTF-8", "TMPDIR=/tmp"}
	seen := map[string]int{"PATH": 0, "HOME": 1, "LANG": 2, "TMPDIR": 3}
	for _, e := range env {
		k, _, _ := strings.Cut(e, "=")
		if i, ok := seen[k]; ok {
			out[i] = e
			continue
		}
		seen[k] = len(out)
		out = append(out, e)
	}
	return out
}

// statInRoot stats p as the command will see it: symlinks, absolute ones
// too (Debian's /usr/bin/php -> /etc/alternatives/php -> ...), resolve
// inside the root, never on the agent's side of the chroot.
func (c *Config) statInRoot(p string) (os.FileInfo, error) {
	if c.Root == "" {
		return os.Stat(p)
	}
	root, err := unix.Open(c.Root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(root)
	fd, err := unix.Openat2(root, strings.TrimPrefix(p, "/"), &unix.OpenHow{
		Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return nil, &os.PathError{Op: "stat", Path: p, Err: err}
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	return f.Stat()
}

// lookPath resolves argv[0] against PATH inside the command's root: the
// agent's own PATH and filesystem are not the command's.
func (c *Config) lookPath(name string, env []string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	p := defaultPath
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			p = v
		}
	}
	for _, d := range filepath.SplitList(p) {
		if d == "" || !path.IsAbs(d) {
			continue
		}
		cand := path.Join(d, name)
		if fi, err := c.statInRoot(cand); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return cand, nil
		}
	}
	return "", fmt.Errorf("%s: command not found in the guest (PATH=%s)", name, p)
}
