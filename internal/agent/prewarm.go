package agent

import (
	"encoding/json"
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

// prewarmer is a language runtime started ahead of time (before a
// snapshot), which forks a fresh process for each exec instead of paying
// the interpreter's start-up again. It speaks a tiny protocol on a
// SOCK_SEQPACKET socketpair (its fd 3):
//
//	server -> agent  {"ready": true}                       once, when loaded
//	agent  -> server {"argv", "env", "cwd"} + 4 fds        stdin, stdout, stderr, gate
//	server -> agent  {"pid": N}                             forked; child waits on gate
//	agent            moves N into the exec's cgroup, writes one byte to the gate
//	server -> agent  {"pid": N, "status": S, "utime_us", "stime_us", "maxrss_kb"}
//
// One exec at a time uses it; others, or any failure, fall back to a
// normal exec.
type prewarmer struct {
	mu      sync.Mutex // held for the whole of one exec
	cmd     *exec.Cmd
	ctl     *os.File
	dead    chan struct{}
	release func() // the confined thread that started it
}

type prewarmMsg struct {
	Ready    bool   `json:"ready,omitempty"`
	Error    string `json:"error,omitempty"`
	PID      int    `json:"pid,omitempty"`
	Status   *int   `json:"status,omitempty"`
	UtimeUS  int64  `json:"utime_us,omitempty"`
	StimeUS  int64  `json:"stime_us,omitempty"`
	MaxRSSKB int64  `json:"maxrss_kb,omitempty"`
}

func (p *prewarmer) alive() bool {
	if p == nil || p.cmd == nil {
		return false
	}
	select {
	case <-p.dead:
		return false
	default:
		return true
	}
}

// startPrewarm starts the runtime server described by req and waits until
// it reports ready.
func (c *Config) startPrewarm(req *agentproto.PrewarmRequest) error {
	if err := req.Validate(); err != nil {
		return err
	}
	p := c.prewarm
	if p == nil || c.spares == nil {
		return errors.New("prewarm: not supported by this agent's configuration")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	c.spares.mu.Lock()
	spares := c.spares.spec != nil
	c.spares.mu.Unlock()
	if p.alive() || spares {
		return errors.New("prewarm: a runtime is already running")
	}
	wd, err := c.openDir(req.Dir, true)
	if err != nil {
		return err
	}
	err = c.writeFiles(wd, req.Files)
	wd.Close()
	if err != nil {
		return err
	}
	if req.Spares > 0 {
		return c.startSpares(req)
	}
	argv0, err := c.lookPath(req.Argv[0], req.Env)
	if err != nil {
		return err
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("prewarm: socketpair: %w", err)
	}
	ours, theirs := os.NewFile(uintptr(fds[0]), "prewarm-ctl"), os.NewFile(uintptr(fds[1]), "prewarm-peer")
	defer theirs.Close()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		ours.Close()
		return err
	}
	defer devnull.Close()
	cmd := &exec.Cmd{
		Path: argv0, Args: req.Argv, Env: c.environ(req.Env, req.Dir), Dir: req.Dir,
		Stdin: devnull, Stdout: devnull, Stderr: devnull,
		ExtraFiles:  []*os.File{theirs}, // fd 3
		SysProcAttr: &syscall.SysProcAttr{Setsid: true},
	}
	if c.Root != "" {
		cmd.SysProcAttr.Chroot = c.Root
	}
	if c.UID >= 0 {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(c.UID), Gid: uint32(c.GID), Groups: []uint32{}}
	}
	if c.CgroupParent != "" {
		// The runtime and what it keeps (a code interpreter's contexts)
		// may use what the user's cgroup allows; each run forked from it
		// gets its own limits when it moves into its exec's cgroup.
		max := orDefault(c.Max, agentproto.MaxLimits)
		lim := c.limits(agentproto.Limits{MemoryBytes: max.MemoryBytes, Procs: max.Procs})
		cg, err := newCgroup(filepath.Join(c.CgroupParent, "prewarm"), lim)
		if err == nil { // the server lives as long as the VM: its cgroup too
			cmd.SysProcAttr.UseCgroupFD = true
			cmd.SysProcAttr.CgroupFD = cg.fd()
			defer cg.f.Close()
		}
	}
	p.release = func() {}
	if c.Confine { // its forks inherit no_new_privs and the filter
		p.release, err = startConfined(cmd.Start)
	} else {
		err = cmd.Start()
	}
	if err != nil {
		ours.Close()
		return fmt.Errorf("prewarm: start %s: %w", req.Argv[0], err)
	}
	dead := make(chan struct{})
	go func() { _ = cmd.Wait(); close(dead) }()
	p.cmd, p.ctl, p.dead = cmd, ours, dead

	timeout := time.Duration(req.ReadyMillis) * time.Millisecond
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	_ = ours.SetReadDeadline(time.Now().Add(timeout))
	m, err := p.recv()
	_ = ours.SetReadDeadline(time.Time{})
	if err != nil || !m.Ready {
		p.stopLocked()
		if err == nil {
			err = fmt.Errorf("unexpected first message %+v", m)
		}
		return fmt.Errorf("prewarm: runtime did not become ready: %w", err)
	}
	return nil
}

func (p *prewarmer) stopLocked() {
	if p.cmd != nil && p.cmd.Process != nil {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.dead
	}
	if p.ctl != nil {
		p.ctl.Close()
	}
	if p.release != nil {
		p.release()
	}
	p.cmd, p.ctl, p.release = nil, nil, nil
}

func (p *prewarmer) recv() (prewarmMsg, error) {
	buf := make([]byte, 4096)
	n, err := p.ctl.Read(buf)
	if err != nil {
		return prewarmMsg{}, err
	}
	if n == 0 {
		return prewarmMsg{}, errors.New("runtime closed its channel")
	}
	var m prewarmMsg
	if err := json.Unmarshal(buf[:n], &m); err != nil {
		return prewarmMsg{}, fmt.Errorf("bad message from runtime: %w", err)
	}
	return m, nil
}

// prewarmProc is a process forked by the runtime for one exec.
type prewarmProc struct {
	p    *prewarmer
	pid  int
	gate *os.File
}

// spawn asks the runtime to fork a process for argv with the given stdio.
// The caller holds p.mu (via tryLock) until wait returns.
func (p *prewarmer) spawn(argv, env []string, dir string, stdin, stdout, stderr *os.File) (*prewarmProc, error) {
	gateR, gateW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer gateR.Close()
	b, _ := json.Marshal(map[string]any{"argv": argv, "env": env, "cwd": dir})
	rights := unix.UnixRights(int(stdin.Fd()), int(stdout.Fd()), int(stderr.Fd()), int(gateR.Fd()))
	conn := int(p.ctl.Fd())
	if err := unix.Sendmsg(conn, b, rights, nil, 0); err != nil {
		gateW.Close()
		return nil, fmt.Errorf("prewarm: send request: %w", err)
	}
	m, err := p.recv()
	if err != nil {
		gateW.Close()
		return nil, fmt.Errorf("prewarm: %w", err)
	}
	if m.PID <= 0 {
		gateW.Close()
		return nil, fmt.Errorf("%w: runtime refused: %s", errPrewarmUnavailable, m.Error)
	}
	return &prewarmProc{p: p, pid: m.PID, gate: gateW}, nil
}

// release lets the forked child run (after it was moved into its cgroup).
func (pp *prewarmProc) release() error {
	_, err := pp.gate.Write([]byte{1})
	pp.gate.Close()
	return err
}

// wait returns the child's wait status and resource usage.
func (pp *prewarmProc) wait() (syscall.WaitStatus, time.Duration, int64, error) {
	for {
		m, err := pp.p.recv()
		if err != nil {
			return 0, 0, 0, fmt.Errorf("prewarm: wait for %d: %w", pp.pid, err)
		}
		if m.PID == pp.pid && m.Status != nil {
			cpu := time.Duration(m.UtimeUS+m.StimeUS) * time.Microsecond
			return syscall.WaitStatus(*m.Status), cpu, m.MaxRSSKB * 1024, nil
		}
	}
}
