package api

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/sandbox"
	"github.com/firesandbox/firesandbox/internal/testutil"
	"github.com/firesandbox/firesandbox/internal/vmm/vmmfake"
)

// fakeProgram runs the programs of these tests in the fake guest. A
// python program is named by its first line:
//
//	# talk     answer each line of stdin with "you said X", until "bye"
//	# loop     run until killed
//	# flood N  print N bytes at once, then exit
//	# hello    print "hello" and exit 0
//
// gcc fails on a main.c containing "syntax error"; ./main echoes stdin
// until end of file.
func fakeProgram(ctx context.Context, g *vmmfake.Guest, req agentproto.ExecRequest, stdout, stderr io.Writer) agentproto.ExitResult {
	src := func(name string) string {
		return string(g.Machine().Files()[path.Join(req.Dir, name)])
	}
	switch req.Argv[0] {
	case "gcc":
		if strings.Contains(src("main.c"), "syntax error") {
			fmt.Fprintln(stderr, "main.c:1:1: error: expected ';'")
			return agentproto.ExitResult{Code: 1, Status: agentproto.StatusRuntimeError}
		}
		return agentproto.ExitResult{}
	case "./main":
		_, _ = io.Copy(stdout, vmmfake.Stdin(ctx))
		return agentproto.ExitResult{}
	case "python3":
	default:
		return agentproto.ExitResult{}
	}
	code := src(req.Argv[len(req.Argv)-1])
	if len(req.Argv) >= 2 {
		code = src(req.Argv[1])
	}
	first, _, _ := strings.Cut(code, "\n")
	switch {
	case first == "# talk":
		sc := bufio.NewScanner(vmmfake.Stdin(ctx))
		for sc.Scan() {
			if sc.Text() == "bye" {
				fmt.Fprintln(stdout, "goodbye")
				return agentproto.ExitResult{}
			}
			fmt.Fprintf(stdout, "you said %s\n", sc.Text())
		}
		return agentproto.ExitResult{Code: 1, Status: agentproto.StatusRuntimeError}
	case first == "# loop":
		<-ctx.Done()
		return agentproto.ExitResult{Code: -1, Signal: "SIGKILL", Status: agentproto.StatusTimeout}
	case strings.HasPrefix(first, "# flood "):
		var n int
		fmt.Sscan(strings.TrimPrefix(first, "# flood "), &n)
		_, _ = stdout.Write([]byte(strings.Repeat("x", n)))
		return agentproto.ExitResult{}
	case first == "# hello":
		fmt.Fprintln(stdout, "hello")
	}
	return agentproto.ExitResult{}
}

// newFakeWSServer serves the API over the fake VMM driver, with maxVMs
// VM slots. sndBuf, if set, is the send buffer of the server's sockets.
func newFakeWSServer(t *testing.T, maxVMs int, sndBuf ...int) (*httptest.Server, *vmmfake.Driver) {
	t.Helper()
	return newFakeWSServerConfig(t, Config{}, maxVMs, sndBuf...)
}

func newFakeWSServerConfig(t *testing.T, cfg Config, maxVMs int, sndBuf ...int) (*httptest.Server, *vmmfake.Driver) {
	t.Helper()
	d := vmmfake.New()
	d.Exec = fakeProgram
	mgr, err := sandbox.New(sandbox.Config{DataDir: testutil.FakeDataDir(t, "python", "c"), RunDir: t.TempDir()}, sandbox.WithDriver(d))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := sandbox.OpenService(mgr, sandbox.ServiceConfig{MaxVMs: maxVMs, QueueWait: 20 * time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := Open(cfg, svc)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewUnstartedServer(srv.Handler())
	if len(sndBuf) > 0 {
		hs.Listener = smallSendBuffers{hs.Listener, sndBuf[0]}
	}
	hs.Start()
	t.Cleanup(func() {
		hs.Close()
		if err := srv.Shutdown(context.Background()); err != nil {
			t.Error(err)
		}
		if err := svc.Close(context.Background()); err != nil {
			t.Error(err)
		}
		mgr.Close()
		if live := d.Live(); len(live) != 0 {
			t.Errorf("%d VMs still running after the test", len(live))
		}
	})
	return hs, d
}

// smallSendBuffers gives accepted connections a small send buffer, so a
// peer that does not read blocks the server's writes early.
type smallSendBuffers struct {
	net.Listener
	n int
}

func (l smallSendBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(l.n)
	}
	return c, err
}

// wsClient is a Piston WebSocket client's view of one session.
type wsClient struct {
	t   *testing.T
	c   *websocket.Conn
	ctx context.Context
}

// wsMsg is any server message.
type wsMsg struct {
	Type     string  `json:"type"`
	Language string  `json:"language"`
	Version  string  `json:"version"`
	Stage    string  `json:"stage"`
	Stream   string  `json:"stream"`
	Data     string  `json:"data"`
	Code     *int    `json:"code"`
	Signal   *string `json:"signal"`
	Status   *string `json:"status"`
	Message  string  `json:"message"`
}

func dialWS(t *testing.T, url string, opts *websocket.DialOptions) *wsClient {
	t.Helper()
	// Long enough for a first run under TCG that makes its snapshot.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	c, _, err := websocket.Dial(ctx, strings.Replace(url, "http", "ws", 1), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.CloseNow() })
	return &wsClient{t: t, c: c, ctx: ctx}
}

func (w *wsClient) send(msg string) {
	w.t.Helper()
	if err := w.c.Write(w.ctx, websocket.MessageText, []byte(msg)); err != nil {
		w.t.Fatalf("send %s: %v", msg, err)
	}
}

// next returns the next message, or the close code once the server
// closed the connection.
func (w *wsClient) next() (wsMsg, websocket.StatusCode) {
	w.t.Helper()
	_, b, err := w.c.Read(w.ctx)
	if err != nil {
		code := websocket.CloseStatus(err)
		if code == -1 {
			w.t.Fatalf("read: %v", err)
		}
		return wsMsg{}, code
	}
	var m wsMsg
	if err := json.Unmarshal(b, &m); err != nil {
		w.t.Fatalf("%s: %v", b, err)
	}
	return m, 0
}

// until reads messages up to one of type typ (returned), failing on a
// close; stdout collects the stdout data seen on the way.
func (w *wsClient) until(typ string, stdout *strings.Builder) wsMsg {
	w.t.Helper()
	for {
		m, code := w.next()
		if code != 0 {
			w.t.Fatalf("closed with %d while waiting for %s", code, typ)
		}
		if m.Type == "data" && m.Stream == "stdout" && stdout != nil {
			stdout.WriteString(m.Data)
		}
		if m.Type == typ {
			return m
		}
		if m.Type == "error" {
			w.t.Fatalf("error while waiting for %s: %s", typ, m.Message)
		}
	}
}

// closed reads to the close and returns its code and the messages before it.
func (w *wsClient) closed() (websocket.StatusCode, []wsMsg) {
	w.t.Helper()
	var msgs []wsMsg
	for {
		m, code := w.next()
		if code != 0 {
			return code, msgs
		}
		msgs = append(msgs, m)
	}
}

func initMsg(lang, code string) string {
	b, _ := json.Marshal(map[string]any{"type": "init", "language": lang, "version": "*",
		"files": []map[string]string{{"content": code}}})
	return string(b)
}

// TestPistonWSConversation holds a conversation turn by turn; a line sent
// before the run stage began is not lost.
func TestPistonWSConversation(t *testing.T) {
	hs, d := newFakeWSServer(t, 2)
	w := dialWS(t, hs.URL+"/api/v2/connect", nil)
	w.send(initMsg("python", "# talk\n"))
	w.send(`{"type":"data","stream":"stdin","data":"early\n"}`)
	if m, _ := w.next(); m.Type != "runtime" || m.Language != "python" || m.Version != "3.11.2" {
		t.Fatalf("first message %+v, want the runtime", m)
	}
	if m, _ := w.next(); m.Type != "stage" || m.Stage != "run" {
		t.Fatalf("second message %+v, want stage run", m)
	}
	var out strings.Builder
	for _, turn := range []string{"early", "one", "two"} {
		if turn != "early" {
			w.send(`{"type":"data","stream":"stdin","data":"` + turn + `\n"}`)
		}
		want := "you said " + turn + "\n"
		for out.Len() < len(want) {
			m, code := w.next()
			if code != 0 || m.Type != "data" || m.Stream != "stdout" {
				t.Fatalf("turn %s: %+v (close %d)", turn, m, code)
			}
			out.WriteString(m.Data)
		}
		if out.String() != want {
			t.Fatalf("turn %s: got %q, want %q", turn, out.String(), want)
		}
		out.Reset()
	}
	w.send(`{"type":"data","stream":"stdin","data":"bye\n"}`)
	exit := w.until("exit", &out)
	if out.String() != "goodbye\n" || exit.Stage != "run" || exit.Code == nil || *exit.Code != 0 || exit.Signal != nil {
		t.Fatalf("end: out %q exit %+v", out.String(), exit)
	}
	if code, msgs := w.closed(); code != wsJobCompleted {
		t.Fatalf("closed with %d after %+v, want 4999", code, msgs)
	}
	if n := len(d.Live()); n != 0 {
		t.Fatalf("%d VMs alive after the job", n)
	}
}

// TestPistonWSSignalKillsLoop: a signal reaches a program that would run
// to its time limit.
func TestPistonWSSignalKillsLoop(t *testing.T) {
	hs, _ := newFakeWSServer(t, 2)
	w := dialWS(t, hs.URL+"/api/v2/piston/connect", nil)
	w.send(initMsg("python", "# loop\n"))
	w.until("stage", nil)
	w.send(`{"type":"signal","signal":"SIGTERM"}`)
	exit := w.until("exit", nil)
	if exit.Signal == nil || *exit.Signal != "SIGTERM" || exit.Code != nil || exit.Status == nil || *exit.Status != "SG" {
		t.Fatalf("exit %+v, want killed by SIGTERM", exit)
	}
	if code, _ := w.closed(); code != wsJobCompleted {
		t.Fatalf("closed with %d, want 4999", code)
	}
}

// TestPistonWSSignalBeforeRun: a signal sent right after init, before any
// stage runs, reaches the program as it starts.
func TestPistonWSSignalBeforeRun(t *testing.T) {
	hs, _ := newFakeWSServer(t, 2)
	w := dialWS(t, hs.URL+"/api/v2/connect", nil)
	w.send(initMsg("python", "# loop\n"))
	w.send(`{"type":"signal","signal":"SIGKILL"}`)
	exit := w.until("exit", nil)
	if exit.Signal == nil || *exit.Signal != "SIGKILL" {
		t.Fatalf("exit %+v, want killed by SIGKILL", exit)
	}
}

// TestPistonWSCloseCodes hits each of Piston's close codes once.
func TestPistonWSCloseCodes(t *testing.T) {
	hs, _ := newFakeWSServer(t, 4)
	for name, tc := range map[string]struct {
		msgs      []string
		waitStage bool // send the last message once the run stage began
		want      websocket.StatusCode
		wantError string // the error message before a 4002
	}{
		"job completed":         {msgs: []string{initMsg("python", "# hello\n")}, want: wsJobCompleted},
		"already initialized":   {msgs: []string{initMsg("python", "# loop\n"), initMsg("python", "# loop\n")}, want: wsAlreadyInit},
		"init timeout":          {want: wsInitTimeout},
		"notified error":        {msgs: []string{`{"type":"init","version":"*","files":[]}`}, want: wsNotifiedError, wantError: "language is required as a string"},
		"unknown runtime":       {msgs: []string{`{"type":"init","language":"brainfuck","version":"*","files":[{"content":"+"}]}`}, want: wsNotifiedError, wantError: "brainfuck-* runtime is unknown"},
		"not json":              {msgs: []string{`{"type":`}, want: wsNotifiedError, wantError: "JSON object"},
		"data before init":      {msgs: []string{`{"type":"data","stream":"stdin","data":"x"}`}, want: wsNotInit},
		"signal before init":    {msgs: []string{`{"type":"signal","signal":"SIGKILL"}`}, want: wsNotInit},
		"write to stdout":       {msgs: []string{initMsg("python", "# loop\n"), `{"type":"data","stream":"stdout","data":"x"}`}, waitStage: true, want: wsOnlyStdin},
		"invalid signal":        {msgs: []string{initMsg("python", "# loop\n"), `{"type":"signal","signal":"SIGNOPE"}`}, waitStage: true, want: wsInvalidSignal},
		"signal not a string":   {msgs: []string{initMsg("python", "# loop\n"), `{"type":"signal","signal":9}`}, want: wsInvalidSignal},
		"data not a string":     {msgs: []string{initMsg("python", "# loop\n"), `{"type":"data","stream":"stdin","data":7}`}, want: wsNotifiedError, wantError: "data must be a string"},
		"unknown type, ignored": {msgs: []string{`{"type":"ping"}`}, want: wsInitTimeout},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			w := dialWS(t, hs.URL+"/api/v2/connect", nil)
			start := time.Now()
			for i, m := range tc.msgs {
				if tc.waitStage && i == len(tc.msgs)-1 {
					w.until("stage", nil)
				}
				w.send(m)
			}
			code, msgs := w.closed()
			if code != tc.want {
				t.Fatalf("closed with %d after %+v, want %d", code, msgs, tc.want)
			}
			if tc.want == wsInitTimeout {
				if d := time.Since(start); d < 900*time.Millisecond || d > 5*time.Second {
					t.Fatalf("init timeout after %s, want about 1s", d)
				}
			}
			if tc.wantError != "" {
				if len(msgs) == 0 || msgs[len(msgs)-1].Type != "error" || !strings.Contains(msgs[len(msgs)-1].Message, tc.wantError) {
					t.Fatalf("messages before 4002: %+v, want an error saying %q", msgs, tc.wantError)
				}
			}
		})
	}
}

// TestPistonWSCompiled: a compiled language has a compile stage; a failed
// compile ends the job without a run stage.
func TestPistonWSCompiled(t *testing.T) {
	hs, _ := newFakeWSServer(t, 2)
	t.Run("ok", func(t *testing.T) {
		w := dialWS(t, hs.URL+"/api/v2/connect", nil)
		w.send(initMsg("c", "int main() {}"))
		w.send(`{"type":"data","stream":"stdin","data":"echoed\n"}`)
		var stages []string
		var out strings.Builder
		for _, want := range []string{"runtime", "stage", "exit", "stage"} {
			m := w.until(want, nil)
			stages = append(stages, m.Type+":"+m.Stage)
			if m.Type == "exit" && (m.Code == nil || *m.Code != 0) {
				t.Fatalf("compile exit %+v", m)
			}
		}
		// ./main echoes stdin until end of file, which Piston never sends:
		// a signal ends it.
		for out.String() != "echoed\n" {
			m, code := w.next()
			if code != 0 || m.Type != "data" {
				t.Fatalf("%+v (close %d) before the echo; stages %v", m, code, stages)
			}
			out.WriteString(m.Data)
		}
		w.send(`{"type":"signal","signal":"SIGINT"}`)
		exit := w.until("exit", nil)
		if want := "runtime: stage:compile exit:compile stage:run"; strings.Join(stages, " ") != want || exit.Stage != "run" || exit.Signal == nil || *exit.Signal != "SIGINT" {
			t.Fatalf("stages %v exit %+v, want %s then an exit by SIGINT", stages, exit, want)
		}
	})
	t.Run("compile error", func(t *testing.T) {
		w := dialWS(t, hs.URL+"/api/v2/connect", nil)
		w.send(initMsg("c", "syntax error"))
		code, msgs := w.closed()
		var got []string
		for _, m := range msgs {
			got = append(got, m.Type+":"+m.Stage+m.Stream)
		}
		last := msgs[len(msgs)-1]
		if code != wsJobCompleted || strings.Join(got, " ") != "runtime: stage:compile data:stderr exit:compile" ||
			last.Code == nil || *last.Code != 1 {
			t.Fatalf("closed %d after %v (%+v)", code, got, last)
		}
	})
}

// TestPistonWSSlowClient: a client that does not read holds no VM: the
// program's output waits in memory and its VM goes when it ends. The
// sockets' buffers are small, so the output cannot hide in the kernel.
func TestPistonWSSlowClient(t *testing.T) {
	hs, d := newFakeWSServer(t, 1, 16<<10)
	tiny := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetReadBuffer(16 << 10)
		}
		return c, err
	}}}
	w := dialWS(t, hs.URL+"/api/v2/connect", &websocket.DialOptions{HTTPClient: tiny})
	w.send(initMsg("python", "# flood 400000\n"))
	// Without reading a byte: the VM must go once the program ended.
	deadline := time.Now().Add(20 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for d.Restores.Load() == 0 || len(d.Live()) != 0 { // the run's VM came and went
		if time.Now().After(deadline) {
			t.Fatalf("the VM of a finished program still runs while its client does not read (%d live)", len(d.Live()))
		}
		<-tick.C
	}
	// The slot is free: a second session runs at once.
	w2 := dialWS(t, hs.URL+"/api/v2/connect", nil)
	w2.send(initMsg("python", "# hello\n"))
	if code, _ := w2.closed(); code != wsJobCompleted {
		t.Fatalf("second session closed with %d", code)
	}
	// And the slow client still gets all its output, then the exit.
	var out strings.Builder
	exit := w.until("exit", &out)
	if out.Len() != 400000 || exit.Code == nil || *exit.Code != 0 {
		t.Fatalf("slow client got %d bytes, exit %+v", out.Len(), exit)
	}
}

// TestPistonWSRefuses: a web page on another origin cannot open a session
// (it would run code through a local server that needs no key), a key the
// server wants is wanted here too, and a message past the body limit ends
// the connection.
func TestPistonWSRefuses(t *testing.T) {
	hs, d := newFakeWSServerConfig(t, Config{APIKey: "k", MaxBody: 4 << 10}, 2)
	url := strings.Replace(hs.URL, "http", "ws", 1) + "/api/v2/connect"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	key := http.Header{"Authorization": {"Bearer k"}}

	for name, tc := range map[string]struct {
		hdr  http.Header
		want int
	}{
		"no key":       {nil, http.StatusUnauthorized},
		"other origin": {http.Header{"Authorization": {"Bearer k"}, "Origin": {"http://evil.example"}}, http.StatusForbidden},
	} {
		c, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: tc.hdr})
		if err == nil {
			c.CloseNow()
			t.Fatalf("%s: the handshake succeeded", name)
		}
		if resp == nil || resp.StatusCode != tc.want {
			t.Fatalf("%s: %v (%+v), want %d", name, err, resp, tc.want)
		}
	}

	w := dialWS(t, url, &websocket.DialOptions{HTTPHeader: key})
	w.send(initMsg("python", "# hello\n"+strings.Repeat("#", 8<<10)))
	if code, _ := w.closed(); code != websocket.StatusMessageTooBig {
		t.Fatalf("closed with %d after a message past the limit, want %d", code, websocket.StatusMessageTooBig)
	}
	if d.Boots.Load()+d.Restores.Load() != 0 {
		t.Fatal("a refused session started a VM")
	}
}

func TestStdinQueueBound(t *testing.T) {
	q := newStdinQueue()
	if !q.push(make([]byte, wsMaxStdinBacklog)) {
		t.Fatal("a full backlog was refused")
	}
	if q.push([]byte("x")) {
		t.Fatal("the backlog passed its bound")
	}
	done := make(chan struct{})
	if b, ok := q.take(done); !ok || len(b) != wsMaxStdinBacklog {
		t.Fatalf("take: %d %v", len(b), ok)
	}
	if !q.push([]byte("x")) {
		t.Fatal("refused after it was taken")
	}
	close(done)
	if b, ok := q.take(done); !ok || string(b) != "x" {
		t.Fatalf("what was queued is lost at the end: %q %v", b, ok)
	}
	if _, ok := q.take(done); ok {
		t.Fatal("take after the end")
	}
}
