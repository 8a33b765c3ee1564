package e2b

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/network"
	"github.com/firesandbox/firesandbox/internal/network/nettest"
	"github.com/firesandbox/firesandbox/internal/sandbox"
	"github.com/firesandbox/firesandbox/internal/state"
	"github.com/firesandbox/firesandbox/internal/testutil"
	"github.com/firesandbox/firesandbox/internal/vmm/vmmfake"
	"github.com/firesandbox/firesandbox/languages"
)

// fixture is the adapter over real Sandboxes on the fake VMM driver, in
// front of an HTTP server as serve mounts it: the control plane on a
// mux, the data plane by header. The tenant is the X-Test-Tenant header.
type fixture struct {
	t   *testing.T
	h   *Handler
	svc *sandbox.Service
	srv *httptest.Server
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	return newFixtureWith(t, sandbox.ServiceConfig{MaxVMs: 8})
}

// newFixtureWith is newFixture on a Service configured by scfg.
func newFixtureWith(t *testing.T, scfg sandbox.ServiceConfig) *fixture {
	t.Helper()
	d := vmmfake.New()
	m, err := sandbox.New(sandbox.Config{DataDir: testutil.FakeDataDir(t, "code-interpreter", "python"), RunDir: t.TempDir()}, sandbox.WithDriver(d))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := sandbox.OpenService(m, scfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	h, err := New(Config{}, Deps{
		Sandboxes: svc.Sandboxes, DB: svc.DB, Catalog: m.Catalog(),
		Tenant: func(r *http.Request) string { return r.Header.Get("X-Test-Tenant") },
		Status: func(err error) int {
			switch {
			case errors.Is(err, sandbox.ErrBadRequest):
				return http.StatusBadRequest
			case errors.Is(err, sandbox.ErrSandboxBusy), errors.Is(err, state.ErrConflict):
				return http.StatusConflict
			case errors.Is(err, sandbox.ErrNoNetwork):
				return http.StatusNotImplemented
			}
			return http.StatusInternalServerError
		},
		Secret: bytes.Repeat([]byte{7}, 32),
	})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	h.Routes(mux)
	dp := h.DataPlane()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if IsDataPlane(r) {
			dp.ServeHTTP(w, r)
			return
		}
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		srv.Close()
		svc.Close(context.Background())
		if live := d.Live(); len(live) != 0 {
			t.Errorf("%d machines still running after the test", len(live))
		}
	})
	return &fixture{t: t, h: h, svc: svc, srv: srv}
}

type resp struct {
	status int
	header http.Header
	body   []byte
}

func (r resp) json(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
}

// code is the numeric code of an E2B error body.
func (r resp) code(t *testing.T) int {
	t.Helper()
	var e apiError
	r.json(t, &e)
	return e.Code
}

func (f *fixture) do(method, path, tenant string, body io.Reader, hdr map[string]string) resp {
	f.t.Helper()
	req, err := http.NewRequest(method, f.srv.URL+path, body)
	if err != nil {
		f.t.Fatal(err)
	}
	req.Header.Set("X-Test-Tenant", tenant)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return resp{status: res.StatusCode, header: res.Header, body: b}
}

func (f *fixture) create(tenant string, body map[string]any) created {
	f.t.Helper()
	b, _ := json.Marshal(body)
	r := f.do("POST", "/v2/sandboxes", tenant, bytes.NewReader(b), nil)
	if r.status != http.StatusCreated {
		f.t.Fatalf("create %s: %d %s", b, r.status, r.body)
	}
	var c created
	r.json(f.t, &c)
	return c
}

func TestCreateGetKillAndTenancy(t *testing.T) {
	f := newFixture(t)
	if r := f.do("POST", "/v2/sandboxes", "acme", strings.NewReader(`{}`), nil); r.status != 400 || r.code(t) != 400 {
		t.Fatalf("no template: %d %s", r.status, r.body)
	}
	if r := f.do("POST", "/v2/sandboxes", "acme", strings.NewReader(`{"templateID":"cobol-9000"}`), nil); r.status != 404 || r.code(t) != 404 {
		t.Fatalf("unknown template: %d %s", r.status, r.body)
	}
	c := f.create("acme", map[string]any{"templateID": "base", "metadata": map[string]string{"k": "v"}, "envVars": map[string]string{"A": "1"}})
	if c.SandboxID == "" || c.EnvdAccessToken == "" || c.TrafficAccessToken == "" || c.EnvdVersion != EnvdVersion || c.TemplateID != DefaultTemplate || c.ClientID == "" {
		t.Fatalf("created: %+v", c)
	}
	py := f.create("acme", map[string]any{"templateID": "python"})
	if py.TemplateID != "python" {
		t.Fatalf("python template: %+v", py)
	}

	r := f.do("GET", "/sandboxes/"+c.SandboxID, "acme", nil, nil)
	var d detail
	r.json(t, &d)
	if r.status != 200 || d.State != "running" || d.Metadata["k"] != "v" || d.EnvdVersion != EnvdVersion || d.CPUCount < 1 || d.MemoryMB < 128 {
		t.Fatalf("get: %d %s", r.status, r.body)
	}
	if end := d.EndAt.Sub(d.StartedAt); end < 4*time.Minute || end > 6*time.Minute {
		t.Fatalf("default lifetime %s, want 5m", end)
	}

	// Another tenant's key: the sandbox does not exist for it.
	for _, call := range []struct{ method, path string }{
		{"GET", "/sandboxes/" + c.SandboxID}, {"DELETE", "/sandboxes/" + c.SandboxID},
		{"POST", "/sandboxes/" + c.SandboxID + "/pause"}, {"POST", "/v2/sandboxes/" + c.SandboxID + "/connect"},
		{"POST", "/sandboxes/" + c.SandboxID + "/timeout"},
	} {
		r := f.do(call.method, call.path, "mallory", strings.NewReader(`{"timeout":60}`), nil)
		if r.status != 404 || r.code(t) != 404 {
			t.Errorf("%s %s as another tenant: %d %s", call.method, call.path, r.status, r.body)
		}
	}
	var l []listed
	f.do("GET", "/v2/sandboxes", "mallory", nil, nil).json(t, &l)
	if len(l) != 0 {
		t.Fatalf("another tenant lists %d sandboxes", len(l))
	}

	if r := f.do("DELETE", "/sandboxes/"+c.SandboxID, "acme", nil, nil); r.status != 204 {
		t.Fatalf("kill: %d %s", r.status, r.body)
	}
	for _, p := range []string{"GET", "DELETE"} {
		if r := f.do(p, "/sandboxes/"+c.SandboxID, "acme", nil, nil); r.status != 404 || r.code(t) != 404 {
			t.Fatalf("%s after kill: %d %s", p, r.status, r.body)
		}
	}
}

// chunked is a body of unknown length: Go then sends it chunked, as the
// JS SDK does.
type chunked struct{ r io.Reader }

func (c chunked) Read(p []byte) (int, error) { return c.r.Read(p) }

func TestChunkedBodies(t *testing.T) {
	f := newFixture(t)
	r := f.do("POST", "/v2/sandboxes", "acme", chunked{strings.NewReader(`{"templateID":"python","timeout":60}`)}, nil)
	if r.status != 201 {
		t.Fatalf("chunked create: %d %s", r.status, r.body)
	}
	var c created
	r.json(t, &c)
	hdr := map[string]string{headerSandboxID: c.SandboxID, headerSandboxPort: "49983", headerAccessToken: c.EnvdAccessToken,
		"Content-Type": "application/octet-stream"}
	// The fake agent has no uploads (the VM test uploads through the
	// SDK): a chunked body reaches the agent, that is what is checked.
	r = f.do("POST", "/files?path=up.txt", "", chunked{strings.NewReader("streamed")}, hdr)
	if r.status == 401 || r.status == 400 || !strings.Contains(string(r.body), "upload") {
		t.Fatalf("chunked upload: %d %s", r.status, r.body)
	}
}

func TestListFiltersAndPages(t *testing.T) {
	f := newFixture(t)
	var ids []string
	for i := 0; i < 5; i++ {
		md := map[string]string{"team": "a b&c=d%", "n": fmt.Sprint(i)}
		if i >= 3 {
			md["team"] = "other"
		}
		ids = append(ids, f.create("acme", map[string]any{"templateID": "python", "metadata": md}).SandboxID)
	}
	// The SDK's encoding: encodeURIComponent on each key and value, then
	// URLSearchParams, then the query serializer.
	enc := url.Values{url.QueryEscape("team"): {strings.ReplaceAll(url.QueryEscape("a b&c=d%"), "+", "%20")}}.Encode()
	var l []listed
	r := f.do("GET", "/v2/sandboxes?metadata="+url.QueryEscape(enc), "acme", nil, nil)
	r.json(t, &l)
	if r.status != 200 || len(l) != 3 {
		t.Fatalf("metadata filter: %d %s", r.status, r.body)
	}
	for _, s := range l {
		if s.Metadata["team"] != "a b&c=d%" {
			t.Fatalf("filtered in %v", s.Metadata)
		}
	}
	if r := f.do("POST", "/sandboxes/"+ids[0]+"/pause", "acme", nil, nil); r.status != 204 {
		t.Fatalf("pause: %d %s", r.status, r.body)
	}
	f.do("GET", "/v2/sandboxes?state=paused", "acme", nil, nil).json(t, &l)
	if len(l) != 1 || l[0].SandboxID != ids[0] || l[0].State != "paused" {
		t.Fatalf("paused: %+v", l)
	}
	f.do("GET", "/v2/sandboxes?state=running,paused", "acme", nil, nil).json(t, &l)
	if len(l) != 5 {
		t.Fatalf("running,paused: %d", len(l))
	}
	if r := f.do("GET", "/v2/sandboxes?state=sleeping", "acme", nil, nil); r.status != 400 || r.code(t) != 400 {
		t.Fatalf("bad state: %d %s", r.status, r.body)
	}

	// Pages of 2, newest first, until no token.
	var seen []string
	next := ""
	for page := 0; page < 5; page++ {
		r := f.do("GET", "/v2/sandboxes?limit=2&nextToken="+url.QueryEscape(next), "acme", nil, nil)
		r.json(t, &l)
		for _, s := range l {
			seen = append(seen, s.SandboxID)
		}
		if next = r.header.Get("X-Next-Token"); next == "" {
			break
		}
	}
	want := []string{ids[4], ids[3], ids[2], ids[1], ids[0]}
	if fmt.Sprint(seen) != fmt.Sprint(want) {
		t.Fatalf("pages: %v, want %v", seen, want)
	}
}

func TestMetadataFilterDecodesEachLevelOnce(t *testing.T) {
	// A value holding an escape of its own: decoding "until stable"
	// would turn %2541 into A.
	got, err := metadataFilter("k%2520x=v%252541")
	if err != nil || got["k x"] != "v%41" || len(got) != 1 {
		t.Fatalf("got %v %v", got, err)
	}
	if _, err := metadataFilter("a=1&a=2"); err == nil {
		t.Fatal("a key given twice was accepted")
	}
}

func TestPauseConnectResumeAndTimeout(t *testing.T) {
	f := newFixture(t)
	c := f.create("acme", map[string]any{"templateID": "python", "timeout": 60})
	id := c.SandboxID
	if r := f.do("POST", "/v2/sandboxes/"+id+"/connect", "acme", strings.NewReader(`{"timeout":30}`), nil); r.status != 200 {
		t.Fatalf("connect running: %d %s", r.status, r.body)
	}
	if r := f.do("POST", "/sandboxes/"+id+"/pause", "acme", nil, nil); r.status != 204 {
		t.Fatalf("pause: %d %s", r.status, r.body)
	}
	if r := f.do("POST", "/sandboxes/"+id+"/pause", "acme", nil, nil); r.status != 409 || r.code(t) != 409 {
		t.Fatalf("pause paused: %d %s", r.status, r.body)
	}
	r := f.do("POST", "/v2/sandboxes/"+id+"/connect", "acme", strings.NewReader(`{"timeout":600}`), nil)
	var again created
	r.json(t, &again)
	if r.status != 201 || again.EnvdAccessToken != c.EnvdAccessToken {
		t.Fatalf("connect paused: %d %s", r.status, r.body)
	}
	if r := f.do("POST", "/sandboxes/"+id+"/resume", "acme", nil, nil); r.status != 409 {
		t.Fatalf("resume running: %d %s", r.status, r.body)
	}
	var d detail
	f.do("GET", "/sandboxes/"+id, "acme", nil, nil).json(t, &d)
	if d.State != "running" || time.Until(d.EndAt) < 9*time.Minute {
		t.Fatalf("after connect: %s, ends in %s (connect extends to 600s)", d.State, time.Until(d.EndAt))
	}
	// setTimeout sets, shorter included.
	if r := f.do("POST", "/sandboxes/"+id+"/timeout", "acme", strings.NewReader(`{"timeout":1}`), nil); r.status != 204 {
		t.Fatalf("timeout: %d %s", r.status, r.body)
	}
	if r := f.do("POST", "/sandboxes/"+id+"/timeout", "acme", strings.NewReader(`{"timeout":-1}`), nil); r.status != 400 {
		t.Fatalf("negative timeout: %d %s", r.status, r.body)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := f.do("GET", "/sandboxes/"+id, "acme", nil, nil)
		if r.status == 404 {
			break // killed at the end of its lifetime
		}
		if time.Now().After(deadline) {
			t.Fatalf("still there after its timeout: %s", r.body)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func TestAutoPauseAndUnsupported(t *testing.T) {
	f := newFixture(t)
	c := f.create("acme", map[string]any{"templateID": "python", "timeout": 1, "autoPause": true})
	deadline := time.Now().Add(10 * time.Second)
	for {
		var d detail
		f.do("GET", "/sandboxes/"+c.SandboxID, "acme", nil, nil).json(t, &d)
		if d.State == "paused" {
			if d.Lifecycle.OnTimeout != "pause" {
				t.Fatalf("lifecycle %+v", d.Lifecycle)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not paused at its timeout: %+v", d)
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, body := range []string{`{"templateID":"python","mcp":{"x":{}}}`, `{"templateID":"python","volumeMounts":[{"name":"v","path":"/v"}]}`,
		`{"templateID":"python","autoPause":true,"autoPauseMemory":false}`} {
		if r := f.do("POST", "/v2/sandboxes", "acme", strings.NewReader(body), nil); r.status != 501 || r.code(t) != 501 {
			t.Errorf("%s: %d %s", body, r.status, r.body)
		}
	}
}

func TestFork(t *testing.T) {
	f := newFixture(t)
	c := f.create("acme", map[string]any{"templateID": "python"})
	if r := f.do("POST", "/sandboxes/"+c.SandboxID+"/fork", "other", strings.NewReader(`{"count":1}`), nil); r.status != 404 || r.code(t) != 404 {
		t.Fatalf("fork by another tenant: %d %s", r.status, r.body)
	}
	for _, bad := range []string{`{"count":0}`, `{"count":101}`, `{"count":1,"timeout":-1}`} {
		if r := f.do("POST", "/sandboxes/"+c.SandboxID+"/fork", "acme", strings.NewReader(bad), nil); r.status != 400 || r.code(t) != 400 {
			t.Errorf("fork %s: %d %s", bad, r.status, r.body)
		}
	}
	r := f.do("POST", "/sandboxes/"+c.SandboxID+"/fork", "acme", strings.NewReader(`{"count":2,"timeout":60}`), nil)
	var out []struct {
		Sandbox *created
		Error   *apiError
	}
	if r.status != 201 {
		t.Fatalf("fork: %d %s", r.status, r.body)
	}
	r.json(t, &out)
	if len(out) != 2 {
		t.Fatalf("fork of 2 answered %d entries: %s", len(out), r.body)
	}
	seen := map[string]bool{c.SandboxID: true}
	for _, e := range out {
		if e.Error != nil || e.Sandbox == nil || seen[e.Sandbox.SandboxID] || e.Sandbox.EnvdAccessToken == "" || e.Sandbox.EnvdVersion != EnvdVersion {
			t.Fatalf("fork entry %+v (%s)", e, r.body)
		}
		seen[e.Sandbox.SandboxID] = true
		var d detail
		if g := f.do("GET", "/sandboxes/"+e.Sandbox.SandboxID, "acme", nil, nil); g.status != 200 {
			t.Fatalf("child %s: %d %s", e.Sandbox.SandboxID, g.status, g.body)
		} else if g.json(t, &d); d.State != "running" {
			t.Fatalf("child state %q", d.State)
		}
	}
	var parent detail
	f.do("GET", "/sandboxes/"+c.SandboxID, "acme", nil, nil).json(t, &parent)
	if parent.State != "running" {
		t.Fatalf("the parent is %q after the fork", parent.State)
	}
}

// Without a network on the server, E2B's default (the internet) quietly
// becomes none, and asking for network explicitly is refused.
func TestNetworkWithoutNetwork(t *testing.T) {
	f := newFixture(t)
	c := f.create("acme", map[string]any{"templateID": "python"})
	if sb, err := f.svc.DB.Get(context.Background(), c.SandboxID); err != nil || sb.Network != "" {
		t.Fatalf("default policy on a server without network: %q %v", sb.Network, err)
	}
	r := f.do("POST", "/v2/sandboxes", "acme", strings.NewReader(`{"templateID":"python","allow_internet_access":true}`), nil)
	if r.status != 501 || !strings.Contains(string(r.body), "network") {
		t.Fatalf("internet asked for on a server without network: %d %s", r.status, r.body)
	}
	if r := f.do("PUT", "/sandboxes/"+c.SandboxID+"/network", "acme", strings.NewReader(`{"allowOut":["example.org"]}`), nil); r.status != 501 {
		t.Fatalf("update on a server without network: %d %s", r.status, r.body)
	}
}

func TestNetworkPolicyStoredAndValidated(t *testing.T) {
	w := nettest.New(t)
	f := newFixtureWith(t, sandbox.ServiceConfig{MaxVMs: 8, Network: &sandbox.NetworkConfig{Mode: sandbox.NetworkOn, Config: network.Config{
		RunDir: t.TempDir(), Prefix: "fe", UplinkNetns: w.Uplink(), DNSUpstreams: []string{w.DNS()}}}})
	r := f.do("POST", "/v2/sandboxes", "acme", strings.NewReader(`{"templateID":"python","network":{"denyOut":["example.com"]}}`), nil)
	if r.status != 400 || r.code(t) != 400 || !strings.Contains(string(r.body), "denyOut") {
		t.Fatalf("domain in denyOut: %d %s", r.status, r.body)
	}
	// E2B's default is the internet (the ranges every policy denies stay
	// denied: network's rules, not this entry, keep them out).
	d := f.create("acme", map[string]any{"templateID": "python"})
	if sb, err := f.svc.DB.Get(context.Background(), d.SandboxID); err != nil || sb.Network != `{"allow_out":["0.0.0.0/0"]}` {
		t.Fatalf("default policy %q %v, want the public internet", sb.Network, err)
	}
	c := f.create("acme", map[string]any{"templateID": "python", "allow_internet_access": false,
		"network": map[string]any{"allowOut": []string{"pypi.org", "10.1.2.3/32"}}})
	sb, err := f.svc.DB.Get(context.Background(), c.SandboxID)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(sb.Network, "pypi.org") || strings.Contains(sb.Network, "0.0.0.0") {
		t.Fatalf("stored policy %s", sb.Network)
	}
	if r := f.do("PUT", "/sandboxes/"+c.SandboxID+"/network", "acme", strings.NewReader(`{"allowOut":["not a host!"]}`), nil); r.status != 400 {
		t.Fatalf("bad update: %d %s", r.status, r.body)
	}
	if r := f.do("PUT", "/sandboxes/"+c.SandboxID+"/network", "acme", strings.NewReader(`{"allowOut":["example.org"],"allow_internet_access":false}`), nil); r.status != 204 {
		t.Fatalf("update: %d %s", r.status, r.body)
	}
	sb, _ = f.svc.DB.Get(context.Background(), c.SandboxID)
	if !strings.Contains(sb.Network, "example.org") || strings.Contains(sb.Network, "pypi.org") {
		t.Fatalf("updated policy %s", sb.Network)
	}
}

func TestDataPlaneTokensAndFiles(t *testing.T) {
	f := newFixture(t)
	a := f.create("acme", map[string]any{"templateID": "python"})
	b := f.create("bob", map[string]any{"templateID": "python"})
	envd := func(c created, tok string) map[string]string {
		return map[string]string{headerSandboxID: c.SandboxID, headerSandboxPort: "49983", headerAccessToken: tok}
	}
	if r := f.do("GET", "/health", "", nil, envd(a, "")); r.status != 204 {
		t.Fatalf("health: %d %s", r.status, r.body)
	}
	// The fake agent has no uploads: the files go in the native way.
	if err := f.svc.Sandboxes.WriteFiles(context.Background(), "acme", a.SandboxID, []agentproto.File{
		{Path: "a.txt", Content: []byte("alpha")}, {Path: "sub/b.txt", Content: []byte("beta")}}); err != nil {
		t.Fatal(err)
	}
	if r := f.do("GET", "/files?path="+url.QueryEscape(sandbox.WorkDir+"/sub/b.txt"), "", nil, envd(a, a.EnvdAccessToken)); r.status != 200 || string(r.body) != "beta" {
		t.Fatalf("download: %d %q", r.status, r.body)
	}
	if r := f.do("GET", "/files?path=missing.txt", "", nil, envd(a, a.EnvdAccessToken)); r.status != 404 || r.code(t) != 404 {
		t.Fatalf("missing file: %d %s", r.status, r.body)
	}

	// Tokens: none, another sandbox's, another tenant's sandbox.
	for name, h := range map[string]map[string]string{
		"no token": envd(a, ""), "b's token on a": envd(a, b.EnvdAccessToken), "traffic token on envd": envd(a, a.TrafficAccessToken),
	} {
		if r := f.do("GET", "/files?path=a.txt", "", nil, h); r.status != 401 || r.code(t) != 401 {
			t.Errorf("%s: %d %s", name, r.status, r.body)
		}
	}
	if r := f.do("GET", "/files?path=a.txt", "", nil, envd(created{SandboxID: "sb-0000000000000000"}, a.EnvdAccessToken)); r.status != 502 {
		t.Errorf("unknown sandbox: %d %s", r.status, r.body)
	}

	// A signed download URL (downloadUrl): no token header needed.
	p := sandbox.WorkDir + "/a.txt"
	sum := sha256.Sum256([]byte(p + ":read::" + a.EnvdAccessToken))
	sig := "v1_" + strings.TrimRight(base64.StdEncoding.EncodeToString(sum[:]), "=")
	q := "/files?path=" + url.QueryEscape(p) + "&signature=" + url.QueryEscape(sig)
	if r := f.do("GET", q, "", nil, envd(a, "")); r.status != 200 || string(r.body) != "alpha" {
		t.Fatalf("signed download: %d %s", r.status, r.body)
	}
	if r := f.do("GET", q+"x", "", nil, envd(a, "")); r.status != 401 {
		t.Fatalf("bad signature: %d %s", r.status, r.body)
	}
	if r := f.do("POST", q, "", strings.NewReader("x"), envd(a, "")); r.status != 401 {
		t.Fatalf("read signature used to write: %d %s", r.status, r.body)
	}

	// A paused sandbox's health says it does not run; a file call resumes it.
	f.do("POST", "/sandboxes/"+a.SandboxID+"/pause", "acme", nil, nil)
	if r := f.do("GET", "/health", "", nil, envd(a, "")); r.status != 502 {
		t.Fatalf("paused health: %d", r.status)
	}
	if r := f.do("GET", "/files?path=a.txt", "", nil, envd(a, a.EnvdAccessToken)); r.status != 200 || string(r.body) != "alpha" {
		t.Fatalf("file after pause: %d %q", r.status, r.body)
	}
	// Other ports: no network yet, said plainly.
	if r := f.do("GET", "/", "", nil, map[string]string{headerSandboxID: a.SandboxID, headerSandboxPort: "8080", headerTraffic: a.TrafficAccessToken}); r.status != 502 || !strings.Contains(string(r.body), "not reachable") {
		t.Fatalf("port 8080: %d %s", r.status, r.body)
	}
}

func TestEntryShipsTheInterpreterSource(t *testing.T) {
	cat, err := image.LoadCatalog(languages.FS)
	if err != nil {
		t.Fatal(err)
	}
	e, err := cat.Lookup(DefaultTemplate, "")
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile("../../../languages/code-interpreter.py")
	if err != nil {
		t.Fatal(err)
	}
	if e.Prewarm == nil || e.Prewarm.File != interpreterFile || e.Prewarm.Code != string(src) {
		t.Fatal("languages/code-interpreter.toml's prewarm code differs from languages/code-interpreter.py: copy the script into the entry")
	}
}
