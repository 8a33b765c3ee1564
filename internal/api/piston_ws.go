// This file holds Piston's interactive WebSocket API: GET /api/v2/connect.

package api

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/sandbox"
)

// A session, as Piston's api/src/api/v2.js runs it (client <, server >):
//
//	< {"type":"init", ...the fields of /execute}        within 1 s, or close 4001
//	> {"type":"runtime","language":"python","version":"3.11.2"}
//	> {"type":"stage","stage":"compile"}                  compiled languages
//	> {"type":"data","stream":"stdout","data":"..."}      as the compiler writes
//	> {"type":"exit","stage":"compile","code":0,"signal":null}
//	> {"type":"stage","stage":"run"}                      if the compile succeeded
//	< {"type":"data","stream":"stdin","data":"3\n"}       any time after init
//	> {"type":"data","stream":"stdout","data":"9\n"}      as the program writes
//	< {"type":"signal","signal":"SIGTERM"}                to the stage running
//	> {"type":"exit","stage":"run","code":null,"signal":"SIGTERM"}
//	> close 4999 "Job Completed"
//
// Failures send {"type":"error","message":...} and close 4002. Piston's
// other close codes: 4000 a second init, 4003 data or signal before init,
// 4004 data for a stream other than stdin, 4005 a signal it does not know.
// Unknown message types are ignored, as Piston ignores them.
//
// Deliberate differences: the signal message really signals the program
// (Piston's handler emits an event nothing listens to), and only the
// signals the guest agent sends are valid (agentproto.Signals: the rest
// close with 4005); stdin sent before the run stage starts is kept for it
// instead of being lost; exit also carries "status" and "message" when the
// stage did not end normally (a timeout, an output cap). As in Piston, the
// init message's stdin is discarded, stdin is never closed (a program
// waiting for end of file runs to its time limit or a signal), and a
// compile that fails ends the job without a run stage.

// Piston's close codes and reasons.
const (
	wsJobCompleted   websocket.StatusCode = 4999
	wsAlreadyInit    websocket.StatusCode = 4000
	wsInitTimeout    websocket.StatusCode = 4001
	wsNotifiedError  websocket.StatusCode = 4002
	wsNotInit        websocket.StatusCode = 4003
	wsOnlyStdin      websocket.StatusCode = 4004
	wsInvalidSignal  websocket.StatusCode = 4005
	pistonInitWithin                      = time.Second
)

var wsReasons = map[websocket.StatusCode]string{
	wsJobCompleted:  "Job Completed",
	wsAlreadyInit:   "Already Initialized",
	wsInitTimeout:   "Initialization Timeout",
	wsNotifiedError: "Notified Error",
	wsNotInit:       "Not yet initialized",
	wsOnlyStdin:     "Can only write to stdin",
	wsInvalidSignal: "Invalid signal",
}

// Bounds of a session. The client is not trusted to read: output waits
// in memory (the agent caps it per stream), never in the VM's channel,
// and the VM goes as soon as the program ends.
const (
	// wsWriteTimeout bounds sending one message to the client.
	wsWriteTimeout = 10 * time.Second
	// wsDrainGrace bounds sending what is left once the session ends.
	wsDrainGrace = 10 * time.Second
	// wsMaxBacklog bounds output waiting for a slow client; past it the
	// program is stopped and the session fails.
	wsMaxBacklog = 32 << 20
	// wsMaxStdinBacklog bounds stdin the program has not taken yet.
	wsMaxStdinBacklog = 1 << 20
	// wsStdinSettle is how long a failed stdin write waits for the
	// program's exit, which explains it, before failing the session.
	wsStdinSettle = time.Second
)

// Messages the server sends.
type (
	wsRuntime struct {
		Type     string `json:"type"`
		Language string `json:"language"`
		Version  string `json:"version"`
	}
	wsStage struct {
		Type  string `json:"type"`
		Stage string `json:"stage"`
	}
	wsData struct {
		Type   string `json:"type"`
		Stream string `json:"stream"`
		Data   string `json:"data"`
	}
	wsExit struct {
		Type    string  `json:"type"`
		Stage   string  `json:"stage"`
		Code    *int    `json:"code"`
		Signal  *string `json:"signal"`
		Status  *string `json:"status,omitempty"`
		Message *string `json:"message,omitempty"`
	}
	wsError struct {
		Type    string `json:"type"`
		Message string `json:"message"`
	}
)

func (s *Server) handleConnect(w http.ResponseWriter, r *http.Request) {
	// Deadlines the middleware gave the HTTP request do not fit a
	// conversation; the session bounds itself below.
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Time{})
	_ = rc.SetWriteDeadline(time.Time{})
	c, err := websocket.Accept(w, r, nil) // browsers on other origins are refused
	if err != nil {
		s.log.Debug("websocket handshake failed", "op", "piston-connect", "err", err)
		return // Accept answered
	}
	c.SetReadLimit(s.cfg.MaxBody)
	ps := newPistonSession(s, c, r.Context())
	ps.serve()
}

// pistonSession is one connection: a reader (this handler's goroutine),
// a writer that alone writes to the connection, and the job once init
// came.
type pistonSession struct {
	s   *Server
	c   *websocket.Conn
	log *slog.Logger
	out *wsOutbox

	ctx    context.Context // the connection's; cancelled when it ends
	jobCtx context.Context // the job's; cancelled when the session closes
	stop   context.CancelFunc

	mu     sync.Mutex
	inited bool
	it     *sandbox.Interactive
	sig    agentproto.Signal // sent before the VM was ready

	stdin   *stdinQueue
	jobDone chan struct{}
}

func newPistonSession(s *Server, c *websocket.Conn, ctx context.Context) *pistonSession {
	ps := &pistonSession{s: s, c: c, log: s.log.With("op", "piston-connect"), ctx: ctx,
		stdin: newStdinQueue(), jobDone: make(chan struct{})}
	ps.jobCtx, ps.stop = context.WithCancel(ctx)
	ps.out = newOutbox(ps.stop)
	return ps
}

func (ps *pistonSession) serve() {
	defer ps.stop()
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		ps.writeLoop()
	}()
	initTimer := time.AfterFunc(pistonInitWithin, func() {
		ps.mu.Lock()
		inited := ps.inited
		ps.mu.Unlock()
		if !inited {
			ps.close(wsInitTimeout)
		}
	})
	defer initTimer.Stop()

	for {
		_, data, err := ps.c.Read(ps.ctx)
		if err != nil {
			break // closed by the peer, by the writer, or the server stops
		}
		ps.handle(data)
	}
	ps.stop()
	ps.out.abort() // nobody is left to read what is queued
	ps.mu.Lock()
	inited := ps.inited
	ps.mu.Unlock()
	if inited {
		<-ps.jobDone
	}
	<-writerDone
}

// handle acts on one client message, in Piston's order of checks.
func (ps *pistonSession) handle(data []byte) {
	if ps.out.isClosing() {
		return // what comes during the close handshake is dropped
	}
	var msg map[string]json.RawMessage
	if err := json.Unmarshal(data, &msg); err != nil || msg == nil {
		ps.fail(fmt.Errorf("%w: a message must be a JSON object", ErrBadBody))
		return
	}
	typ, _ := jsString(msg["type"])
	switch typ {
	case "init":
		ps.mu.Lock()
		inited := ps.inited
		ps.mu.Unlock()
		if inited {
			ps.close(wsAlreadyInit)
			return
		}
		req, e, err := ps.s.parseExecute(msg)
		if err != nil {
			ps.fail(err)
			return
		}
		req.Stdin = nil // as Piston: the conversation is the program's stdin
		ps.mu.Lock()
		ps.inited = true
		ps.mu.Unlock()
		go ps.job(req, e)
	case "data":
		if !ps.initialized() {
			ps.close(wsNotInit)
			return
		}
		if stream, _ := jsString(msg["stream"]); stream != "stdin" {
			ps.close(wsOnlyStdin)
			return
		}
		var s string
		if raw := msg["data"]; len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
			ps.fail(fmt.Errorf("%w: data must be a string", ErrBadBody))
			return
		}
		if !ps.stdin.push([]byte(s)) {
			ps.fail(fmt.Errorf("%w: more than %d bytes of stdin wait for the program to read them", sandbox.ErrBadRequest, wsMaxStdinBacklog))
		}
	case "signal":
		if !ps.initialized() {
			ps.close(wsNotInit)
			return
		}
		name, _ := jsString(msg["signal"])
		sig := agentproto.Signal(name)
		if !slices.Contains(agentproto.Signals, sig) {
			ps.close(wsInvalidSignal)
			return
		}
		ps.signal(sig)
	}
}

func (ps *pistonSession) initialized() bool {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return ps.inited
}

// signal sends sig to the program, or keeps it for the program to come.
func (ps *pistonSession) signal(sig agentproto.Signal) {
	ps.mu.Lock()
	it := ps.it
	if it == nil {
		ps.sig = sig
	}
	ps.mu.Unlock()
	if it == nil {
		return
	}
	if err := it.Signal(ps.jobCtx, sig); err != nil && ps.jobCtx.Err() == nil {
		ps.fail(fmt.Errorf("signal %s: %w", sig, err))
	}
}

// job runs the program: a VM slot through the server's limiter, the VM,
// the stages, and the end of the session.
func (ps *pistonSession) job(req sandbox.RunRequest, e *image.Entry) {
	defer close(ps.jobDone)
	ctx := ps.jobCtx
	release, err := ps.s.quotas.RunGate(ps.s.lim, ps.s.mgr.Config().MemoryMiB).Acquire(ctx) // the tenant's VMs, then the server's
	if err != nil {
		ps.fail(err)
		return
	}
	defer release()
	start := time.Now()
	it, err := ps.s.mgr.RunInteractive(ctx, req)
	if err != nil {
		ps.fail(err)
		return
	}
	defer it.Close()
	ps.s.met.running.Add(1)
	defer ps.s.met.running.Add(-1)
	ps.mu.Lock()
	ps.it = it
	sig := ps.sig
	ps.mu.Unlock()
	if sig != "" {
		_ = it.Signal(ctx, sig) // kept for the first stage: cannot fail
	}
	// it.Language and it.Version are the catalog entry's (e's), unless the
	// request replaced the commands: Piston reports the runtime asked for.
	ps.out.send(wsRuntime{Type: "runtime", Language: e.Name, Version: e.Version})

	status := "error"
	defer func() { ps.s.met.observeRun("piston", e.Name, status, time.Since(start)) }()
	if it.Compiled() {
		ps.out.send(wsStage{Type: "stage", Stage: "compile"})
		res, err := it.Compile(ctx, ps.out.stream("stdout"), ps.out.stream("stderr"))
		if err != nil {
			ps.fail(err)
			return
		}
		ps.out.flushCarry()
		ps.out.send(exitMessage("compile", res))
		if res.Status != agentproto.StatusOK {
			status = string(res.Status)
			it.Close()
			release()
			ps.close(wsJobCompleted)
			return
		}
	}
	ps.out.send(wsStage{Type: "stage", Stage: "run"})
	if err := it.Start(ctx, ps.out.stream("stdout"), ps.out.stream("stderr")); err != nil {
		ps.fail(err)
		return
	}
	runDone := make(chan struct{})
	pumpDone := make(chan struct{})
	go func() {
		defer close(pumpDone)
		ps.pumpStdin(it, runDone)
	}()
	res, err := it.Wait(ctx)
	close(runDone)
	<-pumpDone
	// The VM and its slot go now; the client reads the rest at its pace.
	it.Close()
	release()
	if err != nil {
		ps.fail(err)
		return
	}
	status = string(res.Status)
	if status == "" {
		status = "OK"
	}
	ps.out.flushCarry()
	ps.out.send(exitMessage("run", res))
	ps.close(wsJobCompleted)
}

// pumpStdin writes what the client sends to the program's stdin, in
// order, one write at a time, until the run ends.
func (ps *pistonSession) pumpStdin(it *sandbox.Interactive, runDone <-chan struct{}) {
	for {
		data, ok := ps.stdin.take(runDone)
		if !ok {
			return
		}
		err := it.WriteStdin(ps.jobCtx, data)
		if err == nil {
			continue
		}
		// A program that just ended cannot take its input; its exit
		// explains that better than an error.
		t := time.NewTimer(wsStdinSettle)
		select {
		case <-runDone:
		case <-t.C:
			ps.fail(fmt.Errorf("write stdin: %w", err))
		}
		t.Stop()
		return
	}
}

// exitMessage is a stage's exit in Piston's terms (a signal, or a code).
func exitMessage(stage string, r *agentproto.ExitResult) wsExit {
	st := pistonStage(r, "", "", "")
	return wsExit{Type: "exit", Stage: stage, Code: st.Code, Signal: st.Signal, Status: st.Status, Message: st.Message}
}

// fail reports err to the client and closes with 4002, as Piston does;
// the job (if any) stops.
func (ps *pistonSession) fail(err error) {
	if ps.ctx.Err() != nil {
		return // the connection is gone: nobody to tell
	}
	if status, _ := statusOf(err); status >= 500 && status != http.StatusServiceUnavailable {
		ps.log.Error("piston session failed", "err", err)
	}
	b, _ := json.Marshal(wsError{Type: "error", Message: err.Error()})
	ps.out.closeWith(b, wsNotifiedError, wsReasons[wsNotifiedError])
}

// close ends the session with one of Piston's codes.
func (ps *pistonSession) close(code websocket.StatusCode) {
	ps.out.closeWith(nil, code, wsReasons[code])
}

// writeLoop sends queued messages, then the close; a client that does not
// take a message within wsWriteTimeout (or the rest within wsDrainGrace
// once the session closes) loses its connection.
func (ps *pistonSession) writeLoop() {
	o := ps.out
	for {
		msgs, closing, code, reason, deadline, aborted := o.take()
		if aborted {
			_ = ps.c.CloseNow()
			return
		}
		for _, m := range msgs {
			d := time.Now().Add(wsWriteTimeout)
			if !deadline.IsZero() && deadline.Before(d) {
				d = deadline
			}
			wctx, cancel := context.WithDeadline(context.Background(), d)
			err := ps.c.Write(wctx, websocket.MessageText, m)
			cancel()
			if err != nil {
				ps.log.Debug("client does not read: dropping it", "err", err)
				ps.stop()
				_ = ps.c.CloseNow()
				return
			}
		}
		if len(msgs) > 0 {
			continue // more may have come meanwhile; the close goes last
		}
		if closing {
			_ = ps.c.Close(code, reason)
			return
		}
		<-o.wake
	}
}

// wsOutbox holds messages for the client until the writer sends them: the
// agent's read loop and the reader hand over messages here without ever
// waiting for the client.
type wsOutbox struct {
	mu      sync.Mutex
	msgs    [][]byte
	bytes   int
	carry   map[string][]byte // an incomplete UTF-8 sequence per stream
	closing bool
	aborted bool
	code    websocket.StatusCode
	reason  string
	drainBy time.Time
	wake    chan struct{}
	stop    context.CancelFunc // stops the job when the session closes
}

func newOutbox(stop context.CancelFunc) *wsOutbox {
	return &wsOutbox{carry: map[string][]byte{}, wake: make(chan struct{}, 1), stop: stop}
}

func (o *wsOutbox) signal() {
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// send queues v; dropped once the session is closing.
func (o *wsOutbox) send(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		return // a bug: every message type marshals
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.queueLocked(b)
}

func (o *wsOutbox) queueLocked(b []byte) {
	if o.closing {
		return
	}
	o.msgs = append(o.msgs, b)
	o.bytes += len(b)
	if o.bytes > wsMaxBacklog {
		eb, _ := json.Marshal(wsError{Type: "error", Message: fmt.Sprintf("the client is not reading: more than %d bytes of output wait for it", wsMaxBacklog)})
		o.closeLocked(eb, wsNotifiedError, wsReasons[wsNotifiedError])
	}
	o.signal()
}

// closeWith queues last (if any) and then the close, unless the session
// is closing already: the first close wins. The job stops.
func (o *wsOutbox) closeWith(last []byte, code websocket.StatusCode, reason string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.closeLocked(last, code, reason)
}

func (o *wsOutbox) closeLocked(last []byte, code websocket.StatusCode, reason string) {
	if o.closing {
		return
	}
	if last != nil {
		o.msgs = append(o.msgs, last)
	}
	o.closing, o.code, o.reason = true, code, reason
	o.drainBy = time.Now().Add(wsDrainGrace)
	o.stop()
	o.signal()
}

// abort drops everything: the connection is gone.
func (o *wsOutbox) abort() {
	o.mu.Lock()
	o.aborted, o.closing = true, true
	o.msgs = nil
	o.mu.Unlock()
	o.signal()
}

func (o *wsOutbox) isClosing() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.closing
}

func (o *wsOutbox) take() (msgs [][]byte, closing bool, code websocket.StatusCode, reason string, drainBy time.Time, aborted bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	msgs, o.msgs, o.bytes = o.msgs, nil, 0
	return msgs, o.closing, o.code, o.reason, o.drainBy, o.aborted
}

// stream is a writer of one output stream as data messages. It runs on
// the agent client's read loop, so it only queues.
func (o *wsOutbox) stream(name string) wsStream { return wsStream{o, name} }

type wsStream struct {
	o    *wsOutbox
	name string
}

func (w wsStream) Write(b []byte) (int, error) {
	o := w.o
	o.mu.Lock()
	defer o.mu.Unlock()
	data := append(o.carry[w.name], b...)
	// Hold back a character split across chunks, so it is not mangled.
	cut := len(data)
	for i := len(data) - 1; i >= 0 && i >= len(data)-utf8.UTFMax; i-- {
		if utf8.RuneStart(data[i]) {
			if !utf8.FullRune(data[i:]) {
				cut = i
			}
			break
		}
	}
	o.carry[w.name] = append([]byte(nil), data[cut:]...)
	o.queueDataLocked(w.name, data[:cut])
	return len(b), nil
}

// wsMaxData is the most output one data message carries: about what a
// pipe read gives Piston, and well inside the 32 KiB that WebSocket
// libraries accept by default (coder/websocket's read limit).
const wsMaxData = 16 << 10

// queueDataLocked queues data (whole UTF-8 sequences) as data messages
// of at most wsMaxData bytes each, cut between characters.
func (o *wsOutbox) queueDataLocked(stream string, data []byte) {
	for len(data) > 0 {
		n := min(len(data), wsMaxData)
		for n < len(data) && n > 0 && !utf8.RuneStart(data[n]) {
			n--
		}
		if n == 0 { // not UTF-8 at all: cut anywhere
			n = min(len(data), wsMaxData)
		}
		m, _ := json.Marshal(wsData{Type: "data", Stream: stream, Data: string(data[:n])})
		o.queueLocked(m)
		data = data[n:]
	}
}

// flushCarry sends what was held back at the end of a stage.
func (o *wsOutbox) flushCarry() {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, name := range []string{"stdout", "stderr"} {
		o.queueDataLocked(name, o.carry[name])
	}
	clear(o.carry)
}

// stdinQueue holds stdin from the client until the program's pump takes
// it, bounded by wsMaxStdinBacklog.
type stdinQueue struct {
	mu   sync.Mutex
	buf  []byte
	wake chan struct{}
}

func newStdinQueue() *stdinQueue { return &stdinQueue{wake: make(chan struct{}, 1)} }

// push appends b; false if the backlog would pass its bound.
func (q *stdinQueue) push(b []byte) bool {
	if len(b) == 0 {
		return true
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.buf)+len(b) > wsMaxStdinBacklog {
		return false
	}
	q.buf = append(q.buf, b...)
	select {
	case q.wake <- struct{}{}:
	default:
	}
	return true
}

// take waits for queued stdin; false once done is closed.
func (q *stdinQueue) take(done <-chan struct{}) ([]byte, bool) {
	for {
		q.mu.Lock()
		b := q.buf
		q.buf = nil
		q.mu.Unlock()
		if len(b) > 0 {
			return b, true
		}
		select {
		case <-q.wake:
		case <-done:
			return nil, false
		}
	}
}
