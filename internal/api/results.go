// This file holds results of runs, captured output, and running with a VM slot.

package api

import (
	"context"
	"net/http"
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
	// Prewarmed says the program ran as a fork of a prewarmed runtime.
	Prewarmed bool `json:"prewarmed,omitempty"`
}

func stepOut(r *agentproto.ExitResult, stdout, stderr string) *StepOut {
	if r == nil {
		return nil
	}
	return &StepOut{Stdout: stdout, Stderr: stderr, ExitCode: r.Code, Signal: r.Signal, Status: string(r.Status),
		Message: r.Message, OK: r.Status == agentproto.StatusOK, WallMillis: r.WallMillis, CPUMillis: r.CPUMillis, MemoryBytes: r.MemoryBytes,
		Prewarmed: r.Prewarmed}
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
	// Timings break ReadyMillis down: the parts of the VM's start (for a
	// pooled VM, when the pool made it), in order.
	Timings []TimingOut `json:"timings,omitempty"`
}

// TimingOut is one part of a VM's start.
type TimingOut struct {
	Name   string  `json:"name"`
	Millis float64 `json:"ms"`
}

// timingsOut lists every part sandbox.Timings has, so a part added there
// is sent without a change here.
func timingsOut(t sandbox.Timings) []TimingOut {
	var out []TimingOut
	for _, p := range t.Parts() {
		out = append(out, TimingOut{Name: p.Name, Millis: float64(p.D.Microseconds()) / 1000})
	}
	return out
}

// The streams a capture keeps.
const (
	runStdout = iota
	runStderr
	compileStdout
	compileStderr
	nStreams
)

// maxSegments bounds how many arrival-order segments a step records for
// Piston's interleaved "output": past it (a program alternating stdout
// and stderr byte by byte) the rest of the output is the rest of stdout,
// then the rest of stderr.
const maxSegments = 1 << 16

// capture collects a run's output. Each stream is kept once, and at most
// limit bytes of it: a guest that sends more than its cap costs the host
// nothing more. The order the run's two streams arrived in (Piston's
// "output") is kept as segment lengths, not as a second copy.
type capture struct {
	mu      sync.Mutex
	limit   [nStreams]int64
	data    [nStreams][]byte
	segs    [2][]uint32 // per step: stream in the top bit, length below
	overrun [2]bool     // a step passed maxSegments
}

// newCapture keeps up to runLimit bytes of each run stream and
// compileLimit of each compile stream.
func newCapture(runLimit, compileLimit int64) *capture {
	return &capture{limit: [nStreams]int64{runLimit, runLimit, compileLimit, compileLimit}}
}

type captureWriter struct {
	c  *capture
	st int
}

func (w captureWriter) Write(b []byte) (int, error) {
	c := w.c
	c.mu.Lock()
	defer c.mu.Unlock()
	n := len(b)
	if room := c.limit[w.st] - int64(len(c.data[w.st])); int64(len(b)) > room {
		b = b[:max(room, 0)]
	}
	if len(b) == 0 {
		return n, nil
	}
	c.data[w.st] = append(c.data[w.st], b...)
	step, bit := w.st/2, uint32(w.st%2)<<31
	segs := c.segs[step]
	switch {
	case len(segs) > 0 && segs[len(segs)-1]&(1<<31) == bit && int64(segs[len(segs)-1]&^(1<<31))+int64(len(b)) < 1<<31:
		segs[len(segs)-1] += uint32(len(b))
	case len(segs) < maxSegments:
		c.segs[step] = append(segs, bit|uint32(len(b)))
	default:
		c.overrun[step] = true
	}
	return n, nil
}

func (c *capture) streams() sandbox.Streams {
	return sandbox.Streams{
		Stdout: captureWriter{c, runStdout}, Stderr: captureWriter{c, runStderr},
		CompileStdout: captureWriter{c, compileStdout}, CompileStderr: captureWriter{c, compileStderr},
	}
}

// text returns the placeholder of stream st in ts.
func (c *capture) text(ts *textStream, st int) string {
	return ts.ref(func(j *jsonText) {
		c.mu.Lock()
		defer c.mu.Unlock()
		j.Write(c.data[st])
	})
}

// interleaved returns the placeholder of a step's two streams in the
// order they arrived (step 0: run, 1: compile).
func (c *capture) interleaved(ts *textStream, step int) string {
	return ts.ref(func(j *jsonText) {
		c.mu.Lock()
		defer c.mu.Unlock()
		var off [2]int
		for _, s := range c.segs[step] {
			k, n := int(s>>31), int(s&^(1<<31))
			j.Write(c.data[2*step+k][off[k] : off[k]+n])
			off[k] += n
		}
		for k := range 2 { // what came after maxSegments, or nothing
			j.Write(c.data[2*step+k][off[k]:])
		}
	})
}

// outputLimit is the cap the agent applies to each stream of a step: the
// request's, else the language's, else the agent's default.
func outputLimit(l agentproto.Limits, e *image.Entry) int64 {
	if l.OutputBytes > 0 {
		return l.OutputBytes
	}
	if e != nil && e.Limits.OutputBytes > 0 {
		return e.Limits.OutputBytes
	}
	return agentproto.DefaultLimits.OutputBytes
}

// captureFor returns a capture sized for req's limits.
func (s *Server) captureFor(req sandbox.RunRequest, e *image.Entry) *capture {
	return newCapture(outputLimit(req.RunLimits, e), outputLimit(req.CompileLimits, e))
}

// writeExecResult answers a sandbox exec with its captured output.
func (s *Server) writeExecResult(w http.ResponseWriter, res *agentproto.ExitResult, c *capture) {
	ts := newTextStream()
	ts.writeJSON(w, http.StatusOK, stepOut(res, c.text(ts, runStdout), c.text(ts, runStderr)))
}

// runWithSlot runs req holding a VM slot (and one of the tenant's VMs)
// and records the metrics. The slot is given back when the run ends,
// before any answer is written.
func (s *Server) runWithSlot(ctx context.Context, api string, req sandbox.RunRequest, out sandbox.Streams, started func()) (*sandbox.RunResult, error) {
	release, err := s.quotas.RunGate(s.lim, s.mgr.Config().MemoryMiB).Acquire(ctx)
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
