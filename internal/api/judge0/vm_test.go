package judge0

import (
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/sandbox"
	"github.com/firesandbox/firesandbox/internal/testutil"
)

type logWriter struct{ t *testing.T }

func (w logWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// awaitVM polls a submission run in a real VM (TCG is slow).
func (e *testEnv) awaitVM(token, query string) map[string]any {
	e.t.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	for {
		code, m := e.json("GET", "/submissions/"+token+query, "")
		if code != 200 {
			e.t.Fatalf("get %s: %d %v", token, code, m)
		}
		if id := statusID(m); id != StatusInQueue && id != StatusProcessing {
			return m
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("submission %s still pending: %v", token, m)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestVMs runs Judge0 submissions in real VMs: one Manager (language
// snapshots restored for every run), one state database, two handlers
// over it in turn.
func TestVMs(t *testing.T) {
	fx := testutil.RequireVMs(t)
	testutil.RequireQEMU(t)
	runDir, err := os.MkdirTemp("", "fsj0") // short: unix socket paths live here
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(runDir)
	log := slog.New(slog.NewTextHandler(logWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	mgr, err := sandbox.New(sandbox.Config{DataDir: fx.DataDir, RunDir: runDir, Driver: "qemu", Accel: fx.Accel}, sandbox.WithLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	defer mgr.Close()
	real := func(gate Gate) func(*Config, *Deps) {
		return func(c *Config, d *Deps) {
			c.Workers = 2
			d.Runner, d.Catalog, d.Gate, d.Logger = mgr, mgr.Catalog(), gate, log
			d.Installed = func(e *image.Entry) bool {
				_, err := mgr.Images().ForEntry(e, mgr.Config().ImageFormat)
				return err == nil
			}
		}
	}
	dbPath := t.TempDir() + "/state.db"

	// Before the restart: a submission is accepted but no VM slot frees
	// up until the server stops.
	gate := &blockGate{open: make(chan struct{})}
	before := newEnv(t, dbPath, real(gate))
	kept := before.submit(`{"source_code":"import sys\nprint('kept', sys.argv[1:])","language_id":71,"command_line_arguments":"a 'b c'"}`)
	before.close()

	e := newEnv(t, dbPath, real(nil))

	t.Run("restart", func(t *testing.T) {
		m := e.awaitVM(kept, "?fields=status,stdout,stderr,message")
		if statusID(m) != StatusAccepted || m["stdout"] != "kept ['a', 'b c']\n" {
			t.Fatalf("after restart: %v", m)
		}
	})

	t.Run("python with wait", func(t *testing.T) {
		code, raw := e.do("POST", "/submissions?wait=true&fields=*", `{"source_code":"s = input()\nprint(s * 2)","language_id":71,"stdin":"ab"}`)
		var m map[string]any
		json.Unmarshal(raw, &m)
		tm, _ := m["time"].(string)
		wall, _ := m["wall_time"].(string)
		mem, _ := m["memory"].(float64)
		if code != 201 || statusID(m) != StatusAccepted || m["stdout"] != "abab\n" || m["stderr"] != nil || tm == "" || wall == "" || mem <= 0 ||
			m["exit_code"] != 0.0 || m["finished_at"] == nil {
			t.Fatalf("%d %s", code, raw)
		}
	})

	t.Run("c by polling", func(t *testing.T) {
		src := `#include <stdio.h>
int main(int argc, char **argv) {
    char name[64];
    if (scanf("%63s", name) != 1) return 2;
    printf("hello, %s %d %s\n", name, VALUE, argc > 1 ? argv[1] : "-");
    return 0;
}`
		tok := e.submit(mustJSON(map[string]any{"source_code": src, "language_id": 50, "stdin": "Judge0",
			"compiler_options": "-DVALUE=42", "command_line_arguments": "arg1", "expected_output": "hello, Judge0 42 arg1"}))
		m := e.awaitVM(tok, "?fields=*")
		if statusID(m) != StatusAccepted || m["stdout"] != "hello, Judge0 42 arg1\n" || m["language"].(map[string]any)["name"] != "C (GCC 12.2.0)" {
			t.Fatalf("%v", m)
		}
	})

	t.Run("base64", func(t *testing.T) {
		src := "import sys\nsys.stdout.buffer.write(bytes([0xff, 0]) + sys.stdin.buffer.read())"
		body := mustJSON(map[string]any{"source_code": base64.StdEncoding.EncodeToString([]byte(src)), "language_id": 71,
			"stdin": base64.StdEncoding.EncodeToString([]byte{0xfe, 0x01})})
		code, raw := e.do("POST", "/submissions?base64_encoded=true", body)
		var created map[string]string
		json.Unmarshal(raw, &created)
		if code != 201 {
			t.Fatalf("%d %s", code, raw)
		}
		m := e.awaitVM(created["token"], "?base64_encoded=true&fields=status,stdout")
		out, err := base64.StdEncoding.DecodeString(strings.ReplaceAll(m["stdout"].(string), "\n", ""))
		if statusID(m) != StatusAccepted || err != nil || string(out) != "\xff\x00\xfe\x01" {
			t.Fatalf("%v %q %v", m, out, err)
		}
		if code, raw := e.do("GET", "/submissions/"+created["token"], ""); code != 400 || !strings.Contains(string(raw), "base64_encoded=true") {
			t.Fatalf("without base64: %d %s", code, raw)
		}
	})

	t.Run("batch", func(t *testing.T) {
		code, raw := e.do("POST", "/submissions/batch", `{"submissions":[
			{"language_id":71,"source_code":"print('ok  ')\nprint()","expected_output":"ok"},
			{"language_id":92,"source_code":"print(41)","expected_output":"42"},
			{"language_id":109,"source_code":"import sys\nsys.exit(3)"},
			{"language_id":71,"source_code":"print('x' * 5000)","max_file_size":1},
			{"language_id":150000,"source_code":"print(1)"}]}`)
		var items []map[string]any
		json.Unmarshal(raw, &items)
		if code != 201 || len(items) != 5 || mustJSON(items[4]) != `{"language_id":["language with id 150000 doesn't exist"]}` {
			t.Fatalf("%d %s", code, raw)
		}
		var toks []string
		for _, it := range items[:4] {
			toks = append(toks, it["token"].(string))
		}
		for _, tok := range toks {
			e.awaitVM(tok, "")
		}
		_, raw = e.do("GET", "/submissions/batch?fields=status_id,exit_code,exit_signal&tokens="+strings.Join(toks, ","), "")
		want := `{"submissions":[{"status_id":3,"exit_code":0,"exit_signal":null},{"status_id":4,"exit_code":0,"exit_signal":null},` +
			`{"status_id":11,"exit_code":3,"exit_signal":null},{"status_id":8,"exit_code":0,"exit_signal":25}]}`
		if string(raw) != want {
			t.Fatalf("got  %s\nwant %s", raw, want)
		}
	})

	t.Run("time limit", func(t *testing.T) {
		m := e.awaitVM(e.submit(`{"source_code":"while True: pass","language_id":71,"wall_time_limit":2}`), "?fields=*")
		if statusID(m) != StatusTimeLimit || m["exit_signal"] != 9.0 {
			t.Fatalf("%v", m)
		}
	})

	t.Run("compile error and SIGSEGV", func(t *testing.T) {
		ce := e.submit(`{"source_code":"int main(void) { return x; }","language_id":50}`)
		code, raw := e.do("POST", "/submissions?wait=true&fields=status,exit_signal,exit_code,message,stderr",
			`{"source_code":"int main(void) { volatile int *p = 0; *p = 1; return 0; }","language_id":50}`)
		var seg map[string]any
		json.Unmarshal(raw, &seg)
		if code != 201 || statusID(seg) != StatusSIGSEGV || seg["exit_signal"] != 11.0 {
			t.Fatalf("SIGSEGV: %d %s", code, raw)
		}
		m := e.awaitVM(ce, "?fields=status,compile_output,stdout,time")
		out, _ := m["compile_output"].(string)
		if statusID(m) != StatusCompilationErr || !strings.Contains(out, "error") || !strings.Contains(out, "undeclared") || m["time"] != nil {
			t.Fatalf("compile error: %v", m)
		}
	})

	t.Run("multi-file", func(t *testing.T) {
		archive := makeZip(t,
			zipEntry{name: "src/main.c", body: "#include \"../util.h\"\n#include <stdio.h>\nint main(void) { printf(\"%d\\n\", twice(21)); return 0; }\n"},
			zipEntry{name: "src/util.c", body: "#include \"../util.h\"\nint twice(int x) { return 2 * x; }\n"},
			zipEntry{name: "util.h", body: "int twice(int x);\n"},
			zipEntry{name: "compile", body: "gcc -o app src/main.c src/util.c && echo compiled"},
			zipEntry{name: "run", body: "./app; echo \"run by $0\""},
		)
		m := e.awaitVM(e.submit(`{"language_id":89,"additional_files":"`+archive+`"}`), "?fields=status,stdout,stderr,compile_output,message")
		if statusID(m) != StatusAccepted || m["stdout"] != "42\nrun by run\n" || m["compile_output"] != "compiled\n" {
			t.Fatalf("%v", m)
		}
	})

	t.Run("unknown language", func(t *testing.T) {
		code, raw := e.do("POST", "/submissions", `{"source_code":"print(1)","language_id":150000}`)
		if code != 422 || string(raw) != `{"language_id":["language with id 150000 doesn't exist"]}` {
			t.Fatalf("%d %s", code, raw)
		}
	})

	// Every run's VM is gone once its submission finished.
	e.close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		n := testutil.VMMProcesses()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d QEMU processes left (run dir %s)", n, runDir)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
