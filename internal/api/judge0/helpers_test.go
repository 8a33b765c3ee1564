package judge0

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/sandbox"
	"github.com/firesandbox/firesandbox/internal/state"
	"github.com/firesandbox/firesandbox/languages"
)

// scriptRunner is a fake Runner whose programs are scripts of its own,
// one command a line, so a test says what the "program" does:
//
//	out TEXT       write TEXT and a newline to stdout (err: to stderr)
//	hex HEX        write the bytes HEX to stdout
//	stdin          copy stdin to stdout
//	args           write the arguments, one a line
//	exit N         exit with N
//	signal NAME    die of a signal
//	timeout        be killed at the wall-clock limit
//	outlimit       be killed for too much stdout
//	cpu MS         report MS of CPU time
//	mem KB         report KB of peak memory
//	compile-fail T the compile step fails with output T
//	block          wait until the run is cancelled
//
// A request without a first file of its own (a multi-file program) runs
// the file named "script". It records every request.
type scriptRunner struct {
	mu   sync.Mutex
	reqs []sandbox.RunRequest
	// hook, if set, runs first; a non-nil result or error is returned.
	hook func(ctx context.Context, req sandbox.RunRequest) (*sandbox.RunResult, error)
}

func (s *scriptRunner) setHook(h func(ctx context.Context, req sandbox.RunRequest) (*sandbox.RunResult, error)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hook = h
}

func (s *scriptRunner) requests() []sandbox.RunRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]sandbox.RunRequest(nil), s.reqs...)
}

func (s *scriptRunner) Run(ctx context.Context, req sandbox.RunRequest, out sandbox.Streams) (*sandbox.RunResult, error) {
	s.mu.Lock()
	s.reqs = append(s.reqs, req)
	hook := s.hook
	s.mu.Unlock()
	if hook != nil {
		if res, err := hook(ctx, req); res != nil || err != nil {
			return res, err
		}
	}
	script := ""
	for i, f := range req.Files {
		if (i == 0 && f.Path == "") || f.Path == "script" {
			script = string(f.Content)
			break
		}
	}
	res := &sandbox.RunResult{Language: req.Language, Version: req.Version}
	compiled := len(req.CompileCmd) > 0 || (req.RunCmd == nil && req.Language == "c")
	if compiled {
		res.Compile = &agentproto.ExitResult{WallMillis: 5}
	}
	run := &agentproto.ExitResult{WallMillis: 20, CPUMillis: 10, MemoryBytes: 3 << 20}
	for _, line := range strings.Split(script, "\n") {
		cmd, arg, _ := strings.Cut(strings.TrimSpace(line), " ")
		switch cmd {
		case "out":
			io.WriteString(out.Stdout, arg+"\n")
		case "err":
			io.WriteString(out.Stderr, arg+"\n")
		case "hex":
			b, _ := hex.DecodeString(arg)
			out.Stdout.Write(b)
		case "stdin":
			out.Stdout.Write(req.Stdin)
		case "args":
			for _, a := range req.Args {
				io.WriteString(out.Stdout, a+"\n")
			}
		case "exit":
			run.Code, _ = strconv.Atoi(arg)
			if run.Code != 0 {
				run.Status = agentproto.StatusRuntimeError
			}
		case "signal":
			run.Code, run.Signal, run.Status = -1, arg, agentproto.StatusSignal
		case "timeout":
			run.Code, run.Signal, run.Status = -1, "SIGKILL", agentproto.StatusTimeout
			run.WallMillis = req.RunLimits.WallMillis
		case "outlimit":
			run.Code, run.Signal, run.Status, run.Message = -1, "SIGKILL", agentproto.StatusStdoutLimit,
				fmt.Sprintf("stdout passed its limit of %d bytes", req.RunLimits.OutputBytes)
		case "cpu":
			run.CPUMillis, _ = strconv.ParseInt(arg, 10, 64)
		case "mem":
			kb, _ := strconv.ParseInt(arg, 10, 64)
			run.MemoryBytes = kb << 10
		case "compile-fail":
			if res.Compile == nil {
				res.Compile = &agentproto.ExitResult{}
			}
			io.WriteString(out.CompileStderr, arg+"\n")
			res.Compile.Code, res.Compile.Status = 1, agentproto.StatusRuntimeError
			return res, nil
		case "block":
			<-ctx.Done()
			return nil, ctx.Err()
		}
	}
	res.Run = run
	return res, nil
}

// blockGate grants no slot until opened: submissions stay queued.
type blockGate struct{ open chan struct{} }

func (g *blockGate) Acquire(ctx context.Context) (func(), error) {
	select {
	case <-g.open:
		return func() {}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

type testEnv struct {
	t      *testing.T
	h      *Handler
	srv    *httptest.Server
	db     *state.DB
	store  *state.SubmissionStore
	runner *scriptRunner
	dbPath string
}

func testCatalog(t *testing.T) *image.Catalog {
	t.Helper()
	cat, err := image.LoadCatalog(languages.FS)
	if err != nil {
		t.Fatal(err)
	}
	return cat
}

// newEnv serves a Handler over a fresh state database (or the one at
// dbPath) with a scriptRunner; mod adjusts the config and deps.
func newEnv(t *testing.T, dbPath string, mod func(*Config, *Deps)) *testEnv {
	t.Helper()
	if dbPath == "" {
		dbPath = filepath.Join(t.TempDir(), "state.db")
	}
	db, err := state.Open(dbPath)
	if err != nil {
		t.Fatal(err)
	}
	store, err := state.OpenSubmissions(db)
	if err != nil {
		t.Fatal(err)
	}
	e := &testEnv{t: t, db: db, store: store, runner: &scriptRunner{}, dbPath: dbPath}
	cfg := Config{Workers: 2}
	deps := Deps{Runner: e.runner, Catalog: testCatalog(t), Store: store}
	if mod != nil {
		mod(&cfg, &deps)
	}
	e.h, err = New(cfg, deps)
	if err != nil {
		t.Fatal(err)
	}
	e.srv = httptest.NewServer(e.h)
	t.Cleanup(e.close)
	return e
}

func (e *testEnv) close() {
	if e.srv == nil {
		return
	}
	e.srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.h.Close(ctx); err != nil {
		e.t.Errorf("close handler: %v", err)
	}
	e.db.Close()
	e.srv = nil
}

// do sends a request and returns the status and the raw body; headers
// are "Name: value" strings.
func (e *testEnv) do(method, path, body string, headers ...string) (int, []byte) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.srv.URL+path, strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for _, h := range headers {
		k, v, _ := strings.Cut(h, ":")
		req.Header.Set(k, strings.TrimSpace(v))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// json sends a request and decodes the answer into a generic value.
func (e *testEnv) json(method, path, body string, headers ...string) (int, map[string]any) {
	e.t.Helper()
	code, b := e.do(method, path, body, headers...)
	var m map[string]any
	if len(bytes.TrimSpace(b)) > 0 {
		if err := json.Unmarshal(b, &m); err != nil {
			e.t.Fatalf("%s %s: %d %s: %v", method, path, code, b, err)
		}
	}
	return code, m
}

func (e *testEnv) submit(body string, headers ...string) string {
	e.t.Helper()
	code, m := e.json("POST", "/submissions", body, headers...)
	tok, _ := m["token"].(string)
	if code != 201 || tok == "" {
		e.t.Fatalf("create: %d %v", code, m)
	}
	return tok
}

// await polls a submission until it is neither queued nor processing.
func (e *testEnv) await(token, query string, headers ...string) map[string]any {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, m := e.json("GET", "/submissions/"+token+query, "", headers...)
		if code != 200 {
			e.t.Fatalf("get %s: %d %v", token, code, m)
		}
		if st, ok := m["status"].(map[string]any); ok && st["id"] != float64(1) && st["id"] != float64(2) {
			return m
		}
		if st, ok := m["status_id"]; ok && st != float64(1) && st != float64(2) {
			return m
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("submission %s still pending: %v", token, m)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func statusID(m map[string]any) int {
	st, _ := m["status"].(map[string]any)
	f, _ := st["id"].(float64)
	return int(f)
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

var errBoom = errors.New("boom")
