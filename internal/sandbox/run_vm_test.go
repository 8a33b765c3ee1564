package sandbox

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/testutil"
	"github.com/firesandbox/firesandbox/internal/vmm"
)

// newTestManager returns a Manager on the shared fixtures with its own run
// directory, so leftovers are easy to check.
func newTestManager(t *testing.T) (*Manager, *testutil.VMFixtures) {
	t.Helper()
	fx := testutil.RequireVMs(t)
	testutil.RequireQEMU(t)
	run, err := os.MkdirTemp("/tmp", "fsrun-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(run) })
	m, err := New(Config{DataDir: fx.DataDir, RunDir: run, Driver: "qemu", Accel: fx.Accel})
	if err != nil {
		t.Fatal(err)
	}
	return m, fx
}

type captured struct {
	res            *RunResult
	stdout, stderr string
}

func runCode(t *testing.T, m *Manager, code string, lim agentproto.Limits) captured {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := m.Run(ctx, RunRequest{
		Language: "python", Files: []agentproto.File{{Content: []byte(code)}}, RunLimits: lim,
	}, Streams{Stdout: &out, Stderr: &errb})
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	return captured{res, out.String(), errb.String()}
}

// noLeftovers checks that every VM the manager started is gone.
func noLeftovers(t *testing.T, m *Manager) {
	t.Helper()
	ents, _ := os.ReadDir(m.cfg.RunDir)
	for _, e := range ents {
		if e.Name() != "owners" {
			t.Errorf("run dir %s left behind", e.Name())
		}
	}
	owners, _ := os.ReadDir(filepath.Join(m.cfg.RunDir, "owners"))
	if len(owners) != 0 {
		t.Errorf("%d VM ownership records left behind", len(owners))
	}
	if n := testutil.VMMProcesses(); n > 0 {
		t.Errorf("%d VMM processes left running", n)
	}
}

func TestRunPython(t *testing.T) {
	m, _ := newTestManager(t)
	defer noLeftovers(t, m)
	t.Run("prints 42", func(t *testing.T) {
		c := runCode(t, m, "print(6*7)", agentproto.Limits{})
		if c.stdout != "42\n" || c.res.Run.Code != 0 || c.res.Run.Status != agentproto.StatusOK {
			t.Fatalf("stdout %q result %+v stderr %q", c.stdout, c.res.Run, c.stderr)
		}
	})
	t.Run("exit code and separate stderr", func(t *testing.T) {
		c := runCode(t, m, "import sys\nprint('to out')\nprint('to err', file=sys.stderr)\nsys.exit(7)", agentproto.Limits{})
		if c.res.Run.Code != 7 || c.res.Run.Status != agentproto.StatusRuntimeError {
			t.Fatalf("result %+v, want code 7 RE", c.res.Run)
		}
		if c.stdout != "to out\n" || c.stderr != "to err\n" {
			t.Fatalf("stdout %q stderr %q", c.stdout, c.stderr)
		}
	})
	t.Run("infinite loop times out", func(t *testing.T) {
		start := time.Now()
		c := runCode(t, m, "while True: pass", agentproto.Limits{WallMillis: 2000})
		if c.res.Run.Status != agentproto.StatusTimeout {
			t.Fatalf("status %q, want TO", c.res.Run.Status)
		}
		// Wall time covers the limit plus the VM's boot, but not much more.
		if over := c.res.Run.Wall() - 2*time.Second; over < 0 || over > 2*time.Second {
			t.Fatalf("program wall time %s for a 2s limit", c.res.Run.Wall())
		}
		t.Logf("total %s (boot %s)", time.Since(start), c.res.Ready)
	})
	t.Run("output over the cap", func(t *testing.T) {
		c := runCode(t, m, "while True: print('x' * 1000)", agentproto.Limits{OutputBytes: 64 << 10})
		if c.res.Run.Status != agentproto.StatusStdoutLimit || len(c.stdout) != 64<<10 {
			t.Fatalf("status %q with %d bytes of stdout; want OL at exactly %d", c.res.Run.Status, len(c.stdout), 64<<10)
		}
	})
	t.Run("fork bomb is contained", func(t *testing.T) {
		code := "import os\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n            import time; time.sleep(30); os._exit(0)\n        n += 1\nexcept OSError as e:\n    print('stopped after', n, e.errno)\n"
		c := runCode(t, m, code, agentproto.Limits{Procs: 32, WallMillis: 10000})
		if !strings.HasPrefix(c.stdout, "stopped after") {
			t.Fatalf("fork bomb was not stopped by the process limit: stdout %q stderr %q status %q", c.stdout, c.stderr, c.res.Run.Status)
		}
		if c.res.Run.Status != agentproto.StatusOK || c.res.Run.Wall() > 9*time.Second {
			t.Fatalf("result %+v: the children should die with the program, not hold it to the limit", c.res.Run)
		}
	})
	t.Run("memory limit", func(t *testing.T) {
		c := runCode(t, m, "b = bytearray(200 << 20)\nprint('allocated')", agentproto.Limits{MemoryBytes: 64 << 20})
		if c.res.Run.Status == agentproto.StatusOK || strings.Contains(c.stdout, "allocated") {
			t.Fatalf("200 MiB fit under a 64 MiB limit: %+v stdout %q", c.res.Run, c.stdout)
		}
	})
	t.Run("unprivileged", func(t *testing.T) {
		c := runCode(t, m, "import os\nprint(os.getuid(), os.path.exists('/dev/vda'))\nopen('/etc/evil', 'w')", agentproto.Limits{})
		if !strings.HasPrefix(c.stdout, "1000 False") || !strings.Contains(c.stderr, "PermissionError") {
			t.Fatalf("stdout %q stderr %q", c.stdout, c.stderr)
		}
	})
}

func TestRunBadInput(t *testing.T) {
	m, _ := newTestManager(t)
	ctx := context.Background()
	_, err := m.Run(ctx, RunRequest{Language: "brainfudge", Files: []agentproto.File{{Content: []byte("x")}}}, Streams{})
	if !errors.Is(err, image.ErrUnknownLanguage) || !strings.Contains(err.Error(), "python") {
		t.Fatalf("unknown language: %v; want ErrUnknownLanguage listing python", err)
	}
	_, err = m.Run(ctx, RunRequest{Language: "python", Files: []agentproto.File{{Content: []byte("x")}, {Path: "../../etc/passwd"}}}, Streams{})
	if !errors.Is(err, ErrBadRequest) {
		t.Fatalf("path traversal: %v, want ErrBadRequest", err)
	}
	_, err = m.Run(ctx, RunRequest{Language: "python"}, Streams{})
	if !errors.Is(err, ErrBadRequest) {
		t.Fatalf("no program: %v, want ErrBadRequest", err)
	}
	noLeftovers(t, m)
}

func TestBootFailureShowsConsoleAndCleansUp(t *testing.T) {
	m, _ := newTestManager(t)
	e, _ := m.catalog.Lookup("python", "")
	good, err := m.Template(context.Background(), e, Shape{})
	if err != nil {
		t.Fatal(err)
	}
	junk := filepath.Join(t.TempDir(), "rootfs.squashfs")
	if err := os.WriteFile(junk, bytes.Repeat([]byte("junk"), 1<<18), 0o644); err != nil {
		t.Fatal(err)
	}
	bad := &Template{Entry: good.Entry, Shape: good.Shape, Kernel: good.Kernel, Image: good.Image, Driver: good.Driver, Base: good.Base}
	bad.Base.Disks = append([]vmm.Disk(nil), good.Base.Disks...)
	bad.Base.Disks[len(bad.Base.Disks)-1].Path = junk

	// The agent cannot mount the junk root, says so, and powers off.
	_, err = m.boot(context.Background(), bad, time.Minute, StartOptions{})
	if !errors.Is(err, ErrNotReady) || !strings.Contains(err.Error(), "firesandbox-agent: fatal") {
		t.Fatalf("boot with a junk root: %v; want ErrNotReady with the agent's console message", err)
	}
	// A guest that is too slow is given up on at the deadline.
	start := time.Now()
	_, err = m.boot(context.Background(), good, 300*time.Millisecond, StartOptions{})
	if !errors.Is(err, ErrNotReady) || !strings.Contains(err.Error(), "no answer within") {
		t.Fatalf("boot with a short deadline: %v", err)
	}
	if time.Since(start) > 15*time.Second {
		t.Fatalf("giving up took %s", time.Since(start))
	}
	noLeftovers(t, m)
}

func TestRunWithMount(t *testing.T) {
	m, _ := newTestManager(t)
	defer noLeftovers(t, m)
	host := t.TempDir()
	os.MkdirAll(filepath.Join(host, "sub"), 0o755)
	os.WriteFile(filepath.Join(host, "sub", "data.txt"), []byte("from the host\n"), 0o644)
	// A root-only file on the host stays unreadable to the guest's user.
	os.WriteFile(filepath.Join(host, "secret"), []byte("root only\n"), 0o600)
	var out, errb bytes.Buffer
	code := "print(open('/data/sub/data.txt').read(), end='')\ntry:\n    open('/data/new', 'w')\nexcept OSError as e:\n    print('read-only', e.errno)\n" +
		"try:\n    print(open('/data/secret').read())\nexcept OSError as e:\n    print('secret', e.errno)"
	res, err := m.Run(context.Background(), RunRequest{Language: "python", Files: []agentproto.File{{Content: []byte(code)}},
		Mounts: []Mount{{HostDir: host, GuestDir: "/data"}}}, Streams{Stdout: &out, Stderr: &errb})
	if err != nil {
		t.Fatal(err)
	}
	if out.String() != "from the host\nread-only 30\nsecret 13\n" || res.Run.Code != 0 {
		t.Fatalf("stdout %q stderr %q result %+v", out.String(), errb.String(), res.Run)
	}
	if vols, _ := filepath.Glob(filepath.Join(m.cfg.DataDir, "disks", "*.squashfs")); len(vols) != 0 {
		t.Fatalf("packed volumes left behind: %v", vols)
	}
	for _, bad := range []string{"/nonexistent:/data", host + ":relative", host + ":/proc/x", host + ":/a,b", host} {
		if _, err := ParseMount(bad); err == nil {
			t.Errorf("mount %q accepted", bad)
		}
	}
}

// A program may reopen its own standard streams by name (sqlite's
// `.import "|cat -"`, shell `< /dev/stdin`): they belong to its user.
func TestStdinReopensAsUser(t *testing.T) {
	m, _ := newTestManager(t)
	defer noLeftovers(t, m)
	var out, errb bytes.Buffer
	code := "import os\nprint(open('/dev/stdin').read().strip(), os.getuid(), flush=True)\nopen('/proc/self/fd/1', 'w').write('via fd 1\\n')"
	res, err := m.Run(context.Background(), RunRequest{Language: "python", Files: []agentproto.File{{Content: []byte(code)}},
		Stdin: []byte("from stdin\n")}, Streams{Stdout: &out, Stderr: &errb})
	if err != nil {
		t.Fatal(err)
	}
	if res.Run.Code != 0 || out.String() != "from stdin 1000\nvia fd 1\n" {
		t.Fatalf("stdout %q stderr %q result %+v", out.String(), errb.String(), res.Run)
	}
}
