package e2b

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/state"
)

// The code interpreter is a server inside the guest (languages/
// code-interpreter.toml's prewarmed runtime, started before the template's
// snapshot with numpy, pandas and matplotlib loaded). It keeps each
// context in a process of its own, forked from it. The host reaches it by
// running its relay, a small client of the same program, once per call:
// the request goes in on stdin and its answer, for an execution a stream
// of E2B's NDJSON events, comes back on stdout. Cancelling the relay's
// exec (the HTTP client went away) closes its connection to the context,
// which interrupts the running cell.
const (
	// interpreterFile is the program's file name in the prewarm section:
	// an entry with it has the interpreter.
	interpreterFile = "ci.py"
	// maxCode bounds one cell's source.
	maxCode = 1 << 20
	// keepaliveEvery is how often a silent execution sends a keepalive
	// line, so no proxy or client times the stream out.
	keepaliveEvery = 20 * time.Second
)

// relayRequest is what the relay reads on stdin.
type relayRequest struct {
	Op        string            `json:"op"`
	ContextID string            `json:"context_id,omitempty"`
	Language  string            `json:"language,omitempty"`
	Cwd       string            `json:"cwd,omitempty"`
	Code      string            `json:"code,omitempty"`
	EnvVars   map[string]string `json:"env_vars,omitempty"`
}

// relayAnswer is the relay's one line for calls other than execute.
type relayAnswer struct {
	Error    string        `json:"error,omitempty"`
	Status   int           `json:"status,omitempty"`
	Context  *codeContext  `json:"context,omitempty"`
	Contexts []codeContext `json:"contexts,omitempty"`
}

// codeContext is E2B's Context.
type codeContext struct {
	ID       string `json:"id"`
	Language string `json:"language"`
	Cwd      string `json:"cwd"`
}

// events the relay may stream for an execution; anything else a guest
// sends is dropped.
var eventTypes = map[string]bool{"stdout": true, "stderr": true, "result": true, "error": true,
	"number_of_executions": true, "end_of_execution": true, "unexpected_end_of_execution": true, "keepalive": true}

// interpreterOf returns the catalog entry of sb's template if it has the
// interpreter.
func (h *Handler) interpreterOf(sb state.Sandbox) (*image.Entry, error) {
	e, err := h.deps.Catalog.Lookup(sb.Language, sb.Version)
	if err != nil {
		return nil, err
	}
	if e.Prewarm == nil || e.Prewarm.File != interpreterFile {
		return nil, fmt.Errorf("%w: template %s has no code interpreter (create the sandbox from %s)", errNotFound, sb.Language, DefaultTemplate)
	}
	return e, nil
}

// relay runs one relay call in the sandbox; stdout receives its output.
func (h *Handler) relay(ctx context.Context, sb state.Sandbox, req relayRequest, wall time.Duration, stdout *syncWriter) (*agentproto.ExitResult, string, error) {
	e, err := h.interpreterOf(sb)
	if err != nil {
		return nil, "", err
	}
	in, err := json.Marshal(req)
	if err != nil {
		return nil, "", err
	}
	var stderr bytes.Buffer
	errW := &syncWriter{w: &stderr, max: 64 << 10}
	res, err := h.deps.Sandboxes.Exec(ctx, sb.Tenant, sb.ID, agentproto.ExecRequest{
		Argv:  []string{"python3", path.Join(image.PrewarmDir, e.Prewarm.File), "relay"},
		Dir:   homeOf(sb),
		Stdin: in, Prewarmed: true,
		Limits: agentproto.Limits{WallMillis: wall.Milliseconds(), OutputBytes: 64 << 20},
	}, stdout, errW)
	return res, errW.String(), err
}

// call runs a relay call that answers with one line.
func (h *Handler) call(r *http.Request, req relayRequest) (relayAnswer, error) {
	t := targetOf(r.Context())
	var out bytes.Buffer
	res, stderr, err := h.relay(r.Context(), t.sb, req, time.Minute, &syncWriter{w: &out, max: 1 << 20})
	if err != nil {
		return relayAnswer{}, err
	}
	var a relayAnswer
	if jerr := json.Unmarshal(bytes.TrimSpace(out.Bytes()), &a); jerr != nil || res.Code != 0 {
		return relayAnswer{}, fmt.Errorf("the code interpreter failed (exit %d): %s", res.Code, strings.TrimSpace(stderr+" "+out.String()))
	}
	if a.Error != "" {
		switch a.Status {
		case http.StatusNotFound:
			return a, fmt.Errorf("%w: %s", errNotFound, a.Error)
		case http.StatusBadRequest:
			return a, badRequest("%s", a.Error)
		}
		return a, errors.New(a.Error)
	}
	return a, nil
}

// plain answers an interpreter error as the E2B server does: plain text,
// which the SDK shows (404 becomes NotFoundError).
func (h *Handler) plain(w http.ResponseWriter, r *http.Request, err error) {
	status := h.statusOf(err)
	if status >= 500 {
		h.log.Warn("code interpreter call failed", "sandbox", targetOf(r.Context()).sb.ID, "path", r.URL.Path, "err", err)
	}
	http.Error(w, err.Error(), status)
}

func (h *Handler) interpHealth(w http.ResponseWriter, r *http.Request) {
	if _, err := h.interpreterOf(targetOf(r.Context()).sb); err != nil {
		h.plain(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, "OK")
}

func normalizeLanguage(l string) string {
	switch l = strings.ToLower(strings.TrimSpace(l)); l {
	case "", "python3", "py":
		return "python"
	case "js", "node", "nodejs":
		return "javascript"
	case "sh", "shell":
		return "bash"
	}
	return l
}

func (h *Handler) createContext(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Language string `json:"language"`
		Cwd      string `json:"cwd"`
	}
	if err := decode(r, &in); err != nil {
		h.plain(w, r, err)
		return
	}
	t := targetOf(r.Context())
	cwd := in.Cwd
	if cwd == "" {
		cwd = homeOf(t.sb)
	}
	cwd, err := guestPath(t.sb, cwd)
	if err != nil {
		h.plain(w, r, err)
		return
	}
	a, err := h.call(r, relayRequest{Op: "create", Language: normalizeLanguage(in.Language), Cwd: cwd})
	if err == nil && a.Context == nil {
		err = errors.New("the code interpreter answered no context")
	}
	if err != nil {
		h.plain(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, a.Context)
}

func (h *Handler) listContexts(w http.ResponseWriter, r *http.Request) {
	a, err := h.call(r, relayRequest{Op: "list"})
	if err != nil {
		h.plain(w, r, err)
		return
	}
	if a.Contexts == nil {
		a.Contexts = []codeContext{}
	}
	writeJSON(w, http.StatusOK, a.Contexts)
}

func (h *Handler) restartContext(w http.ResponseWriter, r *http.Request) {
	if _, err := h.call(r, relayRequest{Op: "restart", ContextID: r.PathValue("ctx")}); err != nil {
		h.plain(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, nil)
}

func (h *Handler) deleteContext(w http.ResponseWriter, r *http.Request) {
	if _, err := h.call(r, relayRequest{Op: "delete", ContextID: r.PathValue("ctx")}); err != nil {
		h.plain(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, nil)
}

// execute is POST /execute: the cell's events as NDJSON, ending with
// end_of_execution.
func (h *Handler) execute(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Code      string            `json:"code"`
		ContextID string            `json:"context_id"`
		Language  string            `json:"language"`
		EnvVars   map[string]string `json:"env_vars"`
	}
	if err := decode(r, &in); err != nil {
		h.plain(w, r, err)
		return
	}
	switch {
	case in.ContextID != "" && in.Language != "":
		h.plain(w, r, badRequest("Only one of context_id or language can be provided"))
		return
	case len(in.Code) > maxCode:
		h.plain(w, r, fmt.Errorf("%w: code of %d bytes, at most %d", errTooLarge, len(in.Code), maxCode))
		return
	}
	for k := range in.EnvVars {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			h.plain(w, r, badRequest("env_vars: %q is not a variable name", k))
			return
		}
	}
	t := targetOf(r.Context())
	req := relayRequest{Op: "execute", Code: in.Code, ContextID: in.ContextID, EnvVars: in.EnvVars}
	if in.ContextID == "" {
		req.Language = normalizeLanguage(in.Language)
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.cfg.MaxCell)
	defer cancel()
	st := newEventStream(w)
	defer st.stop()
	res, stderr, err := h.relay(ctx, t.sb, req, h.cfg.MaxCell, &syncWriter{w: st, max: 64 << 20})
	st.flushLine()
	switch {
	case err != nil && !st.started():
		h.plain(w, r, err)
		return
	case err != nil:
		st.event(map[string]any{"type": "error", "name": "ExecutionError", "value": err.Error(), "traceback": ""})
	case !st.ended() && !st.started() && res.Code != 0:
		h.plain(w, r, fmt.Errorf("the code interpreter failed (exit %d): %s", res.Code, strings.TrimSpace(stderr)))
		return
	case !st.ended():
		// The relay stopped without the end: the context died under the
		// cell (killed, out of memory) or the relay did.
		st.event(map[string]any{"type": "error", "name": "UnexpectedEndOfExecution",
			"value": "the context stopped before the cell finished: " + strings.TrimSpace(stderr+" "+res.Message), "traceback": ""})
	}
	if !st.ended() {
		st.event(map[string]any{"type": "end_of_execution"})
	}
}

// syncWriter serialises writes to w (the agent client writes from its
// read loop) and bounds what it keeps.
type syncWriter struct {
	mu  sync.Mutex
	w   interface{ Write([]byte) (int, error) }
	max int
	n   int
}

func (s *syncWriter) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n+len(b) > s.max {
		b = b[:max(s.max-s.n, 0)]
	}
	s.n += len(b)
	if len(b) > 0 {
		_, _ = s.w.Write(b)
	}
	return len(b), nil
}

func (s *syncWriter) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b, ok := s.w.(*bytes.Buffer); ok {
		return b.String()
	}
	return ""
}

// eventStream turns the relay's stdout into checked NDJSON lines on the
// response. Writes from the agent client never block on the HTTP client:
// lines queue (bounded by the exec's output cap) for a writer goroutine.
type eventStream struct {
	w http.ResponseWriter

	mu      sync.Mutex
	partial []byte
	queue   [][]byte
	wake    chan struct{}
	done    chan struct{}
	quit    chan struct{}
	begun   bool
	end     bool
}

func newEventStream(w http.ResponseWriter) *eventStream {
	s := &eventStream{w: w, wake: make(chan struct{}, 1), done: make(chan struct{}), quit: make(chan struct{})}
	go s.pump()
	return s
}

// maxLine bounds one event (a PNG in base64 is the largest usual one).
const maxLine = 32 << 20

// Write takes relay output; complete lines become events.
func (s *eventStream) Write(b []byte) (int, error) {
	s.mu.Lock()
	s.partial = append(s.partial, b...)
	for {
		i := bytes.IndexByte(s.partial, '\n')
		if i < 0 {
			break
		}
		s.lineLocked(s.partial[:i])
		s.partial = s.partial[i+1:]
	}
	if len(s.partial) > maxLine {
		s.partial = s.partial[:0] // an event this large is not one
	}
	s.mu.Unlock()
	return len(b), nil
}

func (s *eventStream) flushLine() {
	s.mu.Lock()
	if len(bytes.TrimSpace(s.partial)) > 0 {
		s.lineLocked(s.partial)
	}
	s.partial = nil
	s.mu.Unlock()
}

// lineLocked checks one line from the guest: a JSON object of a known
// type, re-encoded so nothing else reaches the client.
func (s *eventStream) lineLocked(line []byte) {
	var ev map[string]any
	if json.Unmarshal(line, &ev) != nil {
		return
	}
	typ, _ := ev["type"].(string)
	if !eventTypes[typ] || s.end {
		return
	}
	b, err := json.Marshal(ev)
	if err != nil {
		return
	}
	if typ == "end_of_execution" {
		s.end = true
	}
	s.begun = true
	s.queue = append(s.queue, append(b, '\n'))
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// event adds an event of the host's own.
func (s *eventStream) event(ev map[string]any) {
	b, _ := json.Marshal(ev)
	s.mu.Lock()
	s.lineLocked(b)
	s.mu.Unlock()
}

func (s *eventStream) started() bool { s.mu.Lock(); defer s.mu.Unlock(); return s.begun }
func (s *eventStream) ended() bool   { s.mu.Lock(); defer s.mu.Unlock(); return s.end }

// pump writes queued lines to the client, and a keepalive when nothing
// came for a while, until stop.
func (s *eventStream) pump() {
	defer close(s.done)
	rc := http.NewResponseController(s.w)
	_ = rc.SetWriteDeadline(time.Time{}) // a cell may run long; the client's disconnect ends it
	header := false
	tick := time.NewTicker(keepaliveEvery)
	defer tick.Stop()
	quit := false
	for {
		s.mu.Lock()
		q := s.queue
		s.queue = nil
		s.mu.Unlock()
		if len(q) > 0 && !header {
			s.w.Header().Set("Content-Type", "application/x-ndjson")
			s.w.WriteHeader(http.StatusOK)
			header = true
		}
		for _, line := range q {
			if _, err := s.w.Write(line); err != nil {
				break
			}
		}
		if len(q) > 0 {
			_ = rc.Flush()
		}
		if quit {
			return
		}
		select {
		case <-s.wake:
		case <-s.quit:
			quit = true
		case <-tick.C:
			if header {
				_, _ = s.w.Write([]byte(`{"type":"keepalive"}` + "\n"))
				_ = rc.Flush()
			}
		}
	}
}

// stop writes what is queued and returns once the pump is done.
func (s *eventStream) stop() {
	close(s.quit)
	<-s.done
}
