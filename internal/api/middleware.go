// This file holds what every request passes through: recovery, metrics,
// authentication and the tenant, the browser guard, the request rate, and
// the body's size, memory and time.

package api

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/firesandbox/firesandbox/internal/tenant"
)

// ErrBadBody means the request body is not what the endpoint takes.
var ErrBadBody = errors.New("invalid request body")

// ErrUnauthorized means the API key is missing or wrong.
var ErrUnauthorized = errors.New("unauthorized")

// Errors of the middleware, mapped in statusOf.
var (
	errForbidden   = errors.New("forbidden")
	errMediaType   = errors.New("unsupported media type")
	errBodyTimeout = errors.New("request body too slow")
	errTooLarge    = errors.New("request too large")
	errBusy        = errors.New("server busy")
)

// bodyMinRate is the rate (bytes per second) a body must keep up to earn
// more time than BodyTimeout.
const bodyMinRate = 64 << 10

// middleware wraps every request: recovery from panics, metrics, the
// tenant (from the API key), the browser guard, the tenant's request
// rate, the body (its size, the memory all bodies hold, its deadline), and
// after the handler, the end of all writes to the response.
func (s *Server) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.inflight.Add(1)
		defer s.inflight.Done()
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		// After the handler returns nothing may write to its response:
		// output that arrives late from a VM would otherwise reach a
		// recycled buffer, another client's response, or panic.
		defer sw.close()
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				s.log.Error("handler panicked", "method", r.Method, "path", r.URL.Path, "panic", p,
					"stack", string(stack()))
				if !sw.wroteHeader() {
					s.writeError(sw, r, fmt.Errorf("internal error: %v", p))
				}
			}
			route := r.Pattern
			if route == "" || route == "/" {
				route = "other"
			}
			s.met.observeHTTP(route, sw.code(), time.Since(start))
		}()
		rc := http.NewResponseController(sw)
		_ = rc.SetReadDeadline(time.Time{}) // ReadTimeout covered the headers; the body has its own below
		if r.URL.Path == "/healthz" {
			next.ServeHTTP(sw, r)
			return
		}
		t, anonymous, err := s.authenticate(r)
		if err != nil {
			sw.Header().Set("WWW-Authenticate", `Bearer realm="firesandbox"`)
			s.writeError(sw, r, err)
			return
		}
		if anonymous {
			if err := s.guardBrowser(r); err != nil {
				s.writeError(sw, r, err)
				return
			}
		}
		if err := s.quotas.Allow(r.Context(), t); err != nil {
			s.writeError(sw, r, err)
			return
		}
		r = r.WithContext(tenant.WithTenant(r.Context(), t))
		// Whole requests can take a queue wait, a VM and a run; streams
		// extend nothing, so the budget covers the longest legal request.
		_ = rc.SetWriteDeadline(time.Now().Add(s.svc.Config().QueueWait + 2*s.cfg.MaxTimeout + 2*time.Minute))
		if r.Body != nil && r.Body != http.NoBody && r.Method != http.MethodGet && r.Method != http.MethodHead {
			body, release, err := s.readBody(sw, r, rc)
			defer release()
			if err != nil {
				sw.Header().Set("Connection", "close") // what is left of the body is not read
				s.writeError(sw, r, err)
				return
			}
			r.Body = &heldBody{Reader: bytes.NewReader(body), b: body}
		}
		next.ServeHTTP(sw, r)
	})
}

func stack() []byte {
	b := make([]byte, 8<<10)
	return b[:runtime.Stack(b, false)]
}

// authenticate finds the tenant a request acts for. A key, if sent, must
// be valid; without one the request is the default tenant's if it came
// over the owner-only unix socket, or if the server needs no key (then
// anonymous is set: it gets the browser guard).
func (s *Server) authenticate(r *http.Request) (t string, anonymous bool, err error) {
	local := r.Context().Value(localConnKey{}) != nil
	if s.selfAuth != nil && s.selfAuth(r) {
		return tenant.Default, !local, nil
	}
	key := requestKey(r)
	if key != "" {
		t, err := s.auth.Authenticate(r.Context(), key)
		if err != nil {
			if !errors.Is(err, tenant.ErrUnknownKey) {
				return "", false, err // the store failed: 500, not a refusal
			}
			return "", false, fmt.Errorf("%w: this API key is not valid here (removed, or never made)", ErrUnauthorized)
		}
		return t, false, nil
	}
	switch {
	case local:
		return tenant.Default, false, nil
	case s.cfg.APIKey != "" || s.cfg.RequireKey:
		return "", false, fmt.Errorf("%w: this server needs an API key: send \"Authorization: Bearer KEY\" or \"X-API-Key: KEY\" (Judge0: \"X-Auth-Token: KEY\")", ErrUnauthorized)
	}
	return tenant.Default, true, nil
}

// requestKey is the key a request presents: X-API-Key (E2B's SDKs send it
// as X-API-KEY), Judge0's X-Auth-Token, or a bearer token.
func requestKey(r *http.Request) string {
	if k := r.Header.Get("X-API-Key"); k != "" {
		return k
	}
	if k := r.Header.Get("X-Auth-Token"); k != "" {
		return k
	}
	if a := r.Header.Get("Authorization"); len(a) > 7 && strings.EqualFold(a[:7], "bearer ") {
		if k := strings.TrimSpace(a[7:]); k != "" {
			return k
		}
		return "\x00empty" // "Bearer " with nothing: a wrong key, not none
	}
	return ""
}

// readBody reads r's whole body, bounded three ways: MaxBody (a declared
// Content-Length beyond it is refused before any byte is read), the memory
// all bodies hold at once (MaxBodyMemory), and time: BodyTimeout, plus a
// second for each bodyMinRate bytes that really arrive, so a stalled or
// trickling body is cut while a large upload at a fair rate is not.
// release gives the body's memory back to the budget.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request, rc *http.ResponseController) (b []byte, release func(), err error) {
	limit := s.cfg.MaxBody
	var held int64
	release = func() { s.bodyMemory.Add(-held) }
	if r.ContentLength > limit {
		return nil, release, fmt.Errorf("%w: the body is %d bytes; this server takes at most %d", errTooLarge, r.ContentLength, limit)
	}
	reserve := func(n int64) error {
		if s.bodyMemory.Add(n) > s.cfg.MaxBodyMemory {
			s.bodyMemory.Add(-n)
			return fmt.Errorf("%w: too many request bodies are being read at once; retry", errBusy)
		}
		held += n
		return nil
	}
	size := int64(32 << 10)
	if r.ContentLength > 0 {
		size = r.ContentLength + 1 // +1: the read that sees EOF needs no growth
	}
	if err := reserve(size); err != nil {
		return nil, release, err
	}
	start := time.Now()
	deadline := start.Add(s.cfg.BodyTimeout)
	_ = rc.SetReadDeadline(deadline)
	defer func() {
		if err == nil {
			_ = rc.SetReadDeadline(time.Time{})
		} else {
			// The server would read what is left of the body after the
			// handler (to reuse the connection): make that fail at once,
			// so the connection closes instead of waiting for the client.
			_ = rc.SetReadDeadline(time.Now())
		}
	}()
	body := http.MaxBytesReader(w, r.Body, limit)
	buf := make([]byte, 0, size)
	for {
		if len(buf) == cap(buf) {
			grow := min(int64(cap(buf)), limit+1-int64(cap(buf)))
			if grow <= 0 {
				grow = 1
			}
			if err := reserve(grow); err != nil {
				return nil, release, err
			}
			buf = append(buf[:cap(buf)], make([]byte, grow)...)[:len(buf)]
		}
		n, err := body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, release, nil
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return nil, release, fmt.Errorf("%w: %d bytes of the body arrived in %s; send it faster", errBodyTimeout, len(buf), time.Since(start).Round(time.Millisecond))
			}
			return nil, release, fmt.Errorf("%w: %w", ErrBadBody, err)
		}
		if d := start.Add(s.cfg.BodyTimeout + time.Duration(len(buf))*time.Second/bodyMinRate); d.After(deadline) {
			deadline = d
			_ = rc.SetReadDeadline(deadline)
		}
	}
}

// heldBody is a body the middleware has read: handlers read it as usual,
// and decodeJSON takes its bytes without another copy.
type heldBody struct {
	*bytes.Reader
	b []byte
}

func (*heldBody) Close() error { return nil }

// statusWriter records the status code, and ends all writing when the
// handler is done (close): writes after that are dropped, whoever makes
// them. It unwraps for http.ResponseController (flush, deadlines,
// hijack).
type statusWriter struct {
	http.ResponseWriter
	mu     sync.Mutex
	status int
	wrote  bool
	closed bool
	// onClose runs at close, before writing stops (a stream's last
	// events); see whenDone.
	onClose []func()
}

// whenDone runs fn when the handler has returned, before the response is
// closed to writes; fn must bound its own time.
func (w *statusWriter) whenDone(fn func()) {
	w.mu.Lock()
	w.onClose = append(w.onClose, fn)
	w.mu.Unlock()
}

func (w *statusWriter) close() {
	w.mu.Lock()
	fns := w.onClose
	w.onClose = nil
	w.mu.Unlock()
	for _, fn := range fns {
		fn()
	}
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
}

func (w *statusWriter) WriteHeader(code int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return
	}
	if !w.wrote {
		w.status, w.wrote = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return 0, errResponseDone
	}
	if !w.wrote {
		w.status, w.wrote = http.StatusOK, true
	}
	return w.ResponseWriter.Write(b)
}

// errResponseDone is what a write after the handler returned gets.
var errResponseDone = errors.New("response already finished")

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *statusWriter) Flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return
	}
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// FlushError lets http.ResponseController flush through the closed
// check (it prefers FlushError to Unwrap).
func (w *statusWriter) FlushError() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return errResponseDone
	}
	return http.NewResponseController(w.ResponseWriter).Flush()
}

func (w *statusWriter) wroteHeader() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.wrote
}

func (w *statusWriter) code() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.wrote {
		return http.StatusOK
	}
	return w.status
}
