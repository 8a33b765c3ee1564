package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/testutil"
)

// buildCLI builds the real binary, so these tests see what a user sees:
// stdout, stderr and the exit code.
func buildCLI(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "firesandbox")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

type cliResult struct {
	stdout, stderr string
	code           int
}

func runCLI(t *testing.T, bin, dataDir, stdin string, args ...string) cliResult {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"--data-dir", dataDir}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return cliResult{out.String(), errb.String(), code}
}

func TestCLIRun(t *testing.T) {
	fx := testutil.RequireVMs(t)
	bin := buildCLI(t)
	t.Setenv("FIRESANDBOX_ACCEL", fx.Accel)

	t.Run("inline code", func(t *testing.T) {
		r := runCLI(t, bin, fx.DataDir, "", "run", "python", "-c", "print(6*7)")
		if r.stdout != "42\n" || r.code != 0 {
			t.Fatalf("stdout %q code %d stderr %q", r.stdout, r.code, r.stderr)
		}
	})
	t.Run("file, args, stdin data, exit code, stderr", func(t *testing.T) {
		f := filepath.Join(t.TempDir(), "prog.py")
		os.WriteFile(f, []byte("import sys\nprint(sys.argv[1:], input())\nprint('oops', file=sys.stderr)\nsys.exit(3)\n"), 0o644)
		r := runCLI(t, bin, fx.DataDir, "", "run", "--stdin", "from-stdin", "python", f, "a", "--flag")
		if r.stdout != "['a', '--flag'] from-stdin\n" || r.stderr != "oops\n" || r.code != 3 {
			t.Fatalf("stdout %q stderr %q code %d", r.stdout, r.stderr, r.code)
		}
	})
	t.Run("code on stdin, timeout", func(t *testing.T) {
		r := runCLI(t, bin, fx.DataDir, "while True: pass\n", "run", "--timeout", "1s", "python", "-")
		if r.code != 124 || !strings.Contains(r.stderr, "(TO)") {
			t.Fatalf("code %d stderr %q; want 124 and a TO message", r.code, r.stderr)
		}
	})
}

func TestCLIErrors(t *testing.T) {
	bin := buildCLI(t)
	empty := t.TempDir()
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"unknown language", []string{"run", "cobolx", "-c", "x"}, exitInternal, "known languages: "},
		{"no kernel", []string{"run", "python", "-c", "print(1)"}, exitInternal, "firesandbox kernel prepare"},
		{"no program", []string{"run", "python"}, exitUsage, "missing program"},
		{"missing file", []string{"run", "python", "/nonexistent.py"}, exitUsage, "no such file"},
		{"negative timeout", []string{"run", "--timeout", "-1s", "python", "-c", "1"}, exitUsage, "negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runCLI(t, bin, empty, "", tc.args...)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.want) {
				t.Fatalf("code %d stderr %q; want code %d and %q", r.code, r.stderr, tc.code, tc.want)
			}
		})
	}
}

// sharedDataDir is a data directory of the test's own (its state.db and
// sandboxes are private) that borrows the fixtures' kernel, images and
// snapshots.
func sharedDataDir(t *testing.T, fx *testutil.VMFixtures) string {
	t.Helper()
	dir := t.TempDir()
	for _, sub := range []string{"kernels", "images", "snapshots", "accel.json"} {
		if err := os.Symlink(filepath.Join(fx.DataDir, sub), filepath.Join(dir, sub)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// The sandbox commands work the same with and without a serve: without
// one each command runs the service itself and hibernates the sandbox at
// its end; with one they go through its unix socket.
func TestCLISandbox(t *testing.T) {
	fx := testutil.RequireVMs(t)
	bin := buildCLI(t)
	t.Setenv("FIRESANDBOX_ACCEL", fx.Accel)
	data := sharedDataDir(t, fx)
	t.Setenv("FIRESANDBOX_RUN", filepath.Join(t.TempDir(), "run"))

	flow := func(t *testing.T, wantState string) {
		r := runCLI(t, bin, data, "", "sandbox", "create", "python", "--env", "WHO=cli")
		id := strings.TrimSpace(r.stdout)
		if r.code != 0 || !strings.HasPrefix(id, "sb-") {
			t.Fatalf("create: %+v", r)
		}
		defer runCLI(t, bin, data, "", "sandbox", "rm", id)
		r = runCLI(t, bin, data, "", "sandbox", "exec", id, "echo $WHO > who.txt; echo out; echo err >&2; exit 3")
		if r.stdout != "out\n" || r.stderr != "err\n" || r.code != 3 {
			t.Fatalf("exec: %+v", r)
		}
		local := filepath.Join(t.TempDir(), "in.txt")
		os.WriteFile(local, []byte("from the host\n"), 0o644)
		if r = runCLI(t, bin, data, "", "sandbox", "cp", local, id+":sub/in.txt"); r.code != 0 {
			t.Fatalf("cp in: %+v", r)
		}
		r = runCLI(t, bin, data, "", "sandbox", "exec", id, "--", "cat", "who.txt", "sub/in.txt")
		if r.stdout != "cli\nfrom the host\n" || r.code != 0 {
			t.Fatalf("files after more commands: %+v", r)
		}
		if r = runCLI(t, bin, data, "", "sandbox", "cp", id+":who.txt", "-"); r.stdout != "cli\n" {
			t.Fatalf("cp out: %+v", r)
		}
		r = runCLI(t, bin, data, "", "sandbox", "ls")
		if r.code != 0 || !strings.Contains(r.stdout, id) || !strings.Contains(r.stdout, wantState) {
			t.Fatalf("ls: want %s %s: %+v", id, wantState, r)
		}
		if r = runCLI(t, bin, data, "", "sandbox", "exec", "sb-0000000000000000", "true"); r.code != exitInternal || !strings.Contains(r.stderr, "no such sandbox") {
			t.Fatalf("exec in an unknown sandbox: %+v", r)
		}
	}
	t.Run("in-process", func(t *testing.T) { flow(t, "hibernated") })
	t.Run("through serve", func(t *testing.T) {
		startServe(t, bin, data, "--pool", "")
		flow(t, "running")
	})
}

// startServe starts a serve of data on a loopback port with args, waits
// for its unix socket and returns the socket's path; the serve is
// stopped at the end of the test, its log shown if the test failed.
func startServe(t *testing.T, bin, data string, args ...string) string {
	t.Helper()
	srv := exec.Command(bin, append([]string{"--data-dir", data, "serve", "--listen", "127.0.0.1:0"}, args...)...)
	var logb bytes.Buffer
	srv.Stderr = &logb
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Process.Signal(os.Interrupt)
		srv.Wait()
		if t.Failed() {
			t.Logf("serve's log:\n%s", logb.String())
		}
	})
	sock := (&globalFlags{dataDir: data, runDir: os.Getenv("FIRESANDBOX_RUN")}).socketPath()
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			return sock
		}
		if i > 600 {
			t.Fatalf("serve did not open %s: %s", sock, logb.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}
