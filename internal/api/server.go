package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/api/e2b"
	"github.com/firesandbox/firesandbox/internal/api/judge0"
	"github.com/firesandbox/firesandbox/internal/guestkernel"
	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/network"
	"github.com/firesandbox/firesandbox/internal/pool"
	"github.com/firesandbox/firesandbox/internal/sandbox"
	"github.com/firesandbox/firesandbox/internal/state"
	"github.com/firesandbox/firesandbox/internal/vmm"
)

// ErrBadBody means the request body is not what the endpoint takes.
var ErrBadBody = errors.New("invalid request body")

// ErrUnauthorized means the API key is missing or wrong.
var ErrUnauthorized = errors.New("unauthorized")

// Config configures a Server: the HTTP side. What is shared with other
// front ends (VM limits, pools, sandboxes) is the Service's configuration.
// Zero fields take the defaults noted.
type Config struct {
	// Listen is the address served; default 127.0.0.1:7070. Anything but
	// a loopback address requires APIKey.
	Listen string `json:"listen" toml:"listen"`
	// APIKey, if set, is required on every endpoint but /healthz.
	APIKey string `json:"-" toml:"-"`
	// MaxTimeout caps every wall-clock limit a request asks for; default 60s.
	MaxTimeout time.Duration `json:"max_timeout" toml:"max_timeout"`
	// MaxBody caps a request body; default 32 MiB.
	MaxBody int64 `json:"max_body" toml:"max_body"`
	// MaxOutput caps each of stdout and stderr a request may ask for;
	// default 16 MiB.
	MaxOutput int64 `json:"max_output" toml:"max_output"`
	// ShutdownGrace is how long Shutdown lets runs finish before
	// cancelling them; default 30s.
	ShutdownGrace time.Duration `json:"shutdown_grace" toml:"shutdown_grace"`
}

// DefaultListen is where serve listens unless told otherwise.
const DefaultListen = "127.0.0.1:7070"

func (c *Config) setDefaults() {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.MaxTimeout == 0 {
		c.MaxTimeout = 60 * time.Second
	}
	if c.MaxBody == 0 {
		c.MaxBody = 32 << 20
	}
	if c.MaxOutput == 0 {
		c.MaxOutput = 16 << 20
	}
	if c.ShutdownGrace == 0 {
		c.ShutdownGrace = 30 * time.Second
	}
}

// Validate checks a Config, including that a non-loopback address has an
// API key.
func (c *Config) Validate() error {
	listen := c.Listen
	if listen == "" {
		listen = DefaultListen
	}
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("%w: listen address %q: %v", sandbox.ErrBadRequest, listen, err)
	}
	if !IsLoopback(host) && c.APIKey == "" {
		return fmt.Errorf("%w: listening on %s exposes the API beyond this host: set an API key (--api-key or $FIRESANDBOX_API_KEY), or listen on 127.0.0.1", sandbox.ErrBadRequest, listen)
	}
	switch {
	case c.MaxTimeout < 0 || c.MaxBody < 0 || c.MaxOutput < 0 || c.ShutdownGrace < 0:
		return fmt.Errorf("%w: limits must not be negative", sandbox.ErrBadRequest)
	case c.MaxTimeout > time.Hour:
		return fmt.Errorf("%w: max timeout %s: at most 1h", sandbox.ErrBadRequest, c.MaxTimeout)
	case c.MaxBody > 1<<30:
		return fmt.Errorf("%w: max body %d: at most 1 GiB", sandbox.ErrBadRequest, c.MaxBody)
	}
	return nil
}

// IsLoopback says whether host (a name or address, no port) stays on
// this machine.
func IsLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Server is the HTTP API and everything it owns.
type Server struct {
	cfg  Config
	svc  *sandbox.Service
	mgr  *sandbox.Manager
	sbx  *sandbox.Sandboxes
	lim  *sandbox.Limiter
	j0   *judge0.Handler
	e2b  *e2b.Handler
	met  *metrics
	log  *slog.Logger
	keyH [sha256.Size]byte

	http     *http.Server
	handler  http.Handler
	base     context.Context
	cancel   context.CancelFunc
	inflight sync.WaitGroup

	closeOnce sync.Once
}

// Option configures a Server.
type Option func(*Server)

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(s *Server) { s.log = l } }

// Open returns a Server over svc, ready to Serve. Shutdown stops the
// HTTP side; svc stays the caller's to close afterwards.
func Open(cfg Config, svc *sandbox.Service, opts ...Option) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	s := &Server{cfg: cfg, svc: svc, mgr: svc.Manager, sbx: svc.Sandboxes, lim: svc.Limiter,
		log: slog.New(slog.DiscardHandler), met: newMetrics()}
	for _, o := range opts {
		o(s)
	}
	s.keyH = sha256.Sum256([]byte(cfg.APIKey))
	var err error
	if s.j0, err = openJudge0(s); err != nil {
		return nil, err
	}
	if s.e2b, err = openE2B(s); err != nil {
		return nil, err
	}
	s.base, s.cancel = context.WithCancel(context.Background())
	s.handler = s.routes()
	s.http = &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		BaseContext:       func(net.Listener) context.Context { return s.base },
		// A unix socket's peers were let in by its file permissions
		// (owner only): they need no API key.
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if c.LocalAddr().Network() == "unix" {
				return context.WithValue(ctx, localConnKey{}, true)
			}
			return ctx
		},
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	// h2c too: E2B's envd clients may speak HTTP/2 without TLS.
	s.http.Protocols = new(http.Protocols)
	s.http.Protocols.SetHTTP1(true)
	s.http.Protocols.SetUnencryptedHTTP2(true)
	return s, nil
}

// Config returns the effective configuration.
func (s *Server) Config() Config { return s.cfg }

// Handler returns the API's handler.
func (s *Server) Handler() http.Handler { return s.handler }

// Serve serves HTTP on ln until Shutdown; it returns nil after Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	if err := s.http.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

// Shutdown stops accepting requests, lets running ones finish for the
// grace period and then cancels them (their VMs are destroyed). The
// Service (sandboxes, pools, database) is closed by its owner afterwards.
func (s *Server) Shutdown(ctx context.Context) error {
	var shutdownErr error
	s.closeOnce.Do(func() {
		gctx, cancel := context.WithTimeout(ctx, s.cfg.ShutdownGrace)
		err := s.http.Shutdown(gctx)
		cancel()
		if err != nil {
			s.log.Warn("runs still going after the grace period: cancelling them", "grace", s.cfg.ShutdownGrace)
		}
		s.cancel() // cancels every request's context: runs stop, VMs go
		s.http.Close()
		s.inflight.Wait()
		// Judge0's workers stop taking submissions; a running one is
		// requeued by the next start.
		if err := s.j0.Close(ctx); err != nil {
			shutdownErr = err
		}
	})
	return shutdownErr
}

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	handle := func(pattern string, h http.HandlerFunc) { mux.Handle(pattern, h) }
	handle("GET /healthz", s.handleHealth)
	handle("GET /metrics", s.handleMetrics)

	handle("GET /v1/languages", s.handleLanguages)
	handle("POST /v1/run", s.handleRun)
	handle("POST /v1/run/stream", s.handleRunStream)
	handle("POST /v1/sandboxes", s.handleCreate)
	handle("GET /v1/sandboxes", s.handleList)
	handle("GET /v1/sandboxes/{id}", s.handleGet)
	handle("DELETE /v1/sandboxes/{id}", s.handleDelete)
	handle("POST /v1/sandboxes/{id}/exec", s.handleExec)
	handle("POST /v1/sandboxes/{id}/exec/stream", s.handleExecStream)
	handle("POST /v1/sandboxes/{id}/files", s.handleUpload)
	handle("GET /v1/sandboxes/{id}/files", s.handleDownload)
	handle("POST /v1/sandboxes/{id}/hibernate", s.handleHibernate)
	handle("POST /v1/sandboxes/{id}/resume", s.handleResume)
	handle("GET /v1/sandboxes/{id}/network", s.handleGetNetwork)
	handle("PUT /v1/sandboxes/{id}/network", s.handleSetNetwork)
	handle("POST /v1/sandboxes/{id}/network", s.handleSetNetwork)
	handle("/v1/sandboxes/{id}/ports/{port}", s.handlePort)
	handle("/v1/sandboxes/{id}/ports/{port}/", s.handlePort)

	for _, prefix := range []string{"/api/v2", "/api/v2/piston"} { // the latter is emkc.org's public path
		handle("GET "+prefix+"/runtimes", s.handleRuntimes)
		handle("POST "+prefix+"/execute", s.handleExecute)
		handle("GET "+prefix+"/connect", s.handleConnect) // WebSocket
	}
	for _, p := range judge0.Paths { // Judge0 clients use these at the root, or under /judge0
		mux.Handle(p, s.j0)
	}
	mux.Handle("/judge0/", http.StripPrefix("/judge0", s.j0))
	s.e2b.Routes(mux) // E2B's control plane; its data plane goes by header (e2bFront)
	handle("/", func(w http.ResponseWriter, r *http.Request) {
		s.writeError(w, r, fmt.Errorf("%w: no endpoint %s %s", errNoRoute, r.Method, r.URL.Path))
	})
	return s.e2bFront(s.middleware(mux))
}

var errNoRoute = errors.New("not found")

// middleware wraps every request: recovery from panics, metrics, the API
// key, the body-size limit and deadlines.
func (s *Server) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.inflight.Add(1)
		defer s.inflight.Done()
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				s.log.Error("handler panicked", "method", r.Method, "path", r.URL.Path, "panic", p,
					"stack", string(stack()))
				if !sw.wrote {
					s.writeError(sw, r, fmt.Errorf("internal error: %v", p))
				}
			}
			route := r.Pattern
			if route == "" || route == "/" {
				route = "other"
			}
			s.met.observeHTTP(route, sw.code(), time.Since(start))
		}()
		if r.URL.Path != "/healthz" && !s.authorized(r) {
			sw.Header().Set("WWW-Authenticate", `Bearer realm="firesandbox"`)
			s.writeError(sw, r, fmt.Errorf("%w: this server needs an API key: send \"Authorization: Bearer KEY\" or \"X-API-Key: KEY\"", ErrUnauthorized))
			return
		}
		rc := http.NewResponseController(sw)
		// Whole requests can take a queue wait, a VM and a run; streams
		// extend nothing, so the budget covers the longest legal request.
		_ = rc.SetWriteDeadline(time.Now().Add(s.svc.Config().QueueWait + 2*s.cfg.MaxTimeout + 2*time.Minute))
		if r.Body != nil && r.Method != http.MethodGet && r.Method != http.MethodHead && r.Method != http.MethodDelete {
			// Read the whole (bounded) body under its own deadline, so a
			// slow sender cannot hold a request open and a fast handler
			// never meets a read deadline later.
			_ = rc.SetReadDeadline(time.Now().Add(time.Minute))
			body, err := io.ReadAll(http.MaxBytesReader(sw, r.Body, s.cfg.MaxBody))
			_ = rc.SetReadDeadline(time.Time{})
			if err != nil {
				s.writeError(sw, r, fmt.Errorf("%w: %w", ErrBadBody, err))
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
		}
		next.ServeHTTP(sw, r)
	})
}

func stack() []byte {
	b := make([]byte, 8<<10)
	return b[:runtime.Stack(b, false)]
}

func (s *Server) authorized(r *http.Request) bool {
	if s.cfg.APIKey == "" || r.Context().Value(localConnKey{}) != nil {
		return true
	}
	key := r.Header.Get("X-API-Key")
	if key == "" {
		key = r.Header.Get("X-Auth-Token") // Judge0's header
	}
	if a := r.Header.Get("Authorization"); key == "" && len(a) > 7 && strings.EqualFold(a[:7], "bearer ") {
		key = strings.TrimSpace(a[7:])
	}
	h := sha256.Sum256([]byte(key)) // equal lengths: the compare leaks nothing
	return key != "" && subtle.ConstantTimeCompare(h[:], s.keyH[:]) == 1
}

// statusWriter records the status code; it unwraps for
// http.ResponseController (flush, deadlines).
type statusWriter struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wrote {
		w.status, w.wrote = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if !w.wrote {
		w.status, w.wrote = http.StatusOK, true
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *statusWriter) code() int {
	if !w.wrote {
		return http.StatusOK
	}
	return w.status
}

// decodeJSON decodes one JSON value from the (already bounded) body,
// whatever the Content-Type says: clients like piston-client send JSON
// as text/plain. strict rejects unknown fields.
func decodeJSON(r *http.Request, v any, strict bool) error {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadBody, err)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return fmt.Errorf("%w: the body is empty; send a JSON object", ErrBadBody)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if strict {
		dec.DisallowUnknownFields()
	}
	if err := dec.Decode(v); err != nil {
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &se):
			return fmt.Errorf("%w: malformed JSON at byte %d: %v", ErrBadBody, se.Offset, err)
		case errors.Is(err, io.ErrUnexpectedEOF):
			return fmt.Errorf("%w: malformed JSON: it ends too early", ErrBadBody)
		case errors.As(err, &te):
			return fmt.Errorf("%w: field %q: want %s, got JSON %s", ErrBadBody, te.Field, te.Type, te.Value)
		}
		return fmt.Errorf("%w: %v", ErrBadBody, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("%w: data after the JSON value", ErrBadBody)
	}
	return nil
}

// statusOf maps an error to an HTTP status and a short code. It is the
// one place errors become status codes.
func statusOf(err error) (int, string) {
	var maxBytes *http.MaxBytesError
	var agentErr *agentproto.AgentError
	switch {
	case errors.As(err, &maxBytes):
		return http.StatusRequestEntityTooLarge, "body_too_large"
	case errors.Is(err, ErrUnauthorized):
		return http.StatusUnauthorized, "unauthorized"
	case errors.Is(err, errNoRoute):
		return http.StatusNotFound, "no_route"
	case errors.Is(err, ErrBadBody), errors.Is(err, sandbox.ErrBadRequest), errors.Is(err, agentproto.ErrMalformed):
		return http.StatusBadRequest, "bad_request"
	case errors.Is(err, network.ErrInvalidPolicy):
		return http.StatusBadRequest, "bad_network_policy"
	case errors.Is(err, sandbox.ErrNoNetwork), errors.Is(err, network.ErrUnavailable):
		return http.StatusNotImplemented, "network_unavailable"
	case errors.Is(err, image.ErrUnknownLanguage):
		return http.StatusBadRequest, "unknown_language"
	case errors.Is(err, sandbox.ErrNoSandbox):
		return http.StatusNotFound, "sandbox_not_found"
	case errors.Is(err, sandbox.ErrSandboxDeleted):
		return http.StatusGone, "sandbox_deleted"
	case errors.Is(err, sandbox.ErrSandboxLost):
		return http.StatusConflict, "sandbox_lost"
	case errors.Is(err, sandbox.ErrSandboxBusy), errors.Is(err, state.ErrConflict):
		return http.StatusConflict, "sandbox_busy"
	case errors.Is(err, sandbox.ErrQueueFull):
		return http.StatusTooManyRequests, "queue_full"
	case errors.Is(err, sandbox.ErrQueueTimeout):
		return http.StatusServiceUnavailable, "queue_timeout"
	case errors.Is(err, sandbox.ErrClosed), errors.Is(err, pool.ErrClosed):
		return http.StatusServiceUnavailable, "shutting_down"
	case errors.Is(err, sandbox.ErrNotReady), errors.Is(err, vmm.ErrUnavailable):
		return http.StatusServiceUnavailable, "vm_unavailable"
	case errors.Is(err, image.ErrNotBuilt):
		return http.StatusBadRequest, "not_installed"
	case errors.Is(err, guestkernel.ErrNotPrepared):
		return http.StatusServiceUnavailable, "not_installed"
	case errors.As(err, &agentErr):
		switch agentErr.Code {
		case agentproto.CodeNotFound:
			return http.StatusNotFound, "file_not_found"
		case agentproto.CodeTooLarge:
			return http.StatusRequestEntityTooLarge, "file_too_large"
		}
		return http.StatusBadRequest, "agent_refused"
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout, "timeout"
	case errors.Is(err, context.Canceled):
		return 499, "client_closed" // nginx's code: nobody is left to read it
	}
	return http.StatusInternalServerError, "internal"
}

// writeError writes err in the flavour of the API the request is for:
// {"message": ...} for Piston, {"error": ..., "code": ...} natively.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	status, code := statusOf(err)
	switch status {
	case http.StatusTooManyRequests:
		w.Header().Set("Retry-After", "1")
	case http.StatusServiceUnavailable:
		w.Header().Set("Retry-After", "5")
	}
	if status >= 500 && status != http.StatusServiceUnavailable {
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	if isPiston(r) {
		writeJSON(w, status, map[string]string{"message": err.Error()})
		return
	}
	writeJSON(w, status, map[string]string{"error": err.Error(), "code": code})
}

func isPiston(r *http.Request) bool { return strings.HasPrefix(r.URL.Path, "/api/v2/") }

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil { // a bug: every response type marshals
		status = http.StatusInternalServerError
		b, _ = json.Marshal(map[string]string{"error": "encode response: " + err.Error(), "code": "internal"})
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)+1))
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// localConnKey marks requests that came over the owner-only unix socket.
type localConnKey struct{}

// tenantKey carries the authenticated tenant in a request's context.
type tenantKey struct{}

// tenantOf is the tenant a request acts for: "" (the only tenant) unless
// the authentication middleware said otherwise.
func tenantOf(r *http.Request) string {
	t, _ := r.Context().Value(tenantKey{}).(string)
	return t
}
