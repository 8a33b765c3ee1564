package e2b

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/testutil"
)

// The guest side of the code interpreter is a Python program; these tests
// run it on the host (no VM): its server, contexts and relay, exactly as
// the guest runs them but for the agent's prewarm channel.

type interp struct {
	t   *testing.T
	dir string
	py  string
}

func startInterp(t *testing.T) *interp {
	t.Helper()
	py := testutil.RequireBinary(t, "python3")
	testutil.RequireBinary(t, "bash")
	dir, err := os.MkdirTemp("", "ci") // short: unix socket paths are bounded
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	src, err := os.ReadFile("../../../languages/code-interpreter.py")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, interpreterFile), src, 0o644); err != nil {
		t.Fatal(err)
	}
	srv := exec.Command(py, filepath.Join(dir, interpreterFile), "serve")
	srv.Dir = dir
	var logs bytes.Buffer
	srv.Stdout, srv.Stderr = &logs, &logs
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Process.Kill() // its contexts die with it (parent-death signal)
		srv.Wait()
		if t.Failed() {
			t.Logf("server output: %s", logs.String())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(dir, "ci.sock")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the interpreter did not start: %s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return &interp{t: t, dir: dir, py: py}
}

// relay runs one relay with req on stdin, like the host's exec.
func (ip *interp) relay(ctx context.Context, req relayRequest) *exec.Cmd {
	b, _ := json.Marshal(req)
	cmd := exec.CommandContext(ctx, ip.py, filepath.Join(ip.dir, interpreterFile), "relay")
	cmd.Dir = ip.dir
	cmd.Stdin = bytes.NewReader(b)
	return cmd
}

func (ip *interp) call(req relayRequest, a *relayAnswer) {
	ip.t.Helper()
	out, err := ip.relay(context.Background(), req).Output()
	if err != nil {
		ip.t.Fatalf("relay %s: %v", req.Op, err)
	}
	if err := json.Unmarshal(out, a); err != nil {
		ip.t.Fatalf("relay %s answered %q", req.Op, out)
	}
}

// run executes a cell and returns its events, checked as the host does.
func (ip *interp) run(req relayRequest) []map[string]any {
	ip.t.Helper()
	req.Op = "execute"
	rec := httptest.NewRecorder()
	st := newEventStream(rec)
	// A relay that never ends is a failure, not a hang of the whole run.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := ip.relay(ctx, req)
	cmd.Stdout = &syncWriter{w: st, max: 64 << 20}
	if err := cmd.Run(); err != nil {
		ip.t.Fatalf("relay: %v", err)
	}
	st.flushLine()
	st.stop()
	var evs []map[string]any
	sc := bufio.NewScanner(rec.Body)
	sc.Buffer(nil, maxLine)
	for sc.Scan() {
		var ev map[string]any
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			ip.t.Fatalf("line %q: %v", sc.Text(), err)
		}
		evs = append(evs, ev)
	}
	return evs
}

func kinds(evs []map[string]any, typ string) []map[string]any {
	var out []map[string]any
	for _, e := range evs {
		if e["type"] == typ {
			out = append(out, e)
		}
	}
	return out
}

func TestInterpreterContextsKeepState(t *testing.T) {
	ip := startInterp(t)
	evs := ip.run(relayRequest{Code: "x = 6\nprint('hello')\nx * 7"})
	if s := kinds(evs, "stdout"); len(s) != 1 || s[0]["text"] != "hello\n" {
		t.Fatalf("stdout: %v", evs)
	}
	res := kinds(evs, "result")
	if len(res) != 1 || res[0]["text"] != "42" || res[0]["is_main_result"] != true {
		t.Fatalf("result: %v", evs)
	}
	if evs[len(evs)-1]["type"] != "end_of_execution" {
		t.Fatalf("last event %v", evs[len(evs)-1])
	}
	// The default context keeps x.
	if res := kinds(ip.run(relayRequest{Code: "x + 1"}), "result"); len(res) != 1 || res[0]["text"] != "7" {
		t.Fatalf("x in the next cell: %v", res)
	}
	// JSON for plain data, and an error in E2B's shape.
	if res := kinds(ip.run(relayRequest{Code: "{'a': [1, 2]}"}), "result"); len(res) != 1 || res[0]["json"] == nil {
		t.Fatalf("json result: %v", res)
	}
	evs = ip.run(relayRequest{Code: "def f():\n    return 1 / 0\nf()"})
	errs := kinds(evs, "error")
	if len(errs) != 1 || errs[0]["name"] != "ZeroDivisionError" || errs[0]["value"] != "division by zero" ||
		!strings.Contains(errs[0]["traceback"].(string), "return 1 / 0") || strings.Contains(errs[0]["traceback"].(string), interpreterFile) {
		t.Fatalf("error: %v", errs)
	}
	if n := kinds(evs, "number_of_executions"); len(n) != 1 || n[0]["execution_count"].(float64) != 4 {
		t.Fatalf("execution count: %v", n)
	}

	// A context of its own: its own variables; env_vars last one cell.
	var a relayAnswer
	ip.call(relayRequest{Op: "create", Language: "python", Cwd: ip.dir}, &a)
	if a.Context == nil || a.Context.Language != "python" || a.Context.Cwd != ip.dir {
		t.Fatalf("create: %+v", a)
	}
	cid := a.Context.ID
	if e := kinds(ip.run(relayRequest{ContextID: cid, Code: "x"}), "error"); len(e) != 1 || e[0]["name"] != "NameError" {
		t.Fatalf("x leaked into a new context: %v", e)
	}
	if r := kinds(ip.run(relayRequest{ContextID: cid, Code: "import os; os.environ.get('E2B_T'), os.getcwd()", EnvVars: map[string]string{"E2B_T": "1"}}), "result"); len(r) != 1 || !strings.Contains(r[0]["text"].(string), "'1'") {
		t.Fatalf("env var in the cell: %v", r)
	}
	if r := kinds(ip.run(relayRequest{ContextID: cid, Code: "os.environ.get('E2B_T')"}), "result"); len(r) != 0 {
		t.Fatalf("env var outlived its cell: %v", r)
	}
	ip.call(relayRequest{Op: "list"}, &a)
	if len(a.Contexts) != 2 {
		t.Fatalf("list: %+v", a)
	}
	ip.run(relayRequest{ContextID: cid, Code: "y = 1"})
	ip.call(relayRequest{Op: "restart", ContextID: cid}, &a)
	if e := kinds(ip.run(relayRequest{ContextID: cid, Code: "y"}), "error"); len(e) != 1 || e[0]["name"] != "NameError" {
		t.Fatalf("y survived a restart: %v", e)
	}
	ip.call(relayRequest{Op: "delete", ContextID: cid}, &a)
	ip.call(relayRequest{Op: "delete", ContextID: cid}, &a)
	if a.Status != 404 {
		t.Fatalf("delete twice: %+v", a)
	}
}

func TestInterpreterBashContext(t *testing.T) {
	ip := startInterp(t)
	evs := ip.run(relayRequest{Language: "bash", Code: "V=hi; cd /; echo $V"})
	if s := kinds(evs, "stdout"); len(s) == 0 || s[0]["text"] != "hi\n" || len(kinds(evs, "error")) != 0 {
		t.Fatalf("bash: %v", evs)
	}
	evs = ip.run(relayRequest{Language: "bash", Code: "echo $V $PWD; echo oops >&2; false"})
	if s := kinds(evs, "stdout"); len(s) == 0 || s[0]["text"] != "hi /\n" {
		t.Fatalf("bash state: %v", evs)
	}
	if e := kinds(evs, "error"); len(e) != 1 || e[0]["value"] != "exit status 1" {
		t.Fatalf("bash exit status: %v", evs)
	}
	if s := kinds(evs, "stderr"); len(s) == 0 || s[0]["text"] != "oops\n" {
		t.Fatalf("bash stderr: %v", evs)
	}
}

// A relay that goes away (the HTTP client disconnected, the host killed
// the exec) interrupts the cell: the context is free again at once.
func TestInterpreterDisconnectInterrupts(t *testing.T) {
	ip := startInterp(t)
	ip.run(relayRequest{Code: "import time; n = 0"})
	ctx, cancel := context.WithCancel(context.Background())
	cmd := ip.relay(ctx, relayRequest{Op: "execute", Code: "print('looping', flush=True)\nwhile True:\n    n += 1\n    time.sleep(0.01)"})
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Interrupt only once the cell runs (its first line came), however
	// slow the machine is.
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || !strings.Contains(line, "looping") {
		t.Fatalf("the cell did not start: %q %v", line, err)
	}
	time.Sleep(100 * time.Millisecond)
	cancel()
	cmd.Wait()
	start := time.Now()
	res := kinds(ip.run(relayRequest{Code: "n > 0"}), "result")
	if len(res) != 1 || res[0]["text"] != "True" {
		t.Fatalf("after the interrupt: %v", res)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("the next cell waited %s: the loop was not interrupted", d)
	}
}
