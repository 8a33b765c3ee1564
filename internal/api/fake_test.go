package api

import (
	"context"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/sandbox"
	"github.com/firesandbox/firesandbox/internal/testutil"
	"github.com/firesandbox/firesandbox/internal/vmm/vmmfake"
)

// fakeServer is a real serve (its http.Server, listener and middleware)
// over the fake VMM driver: the whole API, without VMs.
type fakeServer struct {
	srv *Server
	svc *sandbox.Service
	drv *vmmfake.Driver
	url string
}

// newFakeServer serves cfg over a fake driver whose guests run fakeExec.
func newFakeServer(t testing.TB, cfg Config, scfg sandbox.ServiceConfig) *fakeServer {
	t.Helper()
	d := vmmfake.New()
	d.Exec = fakeExec
	runDir, err := os.MkdirTemp("", "fsapi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(runDir) })
	mgr, err := sandbox.New(sandbox.Config{DataDir: testutil.FakeDataDir(t, "python"), RunDir: runDir}, sandbox.WithDriver(d))
	if err != nil {
		t.Fatal(err)
	}
	if scfg.MaxVMs == 0 {
		scfg.MaxVMs = 8
	}
	svc, err := sandbox.OpenService(mgr, scfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := Open(cfg, svc)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		if err := srv.Shutdown(context.Background()); err != nil {
			t.Error(err)
		}
		if err := <-done; err != nil {
			t.Error(err)
		}
		if err := svc.Close(context.Background()); err != nil {
			t.Error(err)
		}
	})
	return &fakeServer{srv: srv, svc: svc, drv: d, url: "http://" + ln.Addr().String()}
}

// fakeExec is the fake guest's programs. A run's program is its first
// file's text; a sandbox exec's is its argv. Programs:
//
//	yes              print "y\n" until cancelled, then a little more (an agent's late output)
//	flood N          print N bytes of 'x' as fast as possible, alternating stdout and stderr
//	print TEXT       print TEXT
//	sleep MS         sleep
//	bytes            stdin to stdout, then bytes that are not UTF-8 to stderr and stdout; exit 3
func fakeExec(ctx context.Context, g *vmmfake.Guest, req agentproto.ExecRequest, stdout, stderr io.Writer) agentproto.ExitResult {
	prog := strings.Join(req.Argv, " ")
	if len(req.Argv) > 0 && req.Argv[0] == "python3" && len(req.Files) > 0 {
		prog = string(req.Files[0].Content)
	}
	cmd, arg, _ := strings.Cut(prog, " ")
	switch cmd {
	case "yes":
		chunk := []byte(strings.Repeat("y\n", 512))
		for ctx.Err() == nil {
			if _, err := stdout.Write(chunk); err != nil {
				break
			}
		}
		for range 8 { // what a real agent may still send after the cancel
			stdout.Write(chunk)
		}
		return agentproto.ExitResult{Code: -1, Signal: "SIGKILL", Status: agentproto.StatusSignal}
	case "flood":
		n, _ := strconv.Atoi(arg)
		chunk := []byte(strings.Repeat("x", 32<<10))
		for i := 0; n > 0; i++ {
			c := chunk[:min(n, len(chunk))]
			w := stdout
			if i%2 == 1 {
				w = stderr
			}
			if _, err := w.Write(c); err != nil {
				break
			}
			n -= len(c)
		}
	case "print":
		io.WriteString(stdout, arg+"\n")
	case "bytes":
		stdout.Write(req.Stdin)
		stderr.Write([]byte{0xff, 0x00, 0xc3})
		stdout.Write([]byte{0xa9, '\n'}) // the end of the é stderr began: in another stream, so no rune
		return agentproto.ExitResult{Code: 3, Status: agentproto.StatusRuntimeError}
	case "sleep":
		ms, _ := strconv.Atoi(arg)
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
		case <-ctx.Done():
			return agentproto.ExitResult{Code: -1, Signal: "SIGKILL", Status: agentproto.StatusTimeout}
		}
	default:
		io.WriteString(stderr, cmd+": not a fake program\n")
		return agentproto.ExitResult{Code: 127, Status: agentproto.StatusRuntimeError}
	}
	return agentproto.ExitResult{}
}
