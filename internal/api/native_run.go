// This file holds the native API's languages and one-shot runs.

package api

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/sandbox"
)

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
	// Network, if it allows something, runs the program in a VM with a
	// network device under this policy; without it the VM has none.
	Network *NetworkIn `json:"network,omitempty"`
	// Encoding "base64" (/v1/run/stream only) makes the run byte-exact:
	// Stdin is base64, and output events carry the program's bytes in
	// base64 (with "encoding":"base64") as they came, instead of text
	// where invalid UTF-8 becomes U+FFFD. The CLI runs through it.
	Encoding string `json:"encoding,omitempty"`
}

// parseRun reads a run request; binary says its output is to be streamed
// byte-exact (Encoding base64).
func (s *Server) parseRun(r *http.Request) (req sandbox.RunRequest, e *image.Entry, binary bool, err error) {
	var in RunIn
	if err := decodeJSON(r, &in, true /* strict */); err != nil {
		return sandbox.RunRequest{}, nil, false, err
	}
	stdin := []byte(in.Stdin)
	switch in.Encoding {
	case "", "utf8", "utf-8":
	case "base64":
		if stdin, err = base64.StdEncoding.DecodeString(in.Stdin); err != nil {
			return sandbox.RunRequest{}, nil, false, fmt.Errorf("%w: stdin is not valid base64: %v", sandbox.ErrBadRequest, err)
		}
		binary = true
	default:
		return sandbox.RunRequest{}, nil, false, fmt.Errorf("%w: encoding %q: want utf8 or base64", sandbox.ErrBadRequest, in.Encoding)
	}
	req, e, err = s.runRequest(r, in, stdin)
	return req, e, binary, err
}

// runRequest checks in and makes it a run request.
func (s *Server) runRequest(r *http.Request, in RunIn, stdin []byte) (sandbox.RunRequest, *image.Entry, error) {
	if in.Language == "" {
		return sandbox.RunRequest{}, nil, fmt.Errorf("%w: language is required (see GET /v1/languages)", sandbox.ErrBadRequest)
	}
	e, err := s.installed(in.Language, in.Version)
	if err != nil {
		return sandbox.RunRequest{}, nil, err
	}
	var files []agentproto.File
	switch {
	case in.Code != nil && len(in.Files) > 0:
		return sandbox.RunRequest{}, nil, fmt.Errorf("%w: give code or files, not both", sandbox.ErrBadRequest)
	case in.Code != nil:
		files = []agentproto.File{{Content: []byte(*in.Code)}}
	case len(in.Files) > 0:
		if files, err = filesIn(in.Files, true); err != nil {
			return sandbox.RunRequest{}, nil, err
		}
	default:
		return sandbox.RunRequest{}, nil, fmt.Errorf("%w: no program: give code or files", sandbox.ErrBadRequest)
	}
	limits, capDefault := s.limits, s.capDefault
	if isLocal(r) {
		limits, capDefault = localLimits, func(l agentproto.Limits, _ *image.Entry) agentproto.Limits { return l }
	}
	runLim, err := limits("limits", in.Limits, s.vmMemoryBytes())
	if err != nil {
		return sandbox.RunRequest{}, nil, err
	}
	compLim, err := limits("compile_limits", in.CompileLimits, s.vmMemoryBytes())
	if err != nil {
		return sandbox.RunRequest{}, nil, err
	}
	policy, err := in.Network.policy()
	if err != nil {
		return sandbox.RunRequest{}, nil, err
	}
	req := sandbox.RunRequest{
		Language: e.Name, Version: e.Version, Files: placeMain(files, e), Stdin: stdin, Args: in.Args,
		RunLimits: capDefault(runLim, e), CompileLimits: capDefault(compLim, e), Network: policy,
	}
	if err := runFits(req, e); err != nil {
		return sandbox.RunRequest{}, nil, err
	}
	return req, e, nil
}

// runOut builds /v1/run's answer; c is nil when the output was streamed
// (ts too, then).
func runOut(res *sandbox.RunResult, c *capture, ts *textStream) RunOut {
	text := func(st int) string {
		if c == nil {
			return ""
		}
		return c.text(ts, st)
	}
	out := RunOut{Language: res.Language, Version: res.Version, Stage: "run",
		ReadyMillis: res.Ready.Milliseconds(), TotalMillis: res.Total.Milliseconds(), Restored: res.Restored, Pooled: res.Pooled,
		Timings: timingsOut(res.Timings)}
	out.Compile = stepOut(res.Compile, text(compileStdout), text(compileStderr))
	switch {
	case res.Run != nil:
		out.StepOut = *stepOut(res.Run, text(runStdout), text(runStderr))
	case out.Compile != nil:
		out.Stage, out.StepOut = "compile", *out.Compile
	}
	return out
}

// ResultOf is the result event /v1/run/stream ends with for res (its
// output having been streamed): what the CLI prints for a run it made
// in-process, so that it prints the same as for one made through serve.
func ResultOf(res *sandbox.RunResult) RunOut { return runOut(res, nil, nil) }

func (s *Server) handleRun(w http.ResponseWriter, r *http.Request) {
	req, e, binary, err := s.parseRun(r)
	if err == nil && binary {
		err = fmt.Errorf("%w: encoding base64 is for /v1/run/stream", sandbox.ErrBadRequest)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	c := s.captureFor(req, e)
	res, err := s.runWithSlot(r.Context(), "native", req, c.streams(), nil)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ts := newTextStream()
	ts.writeJSON(w, http.StatusOK, runOut(res, c, ts))
}

func (s *Server) handleRunStream(w http.ResponseWriter, r *http.Request) {
	req, _, binary, err := s.parseRun(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	es := newEventStream(w, r, cancel)
	es.binary = binary
	res, err := s.runWithSlot(ctx, "native", req, sandbox.Streams{
		Stdout: es.writer("run", "stdout"), Stderr: es.writer("run", "stderr"),
		CompileStdout: es.writer("compile", "stdout"), CompileStderr: es.writer("compile", "stderr"),
	}, es.start)
	if err != nil {
		es.fail(s, err)
		return
	}
	es.flushCarry()
	es.send("result", runOut(res, nil, nil)) // output already streamed
}
