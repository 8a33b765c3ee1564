package adversarial

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/testutil"
)

// binary is the firesandbox under test.
var binary string

func TestMain(m *testing.M) {
	code := func() int {
		if os.Getenv("FIRESANDBOX_VM_TESTS") != "1" {
			return m.Run() // every test skips, saying why
		}
		binary = os.Getenv("FIRESANDBOX_BIN")
		if binary == "" {
			dir, err := os.MkdirTemp("", "fsadv-bin")
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			defer os.RemoveAll(dir)
			binary = filepath.Join(dir, "firesandbox")
			out, err := exec.Command("go", "build", "-o", binary, "github.com/firesandbox/firesandbox/cmd/firesandbox").CombinedOutput()
			if err != nil {
				fmt.Fprintf(os.Stderr, "build firesandbox: %v\n%s", err, out)
				return 1
			}
		}
		return m.Run()
	}()
	os.Exit(code)
}

// home is a data directory of its own (state, sandboxes, disks, keys)
// over the shared kernel, images and snapshots, and a run directory.
type home struct {
	t         *testing.T
	data, run string
}

func newHome(t *testing.T) *home {
	t.Helper()
	fx := testutil.RequireVMs(t)
	testutil.RequireQEMU(t)
	data := t.TempDir()
	for _, d := range []string{"kernels", "images", "snapshots"} {
		if err := os.Symlink(filepath.Join(fx.DataDir, d), filepath.Join(data, d)); err != nil {
			t.Fatal(err)
		}
	}
	accel := fmt.Sprintf(`{"accel":%q}`, fx.Accel)
	if b, err := os.ReadFile(filepath.Join(fx.DataDir, "accel.json")); err == nil {
		accel = string(b) // the probe's verdict: no probe VM here
	}
	if err := os.WriteFile(filepath.Join(data, "accel.json"), []byte(accel), 0o644); err != nil {
		t.Fatal(err)
	}
	run, err := os.MkdirTemp("", "fsadv") // short: unix socket paths live here
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(run) })
	return &home{t: t, data: data, run: run}
}

// cli runs the firesandbox command line on h.
func (h *home) cli(ctx context.Context, args ...string) (stdout, stderr string, code int) {
	cmd := exec.CommandContext(ctx, binary, append([]string{"--data-dir", h.data, "--run-dir", h.run}, args...)...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	code = cmd.ProcessState.ExitCode()
	if err != nil && code < 0 {
		h.t.Fatalf("firesandbox %v: %v", args, err)
	}
	return o.String(), e.String(), code
}

// qemus counts the VMM processes of the serves and commands this test
// started (one home at a time runs).
func (h *home) qemus() int { return testutil.VMMProcesses() }

// vmIDs are the VMs that have a run directory now (a VM's run directory
// lives as long as it does).
func (h *home) vmIDs() map[string]bool {
	ids := map[string]bool{}
	ents, _ := os.ReadDir(h.run)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "vm-") {
			ids[e.Name()] = true
		}
	}
	return ids
}

// waitQemus waits (bounded) until n QEMU processes of h run.
func (h *home) waitQemus(n int, within time.Duration) {
	h.t.Helper()
	deadline := time.Now().Add(within)
	for h.qemus() != n {
		if time.Now().After(deadline) {
			h.t.Fatalf("%d QEMU processes after %s, want %d", h.qemus(), within, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// serve is a running `firesandbox serve`.
type serve struct {
	t    *testing.T
	h    *home
	cmd  *exec.Cmd
	url  string
	addr string
	out  *syncBuffer
	done chan struct{}
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

var servingRE = regexp.MustCompile(`serving on http://([0-9.:]+)`)

// start runs serve on h with args, on a free loopback port, and waits for
// /healthz. It is stopped (SIGTERM) when the test ends, unless killed.
func (h *home) start(args ...string) *serve {
	h.t.Helper()
	cmd := exec.Command(binary, append([]string{"--data-dir", h.data, "--run-dir", h.run, "serve",
		"--listen", "127.0.0.1:0", "--pool", ""}, args...)...)
	s := &serve{t: h.t, h: h, cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	pr, pw := io.Pipe()
	cmd.Stdout = s.out
	cmd.Stderr = io.MultiWriter(s.out, pw)
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	go func() {
		cmd.Wait()
		pw.Close()
		close(s.done)
	}()
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			if m := servingRE.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case found <- m[1]:
				default:
				}
			}
		}
	}()
	select {
	case s.addr = <-found:
	case <-s.done:
		h.t.Fatalf("serve exited: %s", s.out)
	case <-time.After(60 * time.Second):
		s.kill()
		h.t.Fatalf("serve did not start: %s", s.out)
	}
	s.url = "http://" + s.addr
	h.t.Cleanup(s.stop)
	return s
}

// kill ends serve with SIGKILL, as a crash would.
func (s *serve) kill() {
	s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.done
}

// stop ends serve as an operator would (SIGTERM: it hibernates what
// runs) and fails the test if serve panicked.
func (s *serve) stop() {
	select {
	case <-s.done:
	default:
		s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(2 * time.Minute):
			s.kill()
			s.t.Errorf("serve did not stop within 2 minutes")
		}
	}
	if out := s.out.String(); strings.Contains(out, "panic") || strings.Contains(out, "DATA RACE") {
		s.t.Errorf("serve's output shows a panic:\n%s", out)
	}
}

type reply struct {
	status int
	body   map[string]any
	raw    string
	header http.Header
}

// do sends one request; hdr is name, value pairs ("Host" sets the Host).
func (s *serve) do(method, path, body string, hdr ...string) reply {
	s.t.Helper()
	req, err := http.NewRequest(method, s.url+path, strings.NewReader(body))
	if err != nil {
		s.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "Host" {
			req.Host = hdr[i+1]
			continue
		}
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	r := reply{status: resp.StatusCode, raw: string(b), header: resp.Header}
	_ = json.Unmarshal(b, &r.body)
	return r
}

func bearer(key string) []string { return []string{"Authorization", "Bearer " + key} }
