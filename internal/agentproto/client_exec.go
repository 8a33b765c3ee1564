package agentproto

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"
)

// Exec runs a command in the guest, streaming its output to stdout and
// stderr (either may be nil; a PTY's output goes to stdout), and returns
// how it ended. If ctx ends first, the agent is told to kill the command
// (a background one keeps running) and Exec returns ctx's error. Without
// a deadline in ctx, Exec waits for the command's wall-clock limit plus
// ExecGrace.
//
// Output past the request's cap is cut on the host too, whatever the
// guest sends: the result then says StatusStdoutLimit (or Stderr).
//
// stdout and stderr are written on the client's read loop, which every
// call on the channel shares: they must not block (buffer in memory, or
// hand off to a goroutine, before writing to a network peer).
func (c *Client) Exec(ctx context.Context, req ExecRequest, stdout, stderr io.Writer) (*ExitResult, error) {
	if _, ok := ctx.Deadline(); !ok {
		if wall := req.Limits.Effective(DefaultLimits, MaxLimits).WallMillis; !req.Background || req.Limits.WallMillis > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, time.Duration(wall)*time.Millisecond+ExecGrace)
			defer cancel()
		}
	}
	p, err := c.start1(ctx, MsgExec, &req, 0, stdout, stderr)
	if err != nil {
		return nil, err
	}
	return p.Wait(ctx)
}

// Start starts a command and returns once it runs, with its pid. Its
// output streams to stdout and stderr until it ends or the returned
// Process is detached; Process.Wait returns how it ended. A command that
// is not req.Background is killed when the Process is detached. As for
// Exec, stdout and stderr must not block.
func (c *Client) Start(ctx context.Context, req ExecRequest, stdout, stderr io.Writer) (*Process, error) {
	ctx, cancel := c.bound(ctx)
	defer cancel()
	return c.start1(ctx, MsgExec, &req, 0, stdout, stderr)
}

// Connect streams the output of running process pid (one the agent
// started) to stdout and stderr, from now on, or after what it wrote
// recently when replay is set. Detaching the returned Process leaves the
// process running.
func (c *Client) Connect(ctx context.Context, pid int, replay bool, stdout, stderr io.Writer) (*Process, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("%w: pid %d", ErrMalformed, pid)
	}
	ctx, cancel := c.bound(ctx)
	defer cancel()
	return c.start1(ctx, MsgConnect, &ConnectRequest{PID: pid, Replay: replay}, pid, stdout, stderr)
}

// Process is a guest process whose output this client receives.
type Process struct {
	// PID is the process's pid in the guest, which process calls name.
	PID int

	c    *Client
	id   uint32
	call *call
	out  *execSinks

	once sync.Once
	res  *ExitResult
	err  error
}

// start1 sends an exec or connect request and waits for Started.
func (c *Client) start1(ctx context.Context, t MsgType, req any, wantPID int, stdout, stderr io.Writer) (*Process, error) {
	var capBytes int64
	switch r := req.(type) {
	case *ExecRequest:
		if err := r.Validate(); err != nil {
			return nil, err
		}
		capBytes = r.OutputCap()
	}
	out := &execSinks{stdout: stdout, stderr: stderr, cap: capBytes, started: make(chan int, 1)}
	p := &call{handle: func(id uint32, f Frame) (bool, error) { return out.handle(c, id, wantPID, f) }}
	id, err := c.start(t, p, func(i uint32) any {
		switch r := req.(type) {
		case *ExecRequest:
			r.ID = i
		case *ConnectRequest:
			r.ID = i
		}
		return req
	})
	if err != nil {
		return nil, err
	}
	proc := &Process{c: c, id: id, call: p, out: out}
	select {
	case pid := <-out.started:
		proc.PID = pid
		return proc, nil
	case err := <-p.result:
		select {
		case pid := <-out.started: // started and already ended: Wait returns the end
			p.result = make(chan error, 1)
			p.result <- err
			proc.PID = pid
			return proc, nil
		default: // ended before it ran: an agent error
		}
		if err == nil {
			err = fmt.Errorf("%w: %s ended before it started", ErrMalformed, t)
		}
		return nil, err
	case <-ctx.Done():
		if c.finish(id, nil) {
			c.sendCancel(id)
		}
		return nil, ctx.Err()
	}
}

// Wait waits until the process ends and returns how. If ctx ends first,
// the process is detached (and killed, unless it runs in the
// background), and Wait returns ctx's error. Wait may be called more than
// once; later calls return the first outcome.
func (p *Process) Wait(ctx context.Context) (*ExitResult, error) {
	p.once.Do(func() {
		if err := p.c.await(ctx, p.id, p.call); err != nil {
			p.err = err
			return
		}
		p.res = p.out.result()
	})
	return p.res, p.err
}

// Detach stops this client from receiving the process's output and
// exit; a process that is not a background one is killed.
func (p *Process) Detach() {
	if p.c.finish(p.id, ErrDetached) {
		p.c.sendCancel(p.id)
	}
}

// execSinks receives an exec's frames on the client's read loop.
type execSinks struct {
	stdout, stderr io.Writer
	cap            int64 // per stream; 0: none
	started        chan int

	pid    int
	n      [4]int64 // bytes seen per stream
	cut    Stream   // the first stream cut at its cap
	cancel bool     // a cancel was sent for the cut
	exit   *ExitResult
	mu     sync.Mutex
}

func (s *execSinks) handle(c *Client, id uint32, wantPID int, f Frame) (bool, error) {
	switch f.Type {
	case MsgStarted:
		var st Started
		if err := DecodeJSON(f, &st); err != nil {
			return true, err
		}
		if st.PID <= 0 || s.pid != 0 || (wantPID != 0 && st.PID != wantPID) {
			return true, fmt.Errorf("%w: started pid %d (asked for %d)", ErrMalformed, st.PID, wantPID)
		}
		s.pid = st.PID
		s.started <- st.PID
		return false, nil
	case MsgOutput:
		if s.pid == 0 {
			return true, fmt.Errorf("%w: output before started", ErrMalformed)
		}
		_, st, data, err := DecodeOutput(f.Payload)
		if err != nil {
			return true, err
		}
		if s.cap > 0 {
			left := s.cap - s.n[st]
			if int64(len(data)) > left {
				data = data[:max(left, 0)]
				s.mu.Lock()
				if s.cut == 0 {
					s.cut = st
				}
				s.mu.Unlock()
				if !s.cancel { // an honest agent has killed it already; a hostile one is told
					s.cancel = true
					c.sendCancel(id)
				}
			}
		}
		s.n[st] += int64(len(data))
		w := s.stdout
		if st == Stderr {
			w = s.stderr
		}
		if w != nil && len(data) > 0 {
			_, _ = w.Write(data) // a failing sink must not stall the channel
		}
		return false, nil
	case MsgExit:
		var r ExitResult
		if err := DecodeJSON(f, &r); err != nil {
			return true, err
		}
		if s.pid == 0 {
			return true, fmt.Errorf("%w: exit before started", ErrMalformed)
		}
		r.PID = s.pid
		s.mu.Lock()
		s.exit = &r
		s.mu.Unlock()
		return true, nil
	}
	return true, fmt.Errorf("%w: exec answered with %s", ErrMalformed, f.Type)
}

// result is the exit, corrected for output the host cut.
func (s *execSinks) result() *ExitResult {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.exit
	if r == nil {
		return nil
	}
	if s.cut != 0 && r.Status != StatusStdoutLimit && r.Status != StatusStderrLimit {
		r.Status = StatusStdoutLimit
		if s.cut == Stderr {
			r.Status = StatusStderrLimit
		}
		r.Message = fmt.Sprintf("the guest sent more %s than its limit of %d bytes: the host cut it", s.cut, s.cap)
	}
	return r
}

// Processes lists the processes the agent runs for the host.
func (c *Client) Processes(ctx context.Context) ([]ProcessInfo, error) {
	var l ProcessList
	err := c.roundTrip(ctx, MsgListProcs, MsgProcessList, &l, func(id uint32) any { return ListProcsRequest{ID: id} })
	if err != nil {
		return nil, err
	}
	if len(l.Processes) > MaxProcesses {
		return nil, fmt.Errorf("%w: %d processes listed, at most %d", ErrMalformed, len(l.Processes), MaxProcesses)
	}
	return l.Processes, nil
}

// WriteStdin writes data to process pid's stdin (its terminal, for a PTY
// process), in chunks of at most MaxStdinChunk, each acknowledged once
// written. Writers to one process are served one at a time.
func (c *Client) WriteStdin(ctx context.Context, pid int, data []byte) error {
	return c.stdinCall(ctx, pid, data, false)
}

// CloseStdin closes process pid's stdin (for a PTY process: sends the
// terminal's end-of-file character).
func (c *Client) CloseStdin(ctx context.Context, pid int) error {
	return c.stdinCall(ctx, pid, nil, true)
}

func (c *Client) stdinCall(ctx context.Context, pid int, data []byte, closeIt bool) error {
	ctx, cancel := c.bound(ctx)
	defer cancel()
	unlock, err := c.stdin.lock(ctx, pid)
	if err != nil {
		return err
	}
	defer unlock()
	for first := true; first || len(data) > 0; first = false {
		n := min(len(data), MaxStdinChunk)
		req := StdinRequest{PID: pid, Data: data[:n], Close: closeIt && n == len(data)}
		if err := req.Validate(); err != nil {
			return err
		}
		if err := c.roundTrip(ctx, MsgStdin, MsgAck, nil, func(id uint32) any { req.ID = id; return req }); err != nil {
			return err
		}
		data = data[n:]
	}
	return nil
}

// Signal sends sig to process pid's process group.
func (c *Client) Signal(ctx context.Context, pid int, sig Signal) error {
	req := SignalRequest{PID: pid, Signal: sig}
	if err := req.Validate(); err != nil {
		return err
	}
	return c.roundTrip(ctx, MsgSignal, MsgAck, nil, func(id uint32) any { req.ID = id; return req })
}

// ResizePTY changes PTY process pid's terminal size.
func (c *Client) ResizePTY(ctx context.Context, pid int, size PTYSize) error {
	if err := size.Validate(); err != nil {
		return err
	}
	if pid <= 0 {
		return fmt.Errorf("%w: pid %d", ErrMalformed, pid)
	}
	req := ResizeRequest{PID: pid, Size: size}
	return c.roundTrip(ctx, MsgResize, MsgAck, nil, func(id uint32) any { req.ID = id; return req })
}
