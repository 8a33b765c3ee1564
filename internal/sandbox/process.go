package sandbox

import (
	"context"
	"fmt"
	"io"
	"path"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/state"
)

// Processes in a sandbox, as agents use them: a command started in the
// background returns its pid at once and runs on, its output kept by the
// guest agent; a client connects to it later by pid (Attach), writes its
// stdin, signals it, resizes its terminal. The process table is the
// agent's: it lives in the guest, so it survives a pause, and a fork's
// children have the parent's processes too.

// execRequest fills a request's defaults for this sandbox: its working
// directory and its env.
func execRequest(sb state.Sandbox, req agentproto.ExecRequest) (agentproto.ExecRequest, error) {
	switch {
	case req.Dir == "":
		req.Dir = WorkDir
	case !path.IsAbs(req.Dir):
		req.Dir = path.Join(WorkDir, req.Dir)
	}
	req.Env = withEnv(sb.Env, req.Env)
	if err := req.Validate(); err != nil {
		return req, fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	return req, nil
}

// StartProcess starts a command in the background and returns its pid
// once it runs. It keeps running when the call returns, until it exits,
// is signalled, or the sandbox ends; Attach streams its output.
func (s *Sandboxes) StartProcess(ctx context.Context, tenant, id string, req agentproto.ExecRequest) (int, error) {
	req.Background = true
	pid := 0
	err := s.withVM(ctx, tenant, id, func(ctx context.Context, sb state.Sandbox, vm *VM) error {
		r, err := execRequest(sb, req)
		if err != nil {
			return err
		}
		p, err := vm.Agent.Start(ctx, r, nil, nil)
		if err != nil {
			return err
		}
		pid = p.PID
		p.Detach() // a background process runs on without us
		return nil
	})
	return pid, err
}

// Control drives a process from inside its session (Session, Attach):
// its stdin, terminal and signals, over the session's own agent channel.
type Control struct {
	PID   int
	ctx   context.Context
	agent *agentproto.Client
}

// Stdin writes data to the process's stdin (its terminal, for a PTY).
func (c Control) Stdin(data []byte) error { return c.agent.WriteStdin(c.ctx, c.PID, data) }

// CloseStdin closes its stdin (for a PTY: sends end-of-file).
func (c Control) CloseStdin() error { return c.agent.CloseStdin(c.ctx, c.PID) }

// Resize changes its terminal's size.
func (c Control) Resize(size agentproto.PTYSize) error { return c.agent.ResizePTY(c.ctx, c.PID, size) }

// Signal sends sig to its process group.
func (c Control) Signal(sig agentproto.Signal) error { return c.agent.Signal(c.ctx, c.PID, sig) }

// Session runs a command and streams its output to stdout and stderr
// until it ends, the caller's ctx ends, or the sandbox is paused, forked
// or deleted (which end the session, not the process if it runs in the
// background). started, if set, gets the process's Control as soon as it
// runs, valid until Session returns. The writers are called on the agent
// channel's reader and must not block.
func (s *Sandboxes) Session(ctx context.Context, tenant, id string, req agentproto.ExecRequest, started func(Control), stdout, stderr io.Writer) (*agentproto.ExitResult, error) {
	var res *agentproto.ExitResult
	err := s.withSession(ctx, tenant, id, func(ctx context.Context, sb state.Sandbox, vm *VM) error {
		r, err := execRequest(sb, req)
		if err != nil {
			return err
		}
		p, err := vm.Agent.Start(ctx, r, stdout, stderr)
		if err != nil {
			return err
		}
		if started != nil {
			started(Control{PID: p.PID, ctx: ctx, agent: vm.Agent})
		}
		res, err = p.Wait(ctx)
		return err
	})
	return res, err
}

// Attach streams the output of running process pid until it exits (and
// returns how), or the session ends (the process runs on). With replay,
// what it wrote recently comes first. started is as for Session.
func (s *Sandboxes) Attach(ctx context.Context, tenant, id string, pid int, replay bool, started func(Control), stdout, stderr io.Writer) (*agentproto.ExitResult, error) {
	var res *agentproto.ExitResult
	err := s.withSession(ctx, tenant, id, func(ctx context.Context, _ state.Sandbox, vm *VM) error {
		p, err := vm.Agent.Connect(ctx, pid, replay, stdout, stderr)
		if err != nil {
			return err
		}
		if started != nil {
			started(Control{PID: p.PID, ctx: ctx, agent: vm.Agent})
		}
		res, err = p.Wait(ctx)
		return err
	})
	return res, err
}

// Processes lists the processes the agent runs for the sandbox's clients.
func (s *Sandboxes) Processes(ctx context.Context, tenant, id string) ([]agentproto.ProcessInfo, error) {
	var out []agentproto.ProcessInfo
	err := s.withVM(ctx, tenant, id, func(ctx context.Context, _ state.Sandbox, vm *VM) error {
		var err error
		out, err = vm.Agent.Processes(ctx)
		return err
	})
	return out, err
}

// WriteStdin writes data to process pid's stdin, and closes it after if
// closeIt is set.
func (s *Sandboxes) WriteStdin(ctx context.Context, tenant, id string, pid int, data []byte, closeIt bool) error {
	if len(data) > agentproto.MaxTransfer {
		return fmt.Errorf("%w: %d bytes of stdin in one call", ErrBadRequest, len(data))
	}
	return s.withVM(ctx, tenant, id, func(ctx context.Context, _ state.Sandbox, vm *VM) error {
		if len(data) > 0 || !closeIt {
			if err := vm.Agent.WriteStdin(ctx, pid, data); err != nil {
				return err
			}
		}
		if closeIt {
			return vm.Agent.CloseStdin(ctx, pid)
		}
		return nil
	})
}

// Signal sends sig to process pid's process group.
func (s *Sandboxes) Signal(ctx context.Context, tenant, id string, pid int, sig agentproto.Signal) error {
	return s.withVM(ctx, tenant, id, func(ctx context.Context, _ state.Sandbox, vm *VM) error {
		return vm.Agent.Signal(ctx, pid, sig)
	})
}

// ResizePTY changes the terminal size of PTY process pid.
func (s *Sandboxes) ResizePTY(ctx context.Context, tenant, id string, pid int, size agentproto.PTYSize) error {
	return s.withVM(ctx, tenant, id, func(ctx context.Context, _ state.Sandbox, vm *VM) error {
		return vm.Agent.ResizePTY(ctx, pid, size)
	})
}

// withSession is withVM for a call that streams for as long as the client
// wants: a pause, fork or delete of the sandbox ends it rather than wait.
func (s *Sandboxes) withSession(ctx context.Context, tenant, id string, fn func(ctx context.Context, sb state.Sandbox, vm *VM) error) error {
	if _, err := s.Get(ctx, tenant, id); err != nil {
		return err
	}
	b, err := s.boxFor(id)
	if err != nil {
		return err
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(b.sessionCtx(), cancel)
	defer stop()
	err = s.withVM(sctx, tenant, id, fn)
	if err != nil && sctx.Err() != nil && ctx.Err() == nil {
		return fmt.Errorf("%w: sandbox %s was paused, forked or deleted: the session ended (a background process runs on; connect to it again)", ErrSandboxBusy, id)
	}
	return err
}
