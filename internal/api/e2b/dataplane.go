package e2b

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strconv"

	"github.com/firesandbox/firesandbox/internal/network"
	"github.com/firesandbox/firesandbox/internal/state"
)

// Ports of the data plane, as the SDKs address them.
const (
	// EnvdPort is envd's: processes, files, health.
	EnvdPort = 49983
	// InterpreterPort is the code interpreter's (Jupyter's, in E2B).
	InterpreterPort = 49999
)

// Headers of the data plane.
const (
	headerSandboxID   = "E2b-Sandbox-Id"
	headerSandboxPort = "E2b-Sandbox-Port"
	headerAccessToken = "X-Access-Token"
	headerTraffic     = "E2b-Traffic-Access-Token"
)

// hostRe is E2B's per-port host name: PORT-SANDBOXID.DOMAIN, which the
// SDKs' getHost(port) gives users for their own servers.
var hostRe = regexp.MustCompile(`^([0-9]{1,5})-(sb-[0-9a-f]{16})\.`)

// IsDataPlane says whether r is for a sandbox (envd, the code interpreter
// or a port) rather than for the API. Such requests carry a sandbox's
// token instead of an API key.
func IsDataPlane(r *http.Request) bool {
	return r.Header.Get(headerSandboxID) != "" || hostRe.MatchString(r.Host)
}

// target is the sandbox and port a data-plane request is for.
type target struct {
	sb   state.Sandbox
	port int
}

type targetKey struct{}

func targetOf(ctx context.Context) target {
	t, _ := ctx.Value(targetKey{}).(target)
	return t
}

// DataPlane serves requests for which IsDataPlane is true.
func (h *Handler) DataPlane() http.Handler {
	envd := http.NewServeMux()
	envd.HandleFunc("GET /health", h.health)
	envd.HandleFunc("GET /files", h.download)
	envd.HandleFunc("POST /files", h.upload)
	envd.Handle("/", h.envd)
	interp := http.NewServeMux()
	interp.HandleFunc("GET /health", h.interpHealth)
	interp.HandleFunc("POST /execute", h.execute)
	interp.HandleFunc("POST /contexts", h.createContext)
	interp.HandleFunc("GET /contexts", h.listContexts)
	interp.HandleFunc("POST /contexts/{ctx}/restart", h.restartContext)
	interp.HandleFunc("DELETE /contexts/{ctx}", h.deleteContext)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t, err := h.route(r)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		r = r.WithContext(context.WithValue(r.Context(), targetKey{}, t))
		switch t.port {
		case EnvdPort:
			envd.ServeHTTP(w, r)
		case InterpreterPort:
			interp.ServeHTTP(w, r)
		default:
			h.proxyPort(w, r, t)
		}
	})
}

// route finds the request's sandbox and port and checks its token.
func (h *Handler) route(r *http.Request) (target, error) {
	id, port := r.Header.Get(headerSandboxID), r.Header.Get(headerSandboxPort)
	if id == "" {
		m := hostRe.FindStringSubmatch(r.Host)
		if m == nil {
			return target{}, badRequest("no %s header", headerSandboxID)
		}
		port, id = m[1], m[2]
	}
	p := EnvdPort
	if port != "" {
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 {
			return target{}, badRequest("%s %q: want a port number", headerSandboxPort, port)
		}
		p = n
	}
	sb, err := h.deps.DB.Get(r.Context(), id)
	switch {
	case errors.Is(err, state.ErrNotFound):
		return target{}, sandboxGone(id)
	case err != nil:
		return target{}, err
	case sb.State == state.Deleted || sb.State == state.Deleting:
		return target{}, sandboxGone(id)
	}
	if !h.authorized(r, sb, p) {
		return target{}, fmt.Errorf("%w: sandbox %s: missing or wrong %s", errUnauthorized, id, headerAccessToken)
	}
	return target{sb: sb, port: p}, nil
}

// errGone answers like E2B's proxy for a sandbox that is not there: 502,
// which the SDKs read as "not running" (isRunning false, TimeoutError).
var errGone = errors.New("sandbox not found")

func sandboxGone(id string) error { return fmt.Errorf("%w: %s", errGone, id) }

// authorized checks the sandbox's token: the envd access token, or for
// the code interpreter and other ports also the traffic token. A file
// URL made by uploadUrl/downloadUrl carries a signature instead.
func (h *Handler) authorized(r *http.Request, sb state.Sandbox, port int) bool {
	if h.tok.check(kindEnvd, sb.ID, sb.Tenant, r.Header.Get(headerAccessToken)) {
		return true
	}
	if port != EnvdPort && h.tok.check(kindTraffic, sb.ID, sb.Tenant, r.Header.Get(headerTraffic)) {
		return true
	}
	if port == EnvdPort && r.URL.Path == "/health" {
		return true // envd's health needs no token
	}
	if port == EnvdPort && r.URL.Path == "/files" && r.URL.Query().Get("signature") != "" {
		return h.signatureOK(r, sb)
	}
	// The code interpreter SDK sends no access token on /contexts, only
	// the traffic token, which every sandbox of ours has: checked above.
	return false
}

// health is envd's: 204 while the sandbox runs, 502 when it does not (the
// SDK's isRunning reads 502 as false). It never resumes a paused one.
func (h *Handler) health(w http.ResponseWriter, r *http.Request) {
	t := targetOf(r.Context())
	if t.sb.State != state.Running {
		h.fail(w, r, fmt.Errorf("%w: sandbox %s is %s", errGone, t.sb.ID, e2bState(t.sb.State)))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// proxyPort forwards a request to a port in the sandbox through the
// network's port proxy.
func (h *Handler) proxyPort(w http.ResponseWriter, r *http.Request, t target) {
	if h.deps.Ports == nil {
		h.fail(w, r, fmt.Errorf("%w: ports inside sandboxes are not reachable on this server yet (port %d)", errNoNetwork, t.port))
		return
	}
	d, err := h.deps.Ports(r, t.sb, t.port)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	network.PortProxy(d, t.port, network.PortProxyConfig{}).ServeHTTP(w, r)
}
