package judge0

import (
	"archive/zip"
	"bytes"
	"encoding/base64"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"testing"
)

type zipEntry struct {
	name, body string
	mode       fs.FileMode // 0: a regular file, 0644
}

func makeZip(t *testing.T, entries ...zipEntry) string {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, e := range entries {
		h := &zip.FileHeader{Name: e.name, Method: zip.Deflate}
		mode := e.mode
		if mode == 0 {
			mode = 0o644
		}
		h.SetMode(mode)
		w, err := zw.CreateHeader(h)
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte(e.body))
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(buf.Bytes())
}

// TestZipSlip sends archives that try to write outside the working
// directory or past the bounds; each is refused before any VM runs.
func TestZipSlip(t *testing.T) {
	e := newEnv(t, "", func(c *Config, d *Deps) { c.MaxExtractSize = 64 })
	many := make([]zipEntry, 64)
	for i := range many {
		many[i] = zipEntry{name: fmt.Sprintf("f%d.txt", i), body: "x"}
	}
	for _, tc := range []struct {
		name    string
		entries []zipEntry
		want    string
	}{
		{"dot dot", []zipEntry{{name: "../../home/sandbox/.bashrc", body: "evil"}}, `entry \"../../home/sandbox/.bashrc\": the name must stay inside the working directory`},
		{"dot dot inside", []zipEntry{{name: "a/../../b", body: "evil"}}, `the name must stay inside the working directory`},
		{"absolute", []zipEntry{{name: "/etc/cron.d/x", body: "evil"}}, `entry \"/etc/cron.d/x\": the name must stay inside the working directory`},
		{"backslash", []zipEntry{{name: `..\..\x`, body: "evil"}}, `a backslash in a name`},
		{"symlink", []zipEntry{{name: "link", body: "/etc/passwd", mode: fs.ModeSymlink | 0o777}}, `entry \"link\": only regular files and directories may be unpacked (no links or devices)`},
		{"symlink then file through it", []zipEntry{{name: "d", body: "/tmp", mode: fs.ModeSymlink | 0o777}, {name: "d/x", body: "evil"}}, `no links or devices`},
		{"device", []zipEntry{{name: "dev", mode: fs.ModeDevice | 0o600}}, `no links or devices`},
		{"bomb", []zipEntry{{name: "zeros", body: strings.Repeat("\x00", 65<<10)}}, `unpacks to more than 64 KB`},
		{"too many files", many, `has more than 63 files`},
		{"only directories", []zipEntry{{name: "d/"}}, `has no files`},
		{"file and directory", []zipEntry{{name: "a", body: "1"}, {name: "a/b", body: "2"}}, `entry \"a\" is both a file and a directory`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := fmt.Sprintf(`{"language_id":89,"additional_files":"%s"}`, makeZip(t, tc.entries...))
			code, raw := e.do("POST", "/submissions", body)
			if code != 422 || !strings.HasPrefix(string(raw), `{"additional_files":["`) || !strings.Contains(string(raw), tc.want) {
				t.Fatalf("%d %s, want 422 with %s", code, raw, tc.want)
			}
		})
	}
	if code, raw := e.do("POST", "/submissions", `{"language_id":89,"additional_files":"`+base64.StdEncoding.EncodeToString([]byte("PK\x03\x04junk"))+`"}`); code != 422 || !strings.Contains(string(raw), "is not a valid zip archive") {
		t.Fatalf("junk: %d %s", code, raw)
	}
	if n := len(e.runner.requests()); n != 0 {
		t.Fatalf("%d runs of refused archives", n)
	}
}

func TestMultiFileProgram(t *testing.T) {
	e := newEnv(t, "", nil)
	archive := makeZip(t,
		zipEntry{name: "src/"},
		zipEntry{name: "src/main.c", body: "int main(){}"},
		zipEntry{name: "src/util.c", body: "int f(){}"},
		zipEntry{name: "util.h", body: "int f();"},
		zipEntry{name: "compile", body: "gcc src/*.c -o app", mode: 0o755},
		zipEntry{name: "run", body: "./app"},
		zipEntry{name: "script", body: "out built\nargs"},
		zipEntry{name: "run", body: "a second run: the first wins"},
	)
	m := e.await(e.submit(`{"language_id":89,"additional_files":"`+archive+`","command_line_arguments":"ignored for projects"}`), "?fields=*")
	if statusID(m) != 3 || m["stdout"] != "built\n" || m["additional_files"] != addNewlines(archive) {
		t.Fatalf("%v", m)
	}
	req := e.runner.requests()[0]
	if req.Language != "c" || !slices.Equal(req.CompileCmd, []string{"bash", "compile"}) || !slices.Equal(req.RunCmd, []string{"bash", "run"}) || len(req.Args) != 0 {
		t.Fatalf("request %+v", req)
	}
	paths := map[string]string{}
	for _, f := range req.Files {
		paths[f.Path] = string(f.Content)
		if f.Path == "compile" && f.Mode != 0o755 {
			t.Errorf("compile mode %o", f.Mode)
		}
	}
	if len(paths) != 6 || paths["run"] != "./app" || paths["src/util.c"] != "int f(){}" {
		t.Fatalf("files %v", paths)
	}

	// No compile script: no compile step. Python files pick python.
	e.await(e.submit(`{"language_id":89,"additional_files":"`+makeZip(t, zipEntry{name: "main.py"}, zipEntry{name: "lib.py"}, zipEntry{name: "run.sh", body: "python3 main.py"})+`"}`), "")
	req = e.runner.requests()[1]
	if req.Language != "python" || req.CompileCmd == nil || len(req.CompileCmd) != 0 || !slices.Equal(req.RunCmd, []string{"bash", "run.sh"}) {
		t.Fatalf("python project %+v", req)
	}
	// Nothing recognisable: the configured default (bash).
	e.await(e.submit(`{"language_id":89,"additional_files":"`+makeZip(t, zipEntry{name: "run", body: "echo hi"})+`"}`), "")
	if req = e.runner.requests()[2]; req.Language != "bash" {
		t.Fatalf("default project language %s", req.Language)
	}

	// Additional files beside a single-file program: the program's own
	// file is never replaced (unzip -n), the others are written.
	e.await(e.submit(`{"language_id":71,"source_code":"out main","additional_files":"`+makeZip(t, zipEntry{name: "main.py", body: "evil"}, zipEntry{name: "helper.py", body: "X=1"})+`"}`), "")
	req = e.runner.requests()[3]
	if len(req.Files) != 2 || string(req.Files[0].Content) != "out main" || req.Files[1].Path != "helper.py" {
		t.Fatalf("single-file with files %+v", req.Files)
	}
}

func addNewlines(b64 string) string {
	raw, _ := base64.StdEncoding.DecodeString(b64)
	return encode64(raw)
}
