package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
)

// waitOutput waits until the buffer's content matches re.
func waitOutput(t *testing.T, b *syncBuffer, re string) string {
	t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if m := rx.FindString(b.String()); m != "" {
			return m
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("output %q never matched %q", b.String(), re)
	return ""
}

func ctx10(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// connectTo serves srv on a fresh channel (as after a restore) and
// returns a client for it.
func connectTo(t *testing.T, srv *Server) *agentproto.Client {
	t.Helper()
	host, guest := net.Pipe()
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(context.Background(), guest) }()
	c := agentproto.NewClient(host)
	t.Cleanup(func() { c.Close(); guest.Close(); <-done })
	if _, err := c.WaitHello(ctx10(t)); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestBackgroundProcessLifecycle(t *testing.T) {
	srv := NewServer(Config{UID: -1, GID: -1}, nil)
	c := connectTo(t, srv)
	ctx := ctx10(t)
	start := time.Now()
	p, err := c.Start(ctx, agentproto.ExecRequest{
		Argv: []string{"sh", "-c", "echo ready; exec sleep 60"}, Background: true, Tag: "server",
	}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.PID <= 0 || time.Since(start) > 5*time.Second {
		t.Fatalf("Start = pid %d after %s", p.PID, time.Since(start))
	}
	p.Detach() // the caller goes away; the process must not

	// A new channel (a new host, or the same after a restore) finds it.
	c2 := connectTo(t, srv)
	procs, err := c2.Processes(ctx)
	if err != nil || len(procs) != 1 || procs[0].PID != p.PID || procs[0].Tag != "server" || !procs[0].Background {
		t.Fatalf("Processes = %+v, %v", procs, err)
	}
	var out syncBuffer
	conn, err := c2.Connect(ctx, p.PID, true /* replay */, &out, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitOutput(t, &out, "ready\n")
	if err := c2.Signal(ctx, p.PID, "SIGTERM"); err != nil {
		t.Fatal(err)
	}
	res, err := conn.Wait(ctx)
	if err != nil || res.Status != agentproto.StatusSignal || res.Signal != "SIGTERM" || res.PID != p.PID {
		t.Fatalf("Wait = %+v, %v; want killed by SIGTERM", res, err)
	}
	if procs, _ := c2.Processes(ctx); len(procs) != 0 {
		t.Fatalf("after exit: %+v", procs)
	}
	var ae *agentproto.AgentError
	if err := c2.Signal(ctx, p.PID, "SIGKILL"); !errors.As(err, &ae) || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("signal to an ended process = %v, want not found", err)
	}
}

// Only processes the agent started can be signalled: not the agent, not
// pid 1, not an arbitrary pid.
func TestSignalOnlyOwnProcesses(t *testing.T) {
	c := startAgent(t, Config{})
	for _, pid := range []int{1, os.Getpid(), 999999} {
		if err := c.Signal(ctx10(t), pid, "SIGKILL"); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Signal(%d) = %v, want not found", pid, err)
		}
	}
}

// A foreground exec's stdin streams: read a line, answer, repeat (the
// Piston WebSocket's pattern).
func TestForegroundStdinStreams(t *testing.T) {
	c := startAgent(t, Config{})
	ctx := ctx10(t)
	var out syncBuffer
	p, err := c.Start(ctx, agentproto.ExecRequest{
		Argv:      []string{"sh", "-c", `while read l; do echo "got $l"; done; echo bye`},
		OpenStdin: true,
	}, &out, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, line := range []string{"one", "two"} {
		if err := c.WriteStdin(ctx, p.PID, []byte(line+"\n")); err != nil {
			t.Fatal(err)
		}
		waitOutput(t, &out, fmt.Sprintf("(?s)(got [a-z]+\n){%d}", i+1))
	}
	if err := c.CloseStdin(ctx, p.PID); err != nil {
		t.Fatal(err)
	}
	res, err := p.Wait(ctx)
	if err != nil || res.Code != 0 || out.String() != "got one\ngot two\nbye\n" {
		t.Fatalf("Wait = %+v, %v; stdout %q", res, err, out.String())
	}
	if err := c.WriteStdin(ctx, p.PID, []byte("late")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("stdin after exit = %v, want not found", err)
	}
}

// A program that never reads stdin fills its pipe; the agent keeps
// answering pings and other calls meanwhile.
func TestUnreadStdinDoesNotJam(t *testing.T) {
	c := startAgent(t, Config{})
	ctx := ctx10(t)
	p, err := c.Start(ctx, agentproto.ExecRequest{Argv: []string{"sleep", "30"}, OpenStdin: true}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Detach()
	go c.WriteStdin(context.Background(), p.PID, make([]byte, 4<<20)) // far more than a pipe holds
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	if _, err := c.WaitHello(ctx); err != nil {
		t.Fatal(err)
	}
	r := run(t, c, agentproto.ExecRequest{Argv: []string{"echo", "free"}})
	if r.stdout != "free\n" || time.Since(start) > 3*time.Second {
		t.Fatalf("exec beside a jammed stdin: %q after %s", r.stdout, time.Since(start))
	}
}

// An interactive shell on a terminal: input echoes, commands run, the
// terminal has the size asked for and follows a resize.
func TestPTYInteractiveShell(t *testing.T) {
	c := startAgent(t, Config{})
	ctx := ctx10(t)
	var out syncBuffer
	p, err := c.Start(ctx, agentproto.ExecRequest{
		Argv: []string{"bash", "--norc", "--noprofile", "-i"},
		PTY:  &agentproto.PTYSize{Cols: 80, Rows: 24},
		Env:  []string{"PS1=$ "},
	}, &out, nil)
	if err != nil {
		t.Fatal(err)
	}
	send := func(s string) {
		t.Helper()
		if err := c.WriteStdin(ctx, p.PID, []byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	send("echo $((6*7)); tty; stty size\n")
	waitOutput(t, &out, `[\r\n]42\r?\n`)             // ran, output on the terminal
	waitOutput(t, &out, `echo \$\(\(6\*7\)\)`)       // the input was echoed
	waitOutput(t, &out, `/dev/pts/[0-9]+\r?\n24 80`) // a real terminal of the asked size
	if err := c.ResizePTY(ctx, p.PID, agentproto.PTYSize{Cols: 100, Rows: 30}); err != nil {
		t.Fatal(err)
	}
	send("stty size\n")
	waitOutput(t, &out, `30 100`)
	send("exit 3\n")
	res, err := p.Wait(ctx)
	if err != nil || res.Code != 3 {
		t.Fatalf("Wait = %+v, %v; output %q", res, err, out.String())
	}
	if err := c.ResizePTY(ctx, 1, agentproto.PTYSize{Cols: 1, Rows: 1}); err == nil {
		t.Fatal("resized a process the agent did not start")
	}
}

// Many processes at once, each with its own output, none mixed up.
func TestManyBackgroundProcesses(t *testing.T) {
	c := startAgent(t, Config{})
	ctx := ctx10(t)
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out syncBuffer
			p, err := c.Start(ctx, agentproto.ExecRequest{Argv: []string{"sh", "-c", fmt.Sprintf("sleep 0.2; echo %d", i)}, Background: true}, &out, nil)
			if err != nil {
				t.Error(err)
				return
			}
			res, err := p.Wait(ctx)
			if err != nil || res.Code != 0 || strings.TrimSpace(out.String()) != fmt.Sprint(i) {
				t.Errorf("process %d: %+v %v %q", i, res, err, out.String())
			}
		}()
	}
	wg.Wait()
}
