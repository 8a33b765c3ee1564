package judge0

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/sandbox"
	"github.com/firesandbox/firesandbox/internal/state"
)

// Runner runs a program once in a fresh VM: sandbox.Manager's Run.
type Runner interface {
	Run(ctx context.Context, req sandbox.RunRequest, out sandbox.Streams) (*sandbox.RunResult, error)
}

// Catalog lists the languages: image.Catalog.
type Catalog interface {
	Entries() []*image.Entry
}

// Gate bounds how many VMs run at once, across every API of the server:
// api.Limiter. Acquire waits for a slot; release gives it back.
type Gate interface {
	Acquire(ctx context.Context) (release func(), err error)
}

// Store is the persisted submission queue: state.SubmissionStore.
type Store interface {
	Enqueue(ctx context.Context, maxQueued int, subs ...state.Submission) error
	Get(ctx context.Context, tenant, token string) (state.Submission, error)
	GetMany(ctx context.Context, tenant string, tokens []string) (map[string]state.Submission, error)
	List(ctx context.Context, tenant string, offset, limit int) ([]state.Submission, int, error)
	Claim(ctx context.Context, status int) (state.Submission, bool, error)
	Finish(ctx context.Context, token string, status int, result []byte) error
	Delete(ctx context.Context, tenant, token string) (state.Submission, error)
	Requeue(ctx context.Context, status int) (int, error)
	Counts(ctx context.Context) (queued, running int, err error)
	Prune(ctx context.Context, before time.Time) (int, error)
}

// Deps are the Handler's collaborators. Runner, Catalog and Store are
// required; the rest have the defaults noted.
type Deps struct {
	Runner  Runner
	Catalog Catalog
	Store   Store
	// Installed says whether a language's image is built here; only those
	// are offered. Default: every available catalog language.
	Installed func(*image.Entry) bool
	// Gate is the server's VM limiter; default no bound but Workers.
	Gate Gate
	// Authenticate maps a request (its X-Auth-Token and X-Auth-User) to
	// the tenant it acts for, or refuses it with ErrUnauthenticated (401)
	// or ErrForbidden (403). A tenant sees only its own submissions.
	// Default: every request is tenant "default", as Judge0 without
	// AUTHN_TOKEN.
	Authenticate func(r *http.Request) (tenant string, err error)
	// CallbackAllowed says whether callback_url may name host (a name or
	// address, no port). Default: no host.
	CallbackAllowed func(host string) bool
	// Network applies a tenant's network policy to a submission that asks
	// for enable_network, or refuses it with an error (422 "enabling
	// network is not allowed"). Default: refused.
	Network func(tenant string, req *sandbox.RunRequest) error
	// HTTPClient sends callbacks; default one that follows no redirects.
	HTTPClient *http.Client
	// SystemInfo answers /system_info, as ordered name-value pairs;
	// default lscpu's and free's fields, from /proc.
	SystemInfo func() [][2]string
	Logger     *slog.Logger
	Now        func() time.Time
}

// Handler serves Judge0 CE's API and runs its queue. Its paths are
// Judge0's (/submissions, /languages, ...) from its own root: mount it at
// the server's root (Paths) or under a prefix with http.StripPrefix.
type Handler struct {
	cfg   Config
	deps  Deps
	log   *slog.Logger
	langs *langTable
	mux   *http.ServeMux

	base   context.Context
	cancel context.CancelFunc
	wake   chan struct{}
	wg     sync.WaitGroup // workers and callbacks

	mu      sync.Mutex
	waiters map[string]chan struct{} // closed when the submission finishes
	running int

	closeOnce sync.Once
}

// Paths are the patterns to mount the Handler on at a server's root.
var Paths = []string{"/submissions", "/submissions/", "/languages", "/languages/", "/statuses", "/statuses/",
	"/about", "/version", "/config_info", "/system_info", "/workers"}

// New validates cfg, puts back in the queue what a previous process was
// running, and starts the workers. Close stops them.
func New(cfg Config, deps Deps) (*Handler, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	if deps.Runner == nil || deps.Catalog == nil || deps.Store == nil {
		return nil, fmt.Errorf("%w: Runner, Catalog and Store are required", ErrBadConfig)
	}
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.DiscardHandler)
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	if deps.CallbackAllowed == nil {
		deps.CallbackAllowed = func(string) bool { return false }
	}
	if deps.HTTPClient == nil {
		deps.HTTPClient = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	if deps.SystemInfo == nil {
		deps.SystemInfo = procSystemInfo
	}
	h := &Handler{cfg: cfg, deps: deps, log: deps.Logger.With("component", "judge0"),
		langs: newLangTable(deps.Catalog, deps.Installed), wake: make(chan struct{}, 1), waiters: map[string]chan struct{}{}}
	if n, err := deps.Store.Requeue(context.Background(), StatusInQueue); err != nil {
		return nil, err
	} else if n > 0 {
		h.log.Info("requeued submissions a previous process was running", "op", "requeue", "count", n)
	}
	h.mux = h.routes()
	h.base, h.cancel = context.WithCancel(context.Background())
	for i := range cfg.Workers {
		h.wg.Add(1)
		go h.worker(i == 0)
	}
	h.wakeWorkers()
	return h, nil
}

// Close stops taking new work, cancels the runs in progress (they run
// again after a restart) and waits, at most until ctx ends, for the
// workers and callbacks to stop.
func (h *Handler) Close(ctx context.Context) error {
	h.closeOnce.Do(h.cancel)
	done := make(chan struct{})
	go func() { h.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("close judge0: %w", ctx.Err())
	}
}

func (h *Handler) routes() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /submissions", h.handleCreate)
	mux.HandleFunc("GET /submissions", h.handleIndex)
	mux.HandleFunc("POST /submissions/batch", h.handleBatchCreate)
	mux.HandleFunc("GET /submissions/batch", h.handleBatchShow)
	mux.HandleFunc("GET /submissions/{token}", h.handleShow)
	mux.HandleFunc("DELETE /submissions/{token}", h.handleDelete)
	mux.HandleFunc("GET /languages", h.handleLanguages)
	mux.HandleFunc("GET /languages/all", h.handleAllLanguages)
	mux.HandleFunc("GET /languages/{id}", h.handleLanguage)
	mux.HandleFunc("GET /statuses", h.handleStatuses)
	mux.HandleFunc("GET /about", h.handleAbout)
	mux.HandleFunc("GET /version", h.handleVersion)
	mux.HandleFunc("GET /config_info", h.handleConfigInfo)
	mux.HandleFunc("GET /system_info", h.handleSystemInfo)
	mux.HandleFunc("GET /workers", h.handleWorkers)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { writeNotFound(w) })
	return mux
}

type ctxKey struct{}

// tenantOf is the tenant a request acts for.
func tenantOf(r *http.Request) string { s, _ := r.Context().Value(ctxKey{}).(string); return s }

// ServeHTTP authenticates the request and serves it.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if p := r.URL.Path; len(p) > 1 && strings.HasSuffix(p, "/") { // Rails ignores a trailing slash
		r2 := *r
		u := *r.URL
		u.Path, u.RawPath = strings.TrimRight(p, "/"), ""
		r2.URL = &u
		r = &r2
	}
	tenant := "default"
	if h.deps.Authenticate != nil {
		t, err := h.deps.Authenticate(r)
		switch {
		case errors.Is(err, ErrForbidden):
			w.WriteHeader(http.StatusForbidden)
			return
		case err != nil || t == "":
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		tenant = t
	}
	if r.Body != nil {
		r.Body = http.MaxBytesReader(w, r.Body, h.cfg.MaxBody)
	}
	h.mux.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), ctxKey{}, tenant)))
}

// ---- JSON ----

// member is one key of an object.
type member struct {
	k string
	v any
}

// object is a JSON object whose keys keep their order, as Rails renders
// them.
type object []member

// MarshalJSON writes the members in order.
func (o object) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, m := range o {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(m.k)
		b.Write(k)
		b.WriteByte(':')
		v, err := json.Marshal(m.v)
		if err != nil {
			return nil, err
		}
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil { // a bug: every answer marshals
		status = http.StatusInternalServerError
		b = []byte(`{"error":"encode response"}`)
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// writeError answers {"error": msg}, Judge0's shape for refusals that
// are not validation errors.
func writeError(w http.ResponseWriter, status int, msg string) {
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "5")
	}
	writeJSON(w, status, object{{"error", msg}})
}

// writeNotFound answers as Rails does for a record or route it lacks.
func writeNotFound(w http.ResponseWriter) {
	writeJSON(w, http.StatusNotFound, object{{"status", 404}, {"error", "Not Found"}})
}

// writeFailure answers an internal failure (the state database): 500,
// logged once here.
func (h *Handler) writeFailure(w http.ResponseWriter, r *http.Request, err error) {
	h.log.Error("request failed", "op", "http", "method", r.Method, "path", r.URL.Path, "err", err)
	writeJSON(w, http.StatusInternalServerError, object{{"status", 500}, {"error", "Internal Server Error"}})
}
