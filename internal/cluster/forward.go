package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// HopHeader marks a request that one host forwarded to another. A host
// answers such a request itself, whatever it knows, so a request crosses
// at most one hop and never loops. It grants nothing: the owner checks
// the client's own credentials, which the request carries.
const HopHeader = "Firesandbox-Hop"

// Routes says which requests name a sandbox, which create one, and which
// any host may serve. Zero fields take the defaults noted.
type Routes struct {
	// Prefixes: a path "<prefix><id>" or "<prefix><id>/..." names sandbox
	// id. Default: /v1/sandboxes/ (native API, port proxy included),
	// /sandboxes/ and /v2/sandboxes/ (E2B control plane).
	Prefixes []string
	// Headers name a sandbox id (E2B's data plane). Default E2b-Sandbox-Id.
	Headers []string
	// HostPattern matches per-sandbox host names, its first group being
	// the sandbox id. Default: E2B's PORT-ID.DOMAIN for this server's
	// sandbox ids (DefaultHostPattern).
	HostPattern *regexp.Regexp
	// Creates are the "METHOD /path" requests that create a sandbox: they
	// go to a host with room. Default: POST /v1/sandboxes, POST
	// /sandboxes, POST /v2/sandboxes.
	Creates []string
	// OneShots are the "METHOD /path" requests of work any host may do
	// (runs, Piston, Judge0): refused with 503 while Full says so, so the
	// load balancer retries elsewhere. Default: the native runs, Piston's
	// execute and Judge0's submissions.
	OneShots []string
	// Full says this host has no room for one-shot work now.
	Full func() bool
	// MaxBody bounds a create's body, kept to retry it on another host;
	// default 1 MiB.
	MaxBody int64
}

// Default routes.
var (
	DefaultPrefixes = []string{"/v1/sandboxes/", "/sandboxes/", "/v2/sandboxes/"}
	DefaultHeaders  = []string{"E2b-Sandbox-Id"}
	// DefaultHostPattern is E2B's per-port host name, PORT-ID.DOMAIN.
	DefaultHostPattern = regexp.MustCompile(`^[0-9]{1,5}-(sb-[0-9a-f]{16})\.`)
	DefaultCreates     = []string{"POST /v1/sandboxes", "POST /sandboxes", "POST /v2/sandboxes"}
	DefaultOneShots    = []string{"POST /v1/run", "POST /v1/run/stream", "POST /api/v2/execute", "POST /api/v2/piston/execute",
		"POST /submissions", "POST /submissions/batch", "POST /judge0/submissions", "POST /judge0/submissions/batch"}
)

func (r *Routes) setDefaults() {
	if r.Prefixes == nil {
		r.Prefixes = DefaultPrefixes
	}
	if r.Headers == nil {
		r.Headers = DefaultHeaders
	}
	if r.HostPattern == nil {
		r.HostPattern = DefaultHostPattern
	}
	if r.Creates == nil {
		r.Creates = DefaultCreates
	}
	if r.OneShots == nil {
		r.OneShots = DefaultOneShots
	}
	if r.MaxBody == 0 {
		r.MaxBody = 1 << 20
	}
}

var sandboxIDRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

// SandboxID returns the sandbox a request is for, "" if none.
func (r *Routes) SandboxID(req *http.Request) string {
	for _, h := range r.Headers {
		if v := req.Header.Get(h); v != "" {
			if sandboxIDRe.MatchString(v) {
				return v
			}
			return ""
		}
	}
	if r.HostPattern != nil {
		if m := r.HostPattern.FindStringSubmatch(req.Host); len(m) > 1 && sandboxIDRe.MatchString(m[1]) {
			return m[1]
		}
	}
	for _, p := range r.Prefixes {
		if rest, ok := strings.CutPrefix(req.URL.Path, p); ok {
			id, _, _ := strings.Cut(rest, "/")
			if sandboxIDRe.MatchString(id) {
				return id
			}
			return ""
		}
	}
	return ""
}

func matches(patterns []string, req *http.Request) bool {
	for _, p := range patterns {
		method, path, _ := strings.Cut(p, " ")
		if req.Method == method && req.URL.Path == path {
			return true
		}
	}
	return false
}

// Handler wraps the host's API (next): a request for a sandbox another
// host owns is forwarded to it (HTTP, streams, WebSocket upgrades and
// h2c alike), a create goes to a host with room, one-shot work is
// refused with 503 while this host is full, and /healthz says 503 while
// the host drains, so the load balancer sends it nothing new. Everything
// else, and every forwarded request, is next's.
func (n *Node) Handler(next http.Handler, routes Routes) http.Handler {
	routes.setDefaults()
	return &router{n: n, next: next, routes: routes, proxies: map[string]*httputil.ReverseProxy{},
		h1: newTransport(false), h2c: newTransport(true)}
}

type router struct {
	n       *Node
	next    http.Handler
	routes  Routes
	h1, h2c *http.Transport

	mu      sync.Mutex
	proxies map[string]*httputil.ReverseProxy // by owner address
}

func newTransport(h2c bool) *http.Transport {
	t := &http.Transport{
		Proxy:               nil, // hosts talk directly; never through $HTTP_PROXY
		DialContext:         (&net.Dialer{Timeout: 3 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
	}
	if h2c {
		t.Protocols = new(http.Protocols)
		t.Protocols.SetUnencryptedHTTP2(true)
	}
	return t
}

func (rt *router) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/healthz" && rt.n.Draining() {
		w.Header().Set("Retry-After", "5")
		writeRouteError(w, r, http.StatusServiceUnavailable, "draining", "host "+rt.n.id+" is draining")
		return
	}
	hop := r.Header.Get(HopHeader) != ""
	if id := rt.routes.SandboxID(r); id != "" {
		if !hop {
			rt.toOwner(w, r, id)
			return
		}
		if !rt.haveLocal(r.Context(), id) && rt.arriving(w, r, id) {
			return
		}
		rt.next.ServeHTTP(w, r)
		return
	}
	switch {
	case hop:
	case matches(rt.routes.Creates, r):
		rt.create(w, r)
		return
	case matches(rt.routes.OneShots, r) && rt.routes.Full != nil && rt.routes.Full():
		w.Header().Set("Retry-After", "1")
		writeRouteError(w, r, http.StatusServiceUnavailable, "host_full", "host "+rt.n.id+" has no VM free; try another host")
		return
	}
	rt.next.ServeHTTP(w, r)
}

// toOwner serves a sandbox's request here if this host owns it (or the
// directory does not know it), else forwards it to the owner.
func (rt *router) toOwner(w http.ResponseWriter, r *http.Request, id string) {
	e, err := rt.n.dir.Get(r.Context(), id)
	switch {
	case errors.Is(err, ErrNotFound):
		rt.next.ServeHTTP(w, r) // unknown everywhere: the local answer is right
	case err != nil:
		// The directory is away: a sandbox this host has is served, so
		// live sandboxes keep working through an outage.
		if rt.n.local != nil {
			if _, lerr := rt.n.local.Record(r.Context(), id); lerr == nil {
				rt.next.ServeHTTP(w, r)
				return
			}
		}
		w.Header().Set("Retry-After", "2")
		writeRouteError(w, r, http.StatusServiceUnavailable, "directory_unavailable",
			fmt.Sprintf("sandbox %s is not on host %s and the cluster directory does not answer: %v", id, rt.n.id, err))
	case e.Owner == rt.n.id:
		if !rt.haveLocal(r.Context(), id) && rt.movingHere(w, r, e) {
			return
		}
		rt.next.ServeHTTP(w, r)
	case e.Owner == "":
		w.Header().Set("Retry-After", "2")
		writeRouteError(w, r, http.StatusServiceUnavailable, "sandbox_moving", "sandbox "+id+" is moving to another host; retry shortly")
	case !e.OwnerLive:
		w.Header().Set("Retry-After", "2")
		writeRouteError(w, r, http.StatusServiceUnavailable, "owner_unreachable",
			fmt.Sprintf("sandbox %s is on host %s, which stopped heartbeating; its sandboxes are being taken over", id, e.Owner))
	default:
		p, err := rt.proxy(e.OwnerAddress)
		if err != nil {
			writeRouteError(w, r, http.StatusInternalServerError, "internal", err.Error())
			return
		}
		p.ServeHTTP(w, r)
	}
}

// haveLocal says this host has a record of sandbox id.
func (rt *router) haveLocal(ctx context.Context, id string) bool {
	if rt.n.local == nil {
		return false
	}
	_, err := rt.n.local.Record(ctx, id)
	return err == nil
}

// arriving answers a forwarded request for a sandbox this host does not
// have yet, if the directory says it is this host's: the takeover has
// claimed it and is still pulling it.
func (rt *router) arriving(w http.ResponseWriter, r *http.Request, id string) bool {
	e, err := rt.n.dir.Get(r.Context(), id)
	return err == nil && e.Owner == rt.n.id && rt.movingHere(w, r, e)
}

// movingHere answers 503 for a sandbox this host owns but has no record
// of yet (being pulled from S3); false if it is not such a sandbox.
func (rt *router) movingHere(w http.ResponseWriter, r *http.Request, e Entry) bool {
	if e.State != "hibernated" && e.State != "lost" {
		return false
	}
	rt.n.wake() // the sync imports what this host owns and lacks
	w.Header().Set("Retry-After", "1")
	writeRouteError(w, r, http.StatusServiceUnavailable, "sandbox_moving",
		fmt.Sprintf("sandbox %s is being moved to host %s; retry shortly", e.ID, rt.n.id))
	return true
}

// proxy returns the reverse proxy to an owner's address.
func (rt *router) proxy(addr string) (*httputil.ReverseProxy, error) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if p := rt.proxies[addr]; p != nil {
		return p, nil
	}
	target, err := url.Parse(addr)
	if err != nil {
		return nil, fmt.Errorf("owner address %q: %w", addr, err)
	}
	p := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host // per-sandbox host names route at the owner too
			pr.SetXForwarded()
			pr.Out.Header.Set(HopHeader, rt.n.id)
		},
		Transport:     &protoSwitch{h1: rt.h1, h2c: rt.h2c},
		FlushInterval: -1, // streams (NDJSON, Connect, SSE) flow as they come
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if errors.Is(err, context.Canceled) {
				return // the client left
			}
			w.Header().Set("Retry-After", "2")
			writeRouteError(w, r, http.StatusServiceUnavailable, "owner_unreachable",
				fmt.Sprintf("the sandbox's host at %s did not answer: %v", addr, err))
		},
	}
	rt.proxies[addr] = p
	return p, nil
}

// protoSwitch forwards HTTP/2 requests (h2c, as Connect clients send
// bidirectional streams) over h2c and the rest, upgrades included, over
// HTTP/1.1.
type protoSwitch struct{ h1, h2c http.RoundTripper }

func (p *protoSwitch) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.ProtoMajor == 2 && r.Header.Get("Upgrade") == "" {
		return p.h2c.RoundTrip(r)
	}
	return p.h1.RoundTrip(r)
}

// create places a new sandbox: here if this host has room (its Admit
// decides, race-free), else on the host with the most room, then the
// next if that one answers 503 (another create took the room first).
func (rt *router) create(w http.ResponseWriter, r *http.Request) {
	hosts, err := rt.n.dir.Place(r.Context(), rt.n.id)
	if err != nil {
		w.Header().Set("Retry-After", "2")
		code := "directory_unavailable"
		if errors.Is(err, ErrFull) {
			code = "cluster_full"
		}
		writeRouteError(w, r, http.StatusServiceUnavailable, code, "create sandbox: "+err.Error())
		return
	}
	if hosts[0].ID == rt.n.id {
		rt.next.ServeHTTP(w, r)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, rt.routes.MaxBody))
	if err != nil {
		writeRouteError(w, r, http.StatusRequestEntityTooLarge, "body_too_large", "create sandbox: "+err.Error())
		return
	}
	var last *http.Response
	tries := 0
	for _, h := range hosts {
		if h.ID == rt.n.id {
			continue
		}
		if tries == 3 {
			break
		}
		tries++
		if last != nil {
			last.Body.Close()
		}
		resp, err := rt.send(r, h, body)
		if err != nil {
			rt.n.log.Warn("forward create failed", "to", h.ID, "err", err)
			continue
		}
		if resp.StatusCode != http.StatusServiceUnavailable {
			copyResponse(w, resp)
			return
		}
		last = resp
	}
	if last != nil {
		copyResponse(w, last)
		return
	}
	w.Header().Set("Retry-After", "2")
	writeRouteError(w, r, http.StatusServiceUnavailable, "cluster_full", "create sandbox: no host with room answered")
}

// send forwards a buffered request to host h.
func (rt *router) send(r *http.Request, h Host, body []byte) (*http.Response, error) {
	target, err := url.Parse(h.Address)
	if err != nil {
		return nil, err
	}
	out := r.Clone(r.Context())
	out.URL.Scheme, out.URL.Host = target.Scheme, target.Host
	out.RequestURI = ""
	out.Body = io.NopCloser(bytes.NewReader(body))
	out.ContentLength = int64(len(body))
	out.TransferEncoding = nil
	for _, k := range hopByHop {
		out.Header.Del(k)
	}
	out.Header.Set(HopHeader, rt.n.id)
	if ip, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		out.Header.Set("X-Forwarded-For", strings.TrimPrefix(out.Header.Get("X-Forwarded-For")+", "+ip, ", "))
	}
	return rt.h1.RoundTrip(out)
}

var hopByHop = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

func copyResponse(w http.ResponseWriter, resp *http.Response) {
	defer resp.Body.Close()
	for _, k := range hopByHop {
		resp.Header.Del(k)
	}
	for k, vs := range resp.Header {
		w.Header()[k] = vs
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, resp.Body)
}

// writeRouteError answers in the shape the request's API reads: the
// native API's {"error", "code"}, else E2B's and Piston's {"code":
// <status>, "message"}.
func writeRouteError(w http.ResponseWriter, r *http.Request, status int, code, msg string) {
	var v any = map[string]any{"code": status, "message": msg}
	if strings.HasPrefix(r.URL.Path, "/v1/") || r.URL.Path == "/healthz" {
		v = map[string]string{"error": msg, "code": code}
	}
	b, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)+1))
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
