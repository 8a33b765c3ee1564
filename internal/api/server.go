package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/api/e2b"
	"github.com/firesandbox/firesandbox/internal/api/judge0"
	"github.com/firesandbox/firesandbox/internal/cluster"
	"github.com/firesandbox/firesandbox/internal/guestkernel"
	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/network"
	"github.com/firesandbox/firesandbox/internal/pool"
	"github.com/firesandbox/firesandbox/internal/sandbox"
	"github.com/firesandbox/firesandbox/internal/state"
	"github.com/firesandbox/firesandbox/internal/tenant"
	"github.com/firesandbox/firesandbox/internal/vmm"
)

// Config configures a Server: the HTTP side. What is shared with other
// front ends (VM limits, pools, sandboxes) is the Service's configuration.
// Zero fields take the defaults noted.
type Config struct {
	// Listen is the address served; default 127.0.0.1:7070. Anything but
	// a loopback address requires APIKey or RequireKey.
	Listen string `json:"listen" toml:"listen"`
	// APIKey, if set, is a key of the default tenant, and every request
	// over TCP (but /healthz) then needs a key.
	APIKey string `json:"-" toml:"-"`
	// RequireKey makes every request over TCP (but /healthz) present a
	// key: APIKey or a tenant's (`firesandbox key create`). Without it,
	// and without APIKey, requests with no key act for the default tenant
	// (on loopback only, guarded against browsers).
	RequireKey bool `json:"require_key" toml:"require_key"`
	// MaxTimeout caps every wall-clock limit a request asks for; default 60s.
	MaxTimeout time.Duration `json:"max_timeout" toml:"max_timeout"`
	// MaxBody caps a request body; default 32 MiB.
	MaxBody int64 `json:"max_body" toml:"max_body"`
	// MaxBodyMemory caps the bodies being held at once, all requests
	// together; past it a request is answered 503. Default 512 MiB.
	MaxBodyMemory int64 `json:"max_body_memory" toml:"max_body_memory"`
	// BodyTimeout is how long a body may take to arrive, plus a second
	// per 64 KiB it really sends (so a large upload at a fair rate is
	// never cut, and a body that stalls is); default 30s.
	BodyTimeout time.Duration `json:"body_timeout" toml:"body_timeout"`
	// ReadTimeout bounds reading a request's headers and the time until
	// its handler starts; default 30s.
	ReadTimeout time.Duration `json:"read_timeout" toml:"read_timeout"`
	// MaxConns caps open TCP connections; more are answered 503 and
	// closed. Default 1024.
	MaxConns int `json:"max_conns" toml:"max_conns"`
	// MaxOutput caps each of stdout and stderr a request may ask for;
	// default 16 MiB.
	MaxOutput int64 `json:"max_output" toml:"max_output"`
	// ShutdownGrace is how long Shutdown lets runs finish before
	// cancelling them; default 30s.
	ShutdownGrace time.Duration `json:"shutdown_grace" toml:"shutdown_grace"`
	// AllowedHosts are Host names, besides loopback ones and Listen's,
	// that requests without a key may use (a reverse proxy's name).
	AllowedHosts []string `json:"allowed_hosts" toml:"allowed_hosts"`
	// AllowedOrigins are browser origins ("http://localhost:3000") whose
	// pages may call the API without a key; default none but the
	// server's own.
	AllowedOrigins []string `json:"allowed_origins" toml:"allowed_origins"`
	// Quota is every tenant's quota unless `key quota` overrides it.
	Quota tenant.Quota `json:"quota" toml:"quota"`
	// Caps bound each sandbox's shape.
	Caps ShapeCaps `json:"caps" toml:"caps"`
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
	if c.MaxBodyMemory == 0 {
		c.MaxBodyMemory = 512 << 20
	}
	if c.BodyTimeout == 0 {
		c.BodyTimeout = 30 * time.Second
	}
	if c.ReadTimeout == 0 {
		c.ReadTimeout = 30 * time.Second
	}
	if c.MaxConns == 0 {
		c.MaxConns = 1024
	}
	if c.MaxOutput == 0 {
		c.MaxOutput = 16 << 20
	}
	if c.ShutdownGrace == 0 {
		c.ShutdownGrace = 30 * time.Second
	}
	c.Caps.setDefaults()
}

// Validate checks a Config, including that a non-loopback address needs
// a key.
func (c *Config) Validate() error {
	listen := c.Listen
	if listen == "" {
		listen = DefaultListen
	}
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("%w: listen address %q: %v", sandbox.ErrBadRequest, listen, err)
	}
	if !IsLoopback(host) && c.APIKey == "" && !c.RequireKey {
		return fmt.Errorf("%w: listening on %s exposes the API beyond this host: require API keys (--api-key or $FIRESANDBOX_API_KEY, or --require-key with keys from `firesandbox key create`), or listen on 127.0.0.1", sandbox.ErrBadRequest, listen)
	}
	switch {
	case c.MaxTimeout < 0 || c.MaxBody < 0 || c.MaxOutput < 0 || c.ShutdownGrace < 0 || c.MaxBodyMemory < 0 ||
		c.BodyTimeout < 0 || c.ReadTimeout < 0 || c.MaxConns < 0:
		return fmt.Errorf("%w: limits must not be negative", sandbox.ErrBadRequest)
	case c.MaxTimeout > time.Hour:
		return fmt.Errorf("%w: max timeout %s: at most 1h", sandbox.ErrBadRequest, c.MaxTimeout)
	case c.MaxBody > 1<<30:
		return fmt.Errorf("%w: max body %d: at most 1 GiB", sandbox.ErrBadRequest, c.MaxBody)
	}
	if err := c.Quota.Validate(); err != nil {
		return fmt.Errorf("%w: %w", sandbox.ErrBadRequest, err)
	}
	if err := c.Caps.Validate(); err != nil {
		return err
	}
	for _, o := range c.AllowedOrigins {
		if _, err := parseOrigin(o); err != nil {
			return fmt.Errorf("%w: allowed origin %q: %v", sandbox.ErrBadRequest, o, err)
		}
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
	cfg    Config
	svc    *sandbox.Service
	mgr    *sandbox.Manager
	sbx    *sandbox.Sandboxes
	lim    *sandbox.Limiter
	j0     *judge0.Handler
	e2b    *e2b.Handler
	met    *metrics
	log    *slog.Logger
	keys   tenant.KeyStore
	auth   *tenant.Authenticator
	quotas *tenant.Quotas
	// selfAuth matches requests whose handler authenticates them itself
	// (E2B's data plane, by each sandbox's access token).
	selfAuth func(*http.Request) bool
	// outer, if set, wraps the handler (WithOuter).
	outer func(http.Handler) http.Handler
	// e2bSecret, if set, keys E2B's access tokens (WithE2BSecret).
	e2bSecret []byte

	http       *http.Server
	handler    http.Handler
	base       context.Context
	cancel     context.CancelFunc
	inflight   sync.WaitGroup
	bodyMemory atomic.Int64 // bytes of request bodies held now
	conns      connStats

	closeOnce sync.Once
}

// Option configures a Server.
type Option func(*Server)

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(s *Server) { s.log = l } }

// WithSelfAuthenticated exempts requests that match from the API key:
// their handler checks credentials of its own (E2B's data plane and its
// per-sandbox access tokens). They still pass the browser guard, the body
// limits and the connection cap, and act for no tenant.
func WithSelfAuthenticated(match func(*http.Request) bool) Option {
	return func(s *Server) { s.selfAuth = match }
}

// WithE2BSecret keys E2B's sandbox access tokens with secret instead of
// the one beside the state database: a cluster's hosts share one, so a
// token one host issued is good on the host a sandbox moves to.
func WithE2BSecret(secret []byte) Option { return func(s *Server) { s.e2bSecret = secret } }

// WithKeyStore keeps API keys and quota overrides in ks instead of the
// state database: a cluster's shared directory (cluster.Keys).
func WithKeyStore(ks tenant.KeyStore) Option { return func(s *Server) { s.keys = ks } }

// WithOuter wraps the whole API in h, outside every middleware: a
// cluster's router (cluster.Node.Handler) forwards requests for sandboxes
// other hosts own before this host authenticates or reads them.
func WithOuter(h func(http.Handler) http.Handler) Option { return func(s *Server) { s.outer = h } }

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
	var err error
	if s.keys == nil {
		if s.keys, err = tenant.OpenStore(svc.DB.SQL()); err != nil {
			return nil, err
		}
	}
	s.auth = tenant.NewAuthenticator(s.keys, cfg.APIKey)
	s.quotas = tenant.NewQuotas(cfg.Quota, s.keys, s.usageOf)
	// Sandboxes (whichever API makes them) take VMs through the tenant's
	// gate and are admitted by the server's caps and the tenant's quotas.
	// A live sandbox counts against its tenant's VMs, not the work slots:
	// those go to runs and execs (and the memory budget admits sandboxes).
	s.sbx.SetAdmission(s.quotas.Gate(sandbox.Unbounded), s.admitSandbox)
	if s.j0, err = openJudge0(s); err != nil {
		return nil, err
	}
	if s.e2b, err = openE2B(s); err != nil {
		return nil, err
	}
	s.base, s.cancel = context.WithCancel(context.Background())
	s.handler = s.routes()
	if s.outer != nil {
		s.handler = s.outer(s.handler)
	}
	s.http = &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		// ReadTimeout bounds the headers and the wait for the handler;
		// the middleware then lifts it and reads the body under its own
		// progress-based deadline.
		ReadTimeout:    cfg.ReadTimeout,
		IdleTimeout:    2 * time.Minute,
		MaxHeaderBytes: 64 << 10,
		BaseContext:    func(net.Listener) context.Context { return s.base },
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
// TCP connections beyond MaxConns are answered 503 and closed at once, so
// a flood of idle connections cannot stop the server answering others.
func (s *Server) Serve(ln net.Listener) error {
	if ln.Addr().Network() == "tcp" {
		ln = newLimitListener(ln, s.cfg.MaxConns, &s.conns)
	}
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
	handle("POST /v1/sandboxes/{id}/pause", s.handlePause)
	handle("POST /v1/sandboxes/{id}/hibernate", s.handlePause)
	handle("POST /v1/sandboxes/{id}/resume", s.handleResume)
	handle("POST /v1/sandboxes/{id}/timeout", s.handleTimeout)
	handle("POST /v1/sandboxes/{id}/fork", s.handleFork)
	handle("GET /v1/sandboxes/{id}/processes", s.handleProcesses)
	handle("GET /v1/sandboxes/{id}/processes/{pid}/stream", s.handleProcessStream)
	handle("GET /v1/sandboxes/{id}/processes/{pid}/ws", s.handleProcessWS)
	handle("POST /v1/sandboxes/{id}/processes/{pid}/stdin", s.handleStdin)
	handle("POST /v1/sandboxes/{id}/processes/{pid}/signal", s.handleSignal)
	handle("POST /v1/sandboxes/{id}/processes/{pid}/resize", s.handleResize)
	handle("GET /v1/sandboxes/{id}/pty", s.handlePTY)
	handle("GET /v1/sandboxes/{id}/files/stat", s.handleStat)
	handle("GET /v1/sandboxes/{id}/files/list", s.handleListDir)
	handle("GET /v1/sandboxes/{id}/files/watch", s.handleWatch)
	handle("POST /v1/sandboxes/{id}/files/mkdir", s.handleMkdir)
	handle("POST /v1/sandboxes/{id}/files/move", s.handleMove)
	handle("DELETE /v1/sandboxes/{id}/files", s.handleRemove)
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

// decodeJSON decodes one JSON value from the (already bounded) body,
// whatever the Content-Type says: clients like piston-client send JSON
// as text/plain. strict rejects unknown fields.
func decodeJSON(r *http.Request, v any, strict bool) error {
	var body []byte
	if hb, ok := r.Body.(*heldBody); ok {
		body = hb.b // read by the middleware: no second copy
	} else {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrBadBody, err)
		}
		body = b
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
	case errors.As(err, &maxBytes), errors.Is(err, errTooLarge), errors.Is(err, agentproto.ErrTooLarge):
		return http.StatusRequestEntityTooLarge, "body_too_large"
	case errors.Is(err, ErrUnauthorized):
		return http.StatusUnauthorized, "unauthorized"
	case errors.Is(err, errForbidden):
		return http.StatusForbidden, "forbidden"
	case errors.Is(err, errMediaType):
		return http.StatusUnsupportedMediaType, "unsupported_media_type"
	case errors.Is(err, errBodyTimeout):
		return http.StatusRequestTimeout, "body_timeout"
	case errors.Is(err, errBusy):
		return http.StatusServiceUnavailable, "server_busy"
	case errors.Is(err, tenant.ErrQuota):
		return http.StatusTooManyRequests, "quota_exceeded"
	case errors.Is(err, errShape):
		return http.StatusBadRequest, "shape_not_allowed"
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
	case errors.Is(err, sandbox.ErrMemoryBudget):
		return http.StatusServiceUnavailable, "memory_budget"
	case errors.Is(err, vmm.ErrIncompatible):
		return http.StatusConflict, "incompatible_snapshot"
	case errors.Is(err, sandbox.ErrQueueTimeout):
		return http.StatusServiceUnavailable, "queue_timeout"
	case errors.Is(err, cluster.ErrFull):
		return http.StatusServiceUnavailable, "cluster_full"
	case errors.Is(err, cluster.ErrUnavailable), errors.Is(err, cluster.ErrFenced):
		return http.StatusServiceUnavailable, "cluster_unavailable"
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
		writeJSON(w, status, map[string]string{"message": pistonMessage(err)})
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

// isLocal says r came over the owner-only unix socket.
func isLocal(r *http.Request) bool { return r.Context().Value(localConnKey{}) != nil }

// tenantOf is the tenant a request acts for, as the middleware
// authenticated it: tenant.Default unless its key says otherwise.
func tenantOf(r *http.Request) string {
	t, _ := tenant.FromContext(r.Context())
	return t
}
