// This file holds the native API's long-lived sandboxes.

package api

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/sandbox"
	"github.com/firesandbox/firesandbox/internal/state"
)

// SandboxOut describes a sandbox. TimeoutS repeats IdleTimeoutS, under
// the name it had first. ExpiresAt is the end of its lifetime (absent
// while paused: a paused sandbox does not time out).
type SandboxOut struct {
	ID           string            `json:"id"`
	Language     string            `json:"language"`
	Version      string            `json:"version"`
	State        string            `json:"state"`
	VCPUs        int               `json:"vcpus"`
	MemoryMiB    int               `json:"memory_mib"`
	DiskMiB      int               `json:"disk_mib,omitempty"`
	IdleTimeoutS int64             `json:"idle_timeout_s"`
	TimeoutS     int64             `json:"timeout_s"`
	ExpiresAt    *time.Time        `json:"expires_at,omitempty"`
	OnTimeout    string            `json:"on_timeout"`
	Parent       string            `json:"parent,omitempty"`
	Reason       string            `json:"reason,omitempty"`
	Metadata     map[string]string `json:"metadata,omitempty"`
	CreatedAt    time.Time         `json:"created_at"`
	LastUsedAt   time.Time         `json:"last_used_at"`
}

func sandboxOut(sb state.Sandbox) SandboxOut {
	idle := int64(sb.IdleTimeout / time.Second)
	out := SandboxOut{ID: sb.ID, Language: sb.Language, Version: sb.Version, State: string(sb.State), VCPUs: sb.VCPUs,
		MemoryMiB: sb.MemoryMiB, DiskMiB: sb.DiskMiB, IdleTimeoutS: idle, TimeoutS: idle, OnTimeout: sb.OnTimeout,
		Parent: sb.Parent, Reason: sb.Reason, Metadata: sb.Metadata,
		CreatedAt: sb.CreatedAt.UTC(), LastUsedAt: sb.LastUsedAt.UTC()}
	if out.OnTimeout == "" {
		out.OnTimeout = sandbox.OnTimeoutKill
	}
	if !sb.ExpiresAt.IsZero() {
		at := sb.ExpiresAt.UTC()
		out.ExpiresAt = &at
	}
	return out
}

// CreateIn is POST /v1/sandboxes's request.
//
// Two clocks end a sandbox. LifetimeS is its timeout: at that many
// seconds after the create (default 300, at most the server's maximum)
// it is killed, or paused if OnTimeout is "pause"; POST .../timeout moves
// the end, and a paused sandbox does not time out. IdleTimeoutS (also
// accepted under its first name, timeout_s) pauses it after that long
// without a call, transparently: the next call resumes it (0: the
// server's default).
type CreateIn struct {
	Language     string `json:"language"`
	Version      string `json:"version,omitempty"`
	VCPUs        int    `json:"vcpus,omitempty"`
	MemoryMiB    int    `json:"memory_mib,omitempty"`
	DiskMiB      int    `json:"disk_mib,omitempty"`
	LifetimeS    int64  `json:"lifetime_s,omitempty"`
	OnTimeout    string `json:"on_timeout,omitempty"`
	IdleTimeoutS int64  `json:"idle_timeout_s,omitempty"`
	TimeoutS     int64  `json:"timeout_s,omitempty"`
	// Metadata labels the sandbox (filter with GET /v1/sandboxes?metadata=k=v);
	// Env is set for every command in it.
	Metadata map[string]string `json:"metadata,omitempty"`
	Env      map[string]string `json:"env,omitempty"`
	// Network is the egress policy (none: nothing gets out); PUT
	// /v1/sandboxes/{id}/network changes it while the sandbox runs.
	Network *NetworkIn `json:"network,omitempty"`
}

// maxIdleTimeout bounds a sandbox's own idle timeout.
const maxIdleTimeout = 7 * 24 * time.Hour

func (s *Server) handleCreate(w http.ResponseWriter, r *http.Request) {
	var in CreateIn
	if err := decodeJSON(r, &in, true); err != nil {
		s.writeError(w, r, err)
		return
	}
	idle := in.IdleTimeoutS
	switch {
	case in.TimeoutS != 0 && idle != 0 && in.TimeoutS != idle:
		s.writeError(w, r, fmt.Errorf("%w: timeout_s is the old name of idle_timeout_s; give one of them", sandbox.ErrBadRequest))
		return
	case idle == 0:
		idle = in.TimeoutS
	}
	switch {
	case in.Language == "":
		s.writeError(w, r, fmt.Errorf("%w: language is required (see GET /v1/languages)", sandbox.ErrBadRequest))
		return
	case in.DiskMiB < 0 || in.DiskMiB > 64<<10:
		s.writeError(w, r, fmt.Errorf("%w: disk_mib %d: want 0-65536", sandbox.ErrBadRequest, in.DiskMiB))
		return
	case idle < 0 || idle > int64(maxIdleTimeout/time.Second):
		s.writeError(w, r, fmt.Errorf("%w: idle_timeout_s %d: want 0-%d", sandbox.ErrBadRequest, idle, int64(maxIdleTimeout/time.Second)))
		return
	}
	lifetime, err := seconds("lifetime_s", in.LifetimeS)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if _, err := s.installed(in.Language, in.Version); err != nil {
		s.writeError(w, r, err)
		return
	}
	policy, err := in.Network.policy()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	sb, err := s.sbx.Create(r.Context(), sandbox.CreateRequest{
		Network:  policy,
		Language: in.Language, Version: in.Version, Shape: sandbox.Shape{VCPUs: in.VCPUs, MemoryMiB: in.MemoryMiB},
		DiskMiB: in.DiskMiB, IdleTimeout: time.Duration(idle) * time.Second,
		Timeout: lifetime, OnTimeout: in.OnTimeout,
		Tenant: tenantOf(r), Metadata: in.Metadata, Env: in.Env,
	})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Location", "/v1/sandboxes/"+sb.ID)
	writeJSON(w, http.StatusCreated, sandboxOut(sb))
}

// seconds turns a request's whole seconds into a duration; the sandbox
// layer checks it against the server's bounds.
func seconds(field string, n int64) (time.Duration, error) {
	if n < 0 || n > int64(365*24*time.Hour/time.Second) {
		return 0, fmt.Errorf("%w: %s %d: want a number of seconds, 0 for the default", sandbox.ErrBadRequest, field, n)
	}
	return time.Duration(n) * time.Second, nil
}

// handleList lists the caller's sandboxes: ?state=running (repeatable)
// and ?metadata=k=v (repeatable; every pair must match) narrow it.
func (s *Server) handleList(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var f sandbox.ListFilter
	if len(q["metadata"]) > sandbox.MaxMetadata {
		s.writeError(w, r, fmt.Errorf("%w: at most %d metadata filters", sandbox.ErrBadRequest, sandbox.MaxMetadata))
		return
	}
	for _, kv := range q["metadata"] {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			s.writeError(w, r, fmt.Errorf("%w: metadata filter %q: want key=value", sandbox.ErrBadRequest, kv))
			return
		}
		if f.Metadata == nil {
			f.Metadata = map[string]string{}
		}
		f.Metadata[k] = v
	}
	for _, st := range q["state"] {
		if !knownState(st) {
			s.writeError(w, r, fmt.Errorf("%w: state %q", sandbox.ErrBadRequest, st))
			return
		}
		f.States = append(f.States, state.State(st))
	}
	list, err := s.sbx.List(r.Context(), tenantOf(r), f)
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

func knownState(st string) bool {
	switch state.State(st) {
	case state.Creating, state.Running, state.Hibernating, state.Hibernated, state.Resuming,
		state.Forking, state.Deleting, state.Lost:
		return true
	}
	return false
}

func (s *Server) handleGet(w http.ResponseWriter, r *http.Request) {
	sb, err := s.sbx.Get(r.Context(), tenantOf(r), r.PathValue("id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, sandboxOut(sb))
}

func (s *Server) handleDelete(w http.ResponseWriter, r *http.Request) {
	if err := s.sbx.Delete(r.Context(), tenantOf(r), r.PathValue("id")); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// handlePause pauses a sandbox (memory and disk to storage, VM gone);
// POST .../hibernate is the same.
func (s *Server) handlePause(w http.ResponseWriter, r *http.Request) {
	sb, err := s.sbx.Pause(r.Context(), tenantOf(r), r.PathValue("id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, sandboxOut(sb))
}

// TimeoutIn is the body of POST .../timeout, .../resume and .../fork:
// TimeoutS is the sandbox's (or each child's) lifetime from now.
type TimeoutIn struct {
	TimeoutS int64 `json:"timeout_s,omitempty"`
}

// handleResume resumes a paused sandbox; the body is optional.
func (s *Server) handleResume(w http.ResponseWriter, r *http.Request) {
	var in TimeoutIn
	if err := decodeOptional(r, &in); err != nil {
		s.writeError(w, r, err)
		return
	}
	d, err := seconds("timeout_s", in.TimeoutS)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	sb, err := s.sbx.Resume(r.Context(), tenantOf(r), r.PathValue("id"), d)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, sandboxOut(sb))
}

// handleTimeout sets a new end of a sandbox's lifetime: timeout_s from now.
func (s *Server) handleTimeout(w http.ResponseWriter, r *http.Request) {
	var in TimeoutIn
	if err := decodeJSON(r, &in, true); err != nil {
		s.writeError(w, r, err)
		return
	}
	if in.TimeoutS <= 0 {
		s.writeError(w, r, fmt.Errorf("%w: timeout_s is required: the sandbox's lifetime from now, in seconds", sandbox.ErrBadRequest))
		return
	}
	d, err := seconds("timeout_s", in.TimeoutS)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	sb, err := s.sbx.SetTimeout(r.Context(), tenantOf(r), r.PathValue("id"), d)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, sandboxOut(sb))
}

// ForkIn is POST .../fork's request: Count children, each with a lifetime
// of TimeoutS from now (0: the default).
type ForkIn struct {
	Count    int   `json:"count"`
	TimeoutS int64 `json:"timeout_s,omitempty"`
}

// handleFork copies a running sandbox Count times; it answers with the
// children, in the order made.
func (s *Server) handleFork(w http.ResponseWriter, r *http.Request) {
	var in ForkIn
	if err := decodeOptional(r, &in); err != nil {
		s.writeError(w, r, err)
		return
	}
	if in.Count == 0 {
		in.Count = 1
	}
	d, err := seconds("timeout_s", in.TimeoutS)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	kids, err := s.sbx.Fork(r.Context(), tenantOf(r), r.PathValue("id"), sandbox.ForkRequest{Count: in.Count, Timeout: d})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := make([]SandboxOut, 0, len(kids))
	for _, k := range kids {
		out = append(out, sandboxOut(k))
	}
	writeJSON(w, http.StatusCreated, map[string]any{"sandboxes": out})
}

// decodeOptional is decodeJSON for a body that may be left out.
func decodeOptional(r *http.Request, v any) error {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadBody, err)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	return decodeJSON(r, v, true)
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
	// Background starts the command and answers at once with its pid
	// (201 {"pid": N}); it runs on, and GET .../processes/{pid}/stream
	// (or /ws) streams its output. Its limits are the agent's background
	// defaults unless given.
	Background bool `json:"background,omitempty"`
	// OpenStdin keeps the command's stdin open after Stdin, for POST
	// .../processes/{pid}/stdin, until closed there. Tag names it in the
	// process list.
	OpenStdin bool   `json:"open_stdin,omitempty"`
	Tag       string `json:"tag,omitempty"`
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
	req := agentproto.ExecRequest{Argv: argv, Env: env, Dir: in.Cwd, Stdin: []byte(in.Stdin), Limits: lim,
		Background: in.Background, OpenStdin: in.OpenStdin, Tag: in.Tag}
	return req, execFits(req)
}

func (s *Server) handleExec(w http.ResponseWriter, r *http.Request) {
	req, err := s.parseExec(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if req.Background {
		s.handleBackground(w, r, req)
		return
	}
	c := newCapture(outputLimit(req.Limits, nil), 0)
	st := c.streams()
	res, err := s.sbx.Exec(r.Context(), tenantOf(r), r.PathValue("id"), req, st.Stdout, st.Stderr)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeExecResult(w, res, c)
}

func (s *Server) handleExecStream(w http.ResponseWriter, r *http.Request) {
	req, err := s.parseExec(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if req.Background {
		s.writeError(w, r, fmt.Errorf("%w: a background command answers with its pid: use POST .../exec, then GET .../processes/{pid}/stream", sandbox.ErrBadRequest))
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	es := newEventStream(w, r, cancel)
	res, err := s.sbx.Exec(ctx, tenantOf(r), r.PathValue("id"), req, es.writer("run", "stdout"), es.writer("run", "stderr"))
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
	if err := s.sbx.WriteFiles(r.Context(), tenantOf(r), r.PathValue("id"), files); err != nil {
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
	data, err := s.sbx.ReadFile(r.Context(), tenantOf(r), r.PathValue("id"), p, agentproto.MaxFileTransfer)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(data)
}
