package agent

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"golang.org/x/sys/unix"
)

// A runtime that cannot fork (Node.js: V8 runs threads of its own, and
// JavaScript has no fork) is prewarmed as spares instead of a fork
// server: copies of it, started and loaded ahead of time, each waiting on
// its fd 3 to become one run (see agentproto.PrewarmRequest.Spares for
// the protocol). A spare is a process of its own from the start, so a run
// sees no other run's globals, module cache, monkey-patches or pid, as a
// fork server's child does not. The agent is the spare's parent: it
// collects its exit as for any exec. Spares in a snapshot are shared by
// every restore; replacements start at idle priority once the run that
// took one has ended, so a one-shot run does not pay for them.

const (
	// maxSpareMsg bounds a request to a spare (one SEQPACKET message);
	// larger ones run the ordinary way.
	maxSpareMsg = 512 << 10
	// spareAnswer bounds the wait for a spare's "ok": a restored guest
	// under TCG translates the spare's code afresh.
	spareAnswer = 30 * time.Second
	// spareWait bounds how long a prewarmed exec waits for a replacement
	// that is still loading before it runs the ordinary way.
	spareWait = 10 * time.Second
	// spareGiveUp is how many spares in a row may die before they are
	// ready before the pool stops starting them.
	spareGiveUp = 3
	// clockSkew is how far the clock is set back while the snapshot's
	// spares start: OpenSSL's generators (Node's crypto, and the seed of
	// V8's) reseed from the kernel when they were last seeded over an hour
	// ago, so spares restored from one snapshot do not share their random
	// numbers.
	clockSkew = 2 * time.Hour
)

// sparePool holds the spares of a VM's runtime.
type sparePool struct {
	mu       sync.Mutex
	spec     *agentproto.PrewarmRequest // nil until started
	argv0    string
	cg       *cgroup // where spares wait, with the user's maximum limits
	ready    []*spare
	warming  []*spare // started, not ready yet
	starting int      // being started or warming
	failures int
	changed  chan struct{} // closed when ready changes
}

// notify wakes whoever waits for a spare; the caller holds sp.mu.
func (sp *sparePool) notify() {
	if sp.changed != nil {
		close(sp.changed)
	}
	sp.changed = make(chan struct{})
}

// spare is one started copy of the runtime.
type spare struct {
	cmd     *exec.Cmd
	ctl     *os.File    // our end of its fd 3
	stdio   [3]*os.File // our ends of its stdin, stdout, stderr
	dead    chan struct{}
	release func()
}

func (s *spare) alive() bool {
	select {
	case <-s.dead:
		return false
	default:
		return true
	}
}

// kill ends a spare and frees what it held.
func (s *spare) kill() {
	_ = s.cmd.Process.Kill() // by pidfd: never a reused pid
	<-s.dead
	s.ctl.Close()
	for _, f := range s.stdio {
		f.Close()
	}
}

// startSpares starts req.Spares copies of a runtime, one after another,
// and waits until each is ready.
func (c *Config) startSpares(req *agentproto.PrewarmRequest) error {
	sp := c.spares
	sp.mu.Lock()
	if sp.spec != nil {
		sp.mu.Unlock()
		return errors.New("prewarm: a runtime is already running")
	}
	argv0, err := c.lookPath(req.Argv[0], req.Env)
	if err != nil {
		sp.mu.Unlock()
		return err
	}
	if c.CgroupParent != "" {
		max := orDefault(c.Max, agentproto.MaxLimits)
		lim := c.limits(agentproto.Limits{MemoryBytes: max.MemoryBytes, Procs: max.Procs})
		if cg, err := newCgroup(filepath.Join(c.CgroupParent, "spares"), lim); err == nil {
			sp.cg = cg // lives as long as the VM
		}
	}
	sp.spec, sp.argv0 = req, argv0
	sp.mu.Unlock()

	if c.SetClock != nil {
		start := time.Now()
		if err := c.SetClock(start.Add(-clockSkew)); err == nil {
			defer func() { _ = c.SetClock(start.Add(time.Since(start))) }()
		}
	}
	timeout := time.Duration(req.ReadyMillis) * time.Millisecond
	if timeout <= 0 {
		timeout = 2 * time.Minute
	}
	var started []*spare
	for range req.Spares {
		s, err := c.startSpare(false /* idle */)
		if err == nil {
			err = s.awaitReady(timeout)
		}
		if err != nil {
			for _, s := range started {
				s.kill()
			}
			sp.mu.Lock()
			sp.spec = nil
			sp.mu.Unlock()
			return fmt.Errorf("prewarm: runtime did not become ready: %w", err)
		}
		started = append(started, s)
	}
	sp.mu.Lock()
	sp.ready = append(sp.ready, started...)
	sp.mu.Unlock()
	return nil
}

// startSpare starts one copy of the runtime, at idle priority if asked.
func (c *Config) startSpare(idle bool) (*spare, error) {
	sp := c.spares
	sp.mu.Lock()
	req, argv0, cg := sp.spec, sp.argv0, sp.cg
	sp.mu.Unlock()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socketpair: %w", err)
	}
	_ = unix.SetNonblock(fds[0], true) // ours: pollable, so deadlines work
	ctl, theirs := os.NewFile(uintptr(fds[0]), "spare-ctl"), os.NewFile(uintptr(fds[1]), "spare-peer")
	defer theirs.Close()
	var pipes [6]*os.File
	for i := 0; i < 6 && err == nil; i += 2 {
		pipes[i], pipes[i+1], err = os.Pipe()
	}
	child := []*os.File{pipes[0], pipes[3], pipes[5]}
	s := &spare{ctl: ctl, stdio: [3]*os.File{pipes[1], pipes[2], pipes[4]}, dead: make(chan struct{}), release: func() {}}
	fail := func(err error) (*spare, error) {
		ctl.Close()
		for _, f := range pipes {
			if f != nil {
				f.Close()
			}
		}
		return nil, err
	}
	if err != nil {
		return fail(err)
	}
	defer func() {
		for _, f := range child {
			f.Close()
		}
	}()
	if c.UID >= 0 { // as an exec's pipes: the program may reopen them
		for _, f := range child {
			_ = f.Chown(c.UID, c.GID)
		}
	}
	cmd := &exec.Cmd{
		Path: argv0, Args: req.Argv, Env: c.environ(req.Env, req.Dir), Dir: req.Dir,
		Stdin: child[0], Stdout: child[1], Stderr: child[2],
		ExtraFiles:  []*os.File{theirs}, // fd 3
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true},
	}
	if c.Root != "" {
		cmd.SysProcAttr.Chroot = c.Root
	}
	if c.UID >= 0 {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(c.UID), Gid: uint32(c.GID), Groups: []uint32{}}
	}
	if cg != nil {
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = cg.fd()
	}
	if c.Confine {
		s.release, err = startConfined(cmd.Start)
	} else {
		err = cmd.Start()
	}
	if err != nil {
		return fail(fmt.Errorf("start %s: %w", req.Argv[0], err))
	}
	s.cmd = cmd
	if idle {
		setPriority(cmd.Process.Pid, true /* idle */)
	}
	go func() { _ = cmd.Wait(); close(s.dead); s.release() }()
	return s, nil
}

// awaitReady waits for a new spare's "ready"; it kills the spare if none
// comes.
func (s *spare) awaitReady(timeout time.Duration) error {
	_ = s.ctl.SetReadDeadline(time.Now().Add(timeout))
	m, err := s.recv()
	_ = s.ctl.SetReadDeadline(time.Time{})
	if err == nil && m != "ready" {
		err = fmt.Errorf("unexpected first message %q", m)
	}
	if err != nil {
		s.kill()
		return err
	}
	return nil
}

func (s *spare) recv() (string, error) {
	buf := make([]byte, 512)
	n, err := s.ctl.Read(buf)
	if err != nil {
		return "", err
	}
	if n == 0 {
		return "", errors.New("runtime closed its channel")
	}
	return string(buf[:n]), nil
}

// take removes a live ready spare from the pool; nil if there is none.
// Dead ones (killed by an earlier run's code, say) are dropped and
// replaced. With none ready but one loading (the replacement for the
// run before), it waits for that one, at normal priority, a while.
func (sp *sparePool) take(c *Config) *spare {
	deadline := time.Now().Add(spareWait)
	for {
		sp.mu.Lock()
		var s *spare
		dropped := false
		for len(sp.ready) > 0 && s == nil {
			s, sp.ready = sp.ready[0], sp.ready[1:]
			if !s.alive() {
				go s.kill()
				s, dropped = nil, true
			}
		}
		if sp.changed == nil {
			sp.notify()
		}
		wait, warming := sp.changed, len(sp.warming) > 0 || sp.starting > 0
		for _, w := range sp.warming {
			setPriority(w.cmd.Process.Pid, false /* idle */)
		}
		sp.mu.Unlock()
		if dropped {
			sp.replenish(c)
			warming = true
		}
		left := time.Until(deadline)
		if s == nil && warming && left <= 0 { // this exec runs the ordinary way: do not compete with it
			sp.mu.Lock()
			for _, w := range sp.warming {
				setPriority(w.cmd.Process.Pid, true /* idle */)
			}
			sp.mu.Unlock()
		}
		if s != nil || !warming || left <= 0 {
			return s
		}
		select {
		case <-wait:
		case <-time.After(left):
		}
	}
}

// setPriority puts a process at idle or normal scheduling priority.
func setPriority(pid int, idle bool) {
	policy := uint32(unix.SCHED_NORMAL)
	if idle {
		policy = unix.SCHED_IDLE
	}
	_ = unix.SchedSetAttr(pid, &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: policy}, 0)
}

// giveBack returns a spare that declined a run to the pool.
func (sp *sparePool) giveBack(s *spare) {
	sp.mu.Lock()
	sp.ready = append([]*spare{s}, sp.ready...)
	sp.mu.Unlock()
}

// replenish starts spares, at idle priority, until the pool has as many
// as it was asked for.
func (sp *sparePool) replenish(c *Config) {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.spec == nil {
		return
	}
	live := sp.starting
	for _, s := range sp.ready {
		if s.alive() {
			live++
		}
	}
	for ; live < sp.spec.Spares && sp.failures < spareGiveUp; live++ {
		sp.starting++
		go func() {
			s, err := c.startSpare(true /* idle */)
			if err == nil {
				sp.mu.Lock()
				sp.warming = append(sp.warming, s)
				sp.mu.Unlock()
				err = s.awaitReady(2 * time.Minute)
			}
			sp.mu.Lock()
			defer sp.mu.Unlock()
			sp.starting--
			for i, w := range sp.warming {
				if w == s {
					sp.warming = append(sp.warming[:i], sp.warming[i+1:]...)
					break
				}
			}
			if err != nil {
				sp.failures++
			} else {
				sp.failures = 0
				sp.ready = append(sp.ready, s)
			}
			sp.notify()
		}()
	}
}

// runSpare hands an exec to a ready spare: it asks the spare whether it
// runs argv (its answer "no" puts it back, errPrewarmUnavailable), moves
// it into the exec's cgroup, and lets it go. The returned process's
// stdio are the spare's pipes, which replace the exec's.
func (srv *Server) runSpare(argv, env []string, dir string, uid int, cg *cgroup) (*process, error) {
	c := &srv.cfg
	sp := c.spares
	if sp == nil || uid != c.UID || !sp.accepts(argv) {
		return nil, errPrewarmUnavailable
	}
	var msg bytes.Buffer
	msg.WriteString("run\x00" + dir + "\x00" + strconv.Itoa(len(argv)))
	for _, a := range append(append([]string{}, argv...), env...) {
		msg.WriteByte(0)
		msg.WriteString(a)
	}
	if msg.Len() > maxSpareMsg {
		return nil, errPrewarmUnavailable
	}
	s := sp.take(c)
	if s == nil {
		return nil, errPrewarmUnavailable
	}
	ok := false
	defer func() {
		if !ok {
			s.kill()
			sp.replenish(c)
		}
	}()
	if _, err := s.ctl.Write(msg.Bytes()); err != nil {
		return nil, fmt.Errorf("prewarm: send request: %w", err)
	}
	_ = s.ctl.SetReadDeadline(time.Now().Add(spareAnswer))
	answer, err := s.recv()
	_ = s.ctl.SetReadDeadline(time.Time{})
	if err != nil {
		return nil, fmt.Errorf("prewarm: %w", err)
	}
	if reason, no := strings.CutPrefix(answer, "no"); no {
		ok = true
		sp.giveBack(s)
		return nil, fmt.Errorf("%w: runtime declined:%s", errPrewarmUnavailable, reason)
	}
	if answer != "ok" {
		return nil, fmt.Errorf("prewarm: unexpected answer %q", answer)
	}
	pid := s.cmd.Process.Pid
	base := procAnonRSS(pid)
	if cg != nil {
		if err := cg.add(pid); err != nil {
			return nil, fmt.Errorf("prewarm: %w", err)
		}
		// What the spare allocated while it loaded stays charged to the
		// spares' cgroup; a plain run would have charged it to its own, so
		// it comes off this one's memory limit.
		shrinkMemoryMax(cg, base)
	}
	// A replacement waited at idle priority; a run gets the usual one.
	setPriority(pid, false /* idle */)
	cpu0 := procCPU(pid) // what loading took, not the run's
	drain(s.stdio[1])
	drain(s.stdio[2])
	began := time.Now()
	if _, err := s.ctl.Write([]byte("go")); err != nil {
		return nil, fmt.Errorf("prewarm: start run: %w", err)
	}
	s.ctl.Close()
	ok = true
	return &process{
		pid: pid, prewarmed: true, stdio: s.stdio[:], memBase: base, began: began,
		wait: func() (syscall.WaitStatus, time.Duration, int64, error) {
			<-s.dead
			st := s.cmd.ProcessState
			if st == nil {
				return 0, 0, 0, errors.New("prewarm: spare not waited for")
			}
			var cpu time.Duration
			var rss int64
			if ru, ok := st.SysUsage().(*syscall.Rusage); ok {
				cpu = time.Duration(ru.Utime.Nano()) + time.Duration(ru.Stime.Nano()) - cpu0
				rss = ru.Maxrss * 1024
			}
			return st.Sys().(syscall.WaitStatus), max(cpu, 0), rss, nil
		},
		done: func() { sp.replenish(c) },
	}, nil
}

// accepts says whether argv is a command line the spares may run.
func (sp *sparePool) accepts(argv []string) bool {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.spec == nil {
		return false
	}
	if len(sp.spec.Accept) == 0 {
		return true
	}
	for _, pre := range sp.spec.Accept {
		if len(argv) >= len(pre) && slices.Equal(argv[:len(pre)], pre) {
			return true
		}
	}
	return false
}

// procAnonRSS is pid's resident anonymous memory in bytes (0 if unknown).
func procAnonRSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "RssAnon:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// shrinkMemoryMax lowers cg's memory limit by base bytes, to no less
// than a MiB.
func shrinkMemoryMax(cg *cgroup, base int64) {
	f := filepath.Join(cg.dir, "memory.max")
	b, err := os.ReadFile(f)
	if err != nil || base <= 0 {
		return
	}
	limit, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil { // "max": no limit
		return
	}
	_ = os.WriteFile(f, []byte(strconv.FormatInt(max(limit-base, 1<<20), 10)), 0)
}

// procCPU is the CPU time pid has used so far (0 if unknown).
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	_, rest, ok := bytes.Cut(b, []byte(") ")) // after the command name, which may hold spaces
	if !ok {
		return 0
	}
	f := strings.Fields(string(rest))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64) // utime: field 14 of stat
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

// drain discards what a spare wrote while it loaded, so it is not taken
// for the run's output.
func drain(f *os.File) {
	buf := make([]byte, 4096)
	for {
		_ = f.SetReadDeadline(time.Now())
		if n, err := f.Read(buf); n == 0 || err != nil {
			break
		}
	}
	_ = f.SetReadDeadline(time.Time{})
}
