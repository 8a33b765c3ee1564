package agent

import (
	"os"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"golang.org/x/sys/unix"
)

// procTable holds the processes the agent runs for the host, by pid. It
// lives as long as the agent: a background process outlives the channel
// that started it (a snapshot, a restore, a new host), and a later
// channel lists it, connects to it, writes to it and signals it. Only
// processes in the table can be named by a process call.
type procTable struct {
	mu sync.Mutex
	m  map[int]*proc
}

func (t *procTable) add(p *proc) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = map[int]*proc{}
	}
	t.m[p.pid] = p
}

func (t *procTable) remove(p *proc) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m[p.pid] == p {
		delete(t.m, p.pid)
	}
}

func (t *procTable) get(pid int) *proc {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.m[pid]
}

func (t *procTable) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}

func (t *procTable) list() []agentproto.ProcessInfo {
	t.mu.Lock()
	out := make([]agentproto.ProcessInfo, 0, len(t.m))
	for _, p := range t.m {
		out = append(out, p.info)
	}
	t.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].PID < out[j].PID })
	return out
}

// proc is one running process and who listens to it.
type proc struct {
	pid        int
	info       agentproto.ProcessInfo
	background bool
	cg         *cgroup
	pty        *os.File // the terminal's master side, for PTY processes

	mu          sync.Mutex
	subs        []sub
	ring        [4]ring // recent output per stream, for a replaying connect
	replay      bool    // keep ring (background and PTY processes)
	stdin       stdinSink
	stdinQ      chan stdinOp // nil unless stdin is kept open
	stdinClosed bool
	exited      bool
	done        chan struct{} // closed once every subscriber has its Exit

	killOnce sync.Once
	reason   agentproto.Status
	message  string
}

// sub is a request (of one channel) that receives a process's output.
type sub struct {
	sess *session
	id   uint32
}

// stdinSink is where stdin writes go: a pipe, or the terminal's master.
type stdinSink interface {
	Write([]byte) (int, error)
	SetWriteDeadline(time.Time) error
	Close() error
}

// stdinOp is one queued StdinRequest.
type stdinOp struct {
	data  []byte
	close bool
	reply func(error)
}

// stdinTimeout bounds one stdin write: a program that never reads its
// stdin fails the write instead of holding the host's call.
const stdinTimeout = 10 * time.Second

// subscribe adds a listener and sends it Started (and, with replay, the
// recent output), under the lock so that no output overtakes them. It
// reports false if the process has already exited.
func (p *proc) subscribe(s *session, id uint32, replay bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exited {
		return false
	}
	if s.send(agentproto.MsgStarted, agentproto.Started{ID: id, PID: p.pid}) != nil {
		return true // the channel is gone; the request ends with it
	}
	if replay {
		for st := range p.ring {
			for _, b := range p.ring[st].chunks() {
				if s.output(id, agentproto.Stream(st), b) != nil {
					return true
				}
			}
		}
	}
	p.subs = append(p.subs, sub{s, id})
	return true
}

func (p *proc) unsubscribe(s *session, id uint32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, x := range p.subs {
		if x.sess == s && x.id == id {
			p.subs = append(p.subs[:i], p.subs[i+1:]...)
			return
		}
	}
}

// emit forwards output to every listener, in order; one whose channel
// fails is dropped. The process's own pipe is held back meanwhile, which
// is the only flow control output needs.
func (p *proc) emit(st agentproto.Stream, data []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.replay {
		p.ring[st].add(data)
	}
	kept := p.subs[:0]
	for _, x := range p.subs {
		if x.sess.output(x.id, st, data) == nil {
			kept = append(kept, x)
		}
	}
	p.subs = kept
}

// finish sends the exit to every listener and marks the process gone.
func (p *proc) finish(res *agentproto.ExitResult) {
	p.mu.Lock()
	p.exited = true
	subs := p.subs
	p.subs = nil
	p.mu.Unlock()
	for _, x := range subs {
		r := *res
		r.ID = x.id
		_ = x.sess.send(agentproto.MsgExit, &r)
	}
	close(p.done)
}

// kill kills the process tree, once, for the first reason given.
func (p *proc) kill(st agentproto.Status, msg string) {
	p.killOnce.Do(func() {
		p.mu.Lock()
		p.reason, p.message = st, msg
		p.mu.Unlock()
		_ = syscall.Kill(-p.pid, syscall.SIGKILL)
		if p.cg != nil {
			p.cg.kill()
		}
	})
}

// killReason is why kill was called, if it was.
func (p *proc) killReason() (agentproto.Status, string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.reason, p.message
}

// signal sends sig to the process group; SIGKILL also empties the cgroup,
// reaching what left the group.
func (p *proc) signal(sig agentproto.Signal) error {
	n := unix.SignalNum(string(sig))
	if n == 0 {
		return errInvalid
	}
	err := syscall.Kill(-p.pid, n)
	if err == syscall.ESRCH {
		err = syscall.Kill(p.pid, n) // not a group leader (a prewarmed fork)
	}
	if n == syscall.SIGKILL && p.cg != nil {
		p.cg.kill()
		err = nil
	}
	return err
}

// queueStdin queues a stdin write without blocking; the write itself
// happens on the process's stdin goroutine, in order.
func (p *proc) queueStdin(op stdinOp) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stdinQ == nil || p.stdinClosed {
		return errStdinClosed
	}
	select {
	case p.stdinQ <- op:
		if op.close {
			p.stdinClosed = true
		}
		return nil
	default:
		return errBusy
	}
}

// serveStdin performs queued stdin writes until stdin is closed or the
// process ends (closeStdinQueue).
func (p *proc) serveStdin() {
	for op := range p.stdinQ {
		var err error
		if len(op.data) > 0 {
			_ = p.stdin.SetWriteDeadline(time.Now().Add(stdinTimeout))
			_, err = p.stdin.Write(op.data)
		}
		if err == nil && op.close {
			if p.pty != nil {
				_, err = p.stdin.Write([]byte{4}) // the terminal's end of file (VEOF, ^D)
			} else {
				err = p.stdin.Close()
			}
		}
		op.reply(err)
		if op.close {
			return
		}
	}
}

// closeStdinQueue stops serveStdin once the process has ended; what is
// still queued fails on the closed stdin.
func (p *proc) closeStdinQueue() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stdinQ != nil && !p.stdinClosed {
		p.stdinClosed = true
		close(p.stdinQ)
	}
}

// ring keeps the last ReplayBytes of one stream.
type ring struct {
	bufs [][]byte
	n    int
}

func (r *ring) add(b []byte) {
	r.bufs = append(r.bufs, append([]byte(nil), b...))
	r.n += len(b)
	for len(r.bufs) > 1 && r.n-len(r.bufs[0]) >= agentproto.ReplayBytes {
		r.n -= len(r.bufs[0])
		r.bufs = r.bufs[1:]
	}
}

func (r *ring) chunks() [][]byte { return r.bufs }
