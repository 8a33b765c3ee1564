package e2b

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/network"
	"github.com/firesandbox/firesandbox/internal/sandbox"
	"github.com/firesandbox/firesandbox/internal/state"
)

// Routes registers the control plane on mux: E2B's REST API as the SDKs
// call it (e2b 2.x: create and list under /v2, the rest under
// /sandboxes/{id}; older paths kept where they still differ).
func (h *Handler) Routes(mux *http.ServeMux) {
	mux.HandleFunc("POST /v2/sandboxes", h.create)
	mux.HandleFunc("POST /sandboxes", h.create)
	mux.HandleFunc("GET /v2/sandboxes", h.list)
	mux.HandleFunc("GET /sandboxes", h.listV1)
	mux.HandleFunc("GET /sandboxes/{id}", h.get)
	mux.HandleFunc("DELETE /sandboxes/{id}", h.kill)
	mux.HandleFunc("POST /sandboxes/{id}/timeout", h.timeout)
	mux.HandleFunc("POST /sandboxes/{id}/refreshes", h.refresh)
	mux.HandleFunc("POST /sandboxes/{id}/pause", h.pause)
	mux.HandleFunc("POST /sandboxes/{id}/resume", h.resume)
	mux.HandleFunc("POST /sandboxes/{id}/connect", h.connect)
	mux.HandleFunc("POST /v2/sandboxes/{id}/connect", h.connect)
	mux.HandleFunc("PUT /sandboxes/{id}/network", h.updateNetwork)
	mux.HandleFunc("POST /sandboxes/{id}/fork", h.fork)
	for _, p := range []string{"GET /sandboxes/{id}/metrics", "GET /sandboxes/metrics",
		"POST /sandboxes/{id}/snapshots", "GET /snapshots", "GET /sandboxes/{id}/logs", "GET /v2/sandboxes/{id}/logs"} {
		mux.HandleFunc(p, h.unsupported)
	}
}

// maxJSON bounds a control-plane request body.
const maxJSON = 1 << 20

// decode reads one JSON object from r's body; an empty body is {} (the
// SDKs send none for some calls). Unknown fields are ignored: the SDKs
// grow fields faster than servers learn them.
func decode(r *http.Request, v any) error {
	b, err := io.ReadAll(io.LimitReader(r.Body, maxJSON+1))
	if err != nil {
		return badRequest("read body: %v", err)
	}
	if len(b) > maxJSON {
		return badRequest("body over %d bytes", maxJSON)
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return nil
	}
	if err := json.Unmarshal(b, v); err != nil {
		return badRequest("malformed JSON: %v", err)
	}
	return nil
}

// newSandbox is E2B's NewSandbox.
type newSandbox struct {
	TemplateID          string                  `json:"templateID"`
	Timeout             *int64                  `json:"timeout"`
	AutoPause           *bool                   `json:"autoPause"`
	AutoPauseMemory     *bool                   `json:"autoPauseMemory"`
	AutoResume          *struct{ Enabled bool } `json:"autoResume"`
	Secure              *bool                   `json:"secure"`
	AllowInternetAccess *bool                   `json:"allow_internet_access"`
	Network             *network.E2BNetwork     `json:"network"`
	Metadata            map[string]string       `json:"metadata"`
	EnvVars             map[string]string       `json:"envVars"`
	MCP                 json.RawMessage         `json:"mcp"`
	IAM                 *struct {
		Tokens map[string]json.RawMessage `json:"tokens"`
	} `json:"iam"`
	VolumeMounts []json.RawMessage `json:"volumeMounts"`
}

// created is E2B's Sandbox: what create, connect and resume answer.
type created struct {
	TemplateID         string  `json:"templateID"`
	SandboxID          string  `json:"sandboxID"`
	Alias              string  `json:"alias,omitempty"`
	ClientID           string  `json:"clientID"`
	EnvdVersion        string  `json:"envdVersion"`
	EnvdAccessToken    string  `json:"envdAccessToken"`
	TrafficAccessToken string  `json:"trafficAccessToken"`
	Domain             *string `json:"domain"`
}

// listed is E2B's ListedSandbox; detail adds what getInfo shows.
type listed struct {
	TemplateID  string            `json:"templateID"`
	Alias       string            `json:"alias,omitempty"`
	SandboxID   string            `json:"sandboxID"`
	ClientID    string            `json:"clientID"`
	StartedAt   time.Time         `json:"startedAt"`
	EndAt       time.Time         `json:"endAt"`
	CPUCount    int               `json:"cpuCount"`
	MemoryMB    int               `json:"memoryMB"`
	DiskSizeMB  int               `json:"diskSizeMB"`
	Metadata    map[string]string `json:"metadata"`
	State       string            `json:"state"`
	EnvdVersion string            `json:"envdVersion"`
	// VolumeMounts is always empty: volumes are not supported.
	VolumeMounts []struct{} `json:"volumeMounts"`
}

type detail struct {
	listed
	EnvdAccessToken string    `json:"envdAccessToken"`
	Domain          *string   `json:"domain"`
	Lifecycle       lifecycle `json:"lifecycle"`
}

type lifecycle struct {
	// AutoResume is true: a paused sandbox resumes on its next command or
	// file call, whatever it was created with.
	AutoResume bool   `json:"autoResume"`
	OnTimeout  string `json:"onTimeout"`
}

// clientID fills a field the spec still requires and no SDK reads.
const clientID = "firesandbox"

// e2bState is a record's state as E2B names it: running or paused, or
// our own word where E2B has none (lost).
func e2bState(s state.State) string {
	switch s {
	case state.Hibernated, state.Hibernating:
		return "paused"
	case state.Lost:
		return "lost"
	}
	return "running"
}

func (h *Handler) listedOf(sb state.Sandbox) listed {
	end := sb.ExpiresAt
	if end.IsZero() { // paused for good, or no lifetime: it ends when it last changed
		end = sb.UpdatedAt
	}
	md := sb.Metadata
	if md == nil {
		md = map[string]string{}
	}
	return listed{TemplateID: sb.Language, Alias: sb.Language, SandboxID: sb.ID, ClientID: clientID,
		StartedAt: sb.CreatedAt.UTC(), EndAt: end.UTC(), CPUCount: sb.VCPUs, MemoryMB: sb.MemoryMiB,
		DiskSizeMB: sb.DiskMiB, Metadata: md, State: e2bState(sb.State), EnvdVersion: EnvdVersion,
		VolumeMounts: []struct{}{}}
}

func (h *Handler) createdOf(sb state.Sandbox) created {
	return created{TemplateID: sb.Language, SandboxID: sb.ID, Alias: sb.Language, ClientID: clientID,
		EnvdVersion: EnvdVersion, EnvdAccessToken: h.tok.make(kindEnvd, sb.ID, sb.Tenant),
		TrafficAccessToken: h.tok.make(kindTraffic, sb.ID, sb.Tenant)}
}

// template resolves a templateID: one of the configured E2B names, or a
// catalog language's name or alias, whose image is built here.
func (h *Handler) template(id string) (*image.Entry, error) {
	if id == "" {
		return nil, badRequest("templateID is required")
	}
	name := id
	if lang, ok := h.cfg.Templates[id]; ok {
		name = lang
	}
	e, err := h.deps.Catalog.Lookup(name, "")
	if errors.Is(err, image.ErrUnknownLanguage) {
		return nil, fmt.Errorf("%w: template %q: not an E2B default (base, code-interpreter-v1) nor a firesandbox language", errNotFound, id)
	}
	if err != nil {
		return nil, err
	}
	if !h.deps.Installed(e) {
		return nil, fmt.Errorf("%w: template %q (language %s) is not built on this server: run firesandbox image build %s", errNotFound, id, e.Name, e.Name)
	}
	return e, nil
}

// lifetime turns a request's timeout (seconds; nil: the default) into a
// duration within the configured bounds.
func (h *Handler) lifetime(sec *int64) (time.Duration, error) {
	if sec == nil {
		return h.cfg.DefaultTimeout, nil
	}
	if *sec < 0 || *sec > int64(h.cfg.MaxTimeout/time.Second) {
		return 0, badRequest("timeout %d s: want 0-%d", *sec, int64(h.cfg.MaxTimeout/time.Second))
	}
	if *sec == 0 {
		return h.cfg.DefaultTimeout, nil
	}
	return time.Duration(*sec) * time.Second, nil
}

func (h *Handler) create(w http.ResponseWriter, r *http.Request) {
	var in newSandbox
	if err := decode(r, &in); err != nil {
		h.fail(w, r, err)
		return
	}
	req, policy, err := h.createRequest(r, &in)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	req.Network = policy
	sb, err := h.deps.Sandboxes.Create(r.Context(), req)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.log.Info("e2b sandbox created", "op", "create", "sandbox", sb.ID, "template", in.TemplateID, "language", sb.Language)
	writeJSON(w, http.StatusCreated, h.createdOf(sb))
}

// createRequest checks a NewSandbox and turns it into the sandbox
// request and its network policy. Without allow_internet_access and
// network the policy is E2B's default, the internet, where this server
// gives sandboxes a network, and none where it does not (asking for it
// explicitly there is refused).
func (h *Handler) createRequest(r *http.Request, in *newSandbox) (sandbox.CreateRequest, *network.Policy, error) {
	var none sandbox.CreateRequest
	switch {
	case len(bytes.TrimSpace(in.MCP)) > 0 && string(bytes.TrimSpace(in.MCP)) != "null":
		return none, nil, fmt.Errorf("%w: mcp (the MCP gateway)", errUnsupported)
	case in.IAM != nil && len(in.IAM.Tokens) > 0:
		return none, nil, fmt.Errorf("%w: iam (workload identity tokens)", errUnsupported)
	case len(in.VolumeMounts) > 0:
		return none, nil, fmt.Errorf("%w: volumeMounts", errUnsupported)
	case in.AutoPauseMemory != nil && !*in.AutoPauseMemory:
		return none, nil, fmt.Errorf("%w: autoPauseMemory false (filesystem-only pauses): pauses always keep memory", errUnsupported)
	case in.AutoResume != nil && in.AutoResume.Enabled && (in.AutoPause == nil || !*in.AutoPause):
		return none, nil, badRequest("autoResume needs autoPause")
	}
	e, err := h.template(in.TemplateID)
	if err != nil {
		return none, nil, err
	}
	d, err := h.lifetime(in.Timeout)
	if err != nil {
		return none, nil, err
	}
	var policy *network.Policy
	if in.AllowInternetAccess != nil || in.Network != nil || h.deps.Sandboxes.HasNetwork() {
		p, err := network.FromE2B(in.AllowInternetAccess, in.Network)
		if err != nil {
			return none, nil, err
		}
		policy = &p
	}
	onTimeout := sandbox.OnTimeoutKill
	if in.AutoPause != nil && *in.AutoPause {
		onTimeout = sandbox.OnTimeoutPause
	}
	return sandbox.CreateRequest{
		Tenant: h.deps.Tenant(r), Language: e.Name, Version: e.Version,
		Timeout: d, OnTimeout: onTimeout, Metadata: in.Metadata, Env: in.EnvVars,
	}, policy, nil
}

// lookup is the request's tenant's sandbox {id}.
func (h *Handler) lookup(r *http.Request) (state.Sandbox, error) {
	sb, err := h.deps.Sandboxes.Get(r.Context(), h.deps.Tenant(r), r.PathValue("id"))
	if err == nil && (sb.State == state.Deleted || sb.State == state.Deleting) {
		err = fmt.Errorf("%w: sandbox %s", errNotFound, sb.ID)
	}
	return sb, err
}

func (h *Handler) get(w http.ResponseWriter, r *http.Request) {
	sb, err := h.lookup(r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	onTimeout := sb.OnTimeout
	if onTimeout == "" {
		onTimeout = sandbox.OnTimeoutKill
	}
	writeJSON(w, http.StatusOK, detail{listed: h.listedOf(sb), EnvdAccessToken: h.tok.make(kindEnvd, sb.ID, sb.Tenant),
		Lifecycle: lifecycle{AutoResume: true, OnTimeout: onTimeout}})
}

func (h *Handler) kill(w http.ResponseWriter, r *http.Request) {
	if _, err := h.lookup(r); err != nil {
		h.fail(w, r, err)
		return
	}
	if err := h.deps.Sandboxes.Delete(r.Context(), h.deps.Tenant(r), r.PathValue("id")); err != nil {
		h.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// timeoutIn is SandboxTimeoutRequest (and ConnectSandbox, and the
// refresh request's duration).
type timeoutIn struct {
	Timeout  *int64 `json:"timeout"`
	Duration *int64 `json:"duration"`
	Memory   *bool  `json:"memory"`
}

func (h *Handler) timeout(w http.ResponseWriter, r *http.Request) {
	var in timeoutIn
	if err := decode(r, &in); err != nil {
		h.fail(w, r, err)
		return
	}
	if in.Timeout == nil {
		h.fail(w, r, badRequest("timeout is required"))
		return
	}
	if err := h.setLifetime(r, *in.Timeout, false); err != nil {
		h.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *Handler) refresh(w http.ResponseWriter, r *http.Request) {
	var in timeoutIn
	if err := decode(r, &in); err != nil {
		h.fail(w, r, err)
		return
	}
	sec := int64(0)
	if in.Duration != nil {
		sec = *in.Duration
	}
	if sec < 0 || sec > 3600 {
		h.fail(w, r, badRequest("duration %d s: want 0-3600", sec))
		return
	}
	if sec == 0 {
		sec = int64(h.cfg.DefaultTimeout / time.Second)
	}
	if err := h.setLifetime(r, sec, true); err != nil {
		h.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// setLifetime ends the sandbox sec seconds from now; extendOnly keeps a
// later end that is already set.
func (h *Handler) setLifetime(r *http.Request, sec int64, extendOnly bool) error {
	d, err := h.lifetime(&sec)
	if err != nil {
		return err
	}
	sb, err := h.lookup(r)
	if err != nil {
		return err
	}
	if extendOnly && !sb.ExpiresAt.IsZero() && sb.ExpiresAt.After(time.Now().Add(d)) {
		return nil
	}
	_, err = h.deps.Sandboxes.SetTimeout(r.Context(), sb.Tenant, sb.ID, d)
	return err
}

// forkIn is E2B's fork request: timeout (seconds) and count (1-100).
type forkIn struct {
	Timeout *int64 `json:"timeout"`
	Count   *int   `json:"count"`
}

// forkResult is one entry of E2B's fork answer: a sandbox or an error.
type forkResult struct {
	Sandbox *created  `json:"sandbox,omitempty"`
	Error   *apiError `json:"error,omitempty"`
}

// fork makes count children of a running (or paused) sandbox, each with
// its memory, files and processes. Ours are all-or-nothing, so either
// every entry is a sandbox or the request fails as a whole.
func (h *Handler) fork(w http.ResponseWriter, r *http.Request) {
	var in forkIn
	if err := decode(r, &in); err != nil {
		h.fail(w, r, err)
		return
	}
	count := 1
	if in.Count != nil {
		count = *in.Count
	}
	if count < 1 || count > 100 {
		h.fail(w, r, badRequest("count %d: want 1-100", count))
		return
	}
	life, err := h.lifetime(in.Timeout)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	sb, err := h.lookup(r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	kids, err := h.deps.Sandboxes.Fork(r.Context(), sb.Tenant, sb.ID, sandbox.ForkRequest{Count: count, Timeout: life})
	if err != nil {
		h.fail(w, r, err)
		return
	}
	out := make([]forkResult, len(kids))
	for i, k := range kids {
		c := h.createdOf(k)
		out[i] = forkResult{Sandbox: &c}
	}
	h.log.Info("e2b sandbox forked", "op", "fork", "sandbox", sb.ID, "children", len(kids))
	writeJSON(w, http.StatusCreated, out)
}

func (h *Handler) pause(w http.ResponseWriter, r *http.Request) {
	var in timeoutIn
	if err := decode(r, &in); err != nil {
		h.fail(w, r, err)
		return
	}
	if in.Memory != nil && !*in.Memory {
		h.fail(w, r, fmt.Errorf("%w: memory false (filesystem-only pauses): pauses always keep memory", errUnsupported))
		return
	}
	sb, err := h.lookup(r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if e2bState(sb.State) == "paused" {
		h.fail(w, r, fmt.Errorf("%w: sandbox %s is already paused", errConflict, sb.ID))
		return
	}
	if _, err := h.deps.Sandboxes.Hibernate(r.Context(), sb.Tenant, sb.ID); err != nil {
		h.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// resume is the deprecated POST /sandboxes/{id}/resume: 409 if running.
func (h *Handler) resume(w http.ResponseWriter, r *http.Request) {
	h.wake(w, r, true)
}

// connect returns a running sandbox (200), resuming a paused one (201);
// its lifetime is only ever extended.
func (h *Handler) connect(w http.ResponseWriter, r *http.Request) {
	h.wake(w, r, false)
}

func (h *Handler) wake(w http.ResponseWriter, r *http.Request, strict bool) {
	var in timeoutIn
	if err := decode(r, &in); err != nil {
		h.fail(w, r, err)
		return
	}
	if in.Memory != nil && !*in.Memory {
		h.fail(w, r, fmt.Errorf("%w: memory false (cold resume from disk only)", errUnsupported))
		return
	}
	sb, err := h.lookup(r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	status := http.StatusOK
	if e2bState(sb.State) == "paused" {
		if sb, err = h.deps.Sandboxes.Resume(r.Context(), sb.Tenant, sb.ID, 0); err != nil {
			h.fail(w, r, err)
			return
		}
		status = http.StatusCreated
	} else if strict {
		h.fail(w, r, fmt.Errorf("%w: sandbox %s is already running", errConflict, sb.ID))
		return
	}
	sec := int64(0)
	if in.Timeout != nil {
		sec = *in.Timeout
	}
	if err := h.setLifetime(r, sec, true); err != nil {
		h.fail(w, r, err)
		return
	}
	if sb, err = h.lookup(r); err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, status, h.createdOf(sb))
}

// networkUpdate is SandboxNetworkUpdateConfig.
type networkUpdate struct {
	network.E2BNetwork
	AllowInternetAccess *bool `json:"allow_internet_access"`
}

func (h *Handler) updateNetwork(w http.ResponseWriter, r *http.Request) {
	var in networkUpdate
	if err := decode(r, &in); err != nil {
		h.fail(w, r, err)
		return
	}
	p, err := network.FromE2B(in.AllowInternetAccess, &in.E2BNetwork)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	sb, err := h.lookup(r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if _, err := h.deps.Sandboxes.SetNetwork(r.Context(), sb.Tenant, sb.ID, p); err != nil {
		h.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *Handler) unsupported(w http.ResponseWriter, r *http.Request) {
	h.fail(w, r, fmt.Errorf("%w: %s %s", errUnsupported, r.Method, r.Pattern))
}

// listV1 is the deprecated GET /sandboxes: running sandboxes, unpaged.
func (h *Handler) listV1(w http.ResponseWriter, r *http.Request) {
	md, err := metadataFilter(r.URL.Query().Get("metadata"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	all, err := h.deps.Sandboxes.List(r.Context(), h.deps.Tenant(r), sandbox.ListFilter{Metadata: md})
	if err != nil {
		h.fail(w, r, err)
		return
	}
	out := []listed{}
	for _, sb := range all {
		if e2bState(sb.State) == "running" {
			out = append(out, h.listedOf(sb))
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// list is GET /v2/sandboxes: state and metadata filters, newest first
// (or oldest with order=asc), pages of limit with x-next-token.
func (h *Handler) list(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	md, err := metadataFilter(q.Get("metadata"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	want := map[string]bool{}
	for _, v := range q["state"] {
		for _, s := range strings.Split(v, ",") {
			switch s = strings.TrimSpace(s); s {
			case "running", "paused":
				want[s] = true
			case "":
			default:
				h.fail(w, r, badRequest("state %q: want running or paused", s))
				return
			}
		}
	}
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 100 {
			h.fail(w, r, badRequest("limit %q: want 1-100", v))
			return
		}
		limit = n
	}
	asc := false
	switch q.Get("order") {
	case "", "desc":
	case "asc":
		asc = true
	default:
		h.fail(w, r, badRequest("order %q: want asc or desc", q.Get("order")))
		return
	}
	var after time.Time
	if v := q.Get("startedAfter"); v != "" {
		if after, err = time.Parse(time.RFC3339Nano, v); err != nil {
			h.fail(w, r, badRequest("startedAfter %q: want an RFC 3339 time", v))
			return
		}
	}
	cur, err := decodeCursor(q.Get("nextToken"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	all, err := h.deps.Sandboxes.List(r.Context(), h.deps.Tenant(r), sandbox.ListFilter{Metadata: md})
	if err != nil {
		h.fail(w, r, err)
		return
	}
	tmpl := q.Get("template")
	if lang, ok := h.cfg.Templates[tmpl]; ok {
		tmpl = lang
	}
	var keep []state.Sandbox
	for _, sb := range all {
		st := e2bState(sb.State)
		if (len(want) > 0 && !want[st]) || (tmpl != "" && sb.Language != tmpl) || sb.CreatedAt.Before(after) {
			continue
		}
		keep = append(keep, sb)
	}
	less := func(a, b state.Sandbox) bool { // the page order: a first
		if a.ID == b.ID {
			return false
		}
		if !a.CreatedAt.Equal(b.CreatedAt) {
			return a.CreatedAt.Before(b.CreatedAt) == asc
		}
		return (a.ID < b.ID) == asc
	}
	sort.Slice(keep, func(i, j int) bool { return less(keep[i], keep[j]) })
	out := []listed{}
	var last state.Sandbox
	for _, sb := range keep {
		if cur != nil && !less(state.Sandbox{ID: cur.id, CreatedAt: cur.at}, sb) {
			continue // at or before the previous page's last
		}
		if len(out) == limit {
			w.Header().Set("X-Next-Token", encodeCursor(last))
			break
		}
		out = append(out, h.listedOf(sb))
		last = sb
	}
	writeJSON(w, http.StatusOK, out)
}

// cursor is where a page ended: its last sandbox.
type cursor struct {
	at time.Time
	id string
}

func encodeCursor(sb state.Sandbox) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(sb.CreatedAt.UnixNano(), 10) + ":" + sb.ID))
}

func decodeCursor(s string) (*cursor, error) {
	if s == "" {
		return nil, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	ns, id, ok := strings.Cut(string(b), ":")
	n, perr := strconv.ParseInt(ns, 10, 64)
	if err != nil || !ok || perr != nil || id == "" {
		return nil, badRequest("nextToken %q is not one this server gave", s)
	}
	return &cursor{at: time.Unix(0, n), id: id}, nil
}

// metadataFilter decodes the list's metadata filter. It arrives encoded
// three times, and is decoded exactly that often, level by level (never
// "until it stops changing", which would mangle a value holding %):
// the query string itself (done by net/url), then the form "k=v&k2=v2"
// the SDK built with URLSearchParams or urlencode, then each key and value,
// which the SDK escaped once more with encodeURIComponent or quote.
func metadataFilter(s string) (map[string]string, error) {
	if s == "" {
		return nil, nil
	}
	form, err := url.ParseQuery(s)
	if err != nil {
		return nil, badRequest("metadata filter %q: %v", s, err)
	}
	out := map[string]string{}
	for k, vs := range form {
		key, err := url.QueryUnescape(k)
		if err != nil {
			return nil, badRequest("metadata filter key %q: %v", k, err)
		}
		if len(vs) != 1 {
			return nil, badRequest("metadata filter key %q given %d times", key, len(vs))
		}
		val, err := url.QueryUnescape(vs[0])
		if err != nil {
			return nil, badRequest("metadata filter value of %q: %v", key, err)
		}
		out[key] = val
	}
	return out, nil
}
