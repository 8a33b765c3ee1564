package sandbox

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/testutil"
	"github.com/firesandbox/firesandbox/internal/vmm/vmmfake"
)

// interactiveManager is a Manager over the fake driver whose python
// programs answer each line of stdin with "<line>!" until end of file,
// whose gcc fails on "syntax error", and whose ./main prints "compiled".
func interactiveManager(t *testing.T) (*Manager, *vmmfake.Driver) {
	t.Helper()
	d := vmmfake.New()
	d.Exec = func(ctx context.Context, g *vmmfake.Guest, req agentproto.ExecRequest, stdout, stderr io.Writer) agentproto.ExitResult {
		switch req.Argv[0] {
		case "python3":
			sc := bufio.NewScanner(vmmfake.Stdin(ctx))
			for sc.Scan() {
				fmt.Fprintf(stdout, "%s!\n", sc.Text())
			}
			if ctx.Err() != nil {
				return agentproto.ExitResult{Code: -1, Signal: "SIGKILL", Status: agentproto.StatusSignal}
			}
		case "gcc":
			if strings.Contains(string(g.Machine().Files()[path.Join(req.Dir, "main.c")]), "syntax error") {
				fmt.Fprintln(stderr, "error")
				return agentproto.ExitResult{Code: 1, Status: agentproto.StatusRuntimeError}
			}
		case "./main":
			fmt.Fprintln(stdout, "compiled")
		}
		return agentproto.ExitResult{}
	}
	m, err := New(Config{DataDir: testutil.FakeDataDir(t, "python", "c"), RunDir: t.TempDir()}, WithDriver(d))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		m.Close()
		if live := d.Live(); len(live) != 0 {
			t.Errorf("%d machines still running after the test", len(live))
		}
	})
	return m, d
}

// lines collects output and lets a test wait for it.
type lines struct {
	mu   sync.Mutex
	b    strings.Builder
	more chan struct{}
}

func newLines() *lines { return &lines{more: make(chan struct{}, 1)} }

func (l *lines) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.b.Write(p)
	l.mu.Unlock()
	select {
	case l.more <- struct{}{}:
	default:
	}
	return len(p), nil
}

// waitFor waits (bounded) until the output is want.
func (l *lines) waitFor(t *testing.T, want string) {
	t.Helper()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	for {
		l.mu.Lock()
		got := l.b.String()
		l.mu.Unlock()
		if got == want {
			return
		}
		select {
		case <-l.more:
		case <-deadline.C:
			t.Fatalf("output %q, want %q", got, want)
		}
	}
}

func TestInteractiveConversation(t *testing.T) {
	m, d := interactiveManager(t)
	ctx := context.Background()
	it, err := m.RunInteractive(ctx, RunRequest{Language: "python", Files: []agentproto.File{{Content: []byte("x")}},
		Stdin: []byte("first\n")})
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	if it.Compiled() || it.Language() != "python" {
		t.Fatalf("python: compiled=%v language=%s", it.Compiled(), it.Language())
	}
	if err := it.WriteStdin(ctx, []byte("early\n")); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("stdin before start: %v, want ErrNotRunning", err)
	}
	out := newLines()
	if err := it.Start(ctx, out, nil); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, "first!\n") // the request's stdin comes first
	if err := it.WriteStdin(ctx, []byte("two\n")); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, "first!\ntwo!\n") // answered before the next line is sent
	if err := it.WriteStdin(ctx, []byte("three\n")); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, "first!\ntwo!\nthree!\n")
	if err := it.CloseStdin(ctx); err != nil {
		t.Fatal(err)
	}
	res, err := it.Wait(ctx)
	if err != nil || res.Status != agentproto.StatusOK {
		t.Fatalf("wait: %+v %v", res, err)
	}
	if err := it.WriteStdin(ctx, []byte("late\n")); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("stdin after the end: %v, want ErrNotRunning", err)
	}
	if err := it.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(d.Live()); n != 0 {
		t.Fatalf("%d VMs after Close", n)
	}
}

func TestInteractiveSignal(t *testing.T) {
	m, _ := interactiveManager(t)
	ctx := context.Background()
	it, err := m.RunInteractive(ctx, RunRequest{Language: "python", Files: []agentproto.File{{Content: []byte("x")}}})
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	if err := it.Signal(ctx, "SIGNOPE"); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("unknown signal: %v, want ErrBadRequest", err)
	}
	// Sent before the program runs: it gets it as it starts.
	if err := it.Signal(ctx, "SIGTERM"); err != nil {
		t.Fatal(err)
	}
	if err := it.Start(ctx, nil, nil); err != nil {
		t.Fatal(err)
	}
	res, err := it.Wait(ctx)
	if err != nil || res.Signal != "SIGTERM" || res.Status != agentproto.StatusSignal {
		t.Fatalf("wait: %+v %v, want killed by SIGTERM", res, err)
	}
	// Its stage is over: a late signal is no error.
	if err := it.Signal(ctx, "SIGKILL"); err != nil {
		t.Fatalf("signal after the end: %v", err)
	}
}

func TestInteractiveCompiled(t *testing.T) {
	m, _ := interactiveManager(t)
	ctx := context.Background()
	for name, tc := range map[string]struct {
		src    string
		ok     bool
		stdout string
	}{
		"compiles":     {"int main() {}", true, "compiled\n"},
		"syntax error": {"syntax error", false, ""},
	} {
		t.Run(name, func(t *testing.T) {
			it, err := m.RunInteractive(ctx, RunRequest{Language: "c", Files: []agentproto.File{{Content: []byte(tc.src)}}})
			if err != nil {
				t.Fatal(err)
			}
			defer it.Close()
			if !it.Compiled() {
				t.Fatal("c has no compile stage")
			}
			if err := it.Start(ctx, nil, nil); !errors.Is(err, ErrBadRequest) {
				t.Fatalf("start before compile: %v, want ErrBadRequest", err)
			}
			cerr := newLines()
			res, err := it.Compile(ctx, nil, cerr)
			if err != nil || (res.Status == agentproto.StatusOK) != tc.ok {
				t.Fatalf("compile: %+v %v", res, err)
			}
			if !tc.ok {
				cerr.waitFor(t, "error\n")
				if err := it.Start(ctx, nil, nil); !errors.Is(err, ErrBadRequest) {
					t.Fatalf("start after a failed compile: %v, want ErrBadRequest", err)
				}
				return
			}
			out := newLines()
			if err := it.Start(ctx, out, nil); err != nil {
				t.Fatal(err)
			}
			if res, err := it.Wait(ctx); err != nil || res.Status != agentproto.StatusOK {
				t.Fatalf("run: %+v %v", res, err)
			}
			out.waitFor(t, tc.stdout)
		})
	}
}

func TestInteractiveValidates(t *testing.T) {
	m, d := interactiveManager(t)
	_, err := m.RunInteractive(context.Background(), RunRequest{Language: "python"})
	if !errors.Is(err, ErrBadRequest) {
		t.Fatalf("no program: %v, want ErrBadRequest", err)
	}
	if d.Boots.Load()+d.Restores.Load() != 0 {
		t.Fatal("a VM was started for an invalid request")
	}
}
