package vmmfake

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
)

// ExecFunc runs one exec request in a fake guest.
type ExecFunc func(ctx context.Context, g *Guest, req agentproto.ExecRequest, stdout, stderr io.Writer) agentproto.ExitResult

// Guest is the fake agent of one connection: it speaks agentproto over
// the machine's memory. Built-in commands (argv[0]):
//
//	echo ARGS...        print ARGS
//	cat FILE            print FILE (relative to the exec's directory)
//	write FILE TEXT     write TEXT to FILE
//	sleep MS            sleep, honouring cancel and the wall-clock limit
//	exit N              exit with code N
//	env                 print the environment, one entry a line
//	identity            print the identity the last Resync set
//
// Anything else exits 127. An ExecFunc reads the exec's stdin with Stdin.
// Stdin requests reach an exec started with OpenStdin; a signal request
// other than SIGCONT, SIGSTOP, SIGTSTP or SIGWINCH ends the exec, whose
// result then says it was killed by that signal.
type Guest struct {
	m    *Machine
	exec ExecFunc

	mu       sync.Mutex
	identity string
	running  map[uint32]context.CancelFunc
	procs    map[int]*fakeProc        // running execs by pid
	acks     map[uint32]chan struct{} // downloads in flight
}

// download sends b as the agent does: its description, then chunks, at
// most agentproto.Window ahead of the host's acknowledgements.
func (g *Guest) download(ctx context.Context, w *agentproto.Writer, r agentproto.FileRequest, b []byte, wg *sync.WaitGroup) error {
	info := agentproto.FileInfo{Name: path.Base(r.Path), Path: r.Path, Type: agentproto.TypeFile, Size: int64(len(b)), Mode: 0o644}
	if err := w.WriteJSON(agentproto.MsgEntries, agentproto.Entries{ID: r.ID, Entries: []agentproto.FileInfo{info}}); err != nil {
		return err
	}
	acks := make(chan struct{}, agentproto.Window+1)
	g.mu.Lock()
	if g.acks == nil {
		g.acks = map[uint32]chan struct{}{}
	}
	g.acks[r.ID] = acks
	g.mu.Unlock()
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer func() { g.mu.Lock(); delete(g.acks, r.ID); g.mu.Unlock() }()
		inflight := 0
		for {
			for inflight >= agentproto.Window {
				select {
				case <-acks:
					inflight--
				case <-ctx.Done():
					return
				}
			}
			n := min(len(b), agentproto.MaxChunk)
			flags := uint8(0)
			if n == len(b) {
				flags = agentproto.ChunkEOF
			}
			if w.WriteChunk(r.ID, flags, b[:n]) != nil || flags != 0 {
				return
			}
			b = b[n:]
			inflight++
		}
	}()
	return nil
}

// Machine returns the guest's machine.
func (g *Guest) Machine() *Machine { return g.m }

// Serve answers frames on conn until it closes or the machine stops.
func (g *Guest) Serve(conn net.Conn) {
	defer conn.Close()
	if !g.m.waitRunning() { // a paused guest says nothing
		return
	}
	g.running = map[uint32]context.CancelFunc{}
	g.procs = map[int]*fakeProc{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := agentproto.NewWriter(conn)
	if w.WriteJSON(agentproto.MsgHello, g.hello()) != nil {
		return
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		f, err := agentproto.ReadFrame(conn)
		if err != nil {
			return
		}
		if !g.m.waitRunning() {
			return
		}
		switch f.Type {
		case agentproto.MsgPing:
			err = w.WriteJSON(agentproto.MsgHello, g.hello())
		case agentproto.MsgResync:
			var r agentproto.ResyncRequest
			if err = r.UnmarshalBinary(f.Payload); err == nil {
				g.mu.Lock()
				g.identity = r.Identity
				g.mu.Unlock()
				err = w.WriteJSON(agentproto.MsgHello, g.hello())
			}
		case agentproto.MsgExec:
			var req agentproto.ExecRequest
			if err = agentproto.DecodeJSON(f, &req); err != nil {
				break
			}
			pid := 1000 + int(req.ID)
			ectx, ecause := context.WithCancelCause(ctx)
			ecancel := func() { ecause(context.Canceled) }
			p := &fakeProc{cancel: ecause, stdin: newFakeStdin(req.Stdin, req.OpenStdin), open: req.OpenStdin}
			context.AfterFunc(ectx, p.stdin.close) // a reader blocked on stdin ends with the exec
			ectx = context.WithValue(ectx, stdinKey{}, p.stdin)
			g.mu.Lock()
			g.running[req.ID] = ecancel
			g.procs[pid] = p
			g.mu.Unlock()
			// As the agent does: Started (with a pid) before any output.
			if err = w.WriteJSON(agentproto.MsgStarted, agentproto.Started{ID: req.ID, PID: pid}); err != nil {
				ecancel()
				break
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer ecancel()
				res := g.run(ectx, req, w)
				if sig, ok := context.Cause(ectx).(signalCause); ok {
					res = agentproto.ExitResult{Code: -1, Signal: string(sig), Status: agentproto.StatusSignal, WallMillis: res.WallMillis}
				}
				g.mu.Lock()
				delete(g.running, req.ID)
				delete(g.procs, pid)
				g.mu.Unlock()
				res.ID = req.ID
				_ = w.WriteJSON(agentproto.MsgExit, res)
			}()
		case agentproto.MsgCancel:
			var r agentproto.CancelRequest
			if err = agentproto.DecodeJSON(f, &r); err == nil {
				g.mu.Lock()
				if c := g.running[r.ID]; c != nil {
					c()
				}
				g.mu.Unlock()
			}
		case agentproto.MsgStdin:
			var r agentproto.StdinRequest
			if err = agentproto.DecodeJSON(f, &r); err == nil {
				p, msg, code := g.proc(r.PID)
				switch {
				case p != nil && !p.open:
					msg, code = "stdin is not open", agentproto.CodeInvalid
				case p != nil && !p.stdin.write(r.Data, r.Close):
					msg, code = "stdin is closed", agentproto.CodeInvalid
				}
				err = g.reply(w, r.ID, msg, code)
			}
		case agentproto.MsgSignal:
			var r agentproto.SignalRequest
			if err = agentproto.DecodeJSON(f, &r); err == nil {
				p, msg, code := g.proc(r.PID)
				if verr := r.Validate(); verr != nil {
					msg, code = verr.Error(), agentproto.CodeInvalid
				} else if p != nil {
					switch r.Signal {
					case "SIGCONT", "SIGSTOP", "SIGTSTP", "SIGWINCH": // the fake's programs do not stop
					default:
						p.cancel(signalCause(r.Signal))
					}
				}
				err = g.reply(w, r.ID, msg, code)
			}
		case agentproto.MsgWriteFiles:
			var r agentproto.WriteFilesRequest
			if err = agentproto.DecodeJSON(f, &r); err == nil {
				for _, file := range r.Files {
					g.m.mem.write(path.Join(r.Dir, file.Path), file.Content)
				}
				err = w.WriteJSON(agentproto.MsgFileData, agentproto.FileData{ID: r.ID})
			}
		case agentproto.MsgDownload:
			var r agentproto.FileRequest
			if err = agentproto.DecodeJSON(f, &r); err == nil {
				b, rerr := g.m.mem.read(r.Path)
				switch {
				case rerr != nil:
					err = w.WriteJSON(agentproto.MsgError, agentproto.ErrorMsg{ID: r.ID, Message: rerr.Error(), Code: agentproto.CodeNotFound})
				case int64(len(b)) > r.MaxBytes:
					err = w.WriteJSON(agentproto.MsgError, agentproto.ErrorMsg{ID: r.ID, Message: "file too large", Code: agentproto.CodeTooLarge})
				default:
					err = g.download(ctx, w, r, b, &wg)
				}
			}
		case agentproto.MsgAck: // a download's progress: the fake sends when it likes
			var a agentproto.Ack
			if err = agentproto.DecodeJSON(f, &a); err == nil {
				g.mu.Lock()
				ch := g.acks[a.ID]
				g.mu.Unlock()
				if ch != nil {
					select {
					case ch <- struct{}{}:
					default:
					}
				}
			}
		case agentproto.MsgNetConfig:
			var r agentproto.NetConfigRequest
			if err = agentproto.DecodeJSON(f, &r); err != nil {
				break
			}
			// As the real agent: the interface is found by MAC, so a
			// machine without the device (or with another) refuses.
			_, perr := r.Parse()
			g.m.mu.Lock()
			dev := g.m.cfg.Net
			if perr == nil && (dev == nil || !strings.EqualFold(dev.MAC, r.MAC)) {
				perr = fmt.Errorf("no interface with MAC %s: the VM has no virtio-net device", r.MAC)
			}
			g.m.mu.Unlock()
			if perr == nil {
				c := r
				c.ID = 0
				b, _ := json.Marshal(c)
				g.m.mem.write(netConfigFile, b)
			}
			if perr != nil {
				err = w.WriteJSON(agentproto.MsgError, agentproto.ErrorMsg{ID: r.ID, Code: agentproto.CodeInvalid, Message: perr.Error()})
			} else {
				err = w.WriteJSON(agentproto.MsgFileData, agentproto.FileData{ID: r.ID})
			}
		case agentproto.MsgPrewarm:
			var r agentproto.PrewarmRequest
			if err = agentproto.DecodeJSON(f, &r); err == nil {
				g.m.mem.write("/.prewarmed", []byte(strings.Join(r.Argv, " ")))
				err = w.WriteJSON(agentproto.MsgFileData, agentproto.FileData{ID: r.ID})
			}
		default:
			var req struct {
				ID uint32 `json:"id"`
			}
			_ = json.Unmarshal(f.Payload, &req)
			err = w.WriteJSON(agentproto.MsgError, agentproto.ErrorMsg{ID: req.ID, Code: agentproto.CodeUnsupported,
				Message: fmt.Sprintf("unsupported %s request (fake agent)", f.Type)})
		}
		if err != nil {
			return
		}
	}
}

// fakeProc is a running exec, as stdin and signal requests see it.
type fakeProc struct {
	cancel context.CancelCauseFunc
	stdin  *fakeStdin
	open   bool // started with OpenStdin
}

// signalCause ends an exec's context when a signal kills it.
type signalCause agentproto.Signal

func (s signalCause) Error() string { return "killed by " + string(s) }

// proc finds a running exec by pid, or says why not, as the agent would.
func (g *Guest) proc(pid int) (*fakeProc, string, agentproto.ErrorCode) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if p := g.procs[pid]; p != nil {
		return p, "", ""
	}
	return nil, fmt.Sprintf("pid %d: no such process", pid), agentproto.CodeNotFound
}

// reply acknowledges request id, or fails it with msg.
func (g *Guest) reply(w *agentproto.Writer, id uint32, msg string, code agentproto.ErrorCode) error {
	if msg != "" {
		return w.WriteJSON(agentproto.MsgError, agentproto.ErrorMsg{ID: id, Message: msg, Code: code})
	}
	return w.WriteJSON(agentproto.MsgAck, agentproto.Ack{ID: id})
}

type stdinKey struct{}

// Stdin is the stdin of the exec whose context ctx is (an ExecFunc's):
// the request's Stdin, then, for an exec with OpenStdin, what stdin
// requests write, until one closes it. It reads EOF once stdin is closed
// or the exec ends.
func Stdin(ctx context.Context) io.Reader {
	if s, ok := ctx.Value(stdinKey{}).(*fakeStdin); ok {
		return s
	}
	return strings.NewReader("")
}

// fakeStdin is an exec's stdin: a buffer that blocks its reader until
// data comes or it is closed.
type fakeStdin struct {
	mu     sync.Mutex
	cond   *sync.Cond
	buf    []byte
	closed bool
}

func newFakeStdin(initial []byte, open bool) *fakeStdin {
	s := &fakeStdin{buf: append([]byte(nil), initial...), closed: !open}
	s.cond = sync.NewCond(&s.mu)
	return s
}

func (s *fakeStdin) Read(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.buf) == 0 && !s.closed {
		s.cond.Wait()
	}
	if len(s.buf) == 0 {
		return 0, io.EOF
	}
	n := copy(p, s.buf)
	s.buf = s.buf[n:]
	return n, nil
}

// write appends data and closes stdin if closeIt; false if it was closed.
func (s *fakeStdin) write(data []byte, closeIt bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.buf = append(s.buf, data...)
	s.closed = closeIt
	s.cond.Broadcast()
	return true
}

func (s *fakeStdin) close() {
	s.mu.Lock()
	s.closed = true
	s.cond.Broadcast()
	s.mu.Unlock()
}

func (g *Guest) hello() agentproto.Hello {
	g.mu.Lock()
	defer g.mu.Unlock()
	return agentproto.Hello{Protocol: agentproto.ProtocolVersion, AgentVersion: "fake", Identity: g.identity}
}

// Identity is what the last Resync set.
func (g *Guest) Identity() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.identity
}

// streamWriter sends one stream of an exec's output as frames.
type streamWriter struct {
	w  *agentproto.Writer
	id uint32
	st agentproto.Stream
}

func (s streamWriter) Write(b []byte) (int, error) {
	if err := s.w.WriteOutput(s.id, s.st, b); err != nil {
		return 0, err
	}
	return len(b), nil
}

func (g *Guest) run(ctx context.Context, req agentproto.ExecRequest, w *agentproto.Writer) agentproto.ExitResult {
	stdout := streamWriter{w, req.ID, agentproto.Stdout}
	stderr := streamWriter{w, req.ID, agentproto.Stderr}
	for _, f := range req.Files {
		g.m.mem.write(path.Join(req.Dir, f.Path), f.Content)
	}
	if req.Limits.WallMillis > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(req.Limits.WallMillis)*time.Millisecond)
		defer cancel()
	}
	start := time.Now()
	var res agentproto.ExitResult
	if g.exec != nil {
		res = g.exec(ctx, g, req, stdout, stderr)
	} else {
		res = g.builtin(ctx, req, stdout, stderr)
	}
	res.WallMillis = time.Since(start).Milliseconds()
	return res
}

func (g *Guest) builtin(ctx context.Context, req agentproto.ExecRequest, stdout, stderr io.Writer) agentproto.ExitResult {
	argv := req.Argv
	abs := func(p string) string {
		if path.IsAbs(p) {
			return p
		}
		return path.Join(req.Dir, p)
	}
	fail := func(code int, msg string) agentproto.ExitResult {
		fmt.Fprintln(stderr, msg)
		return agentproto.ExitResult{Code: code, Status: agentproto.StatusRuntimeError}
	}
	switch argv[0] {
	case "echo":
		fmt.Fprintln(stdout, strings.Join(argv[1:], " "))
	case "cat":
		if len(argv) != 2 {
			return fail(2, "usage: cat FILE")
		}
		b, err := g.m.mem.read(abs(argv[1]))
		if err != nil {
			return fail(1, err.Error())
		}
		stdout.Write(b)
	case "write":
		if len(argv) != 3 {
			return fail(2, "usage: write FILE TEXT")
		}
		g.m.mem.write(abs(argv[1]), []byte(argv[2]))
	case "sleep":
		ms, err := strconv.Atoi(strings.Join(argv[1:], ""))
		if err != nil {
			return fail(2, "usage: sleep MS")
		}
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return agentproto.ExitResult{Code: -1, Signal: "SIGKILL", Status: agentproto.StatusTimeout, Message: "wall-clock limit"}
			}
			return agentproto.ExitResult{Code: -1, Signal: "SIGKILL", Status: agentproto.StatusSignal, Message: "cancelled"}
		}
	case "exit":
		n, _ := strconv.Atoi(strings.Join(argv[1:], ""))
		if n != 0 {
			return agentproto.ExitResult{Code: n, Status: agentproto.StatusRuntimeError}
		}
	case "env":
		for _, e := range req.Env {
			fmt.Fprintln(stdout, e)
		}
	case "identity":
		fmt.Fprintln(stdout, g.Identity())
	default:
		return fail(127, argv[0]+": command not found")
	}
	return agentproto.ExitResult{}
}
