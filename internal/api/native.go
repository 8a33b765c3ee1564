package api

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/firesandbox/firesandbox/internal/agent"
	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/sandbox"
	"github.com/firesandbox/firesandbox/internal/state"
)

// ---- shared request parts ----

// FileIn is a file in a request. Content is text unless Encoding says
// base64 or hex.
type FileIn struct {
	Path     string `json:"path"`
	Content  string `json:"content"`
	Encoding string `json:"encoding,omitempty"`
}

func decodeContent(i int, content, enc string) ([]byte, error) {
	switch enc {
	case "", "utf8", "utf-8":
		return []byte(content), nil
	case "base64":
		b, err := base64.StdEncoding.DecodeString(content)
		if err != nil {
			return nil, fmt.Errorf("%w: files[%d].content is not valid base64: %v", sandbox.ErrBadRequest, i, err)
		}
		return b, nil
	case "hex":
		b, err := hex.DecodeString(content)
		if err != nil {
			return nil, fmt.Errorf("%w: files[%d].content is not valid hex: %v", sandbox.ErrBadRequest, i, err)
		}
		return b, nil
	}
	return nil, fmt.Errorf("%w: files[%d].encoding %q: want utf8, base64 or hex", sandbox.ErrBadRequest, i, enc)
}

// filesIn converts and checks request files; the first may have no path
// (it is the program and gets the language's file name).
func filesIn(in []FileIn, firstMayBeUnnamed bool) ([]agentproto.File, error) {
	if len(in) > sandbox.MaxRunFiles {
		return nil, fmt.Errorf("%w: %d files, at most %d", sandbox.ErrBadRequest, len(in), sandbox.MaxRunFiles)
	}
	out := make([]agentproto.File, len(in))
	for i, f := range in {
		if !(i == 0 && firstMayBeUnnamed && f.Path == "") {
			if err := agentproto.ValidateRelPath(f.Path); err != nil {
				return nil, fmt.Errorf("%w: files[%d].path: %w", sandbox.ErrBadRequest, i, err)
			}
		}
		b, err := decodeContent(i, f.Content, f.Encoding)
		if err != nil {
			return nil, err
		}
		out[i] = agentproto.File{Path: f.Path, Content: b}
	}
	return out, nil
}

// placeMain makes sure the program (the first file) is where the
// language's run command looks for it: a first file named otherwise is
// also written under the language's file name, unless another file
// already has that name.
func placeMain(files []agentproto.File, e *image.Entry) []agentproto.File {
	if len(files) == 0 || files[0].Path == "" || files[0].Path == e.File {
		return files
	}
	for _, f := range files[1:] {
		if f.Path == e.File {
			return files
		}
	}
	return append(files, agentproto.File{Path: e.File, Content: files[0].Content})
}

// LimitsIn are limits a request may ask for. Zero means the default.
type LimitsIn struct {
	TimeoutMillis int64 `json:"timeout_ms,omitempty"`
	MemoryBytes   int64 `json:"memory_bytes,omitempty"`
	OutputBytes   int64 `json:"output_bytes,omitempty"`
	Procs         int64 `json:"procs,omitempty"`
}

// limits checks l against the server's caps; what is zero becomes the
// default (capped too).
func (s *Server) limits(field string, l LimitsIn, memCapBytes int64) (agentproto.Limits, error) {
	maxWall := s.cfg.MaxTimeout.Milliseconds()
	for _, c := range []struct {
		name     string
		v, limit int64
	}{
		{"timeout_ms", l.TimeoutMillis, maxWall},
		{"memory_bytes", l.MemoryBytes, memCapBytes},
		{"output_bytes", l.OutputBytes, s.cfg.MaxOutput},
		{"procs", l.Procs, agent.MaxLimits.Procs},
	} {
		if c.v < 0 {
			return agentproto.Limits{}, fmt.Errorf("%w: %s.%s is %d: must not be negative", sandbox.ErrBadRequest, field, c.name, c.v)
		}
		if c.v > c.limit {
			return agentproto.Limits{}, fmt.Errorf("%w: %s.%s is %d: this server allows at most %d", sandbox.ErrBadRequest, field, c.name, c.v, c.limit)
		}
	}
	out := agentproto.Limits{WallMillis: l.TimeoutMillis, MemoryBytes: l.MemoryBytes, OutputBytes: l.OutputBytes, Procs: l.Procs}
	return s.capDefault(out, nil), nil
}

// capDefault sets the wall-clock limit a request left to the default
// (the language's, else the agent's) to the server's maximum when that
// default is longer.
func (s *Server) capDefault(l agentproto.Limits, e *image.Entry) agentproto.Limits {
	if l.WallMillis != 0 {
		return l
	}
	def := agent.DefaultLimits.WallMillis
	if e != nil && e.Limits.WallMillis > 0 {
		def = e.Limits.WallMillis
	}
	if maxWall := s.cfg.MaxTimeout.Milliseconds(); def > maxWall {
		l.WallMillis = maxWall
	}
	return l
}

// vmMemoryBytes is the memory of the default VM shape: no program can use
// more.
func (s *Server) vmMemoryBytes() int64 { return int64(s.mgr.Config().MemoryMiB) << 20 }

// ---- results ----

// StepOut is how one step (compile or run) ended.
type StepOut struct {
	Stdout      string `json:"stdout"`
	Stderr      string `json:"stderr"`
	ExitCode    int    `json:"exit_code"`
	Signal      string `json:"signal,omitempty"`
	Status      string `json:"status,omitempty"`
	Message     string `json:"message,omitempty"`
	OK          bool   `json:"ok"`
	WallMillis  int64  `json:"wall_ms"`
	CPUMillis   int64  `json:"cpu_ms"`
	MemoryBytes int64  `json:"memory_bytes"`
}

func stepOut(r *agentproto.ExitResult, stdout, stderr string) *StepOut {
	if r == nil {
		return nil
	}
	return &StepOut{Stdout: stdout, Stderr: stderr, ExitCode: r.Code, Signal: r.Signal, Status: string(r.Status),
		Message: r.Message, OK: r.Status == agentproto.StatusOK, WallMillis: r.WallMillis, CPUMillis: r.CPUMillis, MemoryBytes: r.MemoryBytes}
}

// RunOut is /v1/run's answer: the run step's fields at the top, the
// compile step (for compiled languages) inside. If compilation failed,
// Stage is "compile" and the top-level fields are the compile step's.
type RunOut struct {
	Language string `json:"language"`
	Version  string `json:"version"`
	Stage    string `json:"stage"`
	StepOut
	Compile     *StepOut `json:"compile,omitempty"`
	ReadyMillis int64    `json:"ready_ms"`
	TotalMillis int64    `json:"total_ms"`
	Restored    bool     `json:"restored"`
	Pooled      bool     `json:"pooled"`
}

// capture collects a run's output: each stream, and both interleaved in
// arrival order (Piston's "output").
type capture struct {
	mu                                  sync.Mutex
	out, err, output, cout, cerr, coutp []byte
}

type captureWriter struct {
	c        *capture
	dst, all *[]byte
}

func (w captureWriter) Write(b []byte) (int, error) {
	w.c.mu.Lock()
	defer w.c.mu.Unlock()
	*w.dst = append(*w.dst, b...)
	*w.all = append(*w.all, b...)
	return len(b), nil
}

func (c *capture) streams() sandbox.Streams {
	return sandbox.Streams{
		Stdout: captureWriter{c, &c.out, &c.output}, Stderr: captureWriter{c, &c.err, &c.output},
		CompileStdout: captureWriter{c, &c.cout, &c.coutp}, CompileStderr: captureWriter{c, &c.cerr, &c.coutp},
	}
}

// runWithSlot runs req holding a VM slot and records the metrics.
func (s *Server) runWithSlot(ctx context.Context, api string, req sandbox.RunRequest, out sandbox.Streams, started func()) (*sandbox.RunResult, error) {
	release, err := s.lim.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	if started != nil {
		started()
	}
	s.met.running.Add(1)
	defer s.met.running.Add(-1)
	start := time.Now()
	res, err := s.mgr.Run(ctx, req, out)
	status := "error"
	if err == nil {
		r := res.Run
		if r == nil {
			r = res.Compile
		}
		status = string(r.Status)
		if status == "" {
			status = "OK"
		}
	}
	s.met.observeRun(api, req.Language, status, time.Since(start))
	return res, err
}

// installed finds a language that can run here: in the catalog and with
// its image built. Of the versions the selector matches, the best one
// that is built wins, as Piston picks among its installed runtimes.
func (s *Server) installed(language, version string) (*image.Entry, error) {
	es, err := s.mgr.Catalog().Match(language, version)
	if err != nil {
		return nil, err
	}
	var first error
	for _, e := range es {
		_, err := s.mgr.Images().ForEntry(e, s.mgr.Config().ImageFormat)
		if err == nil {
			return e, nil
		}
		if first == nil {
			first = err
		}
	}
	return nil, first
}

// ---- /v1/languages ----

// LanguageOut describes one catalog entry.
type LanguageOut struct {
	Name     string   `json:"name"`
	Version  string   `json:"version"`
	Aliases  []string `json:"aliases"`
	File     string   `json:"file"`
	Compiled bool     `json:"compiled"`
	// Installed says its image is built here, so runs can use it.
	Installed   bool   `json:"installed"`
	Unavailable string `json:"unavailable,omitempty"`
}

func (s *Server) handleLanguages(w http.ResponseWriter, r *http.Request) {
	var out []LanguageOut
	for _, e := range s.mgr.Catalog().Entries() {
		_, err := s.mgr.Images().ForEntry(e, s.mgr.Config().ImageFormat)
		out = append(out, LanguageOut{
			Name: e.Name, Version: e.Version, Aliases: append([]string{}, e.Aliases...), File: e.File,
			Compiled: len(e.Compile) > 0, Installed: err == nil && e.Unavailable == "", Unavailable: e.Unavailable,
		})
	}
	writeJSON(w, http.StatusOK, map[string]any{"languages": out})
}

// ---- /v1/run ----

// RunIn is /v1/run's request: Code, or Files (the first is the program).
type RunIn struct {
	Language      string   `json:"language"`
	Version       string   `json:"version,omitempty"`
	Code          *string  `json:"code,omitempty"`
	Files         []FileIn `json:"files,omitempty"`
	Stdin         string   `json:"stdin,omitempty"`
	Args          []string `json:"args,omitempty"`
	Limits        LimitsIn `json:"limits"`
	CompileLimits LimitsIn `json:"compile_limits"`
}

func (s *Server) parseRun(r *http.Request) (sandbox.RunRequest, error) {
	var in RunIn
	if err := decodeJSON(r, &in, true /* strict */); err != nil {
		return sandbox.RunRequest{}, err
	}
	if in.Language == "" {
		return sandbox.RunRequest{}, fmt.Errorf("%w: language is required (see GET /v1/languages)", sandbox.ErrBadRequest)
	}
	e, err := s.installed(in.Language, in.Version)
	if err != nil {
		return sandbox.RunRequest{}, err
	}
	var files []agentproto.File
	switch {
	case in.Code != nil && len(in.Files) > 0:
		return sandbox.RunRequest{}, fmt.Errorf("%w: give code or files, not both", sandbox.ErrBadRequest)
	case in.Code != nil:
		files = []agentproto.File{{Content: []byte(*in.Code)}}
	case len(in.Files) > 0:
		if files, err = filesIn(in.Files, true); err != nil {
			return sandbox.RunRequest{}, err
		}
	default:
		return sandbox.RunRequest{}, fmt.Errorf("%w: no program: give code or files", sandbox.ErrBadRequest)
	}
	runLim, err := s.limits("limits", in.Limits, s.vmMemoryBytes())
	if err != nil {
		return sandbox.RunRequest{}, err
	}
	compLim, err := s.limits("compile_limits", in.CompileLimits, s.vmMemoryBytes())
	if err != nil {
		return sandbox.RunRequest{}, err
	}
	return sandbox.RunRequest{
		Language: e.Name, Version: e.Version, Files: placeMain(files, e), Stdin: []byte(in.Stdin), Args: in.Args,
		RunLimits: s.capDefault(runLim, e), CompileLimits: s.capDefault(compLim, e),
	}, nil
}

// runOut builds /v1/run's answer; c is nil when the output was streamed.
func runOut(res *sandbox.RunResult, c *capture) RunOut {
	if c == nil {
		c = &capture{}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	out := RunOut{Language: res.Language, Version: res.Version, Stage: "run",
		ReadyMillis: res.Ready.Milliseconds(), TotalMillis: res.Total.Milliseconds(), Restored: res.Restored, Pooled: res.Pooled}
	out.Compile = stepOut(res.Compile, string(c.cout), string(c.cerr))
	switch {
	case res.Run != nil:
		out.StepOut = *stepOut(res.Run, string(c.out), string(c.err))
	case out.Compile != nil:
		out.Stage, out.StepOut = "compile", *out.Compile
	}
	return out
}

func (s *Server) handleRun(w http.ResponseWriter, r *http.Request) {
	req, err := s.parseRun(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	c := &capture{}
	res, err := s.runWithSlot(r.Context(), "native", req, c.streams(), nil)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, runOut(res, c))
}

func (s *Server) handleRunStream(w http.ResponseWriter, r *http.Request) {
	req, err := s.parseRun(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	es := newEventStream(w, r, cancel)
	res, err := s.runWithSlot(ctx, "native", req, sandbox.Streams{
		Stdout: es.writer("run", "stdout"), Stderr: es.writer("run", "stderr"),
		CompileStdout: es.writer("compile", "stdout"), CompileStderr: es.writer("compile", "stderr"),
	}, es.start)
	if err != nil {
		es.fail(s, err)
		return
	}
	es.flushCarry()
	es.send("result", runOut(res, nil)) // output already streamed
}

// ---- streaming ----

// eventStream writes events as NDJSON, or as server-sent events when the
// client asks for text/event-stream. Output writes come from the agent
// client's reader; a write that fails (the client left) cancels the run.
type eventStream struct {
	mu      sync.Mutex
	w       http.ResponseWriter
	r       *http.Request
	rc      *http.ResponseController
	sse     bool
	started bool
	failed  bool
	cancel  context.CancelFunc
	carry   map[[2]string][]byte // incomplete UTF-8 at the end of a chunk
}

// Event is one line of a stream.
type Event struct {
	Type   string `json:"type"` // output, result, error
	Stage  string `json:"stage,omitempty"`
	Stream string `json:"stream,omitempty"`
	Data   string `json:"data,omitempty"`
	Result any    `json:"result,omitempty"`
	Error  string `json:"error,omitempty"`
	Code   string `json:"code,omitempty"`
}

func newEventStream(w http.ResponseWriter, r *http.Request, cancel context.CancelFunc) *eventStream {
	accept := r.Header.Get("Accept")
	return &eventStream{w: w, rc: http.NewResponseController(w), cancel: cancel, carry: map[[2]string][]byte{},
		r: r, sse: strings.Contains(accept, "text/event-stream")}
}

// start commits the 200 and the content type; before it, errors are
// ordinary HTTP errors.
func (e *eventStream) start() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.startLocked()
}

func (e *eventStream) startLocked() {
	if e.started {
		return
	}
	e.started = true
	h := e.w.Header()
	if e.sse {
		h.Set("Content-Type", "text/event-stream")
	} else {
		h.Set("Content-Type", "application/x-ndjson")
	}
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	e.w.WriteHeader(http.StatusOK)
	_ = e.rc.Flush()
}

func (e *eventStream) writeLocked(ev Event) {
	if e.failed {
		return
	}
	e.startLocked()
	b, _ := json.Marshal(ev)
	var err error
	if e.sse {
		_, err = fmt.Fprintf(e.w, "event: %s\ndata: %s\n\n", ev.Type, b)
	} else {
		_, err = e.w.Write(append(b, '\n'))
	}
	if err == nil {
		err = e.rc.Flush()
	}
	if err != nil {
		e.failed = true
		e.cancel()
	}
}

func (e *eventStream) send(typ string, result any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.writeLocked(Event{Type: typ, Result: result})
}

// fail reports err: as an HTTP error if nothing was sent yet, else as an
// error event.
func (e *eventStream) fail(s *Server, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.failed {
		return // the client is gone
	}
	if !e.started {
		e.failed = true
		s.writeError(e.w, e.r, err)
		return
	}
	_, code := statusOf(err)
	e.writeLocked(Event{Type: "error", Error: err.Error(), Code: code})
}

type streamWriter struct {
	e     *eventStream
	stage string
	name  string
}

func (w streamWriter) Write(b []byte) (int, error) {
	e := w.e
	e.mu.Lock()
	defer e.mu.Unlock()
	k := [2]string{w.stage, w.name}
	data := append(e.carry[k], b...)
	// Hold back a rune split across chunks so it is not mangled.
	cut := len(data)
	for i := len(data) - 1; i >= 0 && i >= len(data)-utf8.UTFMax; i-- {
		if utf8.RuneStart(data[i]) {
			if !utf8.FullRune(data[i:]) {
				cut = i
			}
			break
		}
	}
	e.carry[k] = append([]byte(nil), data[cut:]...)
	if cut > 0 {
		e.writeLocked(Event{Type: "output", Stage: w.stage, Stream: w.name, Data: string(data[:cut])})
	}
	return len(b), nil
}

func (e *eventStream) writer(stage, stream string) io.Writer { return streamWriter{e, stage, stream} }

func (e *eventStream) flushCarry() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for k, rest := range e.carry {
		if len(rest) > 0 {
			e.writeLocked(Event{Type: "output", Stage: k[0], Stream: k[1], Data: string(rest)})
		}
	}
	clear(e.carry)
}

// ---- sandboxes ----

// SandboxOut describes a sandbox.
type SandboxOut struct {
	ID           string    `json:"id"`
	Language     string    `json:"language"`
	Version      string    `json:"version"`
	State        string    `json:"state"`
	VCPUs        int       `json:"vcpus"`
	MemoryMiB    int       `json:"memory_mib"`
	DiskMiB      int       `json:"disk_mib,omitempty"`
	IdleTimeoutS int64     `json:"timeout_s"`
	Reason       string    `json:"reason,omitempty"`
	CreatedAt    time.Time `json:"created_at"`
	LastUsedAt   time.Time `json:"last_used_at"`
}

func sandboxOut(sb state.Sandbox) SandboxOut {
	return SandboxOut{ID: sb.ID, Language: sb.Language, Version: sb.Version, State: string(sb.State), VCPUs: sb.VCPUs,
		MemoryMiB: sb.MemoryMiB, DiskMiB: sb.DiskMiB, IdleTimeoutS: int64(sb.IdleTimeout / time.Second), Reason: sb.Reason,
		CreatedAt: sb.CreatedAt.UTC(), LastUsedAt: sb.LastUsedAt.UTC()}
}

// CreateIn is POST /v1/sandboxes's request. TimeoutS is the idle time
// after which the sandbox is hibernated (0: the server's default).
type CreateIn struct {
	Language  string `json:"language"`
	Version   string `json:"version,omitempty"`
	VCPUs     int    `json:"vcpus,omitempty"`
	MemoryMiB int    `json:"memory_mib,omitempty"`
	DiskMiB   int    `json:"disk_mib,omitempty"`
	TimeoutS  int64  `json:"timeout_s,omitempty"`
}

// maxIdleTimeout bounds a sandbox's own idle timeout.
const maxIdleTimeout = 7 * 24 * time.Hour

func (s *Server) handleCreate(w http.ResponseWriter, r *http.Request) {
	var in CreateIn
	if err := decodeJSON(r, &in, true); err != nil {
		s.writeError(w, r, err)
		return
	}
	switch {
	case in.Language == "":
		s.writeError(w, r, fmt.Errorf("%w: language is required (see GET /v1/languages)", sandbox.ErrBadRequest))
		return
	case in.DiskMiB < 0 || in.DiskMiB > 64<<10:
		s.writeError(w, r, fmt.Errorf("%w: disk_mib %d: want 0-65536", sandbox.ErrBadRequest, in.DiskMiB))
		return
	case in.TimeoutS < 0 || in.TimeoutS > int64(maxIdleTimeout/time.Second):
		s.writeError(w, r, fmt.Errorf("%w: timeout_s %d: want 0-%d", sandbox.ErrBadRequest, in.TimeoutS, int64(maxIdleTimeout/time.Second)))
		return
	}
	if _, err := s.installed(in.Language, in.Version); err != nil {
		s.writeError(w, r, err)
		return
	}
	sb, err := s.sbx.Create(r.Context(), sandbox.CreateRequest{
		Language: in.Language, Version: in.Version, Shape: sandbox.Shape{VCPUs: in.VCPUs, MemoryMiB: in.MemoryMiB},
		DiskMiB: in.DiskMiB, IdleTimeout: time.Duration(in.TimeoutS) * time.Second,
	})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Location", "/v1/sandboxes/"+sb.ID)
	writeJSON(w, http.StatusCreated, sandboxOut(sb))
}

func (s *Server) handleList(w http.ResponseWriter, r *http.Request) {
	list, err := s.sbx.List(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := make([]SandboxOut, 0, len(list))
	for _, sb := range list {
		out = append(out, sandboxOut(sb))
	}
	writeJSON(w, http.StatusOK, map[string]any{"sandboxes": out})
}

func (s *Server) handleGet(w http.ResponseWriter, r *http.Request) {
	sb, err := s.sbx.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, sandboxOut(sb))
}

func (s *Server) handleDelete(w http.ResponseWriter, r *http.Request) {
	if err := s.sbx.Delete(r.Context(), r.PathValue("id")); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handleHibernate(w http.ResponseWriter, r *http.Request) {
	sb, err := s.sbx.Hibernate(r.Context(), r.PathValue("id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, sandboxOut(sb))
}

func (s *Server) handleResume(w http.ResponseWriter, r *http.Request) {
	sb, err := s.sbx.Resume(r.Context(), r.PathValue("id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, sandboxOut(sb))
}

// ExecIn is a command to run in a sandbox: Cmd (argv), or Command (a
// shell command line, run with sh -c). Cwd is relative to the sandbox's
// working directory unless absolute.
type ExecIn struct {
	Cmd       []string          `json:"cmd,omitempty"`
	Command   string            `json:"command,omitempty"`
	Stdin     string            `json:"stdin,omitempty"`
	Env       map[string]string `json:"env,omitempty"`
	Cwd       string            `json:"cwd,omitempty"`
	TimeoutMS int64             `json:"timeout_ms,omitempty"`
	Limits    LimitsIn          `json:"limits"`
}

func (s *Server) parseExec(r *http.Request) (agentproto.ExecRequest, error) {
	var in ExecIn
	if err := decodeJSON(r, &in, true); err != nil {
		return agentproto.ExecRequest{}, err
	}
	argv := in.Cmd
	switch {
	case len(in.Cmd) > 0 && in.Command != "":
		return agentproto.ExecRequest{}, fmt.Errorf("%w: give cmd or command, not both", sandbox.ErrBadRequest)
	case in.Command != "":
		argv = []string{"/bin/sh", "-c", in.Command}
	case len(argv) == 0 || argv[0] == "":
		return agentproto.ExecRequest{}, fmt.Errorf("%w: nothing to run: give cmd (an argv array) or command (a shell line)", sandbox.ErrBadRequest)
	}
	if in.TimeoutMS != 0 {
		if in.Limits.TimeoutMillis != 0 && in.Limits.TimeoutMillis != in.TimeoutMS {
			return agentproto.ExecRequest{}, fmt.Errorf("%w: timeout_ms and limits.timeout_ms disagree", sandbox.ErrBadRequest)
		}
		in.Limits.TimeoutMillis = in.TimeoutMS
	}
	lim, err := s.limits("limits", in.Limits, 64<<30)
	if err != nil {
		return agentproto.ExecRequest{}, err
	}
	env := make([]string, 0, len(in.Env))
	for k, v := range in.Env {
		if k == "" || strings.Contains(k, "=") {
			return agentproto.ExecRequest{}, fmt.Errorf("%w: env name %q", sandbox.ErrBadRequest, k)
		}
		env = append(env, k+"="+v)
	}
	return agentproto.ExecRequest{Argv: argv, Env: env, Dir: in.Cwd, Stdin: []byte(in.Stdin), Limits: lim}, nil
}

func (s *Server) handleExec(w http.ResponseWriter, r *http.Request) {
	req, err := s.parseExec(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	c := &capture{}
	st := c.streams()
	res, err := s.sbx.Exec(r.Context(), r.PathValue("id"), req, st.Stdout, st.Stderr)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	c.mu.Lock()
	out := stepOut(res, string(c.out), string(c.err))
	c.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleExecStream(w http.ResponseWriter, r *http.Request) {
	req, err := s.parseExec(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	es := newEventStream(w, r, cancel)
	res, err := s.sbx.Exec(ctx, r.PathValue("id"), req, es.writer("run", "stdout"), es.writer("run", "stderr"))
	if err != nil {
		es.fail(s, err)
		return
	}
	es.flushCarry()
	es.send("result", stepOut(res, "", ""))
}

// UploadIn is POST /v1/sandboxes/{id}/files's request.
type UploadIn struct {
	Files []FileIn `json:"files"`
}

func (s *Server) handleUpload(w http.ResponseWriter, r *http.Request) {
	var in UploadIn
	if err := decodeJSON(r, &in, true); err != nil {
		s.writeError(w, r, err)
		return
	}
	if len(in.Files) == 0 {
		s.writeError(w, r, fmt.Errorf("%w: no files", sandbox.ErrBadRequest))
		return
	}
	files, err := filesIn(in.Files, false)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	n := 0
	for _, f := range files {
		n += len(f.Content)
	}
	if err := s.sbx.WriteFiles(r.Context(), r.PathValue("id"), files); err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]int{"files": len(files), "bytes": n})
}

func (s *Server) handleDownload(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Query().Get("path")
	if p == "" {
		s.writeError(w, r, fmt.Errorf("%w: give the file as ?path=relative/path", sandbox.ErrBadRequest))
		return
	}
	if err := agentproto.ValidateRelPath(p); err != nil {
		s.writeError(w, r, fmt.Errorf("%w: path: %w", sandbox.ErrBadRequest, err))
		return
	}
	data, err := s.sbx.ReadFile(r.Context(), r.PathValue("id"), p, agentproto.MaxFileTransfer)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(data)
}
