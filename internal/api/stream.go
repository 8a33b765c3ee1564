// This file holds streamed answers: NDJSON or server-sent events.

package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"unicode/utf8"
)

// eventStream writes events as NDJSON, or as server-sent events when the
// client asks for text/event-stream. Output writes come from the agent
// client's reader; a write that fails (the client left) cancels the run.
type eventStream struct {
	mu      sync.Mutex
	w       http.ResponseWriter
	r       *http.Request
	rc      *http.ResponseController
	sse     bool
	started bool
	failed  bool
	cancel  context.CancelFunc
	carry   map[[2]string][]byte // incomplete UTF-8 at the end of a chunk
}

// Event is one line of a stream.
type Event struct {
	Type   string `json:"type"` // output, result, error
	Stage  string `json:"stage,omitempty"`
	Stream string `json:"stream,omitempty"`
	Data   string `json:"data,omitempty"`
	Result any    `json:"result,omitempty"`
	Error  string `json:"error,omitempty"`
	Code   string `json:"code,omitempty"`
}

func newEventStream(w http.ResponseWriter, r *http.Request, cancel context.CancelFunc) *eventStream {
	accept := r.Header.Get("Accept")
	return &eventStream{w: w, rc: http.NewResponseController(w), cancel: cancel, carry: map[[2]string][]byte{},
		r: r, sse: strings.Contains(accept, "text/event-stream")}
}

// start commits the 200 and the content type; before it, errors are
// ordinary HTTP errors.
func (e *eventStream) start() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.startLocked()
}

func (e *eventStream) startLocked() {
	if e.started {
		return
	}
	e.started = true
	h := e.w.Header()
	if e.sse {
		h.Set("Content-Type", "text/event-stream")
	} else {
		h.Set("Content-Type", "application/x-ndjson")
	}
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	e.w.WriteHeader(http.StatusOK)
	_ = e.rc.Flush()
}

func (e *eventStream) writeLocked(ev Event) {
	if e.failed {
		return
	}
	e.startLocked()
	b, _ := json.Marshal(ev)
	var err error
	if e.sse {
		_, err = fmt.Fprintf(e.w, "event: %s\ndata: %s\n\n", ev.Type, b)
	} else {
		_, err = e.w.Write(append(b, '\n'))
	}
	if err == nil {
		err = e.rc.Flush()
	}
	if err != nil {
		e.failed = true
		e.cancel()
	}
}

func (e *eventStream) send(typ string, result any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.writeLocked(Event{Type: typ, Result: result})
}

// fail reports err: as an HTTP error if nothing was sent yet, else as an
// error event.
func (e *eventStream) fail(s *Server, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.failed {
		return // the client is gone
	}
	if !e.started {
		e.failed = true
		s.writeError(e.w, e.r, err)
		return
	}
	_, code := statusOf(err)
	e.writeLocked(Event{Type: "error", Error: err.Error(), Code: code})
}

type streamWriter struct {
	e     *eventStream
	stage string
	name  string
}

func (w streamWriter) Write(b []byte) (int, error) {
	e := w.e
	e.mu.Lock()
	defer e.mu.Unlock()
	k := [2]string{w.stage, w.name}
	data := append(e.carry[k], b...)
	// Hold back a rune split across chunks so it is not mangled.
	cut := len(data)
	for i := len(data) - 1; i >= 0 && i >= len(data)-utf8.UTFMax; i-- {
		if utf8.RuneStart(data[i]) {
			if !utf8.FullRune(data[i:]) {
				cut = i
			}
			break
		}
	}
	e.carry[k] = append([]byte(nil), data[cut:]...)
	if cut > 0 {
		e.writeLocked(Event{Type: "output", Stage: w.stage, Stream: w.name, Data: string(data[:cut])})
	}
	return len(b), nil
}

func (e *eventStream) writer(stage, stream string) io.Writer { return streamWriter{e, stage, stream} }

func (e *eventStream) flushCarry() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for k, rest := range e.carry {
		if len(rest) > 0 {
			e.writeLocked(Event{Type: "output", Stage: k[0], Stream: k[1], Data: string(rest)})
		}
	}
	clear(e.carry)
}
