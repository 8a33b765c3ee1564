package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/sandbox"
	"github.com/firesandbox/firesandbox/internal/testutil"
)

// vmServer is a real `serve` in this process on a loopback port.
type vmServer struct {
	t    *testing.T
	srv  *Server
	svc  *sandbox.Service
	mgr  *sandbox.Manager
	url  string
	done chan error
}

// startVMServer serves the API with real VMs: kernel, images and language
// snapshots from the shared fixtures; state in stateDir; VM run
// directories in runDir, so leaks can be counted exactly. No warm pool:
// every VM alive is one a request owns.
func startVMServer(t *testing.T, fx *testutil.VMFixtures, stateDir, runDir string) *vmServer {
	t.Helper()
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	mgr, err := sandbox.New(sandbox.Config{DataDir: fx.DataDir, RunDir: runDir, Driver: "qemu", Accel: fx.Accel},
		sandbox.WithLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := sandbox.OpenService(mgr, sandbox.ServiceConfig{StateDir: stateDir, MaxVMs: 4}, log)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := Open(Config{MaxTimeout: 30 * time.Second}, svc, WithLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &vmServer{t: t, srv: srv, svc: svc, mgr: mgr, url: "http://" + ln.Addr().String(), done: make(chan error, 1)}
	go func() { s.done <- srv.Serve(ln) }()
	return s
}

func (s *vmServer) stop() {
	s.t.Helper()
	if err := s.srv.Shutdown(context.Background()); err != nil {
		s.t.Errorf("shutdown: %v", err)
	}
	if err := s.svc.Close(context.Background()); err != nil {
		s.t.Errorf("close service: %v", err)
	}
	if err := <-s.done; err != nil {
		s.t.Errorf("serve: %v", err)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

func (s *vmServer) call(method, path, body string, out any) int {
	s.t.Helper()
	req, err := http.NewRequest(method, s.url+path, strings.NewReader(body))
	if err != nil {
		s.t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil {
		if bp, ok := out.(*[]byte); ok {
			*bp = b
		} else if len(b) > 0 {
			if err := json.Unmarshal(b, out); err != nil {
				s.t.Fatalf("%s %s: %d %s: %v", method, path, resp.StatusCode, b, err)
			}
		}
	}
	if resp.StatusCode >= 300 {
		s.t.Logf("%s %s -> %d %s", method, path, resp.StatusCode, bytes.TrimSpace(b))
	}
	return resp.StatusCode
}

// vmsIn counts QEMU processes and VM run directories under runDir.
func vmsIn(runDir string) (procs, dirs int) {
	procs = testutil.VMMProcesses()
	ents, _ := os.ReadDir(runDir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "vm-") {
			dirs++
		}
	}
	if owners, _ := os.ReadDir(filepath.Join(runDir, "owners")); len(owners) > dirs {
		dirs = len(owners)
	}
	return procs, dirs
}

// waitVMs waits (bounded) until exactly n VMs live under runDir: VM
// teardown finishes a moment after the response that caused it.
func waitVMs(t *testing.T, runDir string, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		p, d := vmsIn(runDir)
		if p == n && d == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d QEMU processes and %d VM directories under %s, want %d", p, d, runDir, n)
		}
		<-tick.C
	}
}

func shortTempDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "fsapi") // short: unix socket paths live here
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// TestServeVMs runs the API against real VMs: one server for the one-shot
// paths, the sandbox flow and the external client; then a restart.
func TestServeVMs(t *testing.T) {
	fx := testutil.RequireVMs(t)
	testutil.RequireQEMU(t)
	stateDir, runDir := t.TempDir(), shortTempDir(t)
	s := startVMServer(t, fx, stateDir, runDir)
	stopped := false
	defer func() {
		if !stopped {
			s.stop()
		}
	}()

	t.Run("run", func(t *testing.T) {
		var out RunOut
		code := s.call("POST", "/v1/run", `{"language":"python","code":"import sys\nprint(6*7)\nprint('e', file=sys.stderr)\nprint(sys.argv[1:], input())","args":["a"],"stdin":"in"}`, &out)
		if code != 200 || out.Stdout != "42\n['a'] in\n" || out.Stderr != "e\n" || !out.OK || out.ExitCode != 0 || out.Stage != "run" {
			t.Fatalf("%d %+v", code, out)
		}
		code = s.call("POST", "/v1/run", `{"language":"python","code":"import time\ntime.sleep(10)","limits":{"timeout_ms":500}}`, &out)
		if code != 200 || out.Status != "TO" || out.OK {
			t.Fatalf("time limit: %d %+v", code, out)
		}
		waitVMs(t, runDir, 0)
	})

	t.Run("stream", func(t *testing.T) {
		resp, err := http.Post(s.url+"/v1/run/stream", "application/json",
			strings.NewReader(`{"language":"python","code":"import sys\nprint('one', flush=True)\nprint('two', file=sys.stderr)\nsys.exit(3)"}`))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || ct != "application/x-ndjson" {
			t.Fatalf("%d %s", resp.StatusCode, ct)
		}
		var stdout, stderr string
		var result *RunOut
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			var ev struct {
				Event
				Result *RunOut `json:"result"`
			}
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				t.Fatalf("%s: %v", sc.Bytes(), err)
			}
			switch ev.Type {
			case "output":
				if ev.Stream == "stdout" {
					stdout += ev.Data
				} else {
					stderr += ev.Data
				}
			case "result":
				result = ev.Result
			default:
				t.Fatalf("event %s", sc.Bytes())
			}
		}
		if stdout != "one\n" || stderr != "two\n" || result == nil || result.ExitCode != 3 || result.Status != "RE" {
			t.Fatalf("stdout %q stderr %q result %+v", stdout, stderr, result)
		}
	})

	t.Run("disconnect cancels the run", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "POST", s.url+"/v1/run/stream",
			strings.NewReader(`{"language":"python","code":"import time\nprint('started', flush=True)\ntime.sleep(25)"}`))
		req.Header.Set("Accept", "text/event-stream")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(resp.Body)
		for { // wait for the program's first output: its VM is alive now
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("stream ended before output: %v", err)
			}
			if strings.Contains(line, "started") {
				break
			}
		}
		if p, _ := vmsIn(runDir); p != 1 {
			t.Fatalf("%d VMs while the run runs, want 1", p)
		}
		cancel() // the client goes away mid-stream
		resp.Body.Close()
		waitVMs(t, runDir, 0) // well before the program's 25 s
	})

	t.Run("piston", func(t *testing.T) {
		var out PistonResult
		var raw []byte
		code := s.call("POST", "/api/v2/execute", `{"language":"py","version":"3.x","files":[{"name":"prog.py","content":"import helper\nprint(helper.X, input())"},{"name":"helper.py","content":"X = 7"}],"stdin":"hi"}`, &raw)
		if err := json.Unmarshal(raw, &out); code != 200 || err != nil {
			t.Fatalf("%d %s", code, raw)
		}
		var generic map[string]map[string]any
		_ = json.Unmarshal(raw, &generic)
		run := generic["run"]
		if out.Run == nil || out.Run.Stdout != "7 hi\n" || out.Run.Output != "7 hi\n" || out.Run.Code == nil || *out.Run.Code != 0 ||
			run["signal"] != nil || run["status"] != nil || run["message"] != nil || out.Language != "python" || generic["compile"] != nil {
			t.Fatalf("%s", raw)
		}
		code = s.call("POST", "/api/v2/execute", `{"language":"python","version":"*","files":[{"content":"while True: pass"}],"run_timeout":300}`, &raw)
		_ = json.Unmarshal(raw, &generic)
		if run := generic["run"]; code != 200 || run["status"] != "TO" || run["signal"] != "SIGKILL" || run["code"] != nil {
			t.Fatalf("timeout: %d %s", code, raw)
		}
	})

	t.Run("piston-client", func(t *testing.T) { pistonClient(t, s.url) })

	t.Run("sandbox", func(t *testing.T) {
		var sb SandboxOut
		if code := s.call("POST", "/v1/sandboxes", `{"language":"python","timeout_s":3600}`, &sb); code != 201 || sb.State != "running" {
			t.Fatalf("create: %d %+v", code, sb)
		}
		base := "/v1/sandboxes/" + sb.ID
		var res StepOut
		if code := s.call("POST", base+"/exec", `{"command":"echo made > made.txt && pwd && id -u"}`, &res); code != 200 || res.Stdout != "/home/sandbox\n1000\n" {
			t.Fatalf("exec: %d %+v", code, res)
		}
		if code := s.call("POST", base+"/files", `{"files":[{"path":"dir/data.bin","content":"AAEC/w==","encoding":"base64"},{"path":"a.py","content":"print(open('dir/data.bin','rb').read())"}]}`, nil); code != 200 {
			t.Fatalf("upload: %d", code)
		}
		var data []byte
		if code := s.call("GET", base+"/files?path=dir/data.bin", "", &data); code != 200 || !bytes.Equal(data, []byte{0, 1, 2, 255}) {
			t.Fatalf("download: %d %q", code, data)
		}
		if code := s.call("GET", base+"/files?path=missing.txt", "", nil); code != 404 {
			t.Fatalf("download of a missing file: %d", code)
		}
		if code := s.call("POST", base+"/hibernate", "", &sb); code != 200 || sb.State != "hibernated" {
			t.Fatalf("hibernate: %d %+v", code, sb)
		}
		waitVMs(t, runDir, 0)
		// The next exec resumes it, with everything written before.
		if code := s.call("POST", base+"/exec", `{"cmd":["python3","a.py"]}`, &res); code != 200 || res.Stdout != "b'\\x00\\x01\\x02\\xff'\n" {
			t.Fatalf("exec after hibernate: %d %+v", code, res)
		}
		if code := s.call("GET", base, "", &sb); code != 200 || sb.State != "running" {
			t.Fatalf("state after auto-resume: %+v", sb)
		}
		// A streamed exec in the resumed sandbox.
		resp, err := http.Post(s.url+base+"/exec/stream", "", strings.NewReader(`{"command":"cat made.txt"}`))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(b), `"data":"made\n"`) || !strings.Contains(string(b), `"type":"result"`) {
			t.Fatalf("exec stream: %s", b)
		}
		var list struct{ Sandboxes []SandboxOut }
		if s.call("GET", "/v1/sandboxes", "", &list); len(list.Sandboxes) != 1 {
			t.Fatalf("list: %+v", list)
		}
		if code := s.call("DELETE", base, "", nil); code != 204 {
			t.Fatalf("delete: %d", code)
		}
		waitVMs(t, runDir, 0)
		if code := s.call("POST", base+"/exec", `{"cmd":["true"]}`, nil); code != 410 {
			t.Fatalf("exec after delete: %d, want 410", code)
		}
		if _, err := os.Stat(filepath.Join(stateDir, "sandboxes", sb.ID)); !os.IsNotExist(err) {
			t.Fatalf("sandbox directory left after delete: %v", err)
		}
	})

	t.Run("idle hibernation", func(t *testing.T) {
		var sb SandboxOut
		if code := s.call("POST", "/v1/sandboxes", `{"language":"python","timeout_s":1}`, &sb); code != 201 {
			t.Fatalf("create: %d", code)
		}
		deadline := time.Now().Add(30 * time.Second)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for s.call("GET", "/v1/sandboxes/"+sb.ID, "", &sb); sb.State != "hibernated"; s.call("GET", "/v1/sandboxes/"+sb.ID, "", &sb) {
			if time.Now().After(deadline) {
				t.Fatalf("idle sandbox still %s after 30s", sb.State)
			}
			<-tick.C
		}
		waitVMs(t, runDir, 0)
		if code := s.call("DELETE", "/v1/sandboxes/"+sb.ID, "", nil); code != 204 {
			t.Fatalf("delete: %d", code)
		}
	})

	t.Run("metrics", func(t *testing.T) {
		var b []byte
		s.call("GET", "/metrics", "", &b)
		for _, want := range []string{`firesandbox_runs_total{api="native",language="python",status="OK"}`, `firesandbox_runs_total{api="piston",language="python",status="TO"} 1`} {
			if !strings.Contains(string(b), want) {
				t.Errorf("metrics lack %s", want)
			}
		}
	})

	t.Run("restart", func(t *testing.T) {
		var a, b SandboxOut
		s.call("POST", "/v1/sandboxes", `{"language":"python"}`, &a)
		s.call("POST", "/v1/sandboxes", `{"language":"python"}`, &b)
		for _, sb := range []SandboxOut{a, b} {
			if code := s.call("POST", "/v1/sandboxes/"+sb.ID+"/files", `{"files":[{"path":"note.txt","content":"kept `+sb.ID+`"}]}`, nil); code != 200 {
				t.Fatalf("upload to %s: %d", sb.ID, code)
			}
		}
		if code := s.call("POST", "/v1/sandboxes/"+a.ID+"/hibernate", "", nil); code != 200 {
			t.Fatalf("hibernate: %d", code)
		}
		// b is still running: a graceful stop hibernates it.
		s.stop()
		stopped = true
		waitVMs(t, runDir, 0)

		s2 := startVMServer(t, fx, stateDir, runDir)
		defer s2.stop()
		for _, sb := range []SandboxOut{a, b} {
			var got SandboxOut
			if s2.call("GET", "/v1/sandboxes/"+sb.ID, "", &got); got.State != "hibernated" {
				t.Fatalf("after restart %s is %q, want hibernated", sb.ID, got.State)
			}
		}
		var got SandboxOut
		if code := s2.call("POST", "/v1/sandboxes/"+a.ID+"/resume", "", &got); code != 200 || got.State != "running" {
			t.Fatalf("resume: %d %+v", code, got)
		}
		for _, sb := range []SandboxOut{a, b} { // b resumes on the read
			var data []byte
			if code := s2.call("GET", "/v1/sandboxes/"+sb.ID+"/files?path=note.txt", "", &data); code != 200 || string(data) != "kept "+sb.ID {
				t.Fatalf("read back from %s: %d %q", sb.ID, code, data)
			}
			if code := s2.call("DELETE", "/v1/sandboxes/"+sb.ID, "", nil); code != 204 {
				t.Fatalf("delete: %d", code)
			}
		}
		waitVMs(t, runDir, 0)
	})
}

// pistonClient runs a program through the npm package piston-client, as
// an existing Piston user would, against the server at url.
func pistonClient(t *testing.T, url string) {
	node, errNode := exec.LookPath("node")
	npm, errNpm := exec.LookPath("npm")
	if errNode != nil || errNpm != nil {
		msg := "!!! piston-client test NOT RUN: node and npm are needed (apt-get install nodejs npm) !!!"
		if os.Getenv("FIRESANDBOX_VM_TESTS") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	install := exec.CommandContext(ctx, npm, "install", "--prefix", dir, "--no-audit", "--no-fund", "--loglevel=error", "piston-client@1")
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("npm install piston-client: %v\n%s", err, out)
	}
	script := `import piston from "piston-client";
const client = piston({ server: process.argv[2] });
const runtimes = await client.runtimes();
const result = await client.execute("python", "import sys\nprint(6*7, sys.argv[1:], input())", { stdin: "from stdin" });
console.log(JSON.stringify({ runtimes, result }));
`
	if err := os.WriteFile(filepath.Join(dir, "run.mjs"), []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, node, filepath.Join(dir, "run.mjs"), url)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node: %v\n%s", err, out)
	}
	var got struct {
		Runtimes []PistonRuntime
		Result   struct {
			Language string
			Run      PistonStage
		}
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("%s: %v", out, err)
	}
	found := false
	for _, r := range got.Runtimes {
		found = found || r.Language == "python"
	}
	// piston-client sends args ["1","2","3"] by default.
	if !found || got.Result.Language != "python" || got.Result.Run.Stdout != "42 ['1', '2', '3'] from stdin\n" ||
		got.Result.Run.Code == nil || *got.Result.Run.Code != 0 {
		t.Fatalf("piston-client got %s", out)
	}
}
