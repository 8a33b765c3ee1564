package judge0

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/sandbox"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestCreateAndPoll(t *testing.T) {
	e := newEnv(t, "", nil)
	tok := e.submit(`{"source_code":"out hello\nerr warn","language_id":71,"stdin":"in"}`)
	if _, err := uuid.Parse(tok); err != nil || len(tok) != 36 {
		t.Fatalf("token %q is not a UUID: %v", tok, err)
	}
	code, raw := e.do("GET", "/submissions/"+tok, "")
	if code != 200 {
		t.Fatalf("%d %s", code, raw)
	}
	got := e.await(tok, "")
	// The default fields, in Judge0's order, with its types: time a
	// decimal string, memory an integer in KB, null for what is empty.
	want := `{"token":"` + tok + `","time":"0.01","memory":3072,"stdout":"hello\n","stderr":"warn\n","compile_output":null,"message":null,"status":{"id":3,"description":"Accepted"}}`
	_, raw = e.do("GET", "/submissions/"+tok, "")
	if string(raw) != want {
		t.Fatalf("got  %s\nwant %s", raw, want)
	}
	if statusID(got) != 3 {
		t.Fatalf("%v", got)
	}
	reqs := e.runner.requests()
	if len(reqs) != 1 || reqs[0].Language != "python" || string(reqs[0].Stdin) != "in" || reqs[0].Files[0].Path != "" ||
		reqs[0].RunLimits.WallMillis != 10000 || reqs[0].RunLimits.MemoryBytes != 128000<<10 ||
		reqs[0].RunLimits.OutputBytes != 1024<<10 || reqs[0].RunLimits.Procs != 60 || reqs[0].RunCmd != nil {
		t.Fatalf("run request %+v", reqs)
	}

	// All fields.
	_, all := e.json("GET", "/submissions/"+tok+"?fields=*", "")
	var keys []string
	_, raw = e.do("GET", "/submissions/"+tok+"?fields=*", "")
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.Token()
	for dec.More() {
		k, _ := dec.Token()
		keys = append(keys, k.(string))
		var skip json.RawMessage
		dec.Decode(&skip)
	}
	if !slices.Equal(keys, fieldNames) {
		t.Fatalf("fields=* keys %v", keys)
	}
	for k, want := range map[string]any{
		"source_code": "out hello\nerr warn", "language_id": 71.0, "stdin": "in", "expected_output": nil, "status_id": 3.0,
		"number_of_runs": 1.0, "cpu_time_limit": "5.0", "cpu_extra_time": "1.0", "wall_time_limit": "10.0",
		"memory_limit": 128000.0, "stack_limit": 64000.0, "max_processes_and_or_threads": 60.0, "max_file_size": 1024.0,
		"exit_code": 0.0, "exit_signal": nil, "wall_time": "0.02", "compiler_options": nil, "redirect_stderr_to_stdout": false,
		"enable_network": false, "additional_files": nil, "callback_url": nil,
		"enable_per_process_and_thread_time_limit": false,
	} {
		if g := all[k]; fmt.Sprint(g) != fmt.Sprint(want) {
			t.Errorf("%s = %#v, want %#v", k, g, want)
		}
	}
	if l, _ := all["language"].(map[string]any); l["id"] != 71.0 || l["name"] != "Python (3.11.2)" {
		t.Errorf("language %v", all["language"])
	}
	for _, k := range []string{"created_at", "finished_at"} {
		s, _ := all[k].(string)
		if _, err := time.Parse("2006-01-02T15:04:05.000Z", s); err != nil {
			t.Errorf("%s = %q: %v", k, s, err)
		}
	}

	// Chosen fields, unknown fields, unknown tokens.
	if _, raw := e.do("GET", "/submissions/"+tok+"?fields=stdout,status_id,language_id", ""); string(raw) != `{"stdout":"hello\n","status_id":3,"language_id":71}` {
		t.Fatalf("fields: %s", raw)
	}
	if code, raw := e.do("GET", "/submissions/"+tok+"?fields=stdout,bogus,nope", ""); code != 400 || string(raw) != `{"error":"invalid fields: [bogus, nope]"}` {
		t.Fatalf("bad fields: %d %s", code, raw)
	}
	if code, raw := e.do("GET", "/submissions/no-such-token", ""); code != 404 || string(raw) != `{"status":404,"error":"Not Found"}` {
		t.Fatalf("unknown token: %d %s", code, raw)
	}
	// A trailing slash is the same path, as in Rails.
	if code, _ := e.do("GET", "/submissions/"+tok+"/", ""); code != 200 {
		t.Fatalf("trailing slash: %d", code)
	}
}

func TestWait(t *testing.T) {
	e := newEnv(t, "", nil)
	code, raw := e.do("POST", "/submissions?wait=true", `{"source_code":"stdin","language_id":"71","stdin":"Judge0","expected_output":"Judge0\n\n"}`)
	var m map[string]any
	json.Unmarshal(raw, &m)
	if code != 201 || statusID(m) != 3 || m["stdout"] != "Judge0" {
		t.Fatalf("wait: %d %s", code, raw)
	}
	code, raw = e.do("POST", "/submissions?wait=true&fields=status_id,exit_code", `{"source_code":"exit 3","language_id":71}`)
	if code != 201 || string(raw) != `{"status_id":11,"exit_code":3}` {
		t.Fatalf("wait with fields: %d %s", code, raw)
	}
	e2 := newEnv(t, "", func(c *Config, d *Deps) { c.DisableWait = true })
	if code, raw := e2.do("POST", "/submissions?wait=true", `{"source_code":"x","language_id":71}`); code != 400 || string(raw) != `{"error":"wait not allowed"}` {
		t.Fatalf("wait disabled: %d %s", code, raw)
	}
}

func TestBase64(t *testing.T) {
	e := newEnv(t, "", nil)
	// Binary output: only base64 can carry it.
	src := "out caf\xe9\nstdin"
	body := mustJSON(map[string]any{"source_code": b64(src), "language_id": 71, "stdin": b64("\x00\x01"),
		"expected_output": b64("caf\xe9\n\x00\x01")})
	code, raw := e.do("POST", "/submissions?base64_encoded=true", body)
	var created map[string]string
	json.Unmarshal(raw, &created)
	tok := created["token"]
	if code != 201 || tok == "" {
		t.Fatalf("create: %d %s", code, raw)
	}
	e.await(tok, "?base64_encoded=true")
	reqs := e.runner.requests()
	if string(reqs[0].Files[0].Content) != src || string(reqs[0].Stdin) != "\x00\x01" {
		t.Fatalf("decoded input %q %q", reqs[0].Files[0].Content, reqs[0].Stdin)
	}
	code, raw = e.do("GET", "/submissions/"+tok+"?base64_encoded=true&fields=stdout,source_code,status_id", "")
	want := mustJSON(map[string]any{"stdout": b64("caf\xe9\n\x00\x01") + "\n", "source_code": b64(src) + "\n", "status_id": 3})
	var g, w map[string]any
	json.Unmarshal(raw, &g)
	json.Unmarshal([]byte(want), &w)
	if code != 200 || fmt.Sprint(g) != fmt.Sprint(w) {
		t.Fatalf("base64 out: %d %s, want %s", code, raw, want)
	}
	// Without base64 the same submission cannot be sent as JSON text.
	if code, raw := e.do("GET", "/submissions/"+tok, ""); code != 400 ||
		string(raw) != `{"error":"some attributes for this submission cannot be converted to UTF-8, use base64_encoded=true query parameter"}` {
		t.Fatalf("not UTF-8: %d %s", code, raw)
	}
	// A field that is fine in text is still sent as text.
	if _, raw := e.do("GET", "/submissions/"+tok+"?fields=status_id,token", ""); !strings.Contains(string(raw), `"status_id":3`) {
		t.Fatalf("%s", raw)
	}
	// With wait, Judge0 answers 201 with the token and the error.
	code, raw = e.do("POST", "/submissions?wait=true", `{"source_code":"hex ff00fe","language_id":71}`)
	if code != 201 || !strings.Contains(string(raw), `"token"`) || !strings.Contains(string(raw), "cannot be converted to UTF-8") {
		t.Fatalf("wait, not UTF-8: %d %s", code, raw)
	}
	// Ruby's encode64 wraps at 60 columns; long output round-trips.
	long := strings.Repeat("x", 100)
	code, raw = e.do("POST", "/submissions?base64_encoded=true&wait=true&fields=stdout", mustJSON(map[string]any{"source_code": b64("out " + long), "language_id": 71}))
	var out struct{ Stdout string }
	json.Unmarshal(raw, &out)
	lines := strings.Split(strings.TrimSuffix(out.Stdout, "\n"), "\n")
	dec, err := base64.StdEncoding.DecodeString(strings.ReplaceAll(out.Stdout, "\n", ""))
	if code != 201 || len(lines) != 3 || len(lines[0]) != 60 || err != nil || string(dec) != long+"\n" {
		t.Fatalf("wrapped base64: %d %q", code, out.Stdout)
	}
	// Invalid base64 is a validation error, not garbage.
	code, raw = e.do("POST", "/submissions?base64_encoded=true", `{"source_code":"not*base64!","language_id":71}`)
	if code != 422 || string(raw) != `{"source_code":["is not valid base64"]}` {
		t.Fatalf("bad base64: %d %s", code, raw)
	}
}

func TestValidation(t *testing.T) {
	e := newEnv(t, "", nil)
	for _, tc := range []struct {
		name, body, want string
	}{
		{"nothing", `{}`, `{"source_code":["can't be blank"],"language_id":["can't be blank","language with id  doesn't exist"]}`},
		{"no language", `{"source_code":"x"}`, `{"language_id":["can't be blank","language with id  doesn't exist"]}`},
		{"unknown language", `{"source_code":"x","language_id":150000,"stdin":"world"}`, `{"language_id":["language with id 150000 doesn't exist"]}`},
		{"language not installed here", `{"source_code":"x","language_id":1010}`, `{"language_id":["language with id 1010 doesn't exist"]}`}, // zig: unavailable
		{"blank source", `{"source_code":"  \n","language_id":71}`, `{"source_code":["can't be blank"]}`},
		{"wall too long", `{"source_code":"x","language_id":71,"wall_time_limit":100000}`, `{"wall_time_limit":["must be less than or equal to 20.0"]}`},
		{"limits", `{"source_code":"x","language_id":71,"number_of_runs":0,"cpu_time_limit":-1,"memory_limit":1000,"max_processes_and_or_threads":121,"max_file_size":"big","stack_limit":128001,"cpu_extra_time":6,"wall_time_limit":0.5}`,
			`{"number_of_runs":["must be greater than 0"],"cpu_time_limit":["must be greater than or equal to 0"],"cpu_extra_time":["must be less than or equal to 5.0"],"wall_time_limit":["must be greater than or equal to 1"],"memory_limit":["must be greater than or equal to 2048"],"stack_limit":["must be less than or equal to 128000"],"max_processes_and_or_threads":["must be less than or equal to 120"],"max_file_size":["is not a number"]}`},
		{"too many runs", `{"source_code":"x","language_id":71,"number_of_runs":21}`, `{"number_of_runs":["must be less than or equal to 20"]}`},
		{"long options", `{"source_code":"x","language_id":50,"compiler_options":"` + strings.Repeat("-O", 257) + `","command_line_arguments":"` + strings.Repeat("a", 513) + `"}`,
			`{"compiler_options":["is too long (maximum is 512 characters)"],"command_line_arguments":["is too long (maximum is 512 characters)"]}`},
		{"options for an interpreter", `{"source_code":"x","language_id":71,"compiler_options":"-O2"}`, `{"compiler_options":["setting compiler options is only allowed for compiled languages"]}`},
		{"network", `{"source_code":"x","language_id":71,"enable_network":true}`, `{"enable_network":["enabling network is not allowed"]}`},
		{"callback host", `{"source_code":"x","language_id":71,"callback_url":"http://169.254.169.254/latest"}`, `{"callback_url":["setting callback to host 169.254.169.254 is not allowed"]}`},
		{"callback scheme", `{"source_code":"x","language_id":71,"callback_url":"file:///etc/passwd"}`, `{"callback_url":["is not a valid http or https URL"]}`},
		{"project with source", `{"source_code":"x","language_id":89,"additional_files":"` + b64("zz") + `"}`, `{"source_code":["must be blank"]}`},
		{"project without files", `{"language_id":89}`, `{"additional_files":["can't be blank"]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, raw := e.do("POST", "/submissions", tc.body)
			if code != 422 || string(raw) != tc.want {
				t.Fatalf("got  %d %s\nwant 422 %s", code, raw, tc.want)
			}
		})
	}
	if n := len(e.runner.requests()); n != 0 {
		t.Fatalf("%d runs for invalid submissions", n)
	}
	// Rails' casts: "71" is 71, 71.0 is 71, "true" and 1 are true.
	tok := e.submit(`{"source_code":"err e\nout o","language_id":"71.0","redirect_stderr_to_stdout":1,"cpu_time_limit":"2","memory_limit":"4096"}`)
	got := e.await(tok, "?fields=stdout,stderr,cpu_time_limit,memory_limit,redirect_stderr_to_stdout,status")
	if got["stdout"] != "e\no\n" || got["stderr"] != nil || got["cpu_time_limit"] != "2.0" || got["memory_limit"] != 4096.0 || got["redirect_stderr_to_stdout"] != true {
		t.Fatalf("casts: %v", got)
	}
	// Parameters may come in the query string, as Rails merges them.
	code, raw := e.do("POST", "/submissions?language_id=71&source_code=out+q&wait=true&fields=stdout", "")
	if code != 201 || string(raw) != `{"stdout":"q\n"}` {
		t.Fatalf("query params: %d %s", code, raw)
	}
	// A malformed body.
	if code, raw := e.do("POST", "/submissions", `{"source_code":`); code != 400 || !strings.Contains(string(raw), "malformed JSON") {
		t.Fatalf("malformed: %d %s", code, raw)
	}
}

func TestStatusesThroughTheAPI(t *testing.T) {
	e := newEnv(t, "", nil)
	for _, tc := range []struct {
		name, body string
		status     int
		check      func(m map[string]any) bool
	}{
		{"accepted", `{"source_code":"out 42","language_id":71}`, 3, nil},
		{"accepted with trailing space", `{"source_code":"out 42  \nout  ","language_id":71,"expected_output":"42\n"}`, 3, nil},
		{"wrong answer", `{"source_code":"out 41","language_id":71,"expected_output":"42"}`, 4, nil},
		{"leading space matters", `{"source_code":"out  42","language_id":71,"expected_output":"42"}`, 4, nil},
		{"no output against empty expected", `{"source_code":"exit 0","language_id":71,"expected_output":""}`, 4, nil},
		{"time limit", `{"source_code":"timeout","language_id":71,"wall_time_limit":2}`, 5, func(m map[string]any) bool {
			return m["exit_signal"] == 9.0 && m["message"] == "Time limit exceeded" && m["wall_time"] == "2.0"
		}},
		{"cpu time limit", `{"source_code":"cpu 2500","language_id":71,"cpu_time_limit":2}`, 5, func(m map[string]any) bool { return m["time"] == "2.5" }},
		{"cpu limit 0 is none", `{"source_code":"cpu 2500","language_id":71,"cpu_time_limit":0}`, 3, nil},
		{"compile error", `{"source_code":"compile-fail main.c:1: error","language_id":50}`, 6, func(m map[string]any) bool {
			return m["compile_output"] == "main.c:1: error\n" && m["time"] == nil && m["memory"] == nil && m["exit_code"] == nil && m["stdout"] == nil
		}},
		{"sigsegv", `{"source_code":"signal SIGSEGV","language_id":50}`, 7, func(m map[string]any) bool {
			return m["exit_signal"] == 11.0 && m["exit_code"] == 0.0 && m["message"] == "Caught fatal signal 11"
		}},
		{"sigxfsz", `{"source_code":"signal SIGXFSZ","language_id":50}`, 8, func(m map[string]any) bool { return m["exit_signal"] == 25.0 }},
		{"output past max_file_size", `{"source_code":"outlimit","language_id":71,"max_file_size":1}`, 8, func(m map[string]any) bool {
			return m["exit_signal"] == 25.0 && strings.Contains(fmt.Sprint(m["message"]), "1024 bytes")
		}},
		{"sigfpe", `{"source_code":"signal SIGFPE","language_id":50}`, 9, nil},
		{"sigabrt", `{"source_code":"signal SIGABRT","language_id":50}`, 10, nil},
		{"nzec", `{"source_code":"exit 3","language_id":71}`, 11, func(m map[string]any) bool {
			return m["exit_code"] == 3.0 && m["exit_signal"] == nil && m["message"] == "Exited with error status 3"
		}},
		{"other signal", `{"source_code":"signal SIGKILL","language_id":71}`, 12, func(m map[string]any) bool { return m["exit_signal"] == 9.0 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok := e.submit(tc.body)
			m := e.await(tok, "?fields=*")
			if statusID(m) != tc.status || (tc.check != nil && !tc.check(m)) {
				t.Fatalf("status %d, want %d: %v", statusID(m), tc.status, m)
			}
			if st := m["status"].(map[string]any); st["description"] != statusName(tc.status) {
				t.Fatalf("description %v", st)
			}
		})
	}
	// A failure of the sandbox itself is an Internal Error with its words.
	e.runner.setHook(func(ctx context.Context, req sandbox.RunRequest) (*sandbox.RunResult, error) {
		return nil, fmt.Errorf("restore snapshot: %w", errBoom)
	})
	m := e.await(e.submit(`{"source_code":"out x","language_id":71}`), "")
	if statusID(m) != 13 || m["message"] != "restore snapshot: boom" {
		t.Fatalf("internal error: %v", m)
	}
}

func TestNumberOfRuns(t *testing.T) {
	e := newEnv(t, "", nil)
	var n atomic.Int32
	e.runner.setHook(func(ctx context.Context, req sandbox.RunRequest) (*sandbox.RunResult, error) {
		n.Add(1)
		return nil, nil
	})
	m := e.await(e.submit(`{"source_code":"out x\ncpu 30\nmem 1000","language_id":71,"number_of_runs":3}`), "?fields=*")
	if statusID(m) != 3 || n.Load() != 3 || m["number_of_runs"] != 3.0 || m["time"] != "0.03" || m["memory"] != 1000.0 {
		t.Fatalf("%d runs: %v", n.Load(), m)
	}
	// It stops at the first run that is not Accepted.
	n.Store(0)
	m = e.await(e.submit(`{"source_code":"exit 1","language_id":71,"number_of_runs":5}`), "")
	if statusID(m) != 11 || n.Load() != 1 {
		t.Fatalf("%d runs: %v", n.Load(), m)
	}
}

func TestOptionsReachTheRun(t *testing.T) {
	e := newEnv(t, "", nil)
	m := e.await(e.submit(`{"source_code":"args","language_id":50,"compiler_options":"-O2 -DX='a b'; rm -rf /","command_line_arguments":"one 'two three' $HOME|x"}`), "")
	if m["stdout"] != "one\ntwo three\nHOMEx\n" {
		t.Fatalf("args: %v", m)
	}
	req := e.runner.requests()[0]
	want := []string{"gcc", "-O2", "-DX=a b", "rm", "-rf", "/", "-O1", "-o", "main", "main.c", "-lm"}
	if !slices.Equal(req.CompileCmd, want) || !slices.Equal(req.RunCmd, []string{"./main"}) {
		t.Fatalf("compile %q run %q", req.CompileCmd, req.RunCmd)
	}
	// A compile command that is a shell script gets them inside it.
	got := withOptions([]string{"sh", "-c", "nasm -f elf64 -o main.o main.asm && ld -o main main.o"}, []string{"-g", "it's"})
	if got[2] != `nasm '-g' 'it'\''s' -f elf64 -o main.o main.asm && ld -o main main.o` {
		t.Fatalf("script options: %q", got[2])
	}
	// A script of several lines (java's) takes them as "$@", after $0.
	got = withOptions([]string{"sh", "-ec", "a=1\njavac \"$@\" *.java"}, []string{"-g", "it's"})
	if !slices.Equal(got, []string{"sh", "-ec", "a=1\njavac \"$@\" *.java", "sh", "-g", "it's"}) {
		t.Fatalf("multi-line script options: %q", got)
	}
	// A language's own needs beat Judge0's defaults when left to the server.
	e.await(e.submit(`{"source_code":"out x","language_id":62}`), "")
	java := e.runner.requests()[1]
	if java.Language != "java" || java.RunLimits.MemoryBytes != 1<<30 || java.RunLimits.Procs != 256 {
		t.Fatalf("java limits %+v", java.RunLimits)
	}
	e.await(e.submit(`{"source_code":"out x","language_id":91,"memory_limit":65536,"max_processes_and_or_threads":10}`), "")
	java = e.runner.requests()[2]
	if java.RunLimits.MemoryBytes != 64<<20 || java.RunLimits.Procs != 10 {
		t.Fatalf("explicit java limits %+v", java.RunLimits)
	}
}

func TestNetworkHook(t *testing.T) {
	var asked []string
	e := newEnv(t, "", func(c *Config, d *Deps) {
		d.Network = func(tenant string, req *sandbox.RunRequest) error {
			asked = append(asked, tenant+":"+req.Language)
			if tenant != "default" {
				return errors.New("no")
			}
			return nil
		}
	})
	m := e.await(e.submit(`{"source_code":"out x","language_id":71,"enable_network":true}`), "?fields=enable_network,status")
	if statusID(m) != 3 || m["enable_network"] != true || !slices.Contains(asked, "default:python") {
		t.Fatalf("%v %v", m, asked)
	}
	_, cfg := e.json("GET", "/config_info", "")
	if cfg["allow_enable_network"] != true {
		t.Fatalf("config_info: %v", cfg)
	}
}

func TestBatch(t *testing.T) {
	e := newEnv(t, "", nil)
	code, raw := e.do("POST", "/submissions/batch", `{"submissions":[{"language_id":46,"source_code":"out bash"},{"language_id":123456789,"source_code":"x"},{"language_id":72,"source_code":""},{"language_id":71,"source_code":"out py"}]}`)
	var out []map[string]any
	if err := json.Unmarshal(raw, &out); code != 201 || err != nil || len(out) != 4 {
		t.Fatalf("batch: %d %s", code, raw)
	}
	if out[0]["token"] == nil || out[3]["token"] == nil ||
		mustJSON(out[1]) != `{"language_id":["language with id 123456789 doesn't exist"]}` || mustJSON(out[2]) != `{"source_code":["can't be blank"]}` {
		t.Fatalf("batch: %s", raw)
	}
	t0, t3 := out[0]["token"].(string), out[3]["token"].(string)
	e.await(t0, "")
	e.await(t3, "")
	code, raw = e.do("GET", "/submissions/batch?tokens="+t0+",missing,"+t3+"&fields=token,stdout,status_id", "")
	want := `{"submissions":[{"token":"` + t0 + `","stdout":"bash\n","status_id":3},null,{"token":"` + t3 + `","stdout":"py\n","status_id":3}]}`
	if code != 200 || string(raw) != want {
		t.Fatalf("batch show: %d %s\nwant %s", code, raw, want)
	}
	// Judge0 also reads the tokens from a header.
	if code, raw := e.do("GET", "/submissions/batch?base64_encoded=true&fields=stdout", "", "tokens: "+t3); code != 200 || string(raw) != `{"submissions":[{"stdout":"cHkK\n"}]}` {
		t.Fatalf("header tokens: %d %s", code, raw)
	}
	// All invalid: 422 with every error.
	code, raw = e.do("POST", "/submissions/batch", `{"submissions":[{"language_id":71},{}]}`)
	if code != 422 || !strings.HasPrefix(string(raw), `[{"source_code":["can't be blank"]}`) {
		t.Fatalf("all invalid: %d %s", code, raw)
	}
	many := make([]string, 21)
	for i := range many {
		many[i] = `{"language_id":71,"source_code":"out x"}`
	}
	for _, tc := range []struct{ method, path, body, want string }{
		{"POST", "/submissions/batch", `{"submissions":[` + strings.Join(many, ",") + `]}`, `{"error":"number of submissions in a batch should be less than or equal to 20"}`},
		{"POST", "/submissions/batch", `{"submissions":[]}`, `{"error":"there should be at least one submission in a batch"}`},
		{"POST", "/submissions/batch", `{}`, `{"error":"there should be at least one submission in a batch"}`},
		{"GET", "/submissions/batch?tokens=" + strings.Repeat("a,", 21), "", `{"error":"number of submissions in a batch should be less than or equal to 20"}`},
		{"GET", "/submissions/batch", "", `{"error":"there should be at least one submission in a batch"}`},
	} {
		if code, raw := e.do(tc.method, tc.path, tc.body); code != 400 || string(raw) != tc.want {
			t.Errorf("%s %s: %d %s, want 400 %s", tc.method, tc.path, code, raw, tc.want)
		}
	}
}

func TestQueueFull(t *testing.T) {
	gate := &blockGate{open: make(chan struct{})}
	e := newEnv(t, "", func(c *Config, d *Deps) { c.MaxQueueSize = 2; d.Gate = gate })
	a := e.submit(`{"source_code":"out a","language_id":71}`)
	e.submit(`{"source_code":"out b","language_id":71}`)
	for _, tc := range []struct{ path, body string }{
		{"/submissions", `{"source_code":"out c","language_id":71}`},
		{"/submissions/batch", `{"submissions":[{"source_code":"out c","language_id":71}]}`},
	} {
		code, raw := e.do("POST", tc.path, tc.body)
		if code != 503 || string(raw) != `{"error":"queue is full"}` {
			t.Fatalf("%s: %d %s", tc.path, code, raw)
		}
	}
	// Queued, and reported so.
	if _, raw := e.do("GET", "/submissions/"+a+"?fields=status,stdout,finished_at", ""); string(raw) != `{"status":{"id":1,"description":"In Queue"},"stdout":null,"finished_at":null}` {
		t.Fatalf("queued: %s", raw)
	}
	if code, raw := e.do("DELETE", "/submissions/"+a, ""); code != 400 || string(raw) != `{"error":"submission cannot be deleted because its status is 1 (In Queue)"}` {
		t.Fatalf("delete queued: %d %s", code, raw)
	}
	var w []map[string]any
	_, raw := e.do("GET", "/workers", "")
	json.Unmarshal(raw, &w)
	if len(w) != 1 || w[0]["size"] != 2.0 || w[0]["available"] != 2.0 {
		t.Fatalf("workers: %s", raw)
	}
	close(gate.open) // VM slots free up: the queue drains
	e.await(a, "")
	if n := len(e.runner.requests()); n == 0 {
		t.Fatal("nothing ran")
	}
}

func TestDelete(t *testing.T) {
	e := newEnv(t, "", nil)
	tok := e.submit(`{"source_code":"out gone","language_id":71}`)
	e.await(tok, "")
	code, raw := e.do("DELETE", "/submissions/"+tok+"?fields=stdout,status_id", "")
	if code != 200 || string(raw) != `{"stdout":"Z29uZQo=\n","status_id":3}` { // always base64
		t.Fatalf("delete: %d %s", code, raw)
	}
	if code, _ := e.do("GET", "/submissions/"+tok, ""); code != 404 {
		t.Fatalf("after delete: %d", code)
	}
	if code, _ := e.do("DELETE", "/submissions/"+tok, ""); code != 404 {
		t.Fatalf("delete twice: %d", code)
	}
	e2 := newEnv(t, "", func(c *Config, d *Deps) { c.DisableDelete = true })
	if code, raw := e2.do("DELETE", "/submissions/x", ""); code != 400 || string(raw) != `{"error":"delete not allowed"}` {
		t.Fatalf("disabled: %d %s", code, raw)
	}
}

func TestIndex(t *testing.T) {
	e := newEnv(t, "", nil)
	var toks []string
	for i := range 3 {
		toks = append(toks, e.submit(fmt.Sprintf(`{"source_code":"out %d","language_id":71}`, i)))
	}
	for _, tok := range toks {
		e.await(tok, "")
	}
	code, raw := e.do("GET", "/submissions?page=1&per_page=2&fields=stdout", "")
	if code != 200 || string(raw) != `{"submissions":[{"stdout":"2\n"},{"stdout":"1\n"}],"meta":{"current_page":1,"next_page":2,"prev_page":null,"total_pages":2,"total_count":3}}` {
		t.Fatalf("index: %d %s", code, raw)
	}
	if code, raw := e.do("GET", "/submissions?page=-4", ""); code != 400 || string(raw) != `{"error":"invalid page: -4"}` {
		t.Fatalf("bad page: %d %s", code, raw)
	}
	if code, raw := e.do("GET", "/submissions?per_page=-2", ""); code != 400 || string(raw) != `{"error":"invalid per_page: -2"}` {
		t.Fatalf("bad per_page: %d %s", code, raw)
	}
}

func TestTenants(t *testing.T) {
	keys := map[string]string{"key-a": "acme", "key-b": "bobco"}
	e := newEnv(t, "", func(c *Config, d *Deps) {
		d.Authenticate = func(r *http.Request) (string, error) {
			if r.Header.Get("X-Auth-User") == "banned" {
				return "", ErrForbidden
			}
			if t, ok := keys[r.Header.Get("X-Auth-Token")]; ok {
				return t, nil
			}
			return "", ErrUnauthenticated
		}
	})
	tok := e.submit(`{"source_code":"out secret","language_id":71}`, "X-Auth-Token: key-a")
	if m := e.await(tok, "", "X-Auth-Token: key-a"); m["stdout"] != "secret\n" {
		t.Fatalf("%v", m)
	}
	if code, _ := e.do("GET", "/submissions/"+tok, "", "X-Auth-Token: key-b"); code != 404 {
		t.Fatalf("another tenant's token: %d", code)
	}
	if code, raw := e.do("GET", "/submissions/batch?tokens="+tok, "", "X-Auth-Token: key-b"); code != 200 || string(raw) != `{"submissions":[null]}` {
		t.Fatalf("another tenant's batch: %d %s", code, raw)
	}
	if code, _ := e.do("DELETE", "/submissions/"+tok, "", "X-Auth-Token: key-b"); code != 404 {
		t.Fatalf("another tenant's delete: %d", code)
	}
	if _, raw := e.do("GET", "/submissions", "", "X-Auth-Token: key-b"); !strings.Contains(string(raw), `"total_count":0`) {
		t.Fatalf("another tenant's index: %s", raw)
	}
	for _, h := range []string{"X-Auth-Token: wrong", "X-Nothing: 1"} {
		if code, raw := e.do("GET", "/languages", "", h); code != 401 || len(raw) != 0 {
			t.Fatalf("%s: %d %q", h, code, raw)
		}
	}
	if code, raw := e.do("GET", "/about", "", "X-Auth-Token: key-a", "X-Auth-User: banned"); code != 403 || len(raw) != 0 {
		t.Fatalf("forbidden: %d %q", code, raw)
	}
}

func TestCallback(t *testing.T) {
	got := make(chan []byte, 4)
	cb := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPut || r.Header.Get("Content-Type") != "application/json" {
			t.Errorf("callback %s %s", r.Method, r.Header.Get("Content-Type"))
		}
		b, _ := io.ReadAll(r.Body)
		got <- b
	}))
	defer cb.Close()
	u, _ := url.Parse(cb.URL)
	e := newEnv(t, "", func(c *Config, d *Deps) {
		d.CallbackAllowed = func(host string) bool { return host == u.Hostname() }
	})
	tok := e.submit(`{"source_code":"out called back","language_id":71,"callback_url":"` + cb.URL + `/done"}`)
	select {
	case b := <-got:
		var m map[string]any
		json.Unmarshal(b, &m)
		if m["token"] != tok || m["stdout"] != b64("called back\n")+"\n" || statusID(m) != 3 {
			t.Fatalf("callback body %s", b)
		}
		keys := 0
		for range m {
			keys++
		}
		if keys != len(defaultFields) {
			t.Fatalf("callback fields %s", b)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no callback")
	}
	// Another host on the same machine, by name: refused up front.
	code, raw := e.do("POST", "/submissions", `{"source_code":"x","language_id":71,"callback_url":"http://localhost:1/x"}`)
	if code != 422 || !strings.Contains(string(raw), "setting callback to host localhost is not allowed") {
		t.Fatalf("disallowed callback: %d %s", code, raw)
	}
}

func TestSurvivesRestart(t *testing.T) {
	dbPath := t.TempDir() + "/state.db"
	gate := &blockGate{open: make(chan struct{})}
	e := newEnv(t, dbPath, func(c *Config, d *Deps) { d.Gate = gate })
	queued := e.submit(`{"source_code":"out kept","language_id":71,"expected_output":"kept"}`)
	e.close() // serve stops with the submission still queued

	// A second submission is running when serve stops: it runs again.
	started := make(chan struct{})
	e2 := newEnv(t, dbPath, func(c *Config, d *Deps) {
		c.Workers = 1
		d.Runner.(*scriptRunner).setHook(func(ctx context.Context, req sandbox.RunRequest) (*sandbox.RunResult, error) {
			if strings.Contains(string(req.Files[0].Content), "block") {
				close(started)
			}
			return nil, nil
		})
	})
	if m := e2.await(queued, "?fields=status,stdout"); statusID(m) != 3 || m["stdout"] != "kept\n" {
		t.Fatalf("after restart: %v", m)
	}
	interrupted := e2.submit(`{"source_code":"block","language_id":71}`)
	<-started
	e2.close()

	ran := make(chan string, 1)
	e3 := newEnv(t, dbPath, func(c *Config, d *Deps) {
		d.Runner.(*scriptRunner).setHook(func(ctx context.Context, req sandbox.RunRequest) (*sandbox.RunResult, error) {
			ran <- string(req.Files[0].Content)
			return nil, errBoom
		})
	})
	select {
	case src := <-ran:
		if src != "block" {
			t.Fatalf("ran %q", src)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the interrupted submission did not run again")
	}
	if m := e3.await(interrupted, ""); statusID(m) != 13 {
		t.Fatalf("%v", m)
	}
}

func TestLanguages(t *testing.T) {
	cat := testCatalog(t)
	seen := map[int]string{}
	for _, en := range cat.Entries() {
		if !en.Default() { // ids name a language; they run its default version
			continue
		}
		info, ok := languageIDs[en.Name]
		if !ok {
			t.Errorf("catalog language %s has no Judge0 id", en.Name)
		}
		for _, id := range info.ids {
			if other, dup := seen[id]; dup || id == MultiFileID {
				t.Errorf("id %d of %s is also %s", id, en.Name, other)
			}
			seen[id] = en.Name
		}
	}
	for id, want := range map[int]string{71: "python", 50: "c", 54: "cpp", 62: "java", 63: "nodejs", 46: "bash", 73: "rust", 60: "go"} {
		if seen[id] != want {
			t.Errorf("id %d is %q, want %s", id, seen[id], want)
		}
	}

	installed := map[string]bool{"python": true, "c": true}
	e := newEnv(t, "", func(c *Config, d *Deps) { d.Installed = func(en *image.Entry) bool { return installed[en.Name] } })
	code, raw := e.do("GET", "/languages", "")
	want := `[{"id":48,"name":"C (GCC 12.2.0)"},{"id":49,"name":"C (GCC 12.2.0)"},{"id":50,"name":"C (GCC 12.2.0)"},{"id":103,"name":"C (GCC 12.2.0)"},{"id":89,"name":"Multi-file program"},{"id":71,"name":"Python (3.11.2)"},{"id":92,"name":"Python (3.11.2)"},{"id":109,"name":"Python (3.11.2)"}]`
	if code != 200 || string(raw) != want { // by name, then by id
		t.Fatalf("languages: %d %s", code, raw)
	}
	if code, raw := e.do("GET", "/languages/50", ""); code != 200 || string(raw) != `{"id":50,"name":"C (GCC 12.2.0)","is_archived":false,"source_file":"main.c","compile_cmd":"gcc %s -O1 -o main main.c -lm","run_cmd":"./main"}` {
		t.Fatalf("language 50: %d %s", code, raw)
	}
	if code, raw := e.do("GET", "/languages/71", ""); code != 200 || string(raw) != `{"id":71,"name":"Python (3.11.2)","is_archived":false,"source_file":"main.py","compile_cmd":null,"run_cmd":"python3 main.py"}` {
		t.Fatalf("language 71: %d %s", code, raw)
	}
	for _, p := range []string{"/languages/62", "/languages/abc", "/languages/150000"} {
		if code, raw := e.do("GET", p, ""); code != 404 {
			t.Fatalf("%s: %d %s", p, code, raw)
		}
	}
	if code, raw := e.do("POST", "/submissions", `{"source_code":"x","language_id":62}`); code != 422 || string(raw) != `{"language_id":["language with id 62 doesn't exist"]}` {
		t.Fatalf("not installed: %d %s", code, raw)
	}
	if _, raw := e.do("GET", "/languages/all", ""); !strings.Contains(string(raw), `{"id":71,"name":"Python (3.11.2)","is_archived":false}`) {
		t.Fatalf("all: %s", raw)
	}
}

func TestInfo(t *testing.T) {
	e := newEnv(t, "", func(c *Config, d *Deps) {
		d.SystemInfo = func() [][2]string { return [][2]string{{"Architecture", "x86_64"}, {"CPU(s)", "2"}} }
	})
	code, raw := e.do("GET", "/statuses", "")
	var st []map[string]any
	json.Unmarshal(raw, &st)
	if code != 200 || len(st) != 14 || st[0]["description"] != "In Queue" || st[12]["description"] != "Internal Error" || st[13]["id"] != 14.0 {
		t.Fatalf("statuses: %s", raw)
	}
	if _, raw := e.do("GET", "/about", ""); string(raw) != `{"version":"1.13.1","homepage":null,"source_code":null,"maintainer":null}` {
		t.Fatalf("about: %s", raw)
	}
	if _, raw := e.do("GET", "/version", ""); string(raw) != "1.13.1" {
		t.Fatalf("version: %s", raw)
	}
	if _, raw := e.do("GET", "/system_info", ""); string(raw) != `{"Architecture":"x86_64","CPU(s)":"2"}` {
		t.Fatalf("system_info: %s", raw)
	}
	// The default reads this machine.
	var sys map[string]string
	_, raw = newEnv(t, "", nil).do("GET", "/system_info", "")
	if err := json.Unmarshal(raw, &sys); err != nil || sys["CPU(s)"] != fmt.Sprint(runtime.NumCPU()) || sys["Mem"] == "" {
		t.Fatalf("default system_info: %s", raw)
	}
	// Every key Judge0's Python SDK requires of /config_info, typed as it
	// wants them (its Config model).
	_, raw = e.do("GET", "/config_info", "")
	var cfg map[string]any
	json.Unmarshal(raw, &cfg)
	for _, k := range strings.Fields(`allow_enable_network allow_enable_per_process_and_thread_memory_limit
		allow_enable_per_process_and_thread_time_limit allowed_languages_for_compile_options callbacks_max_tries
		callbacks_timeout cpu_extra_time cpu_time_limit enable_additional_files enable_batched_submissions
		enable_callbacks enable_command_line_arguments enable_compiler_options enable_network
		enable_per_process_and_thread_memory_limit enable_per_process_and_thread_time_limit enable_submission_delete
		enable_wait_result maintenance_mode max_cpu_extra_time max_cpu_time_limit max_extract_size max_file_size
		max_max_file_size max_max_processes_and_or_threads max_memory_limit max_number_of_runs
		max_processes_and_or_threads max_queue_size max_stack_limit max_submission_batch_size max_wall_time_limit
		memory_limit number_of_runs redirect_stderr_to_stdout stack_limit submission_cache_duration
		use_docs_as_homepage wall_time_limit`) {
		if _, ok := cfg[k]; !ok {
			t.Errorf("config_info lacks %s", k)
		}
	}
	if !strings.Contains(string(raw), `"cpu_time_limit":5.0,`) || cfg["allow_enable_network"] != false || cfg["max_queue_size"] != 100.0 {
		t.Fatalf("config_info: %s", raw)
	}
	if code, raw := e.do("GET", "/nope", ""); code != 404 || string(raw) != `{"status":404,"error":"Not Found"}` {
		t.Fatalf("no route: %d %s", code, raw)
	}
}

// TestPythonSDKSequence replays what Judge0's official Python SDK (the
// only client Judge0 publishes) sends for judge0.run and a batch: it
// reads /languages, /config_info and /about first, sends everything in
// base64 and asks for fields=*.
func TestPythonSDKSequence(t *testing.T) {
	e := newEnv(t, "", nil)
	for _, p := range []string{"/languages", "/config_info", "/about"} {
		if code, _ := e.do("GET", p, "", "X-Judge0-App: Judge0 Python SDK"); code != 200 {
			t.Fatalf("%s: %d", p, code)
		}
	}
	body := mustJSON(map[string]any{"source_code": b64("out hello, world"), "language_id": 71, "stdin": b64(""),
		"cpu_time_limit": nil, "wall_time_limit": nil, "redirect_stderr_to_stdout": nil})
	code, raw := e.do("POST", "/submissions?base64_encoded=true&wait=false", body)
	var created map[string]string
	json.Unmarshal(raw, &created)
	if code != 201 || created["token"] == "" {
		t.Fatalf("create: %d %s", code, raw)
	}
	m := e.await(created["token"], "?base64_encoded=true&fields=*")
	if m["stdout"] != b64("hello, world\n")+"\n" || m["source_code"] != b64("out hello, world")+"\n" || statusID(m) != 3 {
		t.Fatalf("get: %v", m)
	}
	code, raw = e.do("POST", "/submissions/batch?base64_encoded=true", `{"submissions":[{"source_code":"`+b64("out a")+`","language_id":71},{"source_code":"`+b64("out b")+`","language_id":92}]}`)
	var toks []map[string]string
	json.Unmarshal(raw, &toks)
	if code != 201 || len(toks) != 2 {
		t.Fatalf("batch: %d %s", code, raw)
	}
	for _, tk := range toks {
		e.await(tk["token"], "")
	}
	_, raw = e.do("GET", "/submissions/batch?base64_encoded=true&fields=*&tokens="+toks[0]["token"]+","+toks[1]["token"], "")
	var batch struct{ Submissions []map[string]any }
	json.Unmarshal(raw, &batch)
	if len(batch.Submissions) != 2 || batch.Submissions[1]["stdout"] != b64("b\n")+"\n" || batch.Submissions[1]["language_id"] != 92.0 {
		t.Fatalf("batch get: %s", raw)
	}
}
