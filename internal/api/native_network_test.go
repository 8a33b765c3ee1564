package api

import (
	"context"
	"strings"
	"testing"

	"github.com/firesandbox/firesandbox/internal/network"
	"github.com/firesandbox/firesandbox/internal/network/nettest"
	"github.com/firesandbox/firesandbox/internal/sandbox"
)

// netServer is a fake server whose sandboxes get real VM networks
// (namespaces against a nettest world), with two tenants' keys.
func netServer(t *testing.T) (fs *fakeServer, keyA, keyB string) {
	t.Helper()
	w := nettest.New(t)
	fs = newFakeServer(t, Config{RequireKey: true}, sandbox.ServiceConfig{Network: &sandbox.NetworkConfig{Mode: sandbox.NetworkOn,
		Config: network.Config{RunDir: t.TempDir(), Prefix: "fsa", UplinkNetns: w.Uplink(), DNSUpstreams: []string{w.DNS()}}}})
	ctx := context.Background()
	var err error
	if keyA, _, err = fs.srv.keys.CreateKey(ctx, "acme", ""); err != nil {
		t.Fatal(err)
	}
	if keyB, _, err = fs.srv.keys.CreateKey(ctx, "beta", ""); err != nil {
		t.Fatal(err)
	}
	return fs, keyA, keyB
}

// The network field and endpoint: a bad entry is a 400 that names it, the
// policy comes back canonical, changes are the owner's alone, and the
// ports of another tenant's sandbox do not exist.
func TestNetworkEndpoints(t *testing.T) {
	fs, keyA, keyB := netServer(t)
	a := call(t, fs.url, "POST", "/v1/sandboxes", `{"language":"python","network":{"allow_out":["pypi.org","not a domain!"]}}`, bearer(keyA)...)
	if a.status != 400 || a.body["code"] != "bad_network_policy" || !strings.Contains(a.raw, "allow_out[1]") || !strings.Contains(a.raw, "not a domain!") {
		t.Fatalf("create with a bad entry: %d %s", a.status, a.raw)
	}
	a = call(t, fs.url, "POST", "/v1/sandboxes", `{"language":"python","network":{"allow_out":["PyPI.org","*.pythonhosted.org","1.2.3.0/24"],"deny_out":["1.2.3.4"]}}`, bearer(keyA)...)
	if a.status != 201 {
		t.Fatalf("create: %d %s", a.status, a.raw)
	}
	id := a.body["id"].(string)
	defer call(t, fs.url, "DELETE", "/v1/sandboxes/"+id, "", bearer(keyA)...)
	got := call(t, fs.url, "GET", "/v1/sandboxes/"+id+"/network", "", bearer(keyA)...)
	if got.status != 200 || !strings.Contains(got.raw, `"allow_out":["1.2.3.0/24","*.pythonhosted.org","pypi.org"]`) || !strings.Contains(got.raw, `"deny_out":["1.2.3.4"]`) {
		t.Fatalf("GET network: %d %s", got.status, got.raw)
	}
	for _, c := range []struct{ method, path, body string }{
		{"GET", "/v1/sandboxes/" + id + "/network", ""},
		{"PUT", "/v1/sandboxes/" + id + "/network", `{"allow_out":["example.org"]}`},
		{"GET", "/v1/sandboxes/" + id + "/ports/8000/", ""},
		{"POST", "/v1/sandboxes/" + id + "/ports/8000/x?y=1", "data"},
		{"GET", "/v1/sandboxes/" + id + "/ports/8000", ""},
	} {
		if r := call(t, fs.url, c.method, c.path, c.body, bearer(keyB)...); r.status != 404 {
			t.Errorf("another tenant's %s %s: %d %s", c.method, c.path, r.status, r.raw)
		}
	}
	if r := call(t, fs.url, "PUT", "/v1/sandboxes/"+id+"/network", `{"allow_out":["example.org"],"deny_out":["*.bad..example"]}`, bearer(keyA)...); r.status != 400 || !strings.Contains(r.raw, "deny_out[0]") {
		t.Fatalf("PUT with a bad entry: %d %s", r.status, r.raw)
	}
	if r := call(t, fs.url, "PUT", "/v1/sandboxes/"+id+"/network", `{"allow_out":["example.org"],"unknown":1}`, bearer(keyA)...); r.status != 400 {
		t.Fatalf("PUT with an unknown field: %d %s", r.status, r.raw)
	}
	r := call(t, fs.url, "POST", "/v1/sandboxes/"+id+"/network", `{"allow_out":["Example.ORG"]}`, bearer(keyA)...)
	if r.status != 200 || !strings.Contains(r.raw, `"allow_out":["example.org"]`) || !strings.Contains(r.raw, `"deny_out":[]`) {
		t.Fatalf("POST network: %d %s", r.status, r.raw)
	}
	for _, p := range []string{"0", "65536", "08000", "x"} {
		if r := call(t, fs.url, "GET", "/v1/sandboxes/"+id+"/ports/"+p+"/", "", bearer(keyA)...); r.status != 400 {
			t.Errorf("port %q: %d %s", p, r.status, r.raw)
		}
	}
	if r := call(t, fs.url, "GET", "/v1/sandboxes/sb-0123456789abcdef/ports/80/", "", bearer(keyA)...); r.status != 404 {
		t.Errorf("ports of no sandbox: %d %s", r.status, r.raw)
	}
	// A one-shot run with a bad policy is refused before any VM.
	if r := call(t, fs.url, "POST", "/v1/run", `{"language":"python","code":"print 1","network":{"allow_out":["a b"]}}`, bearer(keyA)...); r.status != 400 {
		t.Errorf("run with a bad policy: %d %s", r.status, r.raw)
	}
}

// A server without a network says so: 501, never a sandbox that silently
// lacks what it asked for.
func TestNetworkUnavailable(t *testing.T) {
	fs := newFakeServer(t, Config{}, sandbox.ServiceConfig{})
	a := call(t, fs.url, "POST", "/v1/sandboxes", `{"language":"python","network":{"allow_out":["pypi.org"]}}`)
	if a.status != 501 || a.body["code"] != "network_unavailable" {
		t.Fatalf("create with network on a server without: %d %s", a.status, a.raw)
	}
	a = call(t, fs.url, "POST", "/v1/sandboxes", `{"language":"python"}`)
	if a.status != 201 {
		t.Fatalf("create: %d %s", a.status, a.raw)
	}
	id := a.body["id"].(string)
	defer call(t, fs.url, "DELETE", "/v1/sandboxes/"+id, "")
	if r := call(t, fs.url, "PUT", "/v1/sandboxes/"+id+"/network", `{"allow_out":["pypi.org"]}`); r.status != 501 {
		t.Fatalf("PUT network: %d %s", r.status, r.raw)
	}
	if r := call(t, fs.url, "GET", "/v1/sandboxes/"+id+"/ports/80/", ""); r.status != 502 || !strings.Contains(r.raw, "no network") {
		t.Fatalf("port of a sandbox without a device: %d %s", r.status, r.raw)
	}
	if r := call(t, fs.url, "POST", "/v1/run", `{"language":"python","code":"print 1","network":{"allow_out":["pypi.org"]}}`); r.status != 501 {
		t.Fatalf("run with network: %d %s", r.status, r.raw)
	}
}
