package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/sandbox"
	"github.com/firesandbox/firesandbox/internal/state"
)

// newTestServer serves the API over a data directory with no kernel or
// images: enough for everything that fails before a VM is needed.
func newTestServer(t *testing.T, cfg Config) (*Server, *httptest.Server) {
	t.Helper()
	dir := t.TempDir()
	runDir, err := os.MkdirTemp("", "fsapi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(runDir) })
	mgr, err := sandbox.New(sandbox.Config{DataDir: dir, RunDir: runDir, Driver: "qemu", Accel: "tcg"})
	if err != nil {
		t.Fatal(err)
	}
	// A python "image" (a manifest only): python counts as installed,
	// so validation gets past the language; no kernel, so no VM boots.
	e, err := mgr.Catalog().Lookup("python", "")
	if err != nil {
		t.Fatal(err)
	}
	id := e.ID(image.DefaultBase, image.FormatSquashFS)
	m, _ := json.Marshal(image.Manifest{ID: id, Language: "python", Version: e.Version, Format: image.FormatSquashFS, File: "rootfs.squashfs"})
	if err := os.MkdirAll(filepath.Join(dir, "images", id), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "images", id, "manifest.json"), m, 0o644); err != nil {
		t.Fatal(err)
	}
	svc, err := sandbox.OpenService(mgr, sandbox.ServiceConfig{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := Open(cfg, svc)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		hs.Close()
		if err := srv.Shutdown(context.Background()); err != nil {
			t.Error(err)
		}
		if err := svc.Close(context.Background()); err != nil {
			t.Error(err)
		}
	})
	return srv, hs
}

type reply struct {
	status int
	body   map[string]any
	raw    string
}

func do(t *testing.T, hs *httptest.Server, method, path, contentType, body string, hdr ...string) reply {
	t.Helper()
	req, err := http.NewRequest(method, hs.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := hs.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	r := reply{status: resp.StatusCode, raw: string(b)}
	_ = json.Unmarshal(b, &r.body)
	return r
}

func TestConfigValidate(t *testing.T) {
	for name, tc := range map[string]struct {
		cfg Config
		ok  bool
	}{
		"default":           {Config{}, true},
		"loopback v4":       {Config{Listen: "127.0.0.1:1"}, true},
		"loopback v6":       {Config{Listen: "[::1]:1"}, true},
		"localhost":         {Config{Listen: "localhost:1"}, true},
		"all interfaces":    {Config{Listen: "0.0.0.0:7070"}, false},
		"empty host":        {Config{Listen: ":7070"}, false},
		"public with key":   {Config{Listen: "0.0.0.0:7070", APIKey: "k"}, true},
		"bad address":       {Config{Listen: "nope"}, false},
		"huge max timeout":  {Config{MaxTimeout: 2 * time.Hour}, false},
		"negative max body": {Config{MaxBody: -1}, false},
	} {
		t.Run(name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if (err == nil) != tc.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tc.ok)
			}
			if !tc.ok && name == "all interfaces" && !strings.Contains(err.Error(), "API key") {
				t.Errorf("error does not say what to do: %v", err)
			}
		})
	}
}

func TestAuth(t *testing.T) {
	_, hs := newTestServer(t, Config{APIKey: "s3cret"})
	if r := do(t, hs, "GET", "/healthz", "", ""); r.status != 200 {
		t.Fatalf("healthz without key: %d", r.status)
	}
	for name, tc := range map[string]struct {
		hdr  []string
		want int
	}{
		"none":          {nil, 401},
		"wrong bearer":  {[]string{"Authorization", "Bearer nope"}, 401},
		"wrong x-key":   {[]string{"X-API-Key", "s3cre"}, 401},
		"empty bearer":  {[]string{"Authorization", "Bearer "}, 401},
		"bearer":        {[]string{"Authorization", "Bearer s3cret"}, 200},
		"bearer lower":  {[]string{"Authorization", "bearer s3cret"}, 200},
		"x-api-key":     {[]string{"X-API-Key", "s3cret"}, 200},
		"basic instead": {[]string{"Authorization", "Basic s3cret"}, 401},
	} {
		t.Run(name, func(t *testing.T) {
			r := do(t, hs, "GET", "/v1/languages", "", "", tc.hdr...)
			if r.status != tc.want {
				t.Fatalf("status %d, want %d: %s", r.status, tc.want, r.raw)
			}
			if tc.want == 401 && r.body["code"] != "unauthorized" {
				t.Errorf("body %s", r.raw)
			}
		})
	}
	r := do(t, hs, "GET", "/api/v2/runtimes", "", "")
	if r.status != 401 || r.body["message"] == nil {
		t.Fatalf("piston 401 shape: %d %s", r.status, r.raw)
	}
	if r := do(t, hs, "GET", "/metrics", "", ""); r.status != 401 {
		t.Fatalf("metrics without key: %d", r.status)
	}
}

func TestNativeValidation(t *testing.T) {
	_, hs := newTestServer(t, Config{MaxTimeout: 30 * time.Second, MaxBody: 4096})
	big := `{"language":"python","code":"` + strings.Repeat("x", 5000) + `"}`
	for name, tc := range map[string]struct {
		path, body string
		status     int
		code, want string
	}{
		"malformed json":    {"/v1/run", `{"language":`, 400, "bad_request", "malformed JSON"},
		"not an object":     {"/v1/run", `[1,2]`, 400, "bad_request", "want api.RunIn"},
		"trailing data":     {"/v1/run", `{"language":"python","code":"1"} {}`, 400, "bad_request", "after the JSON"},
		"empty body":        {"/v1/run", ``, 400, "bad_request", "empty"},
		"unknown field":     {"/v1/run", `{"language":"python","code":"1","limitz":{}}`, 400, "bad_request", "limitz"},
		"no language":       {"/v1/run", `{"code":"1"}`, 400, "bad_request", "language is required"},
		"unknown language":  {"/v1/run", `{"language":"klingon","code":"1"}`, 400, "unknown_language", "known languages"},
		"unknown version":   {"/v1/run", `{"language":"python","version":"2.7","code":"1"}`, 400, "unknown_language", "2.7"},
		"not installed":     {"/v1/run", `{"language":"ruby","code":"1"}`, 400, "not_installed", "image build ruby"},
		"no kernel":         {"/v1/run", `{"language":"python","code":"1"}`, 503, "not_installed", "kernel"},
		"no program":        {"/v1/run", `{"language":"python"}`, 400, "bad_request", "no program"},
		"code and files":    {"/v1/run", `{"language":"python","code":"1","files":[{"path":"a.py","content":"1"}]}`, 400, "bad_request", "not both"},
		"dotdot":            {"/v1/run", `{"language":"python","files":[{"path":"main.py","content":"1"},{"path":"../etc/x","content":"1"}]}`, 400, "bad_request", "leaves its directory"},
		"absolute":          {"/v1/run", `{"language":"python","files":[{"path":"/etc/passwd","content":"1"}]}`, 400, "bad_request", "absolute"},
		"unclean":           {"/v1/run", `{"language":"python","files":[{"path":"a/./b","content":"1"}]}`, 400, "bad_request", "not clean"},
		"bad base64":        {"/v1/run", `{"language":"python","files":[{"path":"a","content":"!!","encoding":"base64"}]}`, 400, "bad_request", "base64"},
		"bad encoding":      {"/v1/run", `{"language":"python","files":[{"path":"a","content":"x","encoding":"rot13"}]}`, 400, "bad_request", "encoding"},
		"negative timeout":  {"/v1/run", `{"language":"python","code":"1","limits":{"timeout_ms":-1}}`, 400, "bad_request", "must not be negative"},
		"huge timeout":      {"/v1/run", `{"language":"python","code":"1","limits":{"timeout_ms":999999999}}`, 400, "bad_request", "at most 30000"},
		"overflowing limit": {"/v1/run", `{"language":"python","code":"1","limits":{"memory_bytes":1e40}}`, 400, "bad_request", "memory_bytes"},
		"fractional limit":  {"/v1/run", `{"language":"python","code":"1","limits":{"procs":1.5}}`, 400, "bad_request", "procs"},
		"huge memory":       {"/v1/run", `{"language":"python","code":"1","limits":{"memory_bytes":1099511627776}}`, 400, "bad_request", "at most"},
		"stream validates":  {"/v1/run/stream", `{"language":"klingon","code":"1"}`, 400, "unknown_language", "klingon"},
		"body too large":    {"/v1/run", big, 413, "body_too_large", "too large"},
		"create no lang":    {"/v1/sandboxes", `{}`, 400, "bad_request", "language is required"},
		"create bad lang":   {"/v1/sandboxes", `{"language":"klingon"}`, 400, "unknown_language", "klingon"},
		"create neg mem":    {"/v1/sandboxes", `{"language":"python","memory_mib":-5}`, 400, "bad_request", "MiB"},
		"create huge vcpus": {"/v1/sandboxes", `{"language":"python","vcpus":1000}`, 400, "bad_request", "vCPUs"},
		"create neg disk":   {"/v1/sandboxes", `{"language":"python","disk_mib":-1}`, 400, "bad_request", "disk_mib"},
		"create neg time":   {"/v1/sandboxes", `{"language":"python","timeout_s":-1}`, 400, "bad_request", "timeout_s"},
		"exec unknown id":   {"/v1/sandboxes/sb-nope/exec", `{"cmd":["true"]}`, 404, "sandbox_not_found", "sb-nope"},
		"exec nothing":      {"/v1/sandboxes/sb-nope/exec", `{}`, 400, "bad_request", "nothing to run"},
		"exec neg timeout":  {"/v1/sandboxes/sb-nope/exec", `{"cmd":["true"],"timeout_ms":-3}`, 400, "bad_request", "negative"},
		"upload traversal":  {"/v1/sandboxes/sb-nope/files", `{"files":[{"path":"../../x","content":""}]}`, 400, "bad_request", "leaves"},
		"upload none":       {"/v1/sandboxes/sb-nope/files", `{"files":[]}`, 400, "bad_request", "no files"},
		"hibernate unknown": {"/v1/sandboxes/sb-nope/hibernate", ``, 404, "sandbox_not_found", "sb-nope"},
		"resume unknown":    {"/v1/sandboxes/sb-nope/resume", ``, 404, "sandbox_not_found", "sb-nope"},
		"no such route":     {"/v1/nothing", `{}`, 404, "no_route", "/v1/nothing"},
	} {
		t.Run(name, func(t *testing.T) {
			r := do(t, hs, "POST", tc.path, "application/json", tc.body)
			if r.status != tc.status || r.body["code"] != tc.code {
				t.Fatalf("got %d %s, want %d %s", r.status, r.raw, tc.status, tc.code)
			}
			if msg, _ := r.body["error"].(string); !strings.Contains(msg, tc.want) {
				t.Fatalf("error %q does not mention %q", msg, tc.want)
			}
		})
	}
	for name, path := range map[string]string{
		"get unknown":        "/v1/sandboxes/sb-nope",
		"download unknown":   "/v1/sandboxes/sb-nope/files?path=a.txt",
		"download traversal": "/v1/sandboxes/sb-nope/files?path=../a",
		"download absolute":  "/v1/sandboxes/sb-nope/files?path=/etc/passwd",
		"download no path":   "/v1/sandboxes/sb-nope/files",
	} {
		t.Run(name, func(t *testing.T) {
			r := do(t, hs, "GET", path, "", "")
			want := 404
			if name != "get unknown" && name != "download unknown" {
				want = 400
			}
			if r.status != want || r.body["error"] == nil {
				t.Fatalf("got %d %s, want %d", r.status, r.raw, want)
			}
		})
	}
	if r := do(t, hs, "DELETE", "/v1/sandboxes/sb-nope", "", ""); r.status != 404 {
		t.Fatalf("delete unknown: %d %s", r.status, r.raw)
	}
}

func TestDeletedAndLostSandboxes(t *testing.T) {
	srv, hs := newTestServer(t, Config{})
	ctx := context.Background()
	for id, st := range map[string]state.State{"sb-gone": state.Deleted, "sb-lost": state.Lost} {
		if err := srv.svc.DB.Create(ctx, state.Sandbox{ID: id, Language: "python", Version: "3.11.2", State: st, Reason: "the host rebooted"}); err != nil {
			t.Fatal(err)
		}
	}
	for name, tc := range map[string]struct {
		method, path, body string
		status             int
	}{
		"exec deleted":      {"POST", "/v1/sandboxes/sb-gone/exec", `{"cmd":["true"]}`, 410},
		"upload deleted":    {"POST", "/v1/sandboxes/sb-gone/files", `{"files":[{"path":"a","content":""}]}`, 410},
		"download deleted":  {"GET", "/v1/sandboxes/sb-gone/files?path=a", ``, 410},
		"resume deleted":    {"POST", "/v1/sandboxes/sb-gone/resume", ``, 410},
		"delete deleted":    {"DELETE", "/v1/sandboxes/sb-gone", ``, 410},
		"exec lost":         {"POST", "/v1/sandboxes/sb-lost/exec", `{"cmd":["true"]}`, 409},
		"hibernate lost":    {"POST", "/v1/sandboxes/sb-lost/hibernate", ``, 409},
		"get deleted shows": {"GET", "/v1/sandboxes/sb-gone", ``, 200},
	} {
		t.Run(name, func(t *testing.T) {
			r := do(t, hs, tc.method, tc.path, "application/json", tc.body)
			if r.status != tc.status {
				t.Fatalf("got %d %s, want %d", r.status, r.raw, tc.status)
			}
		})
	}
	r := do(t, hs, "GET", "/v1/sandboxes", "", "")
	list, _ := r.body["sandboxes"].([]any)
	if r.status != 200 || len(list) != 1 {
		t.Fatalf("list (deleted hidden): %d %s", r.status, r.raw)
	}
	if r := do(t, hs, "DELETE", "/v1/sandboxes/sb-lost", "", ""); r.status != 204 {
		t.Fatalf("delete lost: %d %s", r.status, r.raw)
	}
	if r := do(t, hs, "GET", "/v1/sandboxes/sb-lost", "", ""); r.body["state"] != "deleted" {
		t.Fatalf("after delete: %s", r.raw)
	}
}

func TestPistonValidation(t *testing.T) {
	_, hs := newTestServer(t, Config{MaxTimeout: 20 * time.Second})
	file := `"files":[{"content":"print(1)"}]`
	for name, tc := range map[string]struct{ body, want string }{
		"no language":       {`{"version":"*",` + file + `}`, "language is required as a string"},
		"empty language":    {`{"language":"","version":"*",` + file + `}`, "language is required as a string"},
		"numeric language":  {`{"language":3,"version":"*",` + file + `}`, "language is required as a string"},
		"no version":        {`{"language":"python",` + file + `}`, "version is required as a string"},
		"no files":          {`{"language":"python","version":"*"}`, "files is required as an array"},
		"files object":      {`{"language":"python","version":"*","files":{"content":"x"}}`, "files is required as an array"},
		"no content":        {`{"language":"python","version":"*","files":[{"content":"x"},{"name":"a"}]}`, "files[1].content is required as a string"},
		"numeric content":   {`{"language":"python","version":"*","files":[{"content":5}]}`, "files[0].content is required as a string"},
		"unknown language":  {`{"language":"html","version":"5.0.0",` + file + `}`, "html-5.0.0 runtime is unknown"},
		"unknown version":   {`{"language":"python","version":"2.7",` + file + `}`, "python-2.7 runtime is unknown"},
		"no utf8 file":      {`{"language":"python","version":"*","files":[{"content":"AA==","encoding":"base64"}]}`, "files must include at least one utf8 encoded file"},
		"timeout string":    {`{"language":"python","version":"*",` + file + `,"run_timeout":"100"}`, "If specified, run_timeout must be a number"},
		"timeout too big":   {`{"language":"python","version":"*",` + file + `,"run_timeout":999999}`, "run_timeout cannot exceed the configured limit of 20000"},
		"timeout negative":  {`{"language":"python","version":"*",` + file + `,"compile_timeout":-5}`, "compile_timeout must be non-negative"},
		"memory negative":   {`{"language":"python","version":"*",` + file + `,"run_memory_limit":-2}`, "run_memory_limit must be non-negative"},
		"memory too big":    {`{"language":"python","version":"*",` + file + `,"run_memory_limit":1e15}`, "run_memory_limit cannot exceed the configured limit of"},
		"cpu string":        {`{"language":"python","version":"*",` + file + `,"run_cpu_time":true}`, "If specified, run_cpu_time must be a number"},
		"order: memory 1st": {`{"language":"python","version":"*",` + file + `,"run_timeout":"x","compile_memory_limit":"y"}`, "If specified, compile_memory_limit must be a number"},
		"traversal":         {`{"language":"python","version":"*","files":[{"name":"../x.py","content":"1"}]}`, "leaves its directory"},
		"absolute name":     {`{"language":"python","version":"*","files":[{"name":"/tmp/x.py","content":"1"}]}`, "absolute"},
		"bad args":          {`{"language":"python","version":"*",` + file + `,"args":"a b"}`, "args must be an array of strings"},
		"bad stdin":         {`{"language":"python","version":"*",` + file + `,"stdin":5}`, "stdin must be a string"},
		"malformed json":    {`{"language":"python",`, "malformed JSON"},
	} {
		t.Run(name, func(t *testing.T) {
			r := do(t, hs, "POST", "/api/v2/execute", "application/json", tc.body)
			if r.status != 400 {
				t.Fatalf("status %d, want 400: %s", r.status, r.raw)
			}
			msg, _ := r.body["message"].(string)
			if len(r.body) != 1 || !strings.Contains(msg, tc.want) {
				t.Fatalf("body %s, want only {\"message\": ...%q...}", r.raw, tc.want)
			}
		})
	}

	// piston-client posts JSON as text/plain, with memory limits of -1
	// and string args: all valid. Without VMs here, the run itself fails,
	// but not with a 400.
	body := `{"language":"python","version":"3.11.2",` + file + `,"stdin":"","args":["1","2","3"],"compile_timeout":10000,"run_timeout":3000,"compile_memory_limit":-1,"run_memory_limit":-1}`
	r := do(t, hs, "POST", "/api/v2/execute", "text/plain;charset=UTF-8", body)
	if r.status == 400 || r.status == 415 || r.body["message"] == nil {
		t.Fatalf("piston-client style request refused: %d %s", r.status, r.raw)
	}

	r = do(t, hs, "GET", "/api/v2/runtimes", "", "")
	var rts []PistonRuntime
	if err := json.Unmarshal([]byte(r.raw), &rts); r.status != 200 || err != nil || len(rts) != 1 ||
		rts[0].Language != "python" || len(rts[0].Aliases) == 0 {
		t.Fatalf("runtimes (only python is installed): %d %s", r.status, r.raw)
	}
	// A catalog language whose image is not built is unknown to Piston.
	r = do(t, hs, "POST", "/api/v2/execute", "", `{"language":"ruby","version":"*",`+file+`}`)
	if r.status != 400 || r.body["message"] != "ruby-* runtime is unknown" {
		t.Fatalf("uninstalled runtime: %d %s", r.status, r.raw)
	}
}

func TestPistonVersionSelectors(t *testing.T) {
	for in, want := range map[string]string{"*": "*", "3.x": "3", "3.11.x": "3.11", "3.*": "3", "x": "*", "3.11.2": "3.11.2", "v3": "3"} {
		if got := pistonVersion(in); got != want {
			t.Errorf("pistonVersion(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestMetricsAndHealth(t *testing.T) {
	_, hs := newTestServer(t, Config{})
	if r := do(t, hs, "GET", "/healthz", "", ""); r.status != 200 || r.body["status"] != "ok" {
		t.Fatalf("healthz: %d %s", r.status, r.raw)
	}
	do(t, hs, "POST", "/v1/run", "application/json", `{"language":"klingon","code":"1"}`)
	r := do(t, hs, "GET", "/metrics", "", "")
	for _, want := range []string{
		`firesandbox_http_requests_total{route="POST /v1/run",code="400"} 1`,
		`firesandbox_http_request_duration_seconds_bucket{route="POST /v1/run",le="+Inf"} 1`,
		"# TYPE firesandbox_runs_total counter",
		"firesandbox_vm_slots ",
		`firesandbox_vms_alive{kind="sandbox"} 0`,
		`firesandbox_sandboxes{state="running"} 0`,
		`firesandbox_queue_rejected_total{reason="queue_full"} 0`,
	} {
		if !strings.Contains(r.raw, want) {
			t.Errorf("metrics lack %q:\n%s", want, r.raw)
		}
	}
}

func TestStatusOf(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{sandbox.ErrQueueFull, 429},
		{sandbox.ErrQueueTimeout, 503},
		{sandbox.ErrClosed, 503},
		{sandbox.ErrNotReady, 503},
		{sandbox.ErrSandboxDeleted, 410},
		{sandbox.ErrNoSandbox, 404},
		{sandbox.ErrSandboxLost, 409},
		{state.ErrConflict, 409},
		{context.DeadlineExceeded, 504},
		{&http.MaxBytesError{Limit: 1}, 413},
		{errors.New("boom"), 500},
	} {
		if got, _ := statusOf(tc.err); got != tc.want {
			t.Errorf("statusOf(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}

func TestStreamKeepsRunesWhole(t *testing.T) {
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("POST", "/v1/run/stream", nil)
	es := newEventStream(rec, req, func() {})
	w := es.writer("run", "stdout")
	b := []byte("aé€")
	for i := range b { // one byte at a time: every multi-byte rune is split
		w.Write(b[i : i+1])
	}
	es.flushCarry()
	es.end() // what the middleware does when the handler returns
	var data string
	for _, line := range strings.Split(strings.TrimSpace(rec.Body.String()), "\n") {
		var ev Event
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatal(err)
		}
		data += ev.Data
	}
	if data != "aé€" || rec.Header().Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("got %q (%s)", data, rec.Header().Get("Content-Type"))
	}
}

func TestCapacityErrors(t *testing.T) {
	// One slot, held by the test; no queue: the next run is refused.
	srv, hs := newTestServer(t, Config{})
	srv.lim = sandbox.NewLimiter(1, 0, 50*time.Millisecond)
	release, err := srv.lim.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	req, _ := http.NewRequest("POST", hs.URL+"/v1/run", strings.NewReader(`{"language":"python","code":"1"}`))
	resp, err := hs.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(b), "retry later") {
		t.Fatalf("queue full: %d %s", resp.StatusCode, b)
	}

	srv.lim = sandbox.NewLimiter(1, 1, 50*time.Millisecond)
	rel2, _ := srv.lim.Acquire(context.Background())
	defer rel2()
	r := do(t, hs, "POST", "/api/v2/execute", "", `{"language":"python","version":"*","files":[{"content":"1"}]}`)
	if r.status != 503 || !strings.Contains(r.body["message"].(string), "waited 50ms") {
		t.Fatalf("queue wait ran out: %d %s", r.status, r.raw)
	}
}
