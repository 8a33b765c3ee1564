package api

import (
	"strings"
	"testing"

	"github.com/firesandbox/firesandbox/internal/testutil"
)

// TestPistonWSVMs holds Piston WebSocket sessions with real VMs: a
// conversation with an interactive python program, turn by turn, and a
// signal that ends a loop.
func TestPistonWSVMs(t *testing.T) {
	fx := testutil.RequireVMs(t)
	testutil.RequireQEMU(t)
	runDir := shortTempDir(t)
	s := startVMServer(t, fx, t.TempDir(), runDir)
	defer s.stop()

	t.Run("conversation", func(t *testing.T) {
		w := dialWS(t, s.url+"/api/v2/connect", nil)
		w.send(initMsg("python", "print('ready', flush=True)\nwhile True:\n    line = input()\n    if line == 'bye':\n        print('goodbye', flush=True)\n        break\n    print(int(line) * 2, flush=True)\n"))
		if m, _ := w.next(); m.Type != "runtime" || m.Language != "python" {
			t.Fatalf("first message %+v, want the runtime", m)
		}
		if m, _ := w.next(); m.Type != "stage" || m.Stage != "run" {
			t.Fatalf("second message %+v, want stage run", m)
		}
		// readLine reads stdout up to a newline: each turn's answer.
		readLine := func() string {
			t.Helper()
			var b strings.Builder
			for !strings.HasSuffix(b.String(), "\n") {
				m, code := w.next()
				if code != 0 || m.Type != "data" {
					t.Fatalf("%+v (close %d) after %q", m, code, b.String())
				}
				if m.Stream == "stdout" {
					b.WriteString(m.Data)
				}
			}
			return b.String()
		}
		if got := readLine(); got != "ready\n" {
			t.Fatalf("got %q, want ready", got)
		}
		for _, turn := range []struct{ in, want string }{{"21", "42\n"}, {"5", "10\n"}, {"-4", "-8\n"}} {
			w.send(`{"type":"data","stream":"stdin","data":"` + turn.in + `\n"}`)
			if got := readLine(); got != turn.want {
				t.Fatalf("sent %s, got %q, want %q", turn.in, got, turn.want)
			}
		}
		w.send(`{"type":"data","stream":"stdin","data":"bye\n"}`)
		var out strings.Builder
		exit := w.until("exit", &out)
		if out.String() != "goodbye\n" || exit.Stage != "run" || exit.Code == nil || *exit.Code != 0 || exit.Signal != nil {
			t.Fatalf("end: out %q exit %+v", out.String(), exit)
		}
		if code, msgs := w.closed(); code != wsJobCompleted {
			t.Fatalf("closed with %d after %+v, want 4999", code, msgs)
		}
		waitVMs(t, runDir, 0)
	})

	t.Run("signal kills a loop", func(t *testing.T) {
		w := dialWS(t, s.url+"/api/v2/piston/connect", nil)
		w.send(`{"type":"init","language":"py","version":"3.x","run_timeout":25000,"files":[{"content":"import time\nprint('looping', flush=True)\nwhile True:\n    time.sleep(0.05)\n"}]}`)
		var out strings.Builder
		for !strings.Contains(out.String(), "looping") {
			m, code := w.next()
			if code != 0 || m.Type == "exit" || m.Type == "error" {
				t.Fatalf("%+v (close %d) before the loop ran", m, code)
			}
			if m.Type == "data" {
				out.WriteString(m.Data)
			}
		}
		w.send(`{"type":"signal","signal":"SIGTERM"}`)
		exit := w.until("exit", nil)
		if exit.Signal == nil || *exit.Signal != "SIGTERM" || exit.Code != nil {
			t.Fatalf("exit %+v, want killed by SIGTERM", exit)
		}
		if code, _ := w.closed(); code != wsJobCompleted {
			t.Fatalf("closed with %d, want 4999", code)
		}
		waitVMs(t, runDir, 0) // well before the 25 s limit
	})
}
