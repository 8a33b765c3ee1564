// This file holds the native API's long-lived sandboxes.

package api

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/sandbox"
	"github.com/firesandbox/firesandbox/internal/state"
)

// SandboxOut describes a sandbox.
type SandboxOut struct {
	ID           string            `json:"id"`
	Language     string            `json:"language"`
	Version      string            `json:"version"`
	State        string            `json:"state"`
	VCPUs        int               `json:"vcpus"`
	MemoryMiB    int               `json:"memory_mib"`
	DiskMiB      int               `json:"disk_mib,omitempty"`
	IdleTimeoutS int64             `json:"timeout_s"`
	Reason       string            `json:"reason,omitempty"`
	Metadata     map[string]string `json:"metadata,omitempty"`
	CreatedAt    time.Time         `json:"created_at"`
	LastUsedAt   time.Time         `json:"last_used_at"`
}

func sandboxOut(sb state.Sandbox) SandboxOut {
	return SandboxOut{ID: sb.ID, Language: sb.Language, Version: sb.Version, State: string(sb.State), VCPUs: sb.VCPUs,
		MemoryMiB: sb.MemoryMiB, DiskMiB: sb.DiskMiB, IdleTimeoutS: int64(sb.IdleTimeout / time.Second), Reason: sb.Reason, Metadata: sb.Metadata,
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
	// Metadata labels the sandbox; Env is set for every command in it.
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
	policy, err := in.Network.policy()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	sb, err := s.sbx.Create(r.Context(), sandbox.CreateRequest{
		Network:  policy,
		Language: in.Language, Version: in.Version, Shape: sandbox.Shape{VCPUs: in.VCPUs, MemoryMiB: in.MemoryMiB},
		DiskMiB: in.DiskMiB, IdleTimeout: time.Duration(in.TimeoutS) * time.Second,
		Tenant: tenantOf(r), Metadata: in.Metadata, Env: in.Env,
	})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Location", "/v1/sandboxes/"+sb.ID)
	writeJSON(w, http.StatusCreated, sandboxOut(sb))
}

func (s *Server) handleList(w http.ResponseWriter, r *http.Request) {
	list, err := s.sbx.List(r.Context(), tenantOf(r), sandbox.ListFilter{})
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

func (s *Server) handleHibernate(w http.ResponseWriter, r *http.Request) {
	sb, err := s.sbx.Hibernate(r.Context(), tenantOf(r), r.PathValue("id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, sandboxOut(sb))
}

func (s *Server) handleResume(w http.ResponseWriter, r *http.Request) {
	sb, err := s.sbx.Resume(r.Context(), tenantOf(r), r.PathValue("id"))
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
	req := agentproto.ExecRequest{Argv: argv, Env: env, Dir: in.Cwd, Stdin: []byte(in.Stdin), Limits: lim}
	return req, execFits(req)
}

func (s *Server) handleExec(w http.ResponseWriter, r *http.Request) {
	req, err := s.parseExec(r)
	if err != nil {
		s.writeError(w, r, err)
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
