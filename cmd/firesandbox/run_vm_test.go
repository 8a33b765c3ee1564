package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/testutil"
	"github.com/firesandbox/firesandbox/languages"
)

// runCase is one `firesandbox run` and what a user sees of it.
type runCase struct {
	name  string
	stdin string
	args  []string // after "run"
	want  cliResult
	// check replaces the comparison with want where the output is not
	// known to the byte; it also gets the other way's result.
	check func(t *testing.T, r, other cliResult)
	// timed says the output has timings in it (--json): check compares
	// it with the other way's; else the two must be equal.
	timed bool
}

// unbuiltLanguage is a language of the catalog that can be built here
// (Debian packages only) but whose image is not in dataDir, or "".
func unbuiltLanguage(t *testing.T, dataDir string) string {
	t.Helper()
	cat, err := image.LoadCatalog(languages.FS)
	if err != nil {
		t.Fatal(err)
	}
	ims, err := image.NewStore(dataDir).List()
	if err != nil {
		t.Fatal(err)
	}
	built := map[string]bool{}
	for _, im := range ims {
		built[im.Language] = true
	}
	for _, e := range cat.Entries() {
		if e.Unavailable == "" && e.OCI == "" && len(e.NPM) == 0 && !built[e.Name] {
			return e.Name
		}
	}
	return ""
}

func runCases(t *testing.T, dataDir string) []runCase {
	dir := t.TempDir()
	prog := filepath.Join(dir, "prog.py")
	os.WriteFile(prog, []byte("import sys\nprint(sys.argv[1:], input())\nprint('oops', file=sys.stderr)\nsys.exit(3)\n"), 0o644)
	data := filepath.Join(dir, "stdin.txt")
	os.WriteFile(data, []byte("line one\nline two\n"), 0o644)
	cases := []runCase{
		{name: "stdout", args: []string{"python", "-c", "print(6*7)"}, want: cliResult{"42\n", "", 0}},
		{name: "file, args, stdin, stderr, exit code", args: []string{"--stdin", "from-stdin", "python", prog, "a", "--flag"},
			want: cliResult{"['a', '--flag'] from-stdin\n", "oops\n", 3}},
		{name: "code on stdin, --stdin-file", stdin: "import sys\nprint(sys.stdin.read().upper(), end='')\n",
			args: []string{"python", "--stdin-file", data, "-"}, want: cliResult{"LINE ONE\nLINE TWO\n", "", 0}},
		{name: "bytes that are not UTF-8, both streams in turn",
			args: []string{"python", "-c", "import sys\nfor i in range(3):\n sys.stdout.buffer.write(b'\\xff%d\\xc3' % i); sys.stdout.flush()\n sys.stderr.buffer.write(b'\\xa9\\x00'); sys.stderr.flush()\n"},
			want: cliResult{"\xff0\xc3\xff1\xc3\xff2\xc3", "\xa9\x00\xa9\x00\xa9\x00", 0}},
		{name: "time limit", args: []string{"--timeout", "1s", "python", "-c", "print('started', flush=True)\nwhile True: pass"},
			check: func(t *testing.T, r, _ cliResult) {
				if r.code != 124 || r.stdout != "started\n" || !strings.HasPrefix(r.stderr, "firesandbox: ") || !strings.HasSuffix(r.stderr, "(TO)\n") {
					t.Errorf("got %+v; want exit 124, the output before the limit and one TO line", r)
				}
			}},
		{name: "output limit", args: []string{"--output-limit", "10", "python", "-c", "print('x'*100)"},
			check: func(t *testing.T, r, _ cliResult) {
				if r.code != 137 || len(r.stdout) > 10 || !strings.HasSuffix(r.stderr, "(OL)\n") {
					t.Errorf("got %+v; want exit 137, at most 10 bytes and an OL line", r)
				}
			}},
		{name: "signal", args: []string{"python", "-c", "import os; os.kill(os.getpid(), 9)"},
			want: cliResult{"", "firesandbox: killed by SIGKILL (SG)\n", 137}},
		{name: "compile error", args: []string{"c", "-c", "int main(void) { return x; }"},
			check: func(t *testing.T, r, _ cliResult) {
				if r.code != 1 || r.stdout != "" || !strings.Contains(r.stderr, "main.c") || !strings.HasSuffix(r.stderr, "firesandbox: compilation failed: exit code 1\n") {
					t.Errorf("got %+v; want gcc's message on stderr, then ours, exit 1", r)
				}
			}},
		{name: "unknown language", args: []string{"cobolx", "-c", "x"},
			check: func(t *testing.T, r, _ cliResult) {
				if r.code != exitInternal || r.stdout != "" || !strings.Contains(r.stderr, "known languages: ") {
					t.Errorf("got %+v; want 125 and the known languages", r)
				}
			}},
		{name: "--json", args: []string{"--json", "python", "-c", "print(1)"}, timed: true,
			check: func(t *testing.T, r, other cliResult) {
				var res, ores map[string]any
				if err := json.Unmarshal([]byte(r.stderr), &res); err != nil || r.stdout != "1\n" || r.code != 0 {
					t.Fatalf("got %+v: want 1 and a JSON result (%v)", r, err)
				}
				if res["status"] != nil && res["status"] != "" || res["exit_code"] != 0.0 || res["stage"] != "run" || res["language"] != "python" {
					t.Errorf("result %v", res)
				}
				if other.stderr == "" {
					return
				}
				if err := json.Unmarshal([]byte(other.stderr), &ores); err != nil {
					t.Fatal(err)
				}
				// The same fields and values, but for times and how the VM was had.
				for _, m := range []map[string]any{res, ores} {
					for _, k := range []string{"ready_ms", "total_ms", "wall_ms", "cpu_ms", "memory_bytes", "pooled", "restored"} {
						if _, ok := m[k]; !ok {
							t.Errorf("no %q in %v", k, m)
						}
						delete(m, k)
					}
					if ts, _ := m["timings"].([]any); len(ts) > 0 {
						m["timings"] = len(ts)
					}
				}
				if !reflect.DeepEqual(res, ores) {
					t.Errorf("--json differs:\n%v\n%v", res, ores)
				}
			}},
	}
	if lang := unbuiltLanguage(t, dataDir); lang != "" {
		cases = append(cases, runCase{name: "image not built", args: []string{lang, "-c", "x"},
			check: func(t *testing.T, r, _ cliResult) {
				if r.code != exitInternal || r.stdout != "" || !strings.Contains(r.stderr, "image build "+lang) {
					t.Errorf("got %+v; want 125 and how to build the %s image", r, lang)
				}
			}})
	} else {
		t.Log("every buildable language's image is built here: the unbuilt-image case does not run")
	}
	return cases
}

// TestCLIRunBothWays runs the same commands without a serve and through
// one with a warm pool: stdout, stderr and exit codes must not tell them
// apart.
func TestCLIRunBothWays(t *testing.T) {
	fx := testutil.RequireVMs(t)
	bin := buildCLI(t)
	t.Setenv("FIRESANDBOX_ACCEL", fx.Accel)
	data := sharedDataDir(t, fx)
	t.Setenv("FIRESANDBOX_RUN", filepath.Join(t.TempDir(), "run"))
	cases := runCases(t, fx.DataDir)

	results := map[string]cliResult{}
	each := func(t *testing.T, extra ...string) {
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				r := runCLI(t, bin, data, tc.stdin, append(append([]string{"run"}, extra...), tc.args...)...)
				other, seen := results[tc.name]
				results[tc.name] = r
				if tc.check != nil {
					tc.check(t, r, other)
				} else if r != tc.want {
					t.Errorf("got  %+v\nwant %+v", r, tc.want)
				}
				if seen && !tc.timed && r != other {
					t.Errorf("differs from the other way:\n%+v\n%+v", r, other)
				}
			})
		}
	}
	t.Run("standalone", func(t *testing.T) { each(t) })
	t.Run("through serve", func(t *testing.T) {
		sock := startServe(t, bin, data, "--pool", "python=1..2")
		r := runCLI(t, bin, data, "", "-v", "run", "python", "-c", "print(1)")
		if r.code != 0 || r.stdout != "1\n" || !strings.Contains(r.stderr, "via serve "+sock) || !strings.Contains(r.stderr, "hello ") {
			t.Fatalf("-v does not say it went through serve: %+v", r)
		}
		each(t)
		r = runCLI(t, bin, data, "", "-v", "run", "--standalone", "python", "-c", "print(1)")
		if r.code != 0 || r.stdout != "1\n" || !strings.Contains(r.stderr, "in-process") {
			t.Errorf("--standalone: %+v", r)
		}
	})
}
