// This file holds results of runs, captured output, and running with a VM slot.

package api

import (
	"context"
	"sync"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/sandbox"
)

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
// its image built.
func (s *Server) installed(language, version string) (*image.Entry, error) {
	e, err := s.mgr.Catalog().Lookup(language, version)
	if err != nil {
		return nil, err
	}
	if _, err := s.mgr.Images().ForEntry(e, s.mgr.Config().ImageFormat); err != nil {
		return nil, err
	}
	return e, nil
}
