// This file holds interactive one-shot runs: a program that talks with its
// caller through stdin while it runs (Piston's WebSocket API).

package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/image"
)

// ErrNotRunning means an interactive run's program is not running (not
// yet, or no longer): there is nothing to write to.
var ErrNotRunning = errors.New("the program is not running")

// Interactive is a one-shot run whose program keeps its stdin open: the
// caller writes to it as the conversation goes and may signal whichever
// stage runs. One goroutine drives the stages; WriteStdin, CloseStdin and
// Signal may be called from others.
//
//	it, err := m.RunInteractive(ctx, req) // a VM of req's language
//	defer it.Close()                      // the VM goes
//	if it.Compiled() {
//		res, err := it.Compile(ctx, cout, cerr) // a non-OK res: no run
//	}
//	err = it.Start(ctx, stdout, stderr) // the program runs, stdin open
//	err = it.WriteStdin(ctx, []byte("3\n"))
//	res, err := it.Wait(ctx)
type Interactive struct {
	vm     *VM
	prog   *image.Entry
	req    RunRequest
	pooled bool

	mu        sync.Mutex
	files     []agentproto.File   // written with the first stage's exec
	proc      *agentproto.Process // the stage running now
	run       *agentproto.Process // the run stage, once started
	runWall   time.Duration       // its wall-clock limit
	runStart  time.Time
	pending   agentproto.Signal // a signal sent while no stage ran
	compiled  bool              // the compile stage succeeded (or none is needed)
	compiling bool              // the compile stage was started
	closed    bool
}

// RunInteractive takes a VM for req's language and readies req's program
// in it; the caller runs its stages (Compile, Start, Wait) and closes it.
// ctx bounds taking the VM. req.Stdin, if any, is the program's first
// input; what WriteStdin sends follows.
func (m *Manager) RunInteractive(ctx context.Context, req RunRequest) (*Interactive, error) {
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
	prog := e
	if req.RunCmd != nil {
		c := *e
		c.Run, c.Compile = req.RunCmd, req.CompileCmd
		prog = &c
	}
	vm, pooled, err := m.take(ctx, e, req.Cold, req.Mounts)
	if err != nil {
		return nil, err
	}
	return &Interactive{vm: vm, prog: prog, req: req, pooled: pooled, files: files, compiled: len(prog.Compile) == 0}, nil
}

// Language and Version are the language the program runs in.
func (it *Interactive) Language() string { return it.prog.Name }

// Version is the language's version.
func (it *Interactive) Version() string { return it.prog.Version }

// Compiled says the language has a compile stage.
func (it *Interactive) Compiled() bool { return len(it.prog.Compile) > 0 }

// Pooled says the VM came from a warm pool.
func (it *Interactive) Pooled() bool { return it.pooled }

// Compile runs the compile stage, streaming its output, and returns how
// it ended: the run may Start only if that is OK. It returns nil, nil for
// a language without one.
func (it *Interactive) Compile(ctx context.Context, stdout, stderr io.Writer) (*agentproto.ExitResult, error) {
	if !it.Compiled() {
		return nil, nil
	}
	it.mu.Lock()
	files, again := it.files, it.compiling
	it.compiling = true
	it.mu.Unlock()
	if again {
		return nil, fmt.Errorf("%w: compile runs once", ErrBadRequest)
	}
	req := agentproto.ExecRequest{Argv: it.prog.Compile, Env: it.prog.Env, Dir: workDir, Files: files,
		Limits: stepLimits(it.vm, it.prog, it.req.CompileLimits), Prewarmed: it.prog.Prewarm != nil}
	p, err := it.startStage(ctx, req, stdout, stderr, false)
	if err != nil {
		return nil, fmt.Errorf("compile %s: %w", it.prog.Name, err)
	}
	res, err := it.waitStage(ctx, p, time.Now(), stageWall(req.Limits))
	if err != nil {
		return nil, fmt.Errorf("compile %s: %w", it.prog.Name, err)
	}
	it.mu.Lock()
	it.files = nil // in place
	it.compiled = res.Status == agentproto.StatusOK
	it.mu.Unlock()
	return res, nil
}

// Start starts the run stage with its stdin open, after a successful
// Compile for a compiled language. Its output streams to stdout and
// stderr, which, as for every exec, must not block.
func (it *Interactive) Start(ctx context.Context, stdout, stderr io.Writer) error {
	it.mu.Lock()
	files, ready, started := it.files, it.compiled, it.run != nil
	it.mu.Unlock()
	if !ready || started {
		return fmt.Errorf("%w: start needs a successful compile, once", ErrBadRequest)
	}
	req := agentproto.ExecRequest{
		Argv: append(append([]string{}, it.prog.Run...), it.req.Args...), Env: it.prog.Env, Dir: workDir,
		Files: files, Stdin: it.req.Stdin, OpenStdin: true, Limits: stepLimits(it.vm, it.prog, it.req.RunLimits),
		Prewarmed: it.prog.Prewarm != nil,
	}
	start := time.Now()
	if _, err := it.startStage(ctx, req, stdout, stderr, true); err != nil {
		return fmt.Errorf("run %s: %w", it.prog.Name, err)
	}
	it.mu.Lock()
	it.files, it.runStart, it.runWall = nil, start, stageWall(req.Limits)
	it.mu.Unlock()
	return nil
}

// Wait waits for the run stage to end and returns how. The host waits at
// most the stage's wall-clock limit plus a margin, whatever ctx says.
func (it *Interactive) Wait(ctx context.Context) (*agentproto.ExitResult, error) {
	it.mu.Lock()
	p, start, wall := it.run, it.runStart, it.runWall
	it.mu.Unlock()
	if p == nil {
		return nil, fmt.Errorf("%w: wait before start", ErrBadRequest)
	}
	res, err := it.waitStage(ctx, p, start, wall)
	if err != nil {
		return nil, fmt.Errorf("run %s: %w", it.prog.Name, err)
	}
	return res, nil
}

// WriteStdin writes data to the running program's stdin, returning once
// the guest has written it.
func (it *Interactive) WriteStdin(ctx context.Context, data []byte) error {
	p, err := it.running()
	if err != nil {
		return err
	}
	return it.vm.Agent.WriteStdin(ctx, p.PID, data)
}

// CloseStdin closes the running program's stdin: it reads end of file.
func (it *Interactive) CloseStdin(ctx context.Context) error {
	p, err := it.running()
	if err != nil {
		return err
	}
	return it.vm.Agent.CloseStdin(ctx, p.PID)
}

// Signal sends sig to the stage running now. One sent while none runs
// (before the first, or between compile and run) goes to the next one as
// it starts; one that finds its stage just ended is dropped.
func (it *Interactive) Signal(ctx context.Context, sig agentproto.Signal) error {
	if err := (&agentproto.SignalRequest{PID: 1, Signal: sig}).Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	it.mu.Lock()
	p := it.proc
	if p == nil {
		it.pending = sig
	}
	it.mu.Unlock()
	if p == nil {
		return nil
	}
	return ignoreGone(it.vm.Agent.Signal(ctx, p.PID, sig))
}

// Close stops the VM (and with it the program, if it still runs).
func (it *Interactive) Close() error {
	it.mu.Lock()
	if it.closed {
		it.mu.Unlock()
		return nil
	}
	it.closed = true
	it.mu.Unlock()
	return it.vm.Close()
}

// running is the run stage's process while it runs.
func (it *Interactive) running() (*agentproto.Process, error) {
	it.mu.Lock()
	defer it.mu.Unlock()
	if it.run == nil || it.proc != it.run {
		return nil, ErrNotRunning
	}
	return it.run, nil
}

// startStage starts one stage's process and makes it the one signals go
// to, delivering a signal that came while none ran.
func (it *Interactive) startStage(ctx context.Context, req agentproto.ExecRequest, stdout, stderr io.Writer, isRun bool) (*agentproto.Process, error) {
	it.mu.Lock()
	closed := it.closed
	it.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	p, err := it.vm.Agent.Start(ctx, req, orDiscard(stdout), orDiscard(stderr))
	if err != nil {
		return nil, err
	}
	it.mu.Lock()
	it.proc = p
	if isRun {
		it.run = p
	}
	sig := it.pending
	it.pending = ""
	it.mu.Unlock()
	if sig != "" {
		if err := ignoreGone(it.vm.Agent.Signal(ctx, p.PID, sig)); err != nil {
			p.Detach()
			return nil, fmt.Errorf("signal %s: %w", sig, err)
		}
	}
	return p, nil
}

// waitStage waits for a stage's process, bounded on the host as
// execBounded bounds an exec, and then stops routing signals to it.
func (it *Interactive) waitStage(ctx context.Context, p *agentproto.Process, start time.Time, wall time.Duration) (*agentproto.ExitResult, error) {
	ctx, cancel := context.WithDeadline(ctx, start.Add(wall+execMargin))
	defer cancel()
	res, err := p.Wait(ctx)
	it.mu.Lock()
	if it.proc == p {
		it.proc = nil
	}
	it.mu.Unlock()
	return res, err
}

// stageWall is the wall-clock limit the agent applies to an exec with
// these limits.
func stageWall(l agentproto.Limits) time.Duration {
	return time.Duration(l.Effective(agentproto.DefaultLimits, agentproto.MaxLimits).WallMillis) * time.Millisecond
}

// ignoreGone drops the error of a call that named a process which has
// just ended: its exit is on the way.
func ignoreGone(err error) error {
	if errors.Is(err, &agentproto.AgentError{Code: agentproto.CodeNotFound}) {
		return nil
	}
	return err
}
