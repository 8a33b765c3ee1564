package api

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/firesandbox/firesandbox/internal/testutil"
)

// followStream reads a process's NDJSON stream and sends each stdout
// chunk to lines; it ends with the stream (the process's end) or ctx.
func followStream(ctx context.Context, t *testing.T, url string, out chan<- string, result chan<- map[string]any) {
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("GET %s: %d", url, resp.StatusCode)
		return
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var ev Event
		if json.Unmarshal(sc.Bytes(), &ev) != nil {
			continue
		}
		switch ev.Type {
		case "output":
			out <- ev.Data
		case "result":
			r, _ := json.Marshal(ev.Result)
			var m map[string]any
			json.Unmarshal(r, &m)
			result <- m
		}
	}
}

// waitOutput reads chunks until their concatenation contains want.
func waitOutput(t *testing.T, what string, ch <-chan string, want string) {
	t.Helper()
	got := ""
	deadline := time.After(2 * time.Minute)
	for !strings.Contains(got, want) {
		select {
		case s := <-ch:
			got += s
		case <-deadline:
			t.Fatalf("%s: waited for %q, got %q", what, want, got)
		}
	}
}

// Processes and files through the API on a real VM: a background python
// process holds a value and answers on its stdin, in the sandbox and in a
// fork of it; signals end it; a terminal over WebSocket echoes what is
// typed; file calls and a watch see what happens in the sandbox.
func TestSandboxProcessesAndFilesOnVMs(t *testing.T) {
	fx := testutil.RequireVMs(t)
	testutil.RequireQEMU(t)
	runDir, err := os.MkdirTemp("", "fsapi-vm-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(runDir)
	s := startVMServer(t, fx, t.TempDir(), runDir)
	defer func() {
		s.stop()
		waitVMs(t, runDir, 0)
	}()
	var sb SandboxOut
	if st := s.call("POST", "/v1/sandboxes", `{"language":"python"}`, &sb); st != 201 {
		t.Fatalf("create: %d", st)
	}
	base := "/v1/sandboxes/" + sb.ID
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// A background process that holds x and answers x+n for each n.
	var started struct{ PID int }
	prog := "import sys\nx = 41\nprint('ready', flush=True)\nfor line in sys.stdin:\n    print('got', int(line) + x, flush=True)\n"
	body, _ := json.Marshal(map[string]any{"cmd": []string{"python3", "-c", prog}, "background": true, "open_stdin": true})
	if st := s.call("POST", base+"/exec", string(body), &started); st != 201 || started.PID <= 0 {
		t.Fatalf("background exec: %d %+v", st, started)
	}
	pid := itoa(started.PID)
	out, res := make(chan string, 64), make(chan map[string]any, 1)
	go followStream(ctx, t, s.url+base+"/processes/"+pid+"/stream?replay=1", out, res)
	waitOutput(t, "replayed output", out, "ready")
	if st := s.call("POST", base+"/processes/"+pid+"/stdin", `{"data":"1\n"}`, nil); st != 204 {
		t.Fatalf("stdin: %d", st)
	}
	waitOutput(t, "the process's answer", out, "got 42")
	var procs struct{ Processes []struct{ PID int } }
	if st := s.call("GET", base+"/processes", "", &procs); st != 200 || len(procs.Processes) == 0 {
		t.Fatalf("processes: %d %+v", st, procs)
	}

	// Fork: the child has the process, holding x, and answers on its own.
	var kids struct{ Sandboxes []SandboxOut }
	if st := s.call("POST", base+"/fork", `{"count":1}`, &kids); st != 201 || len(kids.Sandboxes) != 1 {
		t.Fatalf("fork: %d %+v", st, kids)
	}
	child := "/v1/sandboxes/" + kids.Sandboxes[0].ID
	cout, cres := make(chan string, 64), make(chan map[string]any, 1)
	go followStream(ctx, t, s.url+child+"/processes/"+pid+"/stream", cout, cres)
	time.Sleep(500 * time.Millisecond) // connected before the write
	if st := s.call("POST", child+"/processes/"+pid+"/stdin", `{"data":"100\n"}`, nil); st != 204 {
		t.Fatalf("stdin in the child: %d", st)
	}
	waitOutput(t, "the child's process", cout, "got 141")
	// The fork cut the parent's stream; connect again and use it.
	out = make(chan string, 64)
	go followStream(ctx, t, s.url+base+"/processes/"+pid+"/stream", out, res)
	time.Sleep(500 * time.Millisecond)
	s.call("POST", base+"/processes/"+pid+"/stdin", `{"data":"2\n"}`, nil)
	waitOutput(t, "the parent's process after the fork", out, "got 43")
	if st := s.call("POST", base+"/processes/"+pid+"/signal", `{"signal":"SIGTERM"}`, nil); st != 204 {
		t.Fatalf("signal: %d", st)
	}
	select {
	case r := <-res:
		if r["signal"] != "SIGTERM" && r["exit_code"] == 0.0 {
			t.Fatalf("after SIGTERM: %v", r)
		}
	case <-time.After(time.Minute):
		t.Fatal("the signalled process did not end")
	}

	// A terminal over WebSocket.
	ws, _, err := websocket.Dial(ctx, strings.Replace(s.url, "http", "ws", 1)+base+"/pty?cols=100&rows=30&cmd=/bin/sh", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	term := make(chan string, 64)
	exit := make(chan map[string]any, 1)
	go func() {
		for {
			typ, msg, err := ws.Read(ctx)
			if err != nil {
				return
			}
			if typ == websocket.MessageBinary {
				term <- string(msg)
				continue
			}
			var m map[string]any
			json.Unmarshal(msg, &m)
			if m["type"] == "exit" {
				exit <- m
			}
		}
	}()
	ws.Write(ctx, websocket.MessageText, []byte(`{"type":"resize","cols":120,"rows":40}`))
	ws.Write(ctx, websocket.MessageBinary, []byte("echo hi-$((6*7)); stty size\n"))
	waitOutput(t, "the terminal", term, "hi-42")
	waitOutput(t, "the terminal's size", term, "40 120")
	ws.Write(ctx, websocket.MessageBinary, []byte("exit\n"))
	select {
	case <-exit:
	case <-time.After(time.Minute):
		t.Fatal("the terminal's shell did not exit")
	}

	// Files.
	var fi struct {
		Name, Type string
		Owner      string
	}
	if st := s.call("POST", base+"/files/mkdir", `{"path":"w/deep","parents":true}`, &fi); st != 201 || fi.Type != "dir" {
		t.Fatalf("mkdir: %d %+v", st, fi)
	}
	if st := s.call("POST", base+"/files", `{"files":[{"path":"w/deep/a.txt","content":"hello"}]}`, nil); st != 200 {
		t.Fatalf("upload: %d", st)
	}
	if st := s.call("GET", base+"/files/stat?path=w/deep/a.txt", "", &fi); st != 200 || fi.Type != "file" || fi.Owner == "root" {
		t.Fatalf("stat: %d %+v", st, fi)
	}
	var list struct{ Entries []struct{ Path string } }
	if st := s.call("GET", base+"/files/list?path=w&depth=2", "", &list); st != 200 || len(list.Entries) != 2 {
		t.Fatalf("list: %d %+v", st, list)
	}
	if st := s.call("POST", base+"/files/move", `{"from":"w/deep/a.txt","to":"w/b.txt"}`, nil); st != 200 {
		t.Fatalf("move: %d", st)
	}
	if st := s.call("GET", base+"/files/stat?path=/etc/passwd", "", nil); st != 400 {
		t.Fatalf("stat outside the sandbox's directory: %d", st)
	}
	// A watch sees a create and a delete.
	events := make(chan string, 64)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, "GET", s.url+base+"/files/watch?path=w", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return
		}
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			events <- sc.Text()
		}
	}()
	waitOutput(t, "the watch", events, `"ready"`)
	s.call("POST", base+"/exec", `{"command":"echo x > w/new.txt"}`, nil)
	waitOutput(t, "a create event", events, `{"name":"new.txt","op":"create"}`)
	if st := s.call("DELETE", base+"/files?path=w/new.txt", "", nil); st != 204 {
		t.Fatalf("remove: %d", st)
	}
	waitOutput(t, "a remove event", events, `{"name":"new.txt","op":"remove"}`)
	if st := s.call("DELETE", base+"/files?path=w&recursive=1", "", nil); st != 204 {
		t.Fatalf("recursive remove: %d", st)
	}
	cancel()
	for _, id := range []string{sb.ID, kids.Sandboxes[0].ID} {
		if st := s.call("DELETE", "/v1/sandboxes/"+id, "", nil); st != 204 {
			t.Fatalf("delete %s: %d", id, st)
		}
	}
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }
