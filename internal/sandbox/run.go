package sandbox

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/network"
)

// Streams receive a run's output as it is produced. Nil writers discard.
type Streams struct {
	Stdout, Stderr               io.Writer
	CompileStdout, CompileStderr io.Writer
}

// RunRequest is a one-shot run: files in, program output and result out.
type RunRequest struct {
	Language string
	Version  string // "" or "*" for any
	// Files are written to the working directory. The first is the
	// program; an empty Path gives it the language's file name.
	Files []agentproto.File
	Stdin []byte
	Args  []string
	// CompileLimits and RunLimits override the language's defaults.
	CompileLimits, RunLimits agentproto.Limits
	// Cold boots a fresh VM instead of restoring the language's snapshot.
	Cold bool
	// Mounts show host directories read-only in the guest (cold boot).
	Mounts []Mount
	// Network, if it lets anything out, runs the program in a VM with a
	// network device under this policy; nil (the default) in one with
	// no network interface at all.
	Network *network.Policy
	// RunCmd, if set, replaces the language's run command (Args are still
	// appended) and CompileCmd its compile command: none if empty. The
	// language still picks the image and snapshot.
	RunCmd, CompileCmd []string
}

// RunResult is how a run ended. Compile is nil for interpreted languages;
// Run is nil when compilation failed.
type RunResult struct {
	Language string                 `json:"language"`
	Version  string                 `json:"version"`
	Compile  *agentproto.ExitResult `json:"compile,omitempty"`
	Run      *agentproto.ExitResult `json:"run,omitempty"`
	Ready    time.Duration          `json:"ready_ns"`
	Restored bool                   `json:"restored"`
	Pooled   bool                   `json:"pooled"`
	Total    time.Duration          `json:"total_ns"`
	// Timings break Ready down: how the VM was started (for a pooled VM,
	// when the pool made it).
	Timings Timings `json:"timings"`
}

// workDir is where a run's files live in the guest; compile and run share it.
const workDir = "/tmp/box"

// MaxRunFiles and MaxRunBytes bound what a run may upload.
const (
	MaxRunFiles = 64
	MaxRunBytes = 16 << 20
)

func (r *RunRequest) validate() error {
	if len(r.Files) == 0 {
		return fmt.Errorf("%w: no program: give code or at least one file", ErrBadRequest)
	}
	if len(r.Files) > MaxRunFiles {
		return fmt.Errorf("%w: %d files, at most %d", ErrBadRequest, len(r.Files), MaxRunFiles)
	}
	n := len(r.Stdin)
	for i, f := range r.Files {
		n += len(f.Content)
		if f.Path == "" && i == 0 {
			continue
		}
		if err := agentproto.ValidateRelPath(f.Path); err != nil {
			return fmt.Errorf("%w: file %d: %v", ErrBadRequest, i, err)
		}
	}
	if n > MaxRunBytes {
		return fmt.Errorf("%w: files and stdin total %d bytes, at most %d", ErrBadRequest, n, MaxRunBytes)
	}
	if (r.RunCmd != nil && (len(r.RunCmd) == 0 || r.RunCmd[0] == "")) || (len(r.CompileCmd) > 0 && r.CompileCmd[0] == "") {
		return fmt.Errorf("%w: a command starts with an empty word", ErrBadRequest)
	}
	if r.RunCmd == nil && r.CompileCmd != nil {
		return fmt.Errorf("%w: a compile command needs a run command", ErrBadRequest)
	}
	return nil
}

// Run runs a program once in a fresh VM and destroys the VM.
func (m *Manager) Run(ctx context.Context, req RunRequest, out Streams) (*RunResult, error) {
	start := time.Now()
	e, err := m.catalog.Lookup(req.Language, req.Version)
	if err != nil {
		return nil, err
	}
	if err := req.validate(); err != nil {
		return nil, err
	}
	files := append([]agentproto.File(nil), req.Files...)
	if files[0].Path == "" {
		files[0].Path = e.File
	}

	vm, pooled, err := m.takeForRun(ctx, e, &req)
	if err != nil {
		return nil, err
	}
	defer vm.Close()
	prog := e
	if req.RunCmd != nil {
		c := *e
		c.Run, c.Compile = req.RunCmd, req.CompileCmd
		prog = &c
	}
	res, err := m.execProgram(ctx, vm, prog, workDir, files, req.Args, req.Stdin, req.CompileLimits, req.RunLimits, out)
	if err != nil {
		return nil, err
	}
	res.Ready, res.Restored, res.Pooled, res.Timings = vm.Ready, vm.Restored, pooled, vm.Timings
	res.Total = time.Since(start)
	return res, nil
}

// execProgram compiles (if the language needs it) and runs a program in
// dir of vm.
func (m *Manager) execProgram(ctx context.Context, vm *VM, e *image.Entry, dir string, files []agentproto.File,
	args []string, stdin []byte, compileLim, runLim agentproto.Limits, out Streams) (*RunResult, error) {
	res := &RunResult{Language: e.Name, Version: e.Version}
	var err error
	if len(e.Compile) > 0 {
		res.Compile, err = execBounded(ctx, vm, agentproto.ExecRequest{
			Argv: e.Compile, Env: e.Env, Dir: dir, Files: files,
			Limits:    stepLimits(vm, e, compileLim),
			Prewarmed: e.Prewarm != nil, // a resident compiler (typescript's); else run normally
		}, orDiscard(out.CompileStdout), orDiscard(out.CompileStderr))
		if err != nil {
			return nil, fmt.Errorf("compile %s: %w", e.Name, err)
		}
		files = nil // already in place
		if res.Compile.Status != agentproto.StatusOK {
			return res, nil
		}
	}
	res.Run, err = execBounded(ctx, vm, agentproto.ExecRequest{
		Argv: append(append([]string{}, e.Run...), args...), Env: e.Env, Dir: dir,
		Files: files, Stdin: stdin, Limits: stepLimits(vm, e, runLim),
		Prewarmed: e.Prewarm != nil, // the agent runs it normally if there is no runtime
	}, orDiscard(out.Stdout), orDiscard(out.Stderr))
	if err != nil {
		return nil, fmt.Errorf("run %s: %w", e.Name, err)
	}
	return res, nil
}

// execMargin is how long past its wall-clock limit the host waits for an
// exec's result before it gives up on the agent.
const execMargin = 30 * time.Second

// execBounded runs one exec with a host-side deadline, so an agent that
// stops answering cannot hang the caller.
func execBounded(ctx context.Context, vm *VM, req agentproto.ExecRequest, stdout, stderr io.Writer) (*agentproto.ExitResult, error) {
	wall := time.Duration(max(req.Limits.WallMillis, agentproto.DefaultLimits.WallMillis)) * time.Millisecond
	ctx, cancel := context.WithTimeout(ctx, wall+execMargin)
	defer cancel()
	return vm.Agent.Exec(ctx, req, stdout, stderr)
}

// merge fills zero fields of a request's limits from the language's.
func merge(req, lang agentproto.Limits) agentproto.Limits {
	if req.WallMillis == 0 {
		req.WallMillis = lang.WallMillis
	}
	if req.OutputBytes == 0 {
		req.OutputBytes = lang.OutputBytes
	}
	if req.Procs == 0 {
		req.Procs = lang.Procs
	}
	if req.MemoryBytes == 0 {
		req.MemoryBytes = lang.MemoryBytes
	}
	return req
}

func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}
