// This file holds the native API's processes in sandboxes: background
// commands, the process list, streaming a process's output again by pid,
// its stdin, signals, and terminals over WebSocket.

package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/coder/websocket"
	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/sandbox"
)

// PTYIn is a terminal's size.
type PTYIn struct {
	Cols uint16 `json:"cols"`
	Rows uint16 `json:"rows"`
}

func (p *PTYIn) size() (agentproto.PTYSize, error) {
	sz := agentproto.PTYSize{Cols: p.Cols, Rows: p.Rows}
	if err := sz.Validate(); err != nil {
		return sz, fmt.Errorf("%w: pty: %w", sandbox.ErrBadRequest, err)
	}
	return sz, nil
}

// handleBackground starts a command with "background": true and answers
// at once with its pid.
func (s *Server) handleBackground(w http.ResponseWriter, r *http.Request, req agentproto.ExecRequest) {
	pid, err := s.sbx.StartProcess(r.Context(), tenantOf(r), r.PathValue("id"), req)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]int{"pid": pid})
}

func pidOf(r *http.Request) (int, error) {
	pid, err := strconv.Atoi(r.PathValue("pid"))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("%w: pid %q", sandbox.ErrBadRequest, r.PathValue("pid"))
	}
	return pid, nil
}

// handleProcesses lists the processes the agent runs for clients.
func (s *Server) handleProcesses(w http.ResponseWriter, r *http.Request) {
	list, err := s.sbx.Processes(r.Context(), tenantOf(r), r.PathValue("id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if list == nil {
		list = []agentproto.ProcessInfo{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"processes": list})
}

// handleProcessStream streams a running process's output (NDJSON or SSE, as
// exec/stream does) until it exits; ?replay=1 sends what it wrote
// recently first. Leaving does not stop the process.
func (s *Server) handleProcessStream(w http.ResponseWriter, r *http.Request) {
	pid, err := pidOf(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	replay := r.URL.Query().Get("replay") == "1" || r.URL.Query().Get("replay") == "true"
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	_ = http.NewResponseController(w).SetWriteDeadline(time.Time{}) // as long as the process runs
	es := newEventStream(w, r, cancel)
	sink := newAsyncSink(func(stream string, b []byte) error {
		_, err := es.writer("run", stream).Write(b)
		return err
	}, func(error) { cancel() })
	res, err := s.sbx.Attach(ctx, tenantOf(r), r.PathValue("id"), pid, replay, nil, sink.writer("stdout"), sink.writer("stderr"))
	sink.close()
	if err != nil {
		es.fail(s, err)
		return
	}
	es.flushCarry()
	es.send("result", stepOut(res, "", ""))
}

// StdinIn is POST .../processes/{pid}/stdin's request: Data (utf8, or
// base64 with Encoding "base64") goes to the process's stdin, which Close
// then closes.
type StdinIn struct {
	Data     string `json:"data,omitempty"`
	Encoding string `json:"encoding,omitempty"`
	Close    bool   `json:"close,omitempty"`
}

func (s *Server) handleStdin(w http.ResponseWriter, r *http.Request) {
	pid, err := pidOf(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var in StdinIn
	if err := decodeJSON(r, &in, true); err != nil {
		s.writeError(w, r, err)
		return
	}
	data, err := decodeContent(0, in.Data, in.Encoding)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.sbx.WriteStdin(r.Context(), tenantOf(r), r.PathValue("id"), pid, data, in.Close); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// SignalIn is POST .../processes/{pid}/signal's request.
type SignalIn struct {
	Signal string `json:"signal"`
}

func (s *Server) handleSignal(w http.ResponseWriter, r *http.Request) {
	pid, err := pidOf(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var in SignalIn
	if err := decodeJSON(r, &in, true); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.sbx.Signal(r.Context(), tenantOf(r), r.PathValue("id"), pid, agentproto.Signal(in.Signal)); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handleResize(w http.ResponseWriter, r *http.Request) {
	pid, err := pidOf(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var in PTYIn
	if err := decodeJSON(r, &in, true); err != nil {
		s.writeError(w, r, err)
		return
	}
	sz, err := in.size()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.sbx.ResizePTY(r.Context(), tenantOf(r), r.PathValue("id"), pid, sz); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// Terminals and process sessions over WebSocket.
//
//	GET /v1/sandboxes/{id}/pty?cols=80&rows=24[&cmd=bash&cmd=-l]   a new terminal (default: the shell)
//	GET /v1/sandboxes/{id}/processes/{pid}/ws[?replay=1]            an existing process
//
// Server to client: binary messages are the process's output (its
// terminal's, or its stdout); text messages are JSON: {"type":"started",
// "pid":N}, {"type":"stderr","data":"..."}, and last {"type":"exit",
// "result":{...}} or {"type":"error","error":"...","code":"..."}.
// Client to server: binary messages are stdin; text messages are JSON
// {"type":"resize","cols":C,"rows":R}, {"type":"eof"} or
// {"type":"signal","signal":"SIGINT"}. A terminal opened here is hung up
// (SIGHUP) when its WebSocket closes; a process connected to by pid runs
// on.
type wsControl struct {
	Type   string `json:"type"`
	Cols   uint16 `json:"cols,omitempty"`
	Rows   uint16 `json:"rows,omitempty"`
	Signal string `json:"signal,omitempty"`
	// Data is stdin as text ({"type":"stdin"}), for clients that only
	// send text messages.
	Data string `json:"data,omitempty"`
}

// maxWSMessage bounds one client message (stdin chunk or control).
const maxWSMessage = 1 << 20

func (s *Server) handlePTY(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	cols, _ := strconv.Atoi(q.Get("cols"))
	rows, _ := strconv.Atoi(q.Get("rows"))
	if cols == 0 && rows == 0 {
		cols, rows = 80, 24
	}
	in := PTYIn{Cols: uint16(min(max(cols, 0), 65535)), Rows: uint16(min(max(rows, 0), 65535))}
	sz, err := in.size()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	argv := q["cmd"]
	if len(argv) == 0 {
		argv = []string{"/bin/sh", "-c", "exec bash -l 2>/dev/null || exec sh -l"}
	}
	req := agentproto.ExecRequest{Argv: argv, PTY: &sz, Background: true}
	if err := req.Validate(); err != nil {
		s.writeError(w, r, fmt.Errorf("%w: %w", sandbox.ErrBadRequest, err))
		return
	}
	s.serveWS(w, r, func(ctx context.Context, started func(sandbox.Control), out, errw io.Writer) (*agentproto.ExitResult, error) {
		return s.sbx.Session(ctx, tenantOf(r), r.PathValue("id"), req, started, out, errw)
	}, true /* hangUp */)
}

func (s *Server) handleProcessWS(w http.ResponseWriter, r *http.Request) {
	pid, err := pidOf(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	replay := r.URL.Query().Get("replay") == "1" || r.URL.Query().Get("replay") == "true"
	s.serveWS(w, r, func(ctx context.Context, started func(sandbox.Control), out, errw io.Writer) (*agentproto.ExitResult, error) {
		return s.sbx.Attach(ctx, tenantOf(r), r.PathValue("id"), pid, replay, started, out, errw)
	}, false)
}

// serveWS upgrades the request and runs a session on it: run's output
// goes out through a non-blocking sink, the client's messages drive the
// process through its Control.
func (s *Server) serveWS(w http.ResponseWriter, r *http.Request,
	run func(ctx context.Context, started func(sandbox.Control), out, errw io.Writer) (*agentproto.ExitResult, error), hangUp bool) {
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Time{}) // a terminal lasts as long as its user
	_ = rc.SetReadDeadline(time.Time{})
	// Origins are checked: a page elsewhere cannot open a terminal with
	// the user's credentials.
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		return // Accept answered the client
	}
	defer c.CloseNow()
	c.SetReadLimit(maxWSMessage)
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	sendText := func(v any) error {
		b, _ := json.Marshal(v)
		wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
		defer wcancel()
		return c.Write(wctx, websocket.MessageText, b)
	}
	// Everything the session sends goes through one sink, in order.
	sink := newAsyncSink(func(stream string, b []byte) error {
		wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
		defer wcancel()
		switch stream {
		case "text":
			return c.Write(wctx, websocket.MessageText, b)
		case "stderr":
			b, _ = json.Marshal(map[string]string{"type": "stderr", "data": string(b)})
			return c.Write(wctx, websocket.MessageText, b)
		}
		return c.Write(wctx, websocket.MessageBinary, b)
	}, func(error) { cancel() })

	ctlCh := make(chan sandbox.Control, 1)
	started := func(ctl sandbox.Control) {
		ctlCh <- ctl
		b, _ := json.Marshal(map[string]any{"type": "started", "pid": ctl.PID})
		sink.writer("text").Write(b)
	}
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		var ctl sandbox.Control
		select {
		case ctl = <-ctlCh:
		case <-ctx.Done():
			return
		}
		for {
			typ, msg, err := c.Read(ctx)
			if err != nil {
				if hangUp {
					_ = ctl.Signal("SIGHUP")
				}
				cancel()
				return
			}
			if typ == websocket.MessageBinary {
				err = ctl.Stdin(msg)
			} else {
				err = wsCommand(ctl, msg)
			}
			if err != nil {
				_, code := statusOf(err)
				_ = sendText(map[string]string{"type": "error", "error": err.Error(), "code": code})
				if !errors.Is(err, sandbox.ErrBadRequest) && !errors.Is(err, agentproto.ErrMalformed) {
					cancel()
					return
				}
			}
		}
	}()
	res, err := run(ctx, started, sink.writer("stdout"), sink.writer("stderr"))
	sink.close()
	if err != nil {
		_, code := statusOf(err)
		_ = sendText(map[string]string{"type": "error", "error": err.Error(), "code": code})
		c.Close(websocket.StatusNormalClosure, "")
		return
	}
	_ = sendText(map[string]any{"type": "exit", "result": stepOut(res, "", "")})
	c.Close(websocket.StatusNormalClosure, "")
	cancel()
	<-readerDone
}

func wsCommand(ctl sandbox.Control, msg []byte) error {
	var m wsControl
	if err := json.Unmarshal(msg, &m); err != nil {
		return fmt.Errorf("%w: control message: %v", sandbox.ErrBadRequest, err)
	}
	switch m.Type {
	case "resize":
		sz, err := (&PTYIn{Cols: m.Cols, Rows: m.Rows}).size()
		if err != nil {
			return err
		}
		return ctl.Resize(sz)
	case "eof":
		return ctl.CloseStdin()
	case "signal":
		return ctl.Signal(agentproto.Signal(m.Signal))
	case "stdin":
		return ctl.Stdin([]byte(m.Data))
	}
	return fmt.Errorf("%w: control message type %q: want stdin, resize, eof or signal", sandbox.ErrBadRequest, m.Type)
}
