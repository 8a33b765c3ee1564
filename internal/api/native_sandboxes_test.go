package api

import (
	"bytes"
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/sandbox"
	"github.com/firesandbox/firesandbox/internal/testutil"
	"github.com/firesandbox/firesandbox/internal/vmm/vmmfake"
)

// fakeSandboxServer serves the API over the fake VMM driver: the whole sandbox
// lifecycle through HTTP, without VMs.
func fakeSandboxServer(t *testing.T, sc sandbox.ServiceConfig) (*sandbox.Service, *httptest.Server) {
	t.Helper()
	d := vmmfake.New()
	mgr, err := sandbox.New(sandbox.Config{DataDir: testutil.FakeDataDir(t, "python"), RunDir: t.TempDir()}, sandbox.WithDriver(d))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := sandbox.OpenService(mgr, sc, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := Open(Config{}, svc)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		hs.Close()
		srv.Shutdown(context.Background())
		svc.Close(context.Background())
		mgr.Close()
		if live := d.Live(); len(live) != 0 {
			t.Errorf("%d VMs alive after the test", len(live))
		}
	})
	return svc, hs
}

func TestSandboxAPILifecycle(t *testing.T) {
	_, hs := fakeSandboxServer(t, sandbox.ServiceConfig{MaxForks: 3})
	json := "application/json"
	r := do(t, hs, "POST", "/v1/sandboxes", json, `{"language":"python","disk_mib":64,"lifetime_s":600,"on_timeout":"pause",
		"idle_timeout_s":120,"metadata":{"team":"a","run":"1"}}`)
	if r.status != 201 {
		t.Fatalf("create: %d %s", r.status, r.raw)
	}
	id := r.body["id"].(string)
	if r.body["on_timeout"] != "pause" || r.body["idle_timeout_s"] != 120.0 || r.body["timeout_s"] != 120.0 || r.body["expires_at"] == nil {
		t.Fatalf("created %s", r.raw)
	}
	at, _ := time.Parse(time.RFC3339Nano, r.body["expires_at"].(string))
	if d := time.Until(at); d < 9*time.Minute || d > 11*time.Minute {
		t.Fatalf("expires in %s, want 10m", d)
	}
	// The first name of the idle timeout still works; the two must agree.
	if r := do(t, hs, "POST", "/v1/sandboxes", json, `{"language":"python","timeout_s":60}`); r.status != 201 || r.body["idle_timeout_s"] != 60.0 {
		t.Fatalf("create with timeout_s: %d %s", r.status, r.raw)
	}
	if r := do(t, hs, "POST", "/v1/sandboxes", json, `{"language":"python","timeout_s":60,"idle_timeout_s":30}`); r.status != 400 {
		t.Fatalf("disagreeing idle timeouts: %d %s", r.status, r.raw)
	}
	if r := do(t, hs, "POST", "/v1/sandboxes", json, `{"language":"python","lifetime_s":999999}`); r.status != 400 || !strings.Contains(r.raw, "timeout") {
		t.Fatalf("a lifetime past the maximum: %d %s", r.status, r.raw)
	}
	if r := do(t, hs, "POST", "/v1/sandboxes", json, `{"language":"python","on_timeout":"explode"}`); r.status != 400 {
		t.Fatalf("bad on_timeout: %d %s", r.status, r.raw)
	}

	// List, filtered by metadata and state.
	count := func(q string) int {
		t.Helper()
		r := do(t, hs, "GET", "/v1/sandboxes"+q, "", "")
		if r.status != 200 {
			t.Fatalf("list %s: %d %s", q, r.status, r.raw)
		}
		return len(r.body["sandboxes"].([]any))
	}
	if n := count("?metadata=team=a&metadata=run=1"); n != 1 {
		t.Fatalf("metadata filter: %d", n)
	}
	if n := count("?metadata=team=b"); n != 0 {
		t.Fatalf("metadata filter on another value: %d", n)
	}
	if n := count("?state=running"); n != 2 {
		t.Fatalf("state filter: %d", n)
	}
	if r := do(t, hs, "GET", "/v1/sandboxes?metadata=novalue", "", ""); r.status != 400 {
		t.Fatalf("bad metadata filter: %d", r.status)
	}

	// Timeout: a new end.
	r = do(t, hs, "POST", "/v1/sandboxes/"+id+"/timeout", json, `{"timeout_s":3600}`)
	if r.status != 200 {
		t.Fatalf("timeout: %d %s", r.status, r.raw)
	}
	at, _ = time.Parse(time.RFC3339Nano, r.body["expires_at"].(string))
	if d := time.Until(at); d < 59*time.Minute {
		t.Fatalf("new end in %s", d)
	}
	if r := do(t, hs, "POST", "/v1/sandboxes/"+id+"/timeout", json, `{}`); r.status != 400 {
		t.Fatalf("timeout without a value: %d", r.status)
	}

	// Fork: children with their own ids.
	r = do(t, hs, "POST", "/v1/sandboxes/"+id+"/fork", json, `{"count":2}`)
	if r.status != 201 {
		t.Fatalf("fork: %d %s", r.status, r.raw)
	}
	kids := r.body["sandboxes"].([]any)
	if len(kids) != 2 || kids[0].(map[string]any)["parent"] != id || kids[0].(map[string]any)["state"] != "running" {
		t.Fatalf("fork answer %s", r.raw)
	}
	if r := do(t, hs, "POST", "/v1/sandboxes/"+id+"/fork", json, `{"count":4}`); r.status != 400 || !strings.Contains(r.raw, "1 to 3") {
		t.Fatalf("fork past the maximum: %d %s", r.status, r.raw)
	}

	// Pause, its old name, resume with a lifetime.
	for _, verb := range []string{"pause", "hibernate"} {
		r = do(t, hs, "POST", "/v1/sandboxes/"+id+"/"+verb, "", "")
		if r.status != 200 || r.body["state"] != "hibernated" || r.body["expires_at"] != nil {
			t.Fatalf("%s: %d %s", verb, r.status, r.raw)
		}
		r = do(t, hs, "POST", "/v1/sandboxes/"+id+"/resume", json, `{"timeout_s":120}`)
		if r.status != 200 || r.body["state"] != "running" {
			t.Fatalf("resume: %d %s", r.status, r.raw)
		}
		at, _ = time.Parse(time.RFC3339Nano, r.body["expires_at"].(string))
		if d := time.Until(at); d < time.Minute || d > 3*time.Minute {
			t.Fatalf("resumed with a lifetime of %s", d)
		}
	}
	if r := do(t, hs, "POST", "/v1/sandboxes/"+id+"/resume", "", ""); r.status != 200 {
		t.Fatalf("resume without a body: %d %s", r.status, r.raw)
	}
	if r := do(t, hs, "POST", "/v1/sandboxes/sb-nope/fork", json, `{"count":1}`); r.status != 404 {
		t.Fatalf("fork of a missing sandbox: %d", r.status)
	}
}

// Past the memory budget a create answers 503 and names the limit; a
// changed kernel makes a fork answer 409 and keeps the sandbox.
func TestSandboxAPIRefusals(t *testing.T) {
	svc, hs := fakeSandboxServer(t, sandbox.ServiceConfig{MemoryBudgetMiB: 2 * (512 + 64)})
	json := "application/json"
	var ids []string
	for range 2 {
		r := do(t, hs, "POST", "/v1/sandboxes", json, `{"language":"python"}`)
		if r.status != 201 {
			t.Fatalf("create: %d %s", r.status, r.raw)
		}
		ids = append(ids, r.body["id"].(string))
	}
	r := do(t, hs, "POST", "/v1/sandboxes", json, `{"language":"python"}`)
	if r.status != 503 || !strings.Contains(r.raw, "memory_budget") || !strings.Contains(r.raw, "memory budget") {
		t.Fatalf("create past the budget: %d %s", r.status, r.raw)
	}
	do(t, hs, "POST", "/v1/sandboxes/"+ids[1]+"/pause", "", "")

	k := filepath.Join(svc.Manager.Config().DataDir, "kernels", "fake-1", "manifest.json")
	b, _ := os.ReadFile(k)
	time.Sleep(10 * time.Millisecond)
	os.WriteFile(k, bytes.Replace(b, []byte(`"aa"`), []byte(`"cc"`), 1), 0o644)
	r = do(t, hs, "POST", "/v1/sandboxes/"+ids[0]+"/fork", json, `{"count":1}`)
	if r.status != 409 || !strings.Contains(r.raw, "incompatible_snapshot") || !strings.Contains(r.raw, "kernel") {
		t.Fatalf("fork after a kernel change: %d %s", r.status, r.raw)
	}
	if r := do(t, hs, "GET", "/v1/sandboxes/"+ids[0], "", ""); r.body["state"] != "running" {
		t.Fatalf("after a refused fork: %s", r.raw)
	}
	r = do(t, hs, "POST", "/v1/sandboxes/"+ids[1]+"/resume", "", "")
	if r.status != 409 || !strings.Contains(r.raw, "kernel") {
		t.Fatalf("resume after a kernel change: %d %s", r.status, r.raw)
	}
	if r := do(t, hs, "GET", "/v1/sandboxes/"+ids[1], "", ""); r.body["state"] != "hibernated" {
		t.Fatalf("after a refused resume: %s", r.raw)
	}
}
