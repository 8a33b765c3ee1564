package e2b

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/api/e2b/envdpb/process"
	"github.com/firesandbox/firesandbox/internal/api/e2b/envdpb/process/processconnect"
	"github.com/firesandbox/firesandbox/internal/sandbox"
	"github.com/firesandbox/firesandbox/internal/state"
)

// processService is envd's process.Process over the agent's process
// table. Processes run in the background: a stream that goes away
// (disconnect) leaves its process running for Connect, while a stream
// that reaches its Connect-Timeout-Ms deadline kills it, as envd does.
type processService struct {
	processconnect.UnimplementedProcessHandler
	h *Handler
}

// rpcError gives an error envd's Connect code: the SDK maps NotFound to
// "not found" (kill answers false), Unavailable to "sandbox not running".
func (h *Handler) rpcError(err error) error {
	var ae *agentproto.AgentError
	var ce *connect.Error
	code := connect.CodeInternal
	switch {
	case errors.As(err, &ce):
		return err
	case errors.As(err, &ae):
		switch ae.Code {
		case agentproto.CodeNotFound:
			code = connect.CodeNotFound
		case agentproto.CodeExists:
			code = connect.CodeAlreadyExists
		case agentproto.CodePermission:
			code = connect.CodePermissionDenied
		case agentproto.CodeInvalid:
			code = connect.CodeInvalidArgument
		case agentproto.CodeBusy, agentproto.CodeTooLarge:
			code = connect.CodeResourceExhausted
		case agentproto.CodeUnsupported:
			code = connect.CodeUnimplemented
		}
	case errors.Is(err, context.DeadlineExceeded):
		code = connect.CodeDeadlineExceeded
	case errors.Is(err, context.Canceled):
		code = connect.CodeCanceled
	case errors.Is(err, agentproto.ErrMalformed), errors.Is(err, errBadRequest), errors.Is(err, sandbox.ErrBadRequest):
		code = connect.CodeInvalidArgument
	case errors.Is(err, errNotFound):
		code = connect.CodeNotFound
	case errors.Is(err, agentproto.ErrClosed), errors.Is(err, errGone), errors.Is(err, sandbox.ErrSandboxLost),
		errors.Is(err, sandbox.ErrSandboxDeleted), errors.Is(err, sandbox.ErrNoSandbox):
		code = connect.CodeUnavailable
	default:
		switch h.statusOf(err) {
		case http.StatusBadRequest:
			code = connect.CodeInvalidArgument
		case http.StatusTooManyRequests, http.StatusServiceUnavailable:
			code = connect.CodeUnavailable
		case http.StatusConflict:
			code = connect.CodeFailedPrecondition
		}
	}
	return connect.NewError(code, err)
}

// agentFor is the agent of the call's sandbox (resumed if paused).
func (h *Handler) agentFor(ctx context.Context) (state.Sandbox, *agentproto.Client, error) {
	t := targetOf(ctx)
	a, err := h.deps.Sandboxes.Agent(ctx, t.sb.Tenant, t.sb.ID)
	if err != nil {
		return t.sb, nil, h.rpcError(err)
	}
	return t.sb, a, nil
}

// callUser is the user a Connect call names in its Basic authorization.
func callUser(hdr http.Header) (string, error) {
	return userOf(&http.Request{Header: hdr, URL: &url.URL{}})
}

// pidOf resolves a process selector (a pid, or a tag).
func pidOf(ctx context.Context, a *agentproto.Client, sel *process.ProcessSelector) (int, error) {
	switch s := sel.GetSelector().(type) {
	case *process.ProcessSelector_Pid:
		if s.Pid == 0 || s.Pid > 1<<22 {
			return 0, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("pid %d", s.Pid))
		}
		return int(s.Pid), nil
	case *process.ProcessSelector_Tag:
		procs, err := a.Processes(ctx)
		if err != nil {
			return 0, err
		}
		for _, p := range procs {
			if p.Tag == s.Tag {
				return p.PID, nil
			}
		}
		return 0, connect.NewError(connect.CodeNotFound, fmt.Errorf("no process tagged %q", s.Tag))
	}
	return 0, connect.NewError(connect.CodeInvalidArgument, errors.New("a process selector needs a pid or a tag"))
}

func (p *processService) Start(ctx context.Context, req *connect.Request[process.StartRequest], st *connect.ServerStream[process.StartResponse]) error {
	h := p.h
	user, err := callUser(req.Header())
	if err != nil {
		return h.rpcError(err)
	}
	cfg := req.Msg.GetProcess()
	if cfg.GetCmd() == "" {
		return connect.NewError(connect.CodeInvalidArgument, errors.New("process.cmd is empty"))
	}
	sb, a, err := h.agentFor(ctx)
	if err != nil {
		return err
	}
	dir := cfg.GetCwd()
	if dir == "" {
		dir = homeOf(sb)
	} else if dir, err = guestPath(sb, dir); err != nil {
		return h.rpcError(err)
	}
	er := agentproto.ExecRequest{
		Argv: append([]string{cfg.GetCmd()}, cfg.GetArgs()...), Env: envOf(sb.Env, cfg.GetEnvs()), Dir: dir,
		Background: true, OpenStdin: req.Msg.Stdin == nil || req.Msg.GetStdin(), Tag: req.Msg.GetTag(), User: user,
	}
	if pty := req.Msg.GetPty(); pty != nil {
		er.PTY = &agentproto.PTYSize{Cols: uint16(min(pty.GetSize().GetCols(), 65535)), Rows: uint16(min(pty.GetSize().GetRows(), 65535))}
	}
	out := newProcStream(keepaliveInterval(req.Header()), func(ev *process.ProcessEvent) error {
		return st.Send(&process.StartResponse{Event: ev})
	})
	kind := stdoutKind
	if er.PTY != nil {
		kind = ptyKind // a terminal's output comes on stdout
	}
	proc, err := a.Start(ctx, er, out.writer(kind), out.writer(stderrKind))
	if err != nil {
		return h.rpcError(err)
	}
	return h.follow(ctx, a, proc, out)
}

func (p *processService) Connect(ctx context.Context, req *connect.Request[process.ConnectRequest], st *connect.ServerStream[process.ConnectResponse]) error {
	h := p.h
	_, a, err := h.agentFor(ctx)
	if err != nil {
		return err
	}
	pid, err := pidOf(ctx, a, req.Msg.GetProcess())
	if err != nil {
		return h.rpcError(err)
	}
	out := newProcStream(keepaliveInterval(req.Header()), func(ev *process.ProcessEvent) error {
		return st.Send(&process.ConnectResponse{Event: ev})
	})
	kind := stdoutKind
	if procs, err := a.Processes(ctx); err == nil {
		for _, pi := range procs {
			if pi.PID == pid && pi.PTY {
				kind = ptyKind
			}
		}
	}
	proc, err := a.Connect(ctx, pid, false, out.writer(kind), out.writer(stderrKind))
	if err != nil {
		return h.rpcError(err)
	}
	return h.follow(ctx, a, proc, out)
}

// follow streams a started process: the start event, its output, and its
// end, with keepalives while it is silent.
func (h *Handler) follow(ctx context.Context, a *agentproto.Client, proc *agentproto.Process, out *procStream) error {
	out.push(&process.ProcessEvent{Event: &process.ProcessEvent_Start{Start: &process.ProcessEvent_StartEvent{Pid: uint32(proc.PID)}}})
	go out.pump()
	defer out.close()
	res, err := proc.Wait(ctx)
	if err != nil {
		proc.Detach()
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			// The call's own timeout (timeoutMs) ends the command, as in envd.
			kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			_ = a.Signal(kctx, proc.PID, "SIGKILL")
			cancel()
		}
		if werr := out.drain(); werr != nil {
			return werr
		}
		return h.rpcError(err)
	}
	end := &process.ProcessEvent_EndEvent{ExitCode: int32(res.Code), Exited: res.Signal == "", Status: fmt.Sprintf("exit status %d", res.Code)}
	if res.Signal != "" {
		end.ExitCode, end.Status = -1, "signal: "+strings.ToLower(strings.TrimPrefix(res.Signal, "SIG"))
	}
	if res.Status != agentproto.StatusOK && res.Status != agentproto.StatusRuntimeError {
		msg := res.Message
		if msg == "" {
			msg = end.Status
		}
		end.Error = &msg
	}
	out.push(&process.ProcessEvent{Event: &process.ProcessEvent_End{End: end}})
	return out.drain()
}

// envOf is the sandbox's env under the request's own (which wins).
func envOf(base, envs map[string]string) []string {
	keys := make([]string, 0, len(base)+len(envs))
	all := map[string]string{}
	for k, v := range base {
		all[k] = v
	}
	for k, v := range envs {
		all[k] = v
	}
	for k := range all {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		if k != "" && !strings.ContainsAny(k, "=\x00") {
			out = append(out, k+"="+all[k])
		}
	}
	return out
}

func (p *processService) List(ctx context.Context, _ *connect.Request[process.ListRequest]) (*connect.Response[process.ListResponse], error) {
	_, a, err := p.h.agentFor(ctx)
	if err != nil {
		return nil, err
	}
	procs, err := a.Processes(ctx)
	if err != nil {
		return nil, p.h.rpcError(err)
	}
	out := &process.ListResponse{}
	for _, pi := range procs {
		cfg := &process.ProcessConfig{Envs: map[string]string{}}
		if len(pi.Argv) > 0 {
			cfg.Cmd, cfg.Args = pi.Argv[0], pi.Argv[1:]
		}
		for _, e := range pi.Env {
			if k, v, ok := strings.Cut(e, "="); ok {
				cfg.Envs[k] = v
			}
		}
		if pi.Dir != "" {
			cfg.Cwd = &pi.Dir
		}
		info := &process.ProcessInfo{Config: cfg, Pid: uint32(pi.PID)}
		if pi.Tag != "" {
			info.Tag = &pi.Tag
		}
		out.Processes = append(out.Processes, info)
	}
	return connect.NewResponse(out), nil
}

func (p *processService) SendInput(ctx context.Context, req *connect.Request[process.SendInputRequest]) (*connect.Response[process.SendInputResponse], error) {
	_, a, err := p.h.agentFor(ctx)
	if err != nil {
		return nil, err
	}
	pid, err := pidOf(ctx, a, req.Msg.GetProcess())
	if err != nil {
		return nil, p.h.rpcError(err)
	}
	data := req.Msg.GetInput().GetStdin()
	if data == nil {
		data = req.Msg.GetInput().GetPty()
	}
	if err := a.WriteStdin(ctx, pid, data); err != nil {
		return nil, p.h.rpcError(err)
	}
	return connect.NewResponse(&process.SendInputResponse{}), nil
}

func (p *processService) StreamInput(ctx context.Context, st *connect.ClientStream[process.StreamInputRequest]) (*connect.Response[process.StreamInputResponse], error) {
	_, a, err := p.h.agentFor(ctx)
	if err != nil {
		return nil, err
	}
	pid := 0
	for st.Receive() {
		switch ev := st.Msg().GetEvent().(type) {
		case *process.StreamInputRequest_Start:
			if pid, err = pidOf(ctx, a, ev.Start.GetProcess()); err != nil {
				return nil, p.h.rpcError(err)
			}
		case *process.StreamInputRequest_Data:
			if pid == 0 {
				return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("input before the start event"))
			}
			data := ev.Data.GetInput().GetStdin()
			if data == nil {
				data = ev.Data.GetInput().GetPty()
			}
			if err := a.WriteStdin(ctx, pid, data); err != nil {
				return nil, p.h.rpcError(err)
			}
		}
	}
	if err := st.Err(); err != nil {
		return nil, err
	}
	return connect.NewResponse(&process.StreamInputResponse{}), nil
}

func (p *processService) SendSignal(ctx context.Context, req *connect.Request[process.SendSignalRequest]) (*connect.Response[process.SendSignalResponse], error) {
	_, a, err := p.h.agentFor(ctx)
	if err != nil {
		return nil, err
	}
	pid, err := pidOf(ctx, a, req.Msg.GetProcess())
	if err != nil {
		return nil, p.h.rpcError(err)
	}
	var sig agentproto.Signal
	switch req.Msg.GetSignal() {
	case process.Signal_SIGNAL_SIGKILL:
		sig = "SIGKILL"
	case process.Signal_SIGNAL_SIGTERM:
		sig = "SIGTERM"
	default:
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("signal %s", req.Msg.GetSignal()))
	}
	if err := a.Signal(ctx, pid, sig); err != nil {
		return nil, p.h.rpcError(err)
	}
	return connect.NewResponse(&process.SendSignalResponse{}), nil
}

func (p *processService) CloseStdin(ctx context.Context, req *connect.Request[process.CloseStdinRequest]) (*connect.Response[process.CloseStdinResponse], error) {
	_, a, err := p.h.agentFor(ctx)
	if err != nil {
		return nil, err
	}
	pid, err := pidOf(ctx, a, req.Msg.GetProcess())
	if err != nil {
		return nil, p.h.rpcError(err)
	}
	if err := a.CloseStdin(ctx, pid); err != nil {
		return nil, p.h.rpcError(err)
	}
	return connect.NewResponse(&process.CloseStdinResponse{}), nil
}

func (p *processService) Update(ctx context.Context, req *connect.Request[process.UpdateRequest]) (*connect.Response[process.UpdateResponse], error) {
	_, a, err := p.h.agentFor(ctx)
	if err != nil {
		return nil, err
	}
	pid, err := pidOf(ctx, a, req.Msg.GetProcess())
	if err != nil {
		return nil, p.h.rpcError(err)
	}
	if pty := req.Msg.GetPty(); pty != nil {
		size := agentproto.PTYSize{Cols: uint16(min(pty.GetSize().GetCols(), 65535)), Rows: uint16(min(pty.GetSize().GetRows(), 65535))}
		if err := a.ResizePTY(ctx, pid, size); err != nil {
			return nil, p.h.rpcError(err)
		}
	}
	return connect.NewResponse(&process.UpdateResponse{}), nil
}

// Output kinds of a procStream.
const (
	stdoutKind = iota
	stderrKind
	ptyKind
)

// maxQueued bounds a process's output waiting for a slow client; past it
// output is dropped (the process is never held back by its reader).
const maxQueued = 16 << 20

// procStream queues a process's events (the agent client writes output
// on its read loop, which must never block) for one sender goroutine,
// which also sends keepalives while nothing happens.
type procStream struct {
	send  func(*process.ProcessEvent) error
	every time.Duration

	mu     sync.Mutex
	queue  []*process.ProcessEvent
	queued int
	closed bool
	err    error
	wake   chan struct{}
	done   chan struct{}
}

func newProcStream(every time.Duration, send func(*process.ProcessEvent) error) *procStream {
	return &procStream{send: send, every: every, wake: make(chan struct{}, 1), done: make(chan struct{})}
}

type procWriter struct {
	s    *procStream
	kind int
}

func (s *procStream) writer(kind int) procWriter { return procWriter{s, kind} }

func (w procWriter) Write(b []byte) (int, error) {
	data := append([]byte(nil), b...)
	d := &process.ProcessEvent_DataEvent{}
	switch {
	case w.kind == stderrKind:
		d.Output = &process.ProcessEvent_DataEvent_Stderr{Stderr: data}
	case w.kind == ptyKind:
		d.Output = &process.ProcessEvent_DataEvent_Pty{Pty: data}
	default:
		d.Output = &process.ProcessEvent_DataEvent_Stdout{Stdout: data}
	}
	w.s.mu.Lock()
	full := w.s.queued+len(b) > maxQueued
	w.s.mu.Unlock()
	if !full {
		w.s.push(&process.ProcessEvent{Event: &process.ProcessEvent_Data{Data: d}})
	}
	return len(b), nil
}

func (s *procStream) push(ev *process.ProcessEvent) {
	s.mu.Lock()
	if !s.closed {
		s.queue = append(s.queue, ev)
		if d := ev.GetData(); d != nil {
			s.queued += len(d.GetStdout()) + len(d.GetStderr()) + len(d.GetPty())
		}
	}
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *procStream) pump() {
	defer close(s.done)
	t := time.NewTicker(s.every)
	defer t.Stop()
	for {
		s.mu.Lock()
		q, closed := s.queue, s.closed
		s.queue, s.queued = nil, 0
		s.mu.Unlock()
		for _, ev := range q {
			if err := s.send(ev); err != nil {
				s.mu.Lock()
				s.err, s.closed = err, true
				s.mu.Unlock()
				return
			}
		}
		if closed {
			return
		}
		if len(q) > 0 {
			t.Reset(s.every)
		}
		select {
		case <-s.wake:
		case <-t.C:
			s.push(&process.ProcessEvent{Event: &process.ProcessEvent_Keepalive{Keepalive: &process.ProcessEvent_KeepAlive{}}})
		}
	}
}

// drain sends what is queued, stops the sender and says whether sending
// failed.
func (s *procStream) drain() error {
	s.close()
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

func (s *procStream) close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}
