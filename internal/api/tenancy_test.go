package api

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/sandbox"
	"github.com/firesandbox/firesandbox/internal/state"
	"github.com/firesandbox/firesandbox/internal/tenant"
)

type answer struct {
	status int
	body   map[string]any
	raw    string
	header http.Header
}

// call sends one request to url+path; hdr is name, value pairs.
func call(t testing.TB, url, method, path, body string, hdr ...string) answer {
	t.Helper()
	req, err := http.NewRequest(method, url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode, raw: string(b), header: resp.Header}
	_ = json.Unmarshal(b, &a.body)
	return a
}

func bearer(key string) []string { return []string{"Authorization", "Bearer " + key} }

// TestTenantIsolation: a tenant sees only its own sandboxes, on every
// endpoint, whichever header carries its key; a removed key stops working.
func TestTenantIsolation(t *testing.T) {
	fs := newFakeServer(t, Config{RequireKey: true}, sandbox.ServiceConfig{})
	ctx := context.Background()
	keyA, _, err := fs.srv.keys.CreateKey(ctx, "acme", "")
	if err != nil {
		t.Fatal(err)
	}
	keyB, kb, err := fs.srv.keys.CreateKey(ctx, "beta", "")
	if err != nil {
		t.Fatal(err)
	}
	if a := call(t, fs.url, "GET", "/v1/sandboxes", ""); a.status != 401 {
		t.Fatalf("no key with --require-key: %d %s", a.status, a.raw)
	}
	a := call(t, fs.url, "POST", "/v1/sandboxes", `{"language":"python"}`, bearer(keyA)...)
	if a.status != 201 {
		t.Fatalf("create: %d %s", a.status, a.raw)
	}
	id := a.body["id"].(string)
	if got := call(t, fs.url, "GET", "/v1/sandboxes/"+id, "", "X-API-KEY", keyA); got.status != 200 {
		t.Fatalf("owner (E2B's header) gets %d %s", got.status, got.raw)
	}
	if got := call(t, fs.url, "POST", "/v1/sandboxes/"+id+"/exec", `{"cmd":["print","hi"]}`, "X-Auth-Token", keyA); got.status != 200 || got.body["stdout"] != "hi\n" {
		t.Fatalf("owner exec (Judge0's header): %d %s", got.status, got.raw)
	}
	for _, c := range []struct{ method, path, body string }{
		{"GET", "/v1/sandboxes/" + id, ""},
		{"POST", "/v1/sandboxes/" + id + "/exec", `{"cmd":["print","x"]}`},
		{"POST", "/v1/sandboxes/" + id + "/exec/stream", `{"cmd":["print","x"]}`},
		{"POST", "/v1/sandboxes/" + id + "/files", `{"files":[{"path":"a","content":"x"}]}`},
		{"GET", "/v1/sandboxes/" + id + "/files?path=a", ""},
		{"POST", "/v1/sandboxes/" + id + "/hibernate", ""},
		{"POST", "/v1/sandboxes/" + id + "/resume", ""},
		{"DELETE", "/v1/sandboxes/" + id, ""},
	} {
		if got := call(t, fs.url, c.method, c.path, c.body, bearer(keyB)...); got.status != 404 {
			t.Errorf("tenant beta: %s %s = %d %s, want 404", c.method, c.path, got.status, got.raw)
		}
	}
	if got := call(t, fs.url, "GET", "/v1/sandboxes", "", bearer(keyB)...); got.status != 200 || len(got.body["sandboxes"].([]any)) != 0 {
		t.Fatalf("beta's list: %d %s", got.status, got.raw)
	}
	if got := call(t, fs.url, "GET", "/v1/sandboxes", "", bearer(keyA)...); len(got.body["sandboxes"].([]any)) != 1 {
		t.Fatalf("acme's list: %s", got.raw)
	}
	// Judge0's submissions are per tenant too.
	sub := call(t, fs.url, "POST", "/submissions?wait=false", `{"source_code":"print 1","language_id":71}`, "X-Auth-Token", keyA)
	if sub.status != 201 {
		t.Fatalf("judge0 submission: %d %s", sub.status, sub.raw)
	}
	if got := call(t, fs.url, "GET", "/submissions/"+sub.body["token"].(string), "", "X-Auth-Token", keyB); got.status != 404 {
		t.Fatalf("beta reads acme's submission: %d %s", got.status, got.raw)
	}
	if _, err := fs.srv.keys.RemoveKey(ctx, kb.ID); err != nil {
		t.Fatal(err)
	}
	if got := call(t, fs.url, "GET", "/v1/sandboxes", "", bearer(keyB)...); got.status != 401 || !strings.Contains(got.raw, "not valid") {
		t.Fatalf("a removed key: %d %s", got.status, got.raw)
	}
	if got := call(t, fs.url, "DELETE", "/v1/sandboxes/"+id, "", bearer(keyA)...); got.status != 204 {
		t.Fatalf("owner delete: %d %s", got.status, got.raw)
	}
}

// TestLegacyKeyIsDefaultTenant: the single --api-key keeps working and
// owns what the default tenant had before tenants existed.
func TestLegacyKeyIsDefaultTenant(t *testing.T) {
	fs := newFakeServer(t, Config{APIKey: "legacy-secret"}, sandbox.ServiceConfig{})
	ctx := context.Background()
	if err := fs.svc.DB.Create(ctx, state.Sandbox{ID: "sb-old", Language: "python", Version: "3", State: state.Lost, Reason: "x"}); err != nil {
		t.Fatal(err)
	}
	if got := call(t, fs.url, "GET", "/v1/sandboxes/sb-old", "", bearer("legacy-secret")...); got.status != 200 {
		t.Fatalf("legacy key on a pre-tenant sandbox: %d %s", got.status, got.raw)
	}
	key, _, _ := fs.srv.keys.CreateKey(ctx, "acme", "")
	if got := call(t, fs.url, "GET", "/v1/sandboxes/sb-old", "", bearer(key)...); got.status != 404 {
		t.Fatalf("another tenant sees the default tenant's sandbox: %d", got.status)
	}
}

// TestQuotas: every quota is answered 429 with a message naming it.
func TestQuotas(t *testing.T) {
	fs := newFakeServer(t, Config{RequireKey: true, Quota: tenant.Quota{Sandboxes: 2, Hibernated: 1, VMs: 2}}, sandbox.ServiceConfig{})
	ctx := context.Background()
	key, _, _ := fs.srv.keys.CreateKey(ctx, "acme", "")
	other, _, _ := fs.srv.keys.CreateKey(ctx, "beta", "")
	var ids []string
	for range 2 {
		a := call(t, fs.url, "POST", "/v1/sandboxes", `{"language":"python"}`, bearer(key)...)
		if a.status != 201 {
			t.Fatalf("create: %d %s", a.status, a.raw)
		}
		ids = append(ids, a.body["id"].(string))
	}
	a := call(t, fs.url, "POST", "/v1/sandboxes", `{"language":"python"}`, bearer(key)...)
	if a.status != 429 || a.body["code"] != "quota_exceeded" || !strings.Contains(a.raw, "2 sandboxes") || a.header.Get("Retry-After") == "" {
		t.Fatalf("third sandbox: %d %s", a.status, a.raw)
	}
	// Both running sandboxes hold the tenant's two VMs: a run is refused.
	if a := call(t, fs.url, "POST", "/v1/run", `{"language":"python","code":"print 1"}`, bearer(key)...); a.status != 429 || !strings.Contains(a.raw, "VMs") {
		t.Fatalf("run past the VM quota: %d %s", a.status, a.raw)
	}
	if a := call(t, fs.url, "POST", "/v1/run", `{"language":"python","code":"print 1"}`, bearer(other)...); a.status != 200 {
		t.Fatalf("another tenant's run: %d %s", a.status, a.raw)
	}
	if a := call(t, fs.url, "POST", "/v1/sandboxes/"+ids[0]+"/hibernate", "", bearer(key)...); a.status != 200 {
		t.Fatalf("hibernate: %d %s", a.status, a.raw)
	}
	if a := call(t, fs.url, "POST", "/v1/sandboxes/"+ids[1]+"/hibernate", "", bearer(key)...); a.status != 429 || !strings.Contains(a.raw, "hibernated") {
		t.Fatalf("second hibernation: %d %s", a.status, a.raw)
	}
	// A per-tenant override: beta may have no sandbox at all.
	zero := 1
	if err := fs.srv.keys.SetQuota(ctx, "beta", tenant.Override{Sandboxes: &zero, Rate: ptr(1.0), Burst: ptr(2)}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2100 * time.Millisecond) // quotas are cached for 2 s
	codes := []int{}
	for range 4 {
		codes = append(codes, call(t, fs.url, "GET", "/v1/sandboxes", "", bearer(other)...).status)
	}
	if codes[0] != 200 || codes[1] != 200 || codes[3] != 429 {
		t.Fatalf("rate 1/s, burst 2: statuses %v", codes)
	}
	if a := call(t, fs.url, "GET", "/v1/sandboxes", "", bearer(key)...); a.status != 200 {
		t.Fatalf("acme is not limited by beta's rate: %d", a.status)
	}
}

func ptr[T any](v T) *T { return &v }

// TestShapeCaps: shapes beyond the caps or off the list are refused
// before any VM or snapshot is made.
func TestShapeCaps(t *testing.T) {
	fs := newFakeServer(t, Config{Caps: ShapeCaps{MaxVCPUs: 2, MaxMemoryMiB: 2048, MaxDiskMiB: 1024, Shapes: []string{"2x1024"}}}, sandbox.ServiceConfig{})
	for body, want := range map[string]string{
		`{"language":"python","vcpus":3}`:                                "at most 2",
		`{"language":"python","memory_mib":4096}`:                        "at most 2048",
		`{"language":"python","disk_mib":2048}`:                          "at most 1024",
		`{"language":"python","vcpus":1,"memory_mib":1000}`:              "offered (vCPUs x MiB): 1x512, 2x1024",
		`{"language":"python","vcpus":2,"memory_mib":2048}`:              "not a shape",
		`{"language":"python","vcpus":1,"memory_mib":777,"disk_mib":64}`: "777",
	} {
		a := call(t, fs.url, "POST", "/v1/sandboxes", body)
		if a.status != 400 || a.body["code"] != "shape_not_allowed" || !strings.Contains(a.raw, want) {
			t.Errorf("%s: %d %s, want 400 shape_not_allowed mentioning %q", body, a.status, a.raw, want)
		}
	}
	if n := fs.drv.Boots.Load() + fs.drv.Restores.Load(); n != 0 {
		t.Fatalf("%d VMs started for refused shapes", n)
	}
	for _, body := range []string{`{"language":"python"}`, `{"language":"python","vcpus":2,"memory_mib":1024}`} {
		if a := call(t, fs.url, "POST", "/v1/sandboxes", body); a.status != 201 {
			t.Errorf("%s: %d %s", body, a.status, a.raw)
		}
	}
}

// TestHibernatedSandboxesExpire: with a TTL, a sandbox left hibernated is
// deleted; one in use is not.
func TestHibernatedSandboxesExpire(t *testing.T) {
	fs := newFakeServer(t, Config{}, sandbox.ServiceConfig{HibernatedTTL: 1500 * time.Millisecond})
	var ids []string
	for range 2 {
		a := call(t, fs.url, "POST", "/v1/sandboxes", `{"language":"python"}`)
		ids = append(ids, a.body["id"].(string))
	}
	if a := call(t, fs.url, "POST", "/v1/sandboxes/"+ids[0]+"/hibernate", ""); a.status != 200 {
		t.Fatalf("hibernate: %d %s", a.status, a.raw)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		a := call(t, fs.url, "GET", "/v1/sandboxes/"+ids[0], "")
		if a.status == 404 || (a.status == 200 && a.body["state"] == "deleted") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("hibernated sandbox still there after its TTL: %s", a.raw)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if a := call(t, fs.url, "GET", "/v1/sandboxes/"+ids[1], ""); a.status != 200 || a.body["state"] != "running" {
		t.Fatalf("the running sandbox: %d %s", a.status, a.raw)
	}
}
