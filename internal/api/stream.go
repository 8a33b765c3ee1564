// This file holds streamed answers: NDJSON or server-sent events.

package api

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// Bounds of a streamed answer.
const (
	// streamGrace is how long the events queued when the handler returns
	// may take to reach the client; the run, and its VM, are gone by then.
	streamGrace = 10 * time.Second
	// maxStreamQueue bounds the events waiting for a client that reads
	// more slowly than its program writes; past it the run is stopped.
	maxStreamQueue = 48 << 20
)

// eventStream writes events as NDJSON, or as server-sent events when the
// client asks for text/event-stream.
//
// Output arrives from the agent client's reader, which must never wait
// for a client: events are queued (bounded) and one writer goroutine, the
// only one that writes the response once it started, sends them. So a
// slow reader holds no VM past its program's own end. When the handler
// returns, the middleware ends the stream (end): what is queued gets
// streamGrace to go out, and then nothing writes to the response again,
// however late a VM's output arrives.
type eventStream struct {
	mu      sync.Mutex
	cond    *sync.Cond // signals the writer
	w       http.ResponseWriter
	r       *http.Request
	rc      *http.ResponseController
	sse     bool
	started bool     // the writer runs (it commits the 200)
	failed  bool     // the client is gone: drop everything
	sealed  bool     // no more events: the last one is queued
	ending  bool     // the handler returned
	queue   [][]byte // encoded events waiting for the writer
	queued  int      // their bytes
	done    chan struct{}
	cancel  context.CancelFunc
	carry   map[[2]string][]byte // incomplete UTF-8 at the end of a chunk
	// binary sends output as it came, in base64, instead of as text.
	binary bool
}

// Event is one line of a stream.
type Event struct {
	Type   string `json:"type"` // output, result, error
	Stage  string `json:"stage,omitempty"`
	Stream string `json:"stream,omitempty"`
	Data   string `json:"data,omitempty"`
	// Encoding is "base64" when Data is the output's bytes in base64
	// (a request asked for it); empty when Data is text.
	Encoding string `json:"encoding,omitempty"`
	Result   any    `json:"result,omitempty"`
	Error    string `json:"error,omitempty"`
	Code     string `json:"code,omitempty"`
}

// newEventStream returns a stream answering r on w; cancel stops the run
// when the client goes away or cannot keep up.
func newEventStream(w http.ResponseWriter, r *http.Request, cancel context.CancelFunc) *eventStream {
	accept := r.Header.Get("Accept")
	e := &eventStream{w: w, rc: http.NewResponseController(w), cancel: cancel, carry: map[[2]string][]byte{},
		r: r, sse: strings.Contains(accept, "text/event-stream")}
	e.cond = sync.NewCond(&e.mu)
	if sw, ok := w.(*statusWriter); ok {
		sw.whenDone(e.end)
	}
	return e
}

// start commits the 200 and the content type; before it, errors are
// ordinary HTTP errors.
func (e *eventStream) start() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.startLocked()
}

func (e *eventStream) startLocked() {
	if e.started || e.failed || e.ending {
		return
	}
	e.started = true
	e.done = make(chan struct{})
	go e.writeLoop()
}

// writeLoop is the stream's one writer: the headers, then the queue.
func (e *eventStream) writeLoop() {
	defer close(e.done)
	h := e.w.Header()
	if e.sse {
		h.Set("Content-Type", "text/event-stream")
	} else {
		h.Set("Content-Type", "application/x-ndjson")
	}
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	e.w.WriteHeader(http.StatusOK)
	err := e.rc.Flush()
	for err == nil {
		e.mu.Lock()
		for len(e.queue) == 0 && !e.failed && !e.ending {
			e.cond.Wait()
		}
		batch := e.queue
		e.queue, e.queued = nil, 0
		stop := e.failed || (len(batch) == 0 && e.ending)
		e.mu.Unlock()
		if stop {
			return
		}
		for _, b := range batch {
			if _, err = e.w.Write(b); err != nil {
				break
			}
		}
		if err == nil {
			err = e.rc.Flush()
		}
	}
	e.mu.Lock()
	e.failed, e.queue, e.queued = true, nil, 0
	e.mu.Unlock()
	e.cancel() // the client left: stop the run
}

// end is called when the handler has returned: the writer gets
// streamGrace to send what is queued, then stops. After end returns
// nothing writes to the response.
func (e *eventStream) end() {
	e.mu.Lock()
	e.ending = true
	started := e.started
	e.cond.Broadcast()
	e.mu.Unlock()
	if !started {
		return
	}
	_ = e.rc.SetWriteDeadline(time.Now().Add(streamGrace))
	<-e.done // bounded by the deadline just set
}

func (e *eventStream) encode(ev Event) []byte {
	b, _ := json.Marshal(ev) // Event always marshals
	if e.sse {
		return fmt.Appendf(nil, "event: %s\ndata: %s\n\n", ev.Type, b)
	}
	return append(b, '\n')
}

// enqueueLocked queues ev for the writer. A client too slow for its
// program's output gets one last error event, and the run is stopped.
func (e *eventStream) enqueueLocked(ev Event) {
	if e.failed || e.sealed || e.ending {
		return
	}
	e.startLocked()
	b := e.encode(ev)
	if e.queued+len(b) > maxStreamQueue {
		e.queue = [][]byte{e.encode(Event{Type: "error", Code: "client_too_slow",
			Error: fmt.Sprintf("the client read the stream too slowly: more than %d bytes were waiting for it, so the run was stopped", maxStreamQueue)})}
		e.queued = len(e.queue[0])
		e.sealed = true
		e.cond.Broadcast()
		e.cancel()
		return
	}
	e.queue = append(e.queue, b)
	e.queued += len(b)
	e.cond.Broadcast()
}

func (e *eventStream) send(typ string, result any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.enqueueLocked(Event{Type: typ, Result: result})
}

// fail reports err: as an HTTP error if nothing was sent yet, else as an
// error event.
func (e *eventStream) fail(s *Server, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.failed || e.sealed || e.ending {
		return // the client is gone, or has had its last word
	}
	if !e.started {
		e.failed = true
		s.writeError(e.w, e.r, err)
		return
	}
	_, code := statusOf(err)
	e.enqueueLocked(Event{Type: "error", Error: err.Error(), Code: code})
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
	if e.failed || e.sealed || e.ending {
		return len(b), nil // late output of a finished answer: dropped
	}
	if e.binary {
		if len(b) > 0 {
			e.enqueueLocked(Event{Type: "output", Stage: w.stage, Stream: w.name, Data: base64.StdEncoding.EncodeToString(b), Encoding: "base64"})
		}
		return len(b), nil
	}
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
		e.enqueueLocked(Event{Type: "output", Stage: w.stage, Stream: w.name, Data: string(data[:cut])})
	}
	return len(b), nil
}

func (e *eventStream) writer(stage, stream string) io.Writer { return streamWriter{e, stage, stream} }

func (e *eventStream) flushCarry() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for k, rest := range e.carry {
		if len(rest) > 0 {
			e.enqueueLocked(Event{Type: "output", Stage: k[0], Stream: k[1], Data: string(rest)})
		}
	}
	clear(e.carry)
}
