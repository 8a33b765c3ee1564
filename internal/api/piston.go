package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/sandbox"
)

// Piston v2 compatibility: GET /api/v2/runtimes and POST /api/v2/execute
// with Piston's request fields, validation messages (400 {"message": ...})
// and result objects, so existing clients work unchanged. Deliberate
// differences: a JSON body is accepted whatever its Content-Type (Piston
// answers 415, but piston-client sends text/plain); run_memory_limit -1
// (piston-client's default, Piston's "no limit") means the language's
// default; cpu_time limits are validated but the wall-clock limit is what
// is enforced; an absent timeout takes the language's default rather
// than Piston's 3 s.

// PistonRuntime is one entry of GET /api/v2/runtimes.
type PistonRuntime struct {
	Language string   `json:"language"`
	Version  string   `json:"version"`
	Aliases  []string `json:"aliases"`
}

func (s *Server) handleRuntimes(w http.ResponseWriter, r *http.Request) {
	out := []PistonRuntime{}
	for _, e := range s.mgr.Catalog().Entries() {
		if e.Unavailable != "" {
			continue
		}
		if _, err := s.mgr.Images().ForEntry(e, s.mgr.Config().ImageFormat); err != nil {
			continue // not installed here
		}
		out = append(out, PistonRuntime{Language: e.Name, Version: e.Version, Aliases: append([]string{}, e.Aliases...)})
	}
	writeJSON(w, http.StatusOK, out)
}

// PistonStage is a "run" or "compile" object of Piston's result.
type PistonStage struct {
	Stdout   string  `json:"stdout"`
	Stderr   string  `json:"stderr"`
	Output   string  `json:"output"`
	Code     *int    `json:"code"`
	Signal   *string `json:"signal"`
	Message  *string `json:"message"`
	Status   *string `json:"status"`
	CPUTime  int64   `json:"cpu_time"`
	WallTime int64   `json:"wall_time"`
	Memory   int64   `json:"memory"`
}

// PistonResult is POST /api/v2/execute's answer.
type PistonResult struct {
	Language string       `json:"language"`
	Version  string       `json:"version"`
	Run      *PistonStage `json:"run"`
	Compile  *PistonStage `json:"compile,omitempty"`
}

func pistonStage(r *agentproto.ExitResult, stdout, stderr, output string) *PistonStage {
	if r == nil {
		return nil
	}
	st := &PistonStage{Stdout: stdout, Stderr: stderr, Output: output,
		CPUTime: r.CPUMillis, WallTime: r.WallMillis, Memory: r.MemoryBytes}
	switch {
	case r.Signal != "":
		sig := r.Signal
		st.Signal = &sig
	case r.Status == agentproto.StatusTimeout || r.Status == agentproto.StatusStdoutLimit || r.Status == agentproto.StatusStderrLimit:
		sig := "SIGKILL" // as Piston reports a stage it killed
		st.Signal = &sig
	case r.Status != agentproto.StatusInternal:
		code := r.Code
		st.Code = &code
	}
	if r.Status != agentproto.StatusOK {
		status := string(r.Status)
		st.Status = &status
	}
	if r.Message != "" {
		msg := r.Message
		st.Message = &msg
	}
	return st
}

// messageError is a validation failure worded exactly as Piston words
// it: its text is the whole message.
type messageError struct{ msg string }

func (e *messageError) Error() string { return e.msg }
func (e *messageError) Unwrap() error { return ErrBadBody }

func pistonError(f string, a ...any) error { return &messageError{fmt.Sprintf(f, a...)} }

// jsString returns raw as a Go string if it is a non-empty JSON string
// (JavaScript's truthy-string test).
func jsString(raw json.RawMessage) (string, bool) {
	var s string
	if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, s != ""
}

// jsFalsy is JavaScript's !value for a JSON value.
func jsFalsy(raw json.RawMessage) bool {
	switch t := string(bytes.TrimSpace(raw)); t {
	case "", "null", "false", `""`:
		return true
	default:
		var f float64
		return json.Unmarshal(raw, &f) == nil && f == 0
	}
}

// pistonVersion turns a semver selector ("3.x", "3.*", "3") into the
// prefix Lookup takes.
func pistonVersion(v string) string {
	v = strings.TrimPrefix(v, "v")
	for strings.HasSuffix(v, ".x") || strings.HasSuffix(v, ".X") || strings.HasSuffix(v, ".*") {
		v = v[:len(v)-2]
	}
	if v == "x" || v == "X" {
		return "*"
	}
	return v
}

// parseExecute validates a Piston body in Piston's order, with its
// messages.
func (s *Server) parseExecute(body map[string]json.RawMessage) (sandbox.RunRequest, *image.Entry, error) {
	var req sandbox.RunRequest
	language, ok := jsString(body["language"])
	if !ok {
		return req, nil, pistonError("language is required as a string")
	}
	version, ok := jsString(body["version"])
	if !ok {
		return req, nil, pistonError("version is required as a string")
	}
	var rawFiles []json.RawMessage
	if f := bytes.TrimSpace(body["files"]); len(f) == 0 || f[0] != '[' || json.Unmarshal(f, &rawFiles) != nil {
		return req, nil, pistonError("files is required as an array")
	}
	type pfile struct {
		name, content, encoding string
		hasEncoding             bool
	}
	files := make([]pfile, len(rawFiles))
	for i, raw := range rawFiles {
		var obj map[string]json.RawMessage
		_ = json.Unmarshal(raw, &obj) // a non-object has no content: reported below
		c, isStr := obj["content"], false
		if len(c) > 0 && c[0] == '"' {
			isStr = json.Unmarshal(c, &files[i].content) == nil
		}
		if !isStr {
			return req, nil, pistonError("files[%d].content is required as a string", i)
		}
		if n := obj["name"]; !jsFalsy(n) {
			if name, ok := jsString(n); ok {
				files[i].name = name
			} else {
				return req, nil, pistonError("files[%d].name must be a string", i)
			}
		}
		if enc := obj["encoding"]; !jsFalsy(enc) {
			files[i].hasEncoding = true
			files[i].encoding, _ = jsString(enc)
		}
	}
	e, err := s.installed(language, pistonVersion(version))
	if err != nil { // not in the catalog, or not installed here: unknown to Piston's eyes
		return req, nil, pistonError("%s-%s runtime is unknown", language, version)
	}
	main := -1
	for i, f := range files {
		if !f.hasEncoding || f.encoding == "utf8" {
			main = i
			break
		}
	}
	if main < 0 {
		return req, nil, pistonError("files must include at least one utf8 encoded file")
	}

	limits := map[string]int64{}
	for _, constraint := range []string{"memory_limit", "timeout", "cpu_time"} {
		for _, typ := range []string{"compile", "run"} {
			name := typ + "_" + constraint
			raw := body[name]
			if jsFalsy(raw) {
				continue
			}
			var v float64
			if t := bytes.TrimSpace(raw); len(t) == 0 || (t[0] != '-' && (t[0] < '0' || t[0] > '9')) || json.Unmarshal(t, &v) != nil {
				return req, nil, pistonError("If specified, %s must be a number", name)
			}
			configured := s.cfg.MaxTimeout.Milliseconds()
			if constraint == "memory_limit" {
				configured = s.vmMemoryBytes()
				if v == -1 {
					continue // Piston's "no limit": the language's default here
				}
			}
			if v > float64(configured) {
				return req, nil, pistonError("%s cannot exceed the configured limit of %d", name, configured)
			}
			if v < 0 {
				return req, nil, pistonError("%s must be non-negative", name)
			}
			limits[name] = int64(v)
		}
	}

	var args []string
	if raw := body["args"]; !jsFalsy(raw) {
		var vals []json.RawMessage
		if t := bytes.TrimSpace(raw); t[0] != '[' || json.Unmarshal(t, &vals) != nil {
			return req, nil, pistonError("args must be an array of strings")
		}
		for _, v := range vals {
			var s string
			switch t := bytes.TrimSpace(v); {
			case len(t) > 0 && t[0] == '"':
				_ = json.Unmarshal(t, &s)
			case len(t) > 0 && (t[0] == '-' || (t[0] >= '0' && t[0] <= '9') || string(t) == "true" || string(t) == "false"):
				s = string(t) // JavaScript would stringify these
			default:
				return req, nil, pistonError("args must be an array of strings")
			}
			args = append(args, s)
		}
	}
	stdin := ""
	if raw := body["stdin"]; len(raw) > 0 && string(raw) != "null" {
		if raw[0] != '"' || json.Unmarshal(raw, &stdin) != nil {
			return req, nil, pistonError("stdin must be a string")
		}
	}
	if !strings.HasSuffix(stdin, "\n") {
		stdin += "\n" // Piston always ends stdin with a newline
	}

	in := make([]FileIn, 0, len(files))
	order := append([]int{main}, func() []int { // the main file goes first
		var rest []int
		for i := range files {
			if i != main {
				rest = append(rest, i)
			}
		}
		return rest
	}()...)
	for _, i := range order {
		f := files[i]
		enc := f.encoding
		if enc != "base64" && enc != "hex" {
			enc = "utf8" // as Piston: anything else is text
		}
		name := f.name
		if name == "" && i != main {
			name = fmt.Sprintf("file%d.code", i)
		}
		in = append(in, FileIn{Path: name, Content: f.content, Encoding: enc})
	}
	af, err := filesIn(in, true)
	if err != nil {
		return req, nil, err
	}
	req = sandbox.RunRequest{
		Language: e.Name, Files: placeMain(af, e), Stdin: []byte(stdin), Args: args,
		RunLimits:     agentproto.Limits{WallMillis: limits["run_timeout"], MemoryBytes: limits["run_memory_limit"]},
		CompileLimits: agentproto.Limits{WallMillis: limits["compile_timeout"], MemoryBytes: limits["compile_memory_limit"]},
	}
	req.RunLimits, req.CompileLimits = s.capDefault(req.RunLimits, e), s.capDefault(req.CompileLimits, e)
	if err := runFits(req, e); err != nil {
		return sandbox.RunRequest{}, nil, err
	}
	return req, e, nil
}

func (s *Server) handleExecute(w http.ResponseWriter, r *http.Request) {
	var body map[string]json.RawMessage
	if err := decodeJSON(r, &body, false); err != nil {
		s.writeError(w, r, err)
		return
	}
	if body == nil { // JSON null
		body = map[string]json.RawMessage{}
	}
	req, e, err := s.parseExecute(body)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	c := s.captureFor(req, e)
	res, err := s.runWithSlot(r.Context(), "piston", req, c.streams(), nil)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ts := newTextStream()
	out := PistonResult{Language: e.Name, Version: e.Version,
		Run:     pistonStage(res.Run, c.text(ts, runStdout), c.text(ts, runStderr), c.interleaved(ts, 0)),
		Compile: pistonStage(res.Compile, c.text(ts, compileStdout), c.text(ts, compileStderr), c.interleaved(ts, 1))}
	if out.Run == nil { // compilation failed: Piston repeats it as "run"
		out.Run = out.Compile
	}
	ts.writeJSON(w, http.StatusOK, out)
}
