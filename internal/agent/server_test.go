package agent

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
)

// startAgent runs a Server as a host process would, over a socket pair,
// with no chroot, uid switch or cgroups.
func startAgent(t *testing.T, cfg Config) *agentproto.Client {
	t.Helper()
	if cfg.UID == 0 && cfg.GID == 0 {
		cfg.UID, cfg.GID = -1, -1
	}
	host, guest := net.Pipe()
	srv := NewServer(cfg, nil)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(context.Background(), guest)
	}()
	c := agentproto.NewClient(host)
	t.Cleanup(func() {
		c.Close()
		guest.Close()
		<-done
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.WaitHello(ctx); err != nil {
		t.Fatalf("hello: %v", err)
	}
	return c
}

type result struct {
	*agentproto.ExitResult
	stdout, stderr string
}

func run(t *testing.T, c *agentproto.Client, req agentproto.ExecRequest) result {
	t.Helper()
	var out, errb syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := c.Exec(ctx, req, &out, &errb)
	if err != nil {
		t.Fatalf("exec %q: %v", req.Argv, err)
	}
	return result{res, out.String(), errb.String()}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestExecOutputAndExitCodes(t *testing.T) {
	c := startAgent(t, Config{})
	for _, tc := range []struct {
		name           string
		script         string
		stdin          string
		code           int
		status         agentproto.Status
		stdout, stderr string
	}{
		{name: "ok", script: "echo 42", stdout: "42\n"},
		{name: "separate streams", script: "echo out; echo err >&2", stdout: "out\n", stderr: "err\n"},
		{name: "exit code", script: "echo bye; exit 3", code: 3, status: agentproto.StatusRuntimeError, stdout: "bye\n"},
		{name: "stdin", script: "tr a-z A-Z", stdin: "hello\n", stdout: "HELLO\n"},
		{name: "stdin ignored", script: "exit 0", stdin: strings.Repeat("x", 1<<20)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := run(t, c, agentproto.ExecRequest{Argv: []string{"sh", "-c", tc.script}, Stdin: []byte(tc.stdin)})
			if r.Code != tc.code || r.Status != tc.status || r.stdout != tc.stdout || r.stderr != tc.stderr {
				t.Errorf("got code=%d status=%q stdout=%q stderr=%q; want code=%d status=%q stdout=%q stderr=%q",
					r.Code, r.Status, r.stdout, r.stderr, tc.code, tc.status, tc.stdout, tc.stderr)
			}
		})
	}
}

func TestExecSignalled(t *testing.T) {
	c := startAgent(t, Config{})
	r := run(t, c, agentproto.ExecRequest{Argv: []string{"sh", "-c", "kill -SEGV $$"}})
	if r.Status != agentproto.StatusSignal || r.Signal != "SIGSEGV" {
		t.Fatalf("got status %q signal %q, want SG SIGSEGV", r.Status, r.Signal)
	}
}

func TestExecWallTimeoutKillsTree(t *testing.T) {
	c := startAgent(t, Config{})
	start := time.Now()
	// The child sleeps in the background holding stdout open: the run must
	// still end at the limit, killing it too.
	r := run(t, c, agentproto.ExecRequest{
		Argv:   []string{"sh", "-c", "sleep 100 & while :; do :; done"},
		Limits: agentproto.Limits{WallMillis: 500},
	})
	took := time.Since(start)
	if r.Status != agentproto.StatusTimeout {
		t.Fatalf("status %q, want TO (%+v)", r.Status, r.ExitResult)
	}
	if took > 5*time.Second {
		t.Fatalf("took %s for a 500ms limit", took)
	}
	if r.WallMillis < 500 {
		t.Fatalf("wall %dms is under the limit", r.WallMillis)
	}
}

func TestExecBackgroundChildDoesNotHoldRun(t *testing.T) {
	c := startAgent(t, Config{})
	start := time.Now()
	r := run(t, c, agentproto.ExecRequest{Argv: []string{"sh", "-c", "sleep 60 & echo started"}})
	if r.Status != agentproto.StatusOK || r.stdout != "started\n" {
		t.Fatalf("got %+v stdout %q", r.ExitResult, r.stdout)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("a background child held the run for %s", d)
	}
}

func TestExecOutputLimits(t *testing.T) {
	c := startAgent(t, Config{})
	for _, tc := range []struct {
		name   string
		script string
		status agentproto.Status
	}{
		{"stdout", "yes xxxxxxxx", agentproto.StatusStdoutLimit},
		{"stderr", "yes xxxxxxxx >&2", agentproto.StatusStderrLimit},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := run(t, c, agentproto.ExecRequest{
				Argv:   []string{"sh", "-c", tc.script},
				Limits: agentproto.Limits{OutputBytes: 10000, WallMillis: 10000},
			})
			if r.Status != tc.status {
				t.Fatalf("status %q, want %q", r.Status, tc.status)
			}
			got := len(r.stdout) + len(r.stderr)
			if got != 10000 {
				t.Fatalf("forwarded %d bytes, want exactly the 10000-byte cap", got)
			}
		})
	}
}

func TestExecFilesAndWorkingDir(t *testing.T) {
	c := startAgent(t, Config{})
	dir := filepath.Join(t.TempDir(), "box")
	r := run(t, c, agentproto.ExecRequest{
		Argv: []string{"sh", "-c", "pwd; cat main.txt src/lib.txt; test -x run.sh && echo exec"},
		Dir:  dir,
		Files: []agentproto.File{
			{Path: "main.txt", Content: []byte("main\n")},
			{Path: "src/lib.txt", Content: []byte("lib\n")},
			{Path: "run.sh", Content: []byte("#!/bin/sh\n"), Mode: 0o755},
		},
	})
	if want := dir + "\nmain\nlib\nexec\n"; r.stdout != want {
		t.Fatalf("stdout %q, want %q (stderr %q)", r.stdout, want, r.stderr)
	}
	// A second exec in the same dir sees the files (compile, then run).
	r = run(t, c, agentproto.ExecRequest{Argv: []string{"cat", "main.txt"}, Dir: dir})
	if r.stdout != "main\n" {
		t.Fatalf("second exec: stdout %q", r.stdout)
	}
}

func TestExecRefusesEscapes(t *testing.T) {
	c := startAgent(t, Config{})
	root := t.TempDir()
	outside := t.TempDir()
	// An earlier command planted a symlink to outside its directory.
	if err := os.Symlink(outside, filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		req  agentproto.ExecRequest
	}{
		{"dotdot", agentproto.ExecRequest{Argv: []string{"true"}, Files: []agentproto.File{{Path: "../evil", Content: []byte("x")}}}},
		{"absolute", agentproto.ExecRequest{Argv: []string{"true"}, Files: []agentproto.File{{Path: "/tmp/evil", Content: []byte("x")}}}},
		{"through symlink", agentproto.ExecRequest{Argv: []string{"true"}, Dir: root, Files: []agentproto.File{{Path: "link/evil", Content: []byte("x")}}}},
		{"empty argv", agentproto.ExecRequest{}},
		{"relative dir", agentproto.ExecRequest{Argv: []string{"true"}, Dir: "tmp"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := c.Exec(ctx, tc.req, nil, nil)
			if err == nil {
				t.Fatal("exec succeeded, want an error")
			}
		})
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Fatalf("a file was written outside the working directory: %v", ents)
	}
	// The channel still works afterwards.
	if r := run(t, c, agentproto.ExecRequest{Argv: []string{"echo", "ok"}}); r.stdout != "ok\n" {
		t.Fatalf("after refusals: stdout %q", r.stdout)
	}
}

func TestExecUnknownCommand(t *testing.T) {
	c := startAgent(t, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := c.Exec(ctx, agentproto.ExecRequest{Argv: []string{"no-such-command-xyz"}}, nil, nil)
	var ae *agentproto.AgentError
	if !errors.As(err, &ae) || !strings.Contains(ae.Message, "not found") {
		t.Fatalf("err %v, want an agent error saying not found", err)
	}
}

func TestExecCancelKills(t *testing.T) {
	c := startAgent(t, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(300*time.Millisecond, cancel)
	start := time.Now()
	_, err := c.Exec(ctx, agentproto.ExecRequest{Argv: []string{"sleep", "30"}}, nil, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("cancel did not return promptly")
	}
	// The agent killed it and is free for the next exec.
	if r := run(t, c, agentproto.ExecRequest{Argv: []string{"echo", "next"}}); r.stdout != "next\n" {
		t.Fatalf("after cancel: stdout %q", r.stdout)
	}
}

func TestConcurrentExecs(t *testing.T) {
	c := startAgent(t, Config{})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out syncBuffer
			want := strings.Repeat(string(rune('a'+i)), 5000)
			res, err := c.Exec(context.Background(), agentproto.ExecRequest{Argv: []string{"printf", want}}, &out, nil)
			if err != nil || res.Code != 0 || out.String() != want {
				errs <- errors.New("exec " + string(rune('a'+i)) + " got mixed or missing output")
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestEffectiveLimits(t *testing.T) {
	c := &Config{}
	got := c.limits(agentproto.Limits{WallMillis: 1 << 40, OutputBytes: 5})
	def, max := agentproto.DefaultLimits, agentproto.MaxLimits
	want := agentproto.Limits{WallMillis: max.WallMillis, OutputBytes: 5, Procs: def.Procs, MemoryBytes: def.MemoryBytes}
	if got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

func TestWriteAndReadFiles(t *testing.T) {
	c := startAgent(t, Config{})
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "box")
	if err := c.WriteFiles(ctx, dir, []agentproto.File{{Path: "a/b.txt", Content: []byte("hello")}}); err != nil {
		t.Fatal(err)
	}
	got, err := c.ReadFile(ctx, dir+"/a/b.txt", 100)
	if err != nil || string(got) != "hello" {
		t.Fatalf("read back %q, %v", got, err)
	}
	var ae *agentproto.AgentError
	if _, err := c.ReadFile(ctx, dir+"/a/b.txt", 3); !errors.As(err, &ae) || ae.Code != agentproto.CodeTooLarge {
		t.Fatalf("read over the limit: %v, want code too_large", err)
	}
	if _, err := c.ReadFile(ctx, dir+"/missing", 100); !errors.As(err, &ae) || ae.Code != agentproto.CodeNotFound {
		t.Fatalf("reading a missing file: %v, want code not_found", err)
	}
	if _, err := c.ReadFile(ctx, dir+"/a", 100); err == nil {
		t.Fatal("reading a directory succeeded")
	}
	if err := c.WriteFiles(ctx, dir, []agentproto.File{{Path: "../x", Content: []byte("x")}}); err == nil {
		t.Fatal("write with .. succeeded")
	}
}

// File requests resolve paths inside the commands' root: a symlink a
// program planted there cannot make the agent read or write outside it.
func TestFileRequestsStayInRoot(t *testing.T) {
	root, outside := t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(outside, "secret"), []byte("s"), 0o600)
	os.MkdirAll(filepath.Join(root, "tmp"), 0o755)
	os.Symlink(outside, filepath.Join(root, "tmp", "link"))
	c := startAgent(t, Config{Root: root})
	ctx := context.Background()
	if b, err := c.ReadFile(ctx, "/tmp/link/secret", 100); err == nil {
		t.Fatalf("read through an escaping symlink: %q", b)
	}
	if err := c.WriteFiles(ctx, "/tmp/link", []agentproto.File{{Path: "planted", Content: []byte("x")}}); err == nil {
		t.Fatal("wrote through an escaping symlink")
	}
	if _, err := os.Stat(filepath.Join(outside, "planted")); err == nil {
		t.Fatal("a file appeared outside the root")
	}
	if err := c.WriteFiles(ctx, "/tmp/box", []agentproto.File{{Path: "ok.txt", Content: []byte("fine")}}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(root, "tmp", "box", "ok.txt")); err != nil || string(b) != "fine" {
		t.Fatalf("file inside the root: %q %v", b, err)
	}
}

// A request type the agent does not know fails the host's call at once.
func TestUnknownRequestFailsFast(t *testing.T) {
	host, guest := net.Pipe()
	srv := NewServer(Config{UID: -1, GID: -1, Version: "old"}, nil)
	go srv.Serve(context.Background(), guest)
	defer guest.Close()
	w := agentproto.NewWriter(host)
	if _, err := agentproto.ReadFrame(host); err != nil { // Hello
		t.Fatal(err)
	}
	go w.WriteFrame(agentproto.MsgType(200), []byte(`{"id":77}`))
	f, err := agentproto.ReadFrame(host)
	if err != nil {
		t.Fatal(err)
	}
	var m agentproto.ErrorMsg
	if f.Type != agentproto.MsgError || agentproto.DecodeJSON(f, &m) != nil || m.ID != 77 || !strings.Contains(m.Message, "unsupported") {
		t.Fatalf("got %s %+v", f.Type, m)
	}
}

// Commands installed through absolute symlinks (Debian's alternatives)
// are found by resolving the links inside the commands' root.
func TestLookPathFollowsLinksInsideRoot(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"usr/bin", "etc/alternatives"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	os.WriteFile(filepath.Join(root, "usr/bin/php8.2"), []byte("#!/bin/sh\n"), 0o755)
	os.Symlink("/usr/bin/php8.2", filepath.Join(root, "etc/alternatives/php"))
	os.Symlink("/etc/alternatives/php", filepath.Join(root, "usr/bin/php"))
	c := &Config{Root: root}
	got, err := c.lookPath("php", nil)
	if err != nil || got != "/usr/bin/php" {
		t.Fatalf("lookPath(php) = %q, %v", got, err)
	}
	// A link that leads outside the root resolves inside it instead.
	os.Symlink("/bin/sh", filepath.Join(root, "usr/bin/escape"))
	if got, err := c.lookPath("escape", nil); err == nil {
		t.Fatalf("found %q through a link to the agent's own /bin/sh", got)
	}
}
