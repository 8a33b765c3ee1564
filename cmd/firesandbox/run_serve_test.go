package main

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/api"
	"github.com/firesandbox/firesandbox/internal/api/client"
	"github.com/firesandbox/firesandbox/internal/sandbox"
	"github.com/firesandbox/firesandbox/internal/testutil"
	"github.com/firesandbox/firesandbox/internal/vmm/vmmfake"
)

// TestRunThrough checks when run goes through a serve: only when one
// answers on the data directory's socket, and not with --standalone or a
// flag that sets up VMs in this process.
func TestRunThrough(t *testing.T) {
	data, runDir := t.TempDir(), t.TempDir()
	sock := (&globalFlags{dataDir: data, runDir: runDir}).socketPath()
	tests := []struct {
		name     string
		socket   string // "", "stale" or "live"
		args     []string
		want     string // the socket, or "" for in-process
		wantNote string
	}{
		{name: "no serve", want: ""},
		{name: "a killed serve's socket", socket: "stale", want: ""},
		{name: "live serve", socket: "live", want: sock},
		{name: "run flags the API has", socket: "live", args: []string{"--timeout", "3s", "--stdin", "x", "--json", "--procs", "2", "--memory-limit", "64"}, want: sock},
		{name: "--standalone", socket: "live", args: []string{"--standalone"}, want: ""},
		{name: "--cold", socket: "live", args: []string{"--cold"}, wantNote: "--cold: running in this process, not through serve " + sock},
		{name: "--mount", socket: "live", args: []string{"--mount", "/tmp:/mnt"}, wantNote: "--mount"},
		{name: "global VM flags", socket: "live", args: []string{"--driver", "qemu", "--memory", "1024"}, wantNote: "--driver, --memory: running in this process"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			switch tc.socket {
			case "stale", "live":
				ln, err := listenSocket(sock)
				if err != nil {
					t.Fatal(err)
				}
				ln.(*net.UnixListener).SetUnlinkOnClose(false)
				if tc.socket == "stale" {
					ln.Close()
				} else {
					go func() {
						for {
							c, err := ln.Accept()
							if err != nil {
								return
							}
							c.Close()
						}
					}()
					defer ln.Close()
				}
				defer os.Remove(sock)
			}
			g := &globalFlags{}
			run, _, err := newRootWith(g).Find([]string{"run"})
			if err != nil {
				t.Fatal(err)
			}
			if err := run.ParseFlags(append([]string{"--data-dir", data, "--run-dir", runDir}, tc.args...)); err != nil {
				t.Fatal(err)
			}
			f := &runFlags{standalone: run.Flags().Lookup("standalone").Value.String() == "true"}
			got, note := g.runThrough(run, f)
			if got != tc.want || (tc.wantNote == "") != (note == "") || !strings.Contains(note, tc.wantNote) {
				t.Errorf("runThrough = %q, note %q; want %q, note with %q", got, note, tc.want, tc.wantNote)
			}
		})
	}
}

func TestDescribeRun(t *testing.T) {
	res := &client.RunResult{Language: "python", Version: "3.11", ReadyMillis: 4, TotalMillis: 30, Pooled: true, Restored: true,
		Step:    client.Step{Prewarmed: true},
		Timings: []client.Timing{{Name: "start", Millis: 1.25}, {Name: "hello", Millis: 2}, {Name: "some_new_part", Millis: 0.5}}}
	got := describeRun(res, "/run/firesandbox/api.sock", 41e6)
	want := "firesandbox: python 3.11 via serve /run/firesandbox/api.sock: VM from the warm pool, prewarmed runtime, total 30ms, command 41ms; the pool had made it in 4ms: start 1.2ms, hello 2.0ms, some_new_part 0.5ms"
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	res.Pooled = false
	want = "firesandbox: python 3.11 in-process: VM ready in 4ms (restored from snapshot, prewarmed runtime), total 30ms, command 41ms; VM start: start 1.2ms, hello 2.0ms, some_new_part 0.5ms"
	if got := describeRun(res, "", 41e6); got != want {
		t.Errorf("in-process:\ngot  %s\nwant %s", got, want)
	}
}

// fakeProgram is the fake guest's python: "bytes" writes stdin and bytes
// that are not UTF-8, "sleep" outlives its limit; anything else fails.
func fakeProgram(ctx context.Context, _ *vmmfake.Guest, req agentproto.ExecRequest, stdout, stderr io.Writer) agentproto.ExitResult {
	prog := ""
	if len(req.Files) > 0 {
		prog = string(req.Files[0].Content)
	}
	switch prog {
	case "bytes":
		stdout.Write(req.Stdin)
		stderr.Write([]byte{0xff, 0x00, 0xc3})
		stdout.Write(append([]byte{0xa9}, strings.Join(req.Argv[2:], " ")+"\n"...))
		return agentproto.ExitResult{Code: 3, Status: agentproto.StatusRuntimeError}
	case "sleep":
		<-ctx.Done()
		return agentproto.ExitResult{Code: -1, Signal: "SIGKILL", Status: agentproto.StatusTimeout, Message: "wall-clock limit reached"}
	}
	io.WriteString(stderr, "not a fake program\n")
	return agentproto.ExitResult{Code: 1, Status: agentproto.StatusRuntimeError}
}

// serveFake serves the API over the fake VMM driver on g's socket, as a
// serve of g's data directory would.
func serveFake(t *testing.T, g *globalFlags) {
	t.Helper()
	d := vmmfake.New()
	d.Exec = fakeProgram
	mgr, err := sandbox.New(sandbox.Config{DataDir: g.dataDir, RunDir: g.runDir}, sandbox.WithDriver(d))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := sandbox.OpenService(mgr, sandbox.ServiceConfig{MaxVMs: 2}, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := api.Open(api.Config{}, svc)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := listenSocket(g.socketPath())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		if err := srv.Shutdown(context.Background()); err != nil {
			t.Error(err)
		}
		<-done
		if err := svc.Close(context.Background()); err != nil {
			t.Error(err)
		}
	})
}

// runCommand runs the CLI in this process with its stdin, stdout and
// stderr replaced, as a user's shell would see them.
func runCommand(t *testing.T, stdin string, args ...string) cliResult {
	t.Helper()
	files := make([]*os.File, 6) // stdin r, w; stdout r, w; stderr r, w
	for i := 0; i < 6; i += 2 {
		var err error
		if files[i], files[i+1], err = os.Pipe(); err != nil {
			t.Fatal(err)
		}
	}
	go func() { io.WriteString(files[1], stdin); files[1].Close() }()
	read := func(f *os.File) chan string {
		ch := make(chan string, 1)
		go func() { b, _ := io.ReadAll(f); ch <- string(b) }()
		return ch
	}
	outc, errc := read(files[2]), read(files[4])
	oldIn, oldOut, oldErr := os.Stdin, os.Stdout, os.Stderr
	os.Stdin, os.Stdout, os.Stderr = files[0], files[3], files[5]
	root := newRoot()
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	os.Stdin, os.Stdout, os.Stderr = oldIn, oldOut, oldErr
	files[3].Close()
	files[5].Close()
	r := cliResult{stdout: <-outc, stderr: <-errc}
	files[0].Close()
	var ee exitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.code
	case err != nil:
		r.code, r.stderr = exitInternal, r.stderr+"firesandbox: "+err.Error()+"\n"
	}
	return r
}

// Through a serve, run prints the program's bytes as it wrote them,
// stdin and arguments reach it, and the exit code and -v line say what
// happened. (TestCLIRunBothWays compares with in-process runs on VMs.)
func TestRunThroughFakeServe(t *testing.T) {
	g := &globalFlags{dataDir: testutil.FakeDataDir(t, "python"), runDir: t.TempDir()}
	t.Setenv("FIRESANDBOX_CONFIG", "")
	serveFake(t, g)
	base := []string{"--data-dir", g.dataDir, "--run-dir", g.runDir, "run"}

	r := runCommand(t, "", append(base, "--stdin", "in\xfe\n", "python", "-c", "bytes", "a", "--b")...)
	if want := (cliResult{stdout: "in\xfe\n\xa9a --b\n", stderr: "\xff\x00\xc3", code: 3}); r != want {
		t.Errorf("got %+v, want %+v", r, want)
	}
	r = runCommand(t, "bytes", append(base, "-v", "--json", "--stdin-file", "/dev/null", "python", "-")...)
	if r.code != 3 || !strings.Contains(r.stderr, "via serve "+g.socketPath()) || !strings.Contains(r.stderr, `"exit_code": 3`) ||
		!strings.Contains(r.stderr, "start ") {
		t.Errorf("-v --json, program on stdin: %+v", r)
	}
	r = runCommand(t, "", append(base, "--timeout", "100ms", "python", "-c", "sleep")...)
	if r.code != 124 || r.stderr != "firesandbox: wall-clock limit reached (TO)\n" {
		t.Errorf("timeout: %+v", r)
	}
	r = runCommand(t, "", append(base, "cobolx", "-c", "x")...)
	if r.code != exitInternal || !strings.Contains(r.stderr, "cobolx") {
		t.Errorf("unknown language: %+v", r)
	}
	// A flag that needs this process's VMs skips the serve, and says so.
	r = runCommand(t, "", append(base, "-v", "--driver", "none", "python", "-c", "bytes")...)
	if r.code != exitInternal || !strings.Contains(r.stderr, "--driver: running in this process, not through serve") {
		t.Errorf("--driver: %+v", r)
	}
}
