package sandbox

import (
	"context"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/state"
)

// withVM runs fn with the sandbox's VM under the read lock, resuming the
// sandbox first if it is hibernated and waiting out an operation in
// progress. What to do is decided by the record, not by whether a VM
// happens to be in memory.
func (s *Sandboxes) withVM(ctx context.Context, tenant, id string, fn func(ctx context.Context, sb state.Sandbox, vm *VM) error) error {
	for attempt := 0; ; attempt++ {
		sb, err := s.Get(ctx, tenant, id)
		if err != nil {
			return err
		}
		if err := usable(sb); err != nil {
			return err
		}
		b, err := s.boxFor(id)
		if err != nil {
			return err
		}
		if attempt >= 3 {
			return fmt.Errorf("%w: sandbox %s keeps changing state; retry", ErrSandboxBusy, id)
		}
		switch sb.State {
		case state.Hibernated:
			if _, err := s.Resume(ctx, tenant, id, 0); err != nil {
				return err
			}
			continue
		case state.Running, state.Forking:
		default:
			// Another operation holds the lock while it runs: wait for
			// it, then look at the record again.
			b.mu.Lock()
			b.mu.Unlock() //nolint:staticcheck // an empty critical section waits for the holder
			continue
		}
		b.mu.RLock()
		vm := b.vm
		if vm == nil || !vm.alive() {
			b.mu.RUnlock()
			if err := s.checkLive(ctx, id, b); err != nil {
				return err
			}
			continue
		}
		b.lastUsed.Store(s.now().UnixNano())
		octx, cancel := context.WithCancel(ctx)
		stop := context.AfterFunc(b.opsCtx, cancel)
		err = fn(octx, sb, vm)
		stop()
		cancel()
		b.lastUsed.Store(s.now().UnixNano())
		b.mu.RUnlock()
		if err != nil && b.opsCtx.Err() != nil && ctx.Err() == nil {
			return fmt.Errorf("%w: sandbox %s was deleted while in use", ErrSandboxDeleted, id)
		}
		if err != nil && !vm.alive() { // the VM died under the call
			if lerr := s.checkLive(ctx, id, b); lerr != nil {
				return lerr
			}
		}
		_ = s.db.Touch(context.WithoutCancel(ctx), id, s.now())
		return err
	}
}

// checkLive takes the write lock and marks the sandbox lost if the record
// says running but no live VM is here.
func (s *Sandboxes) checkLive(ctx context.Context, id string, b *box) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	cur, err := s.db.Get(ctx, id)
	if err != nil || cur.State != state.Running {
		return err
	}
	return s.liveVM(ctx, cur, b)
}

// Exec runs a command in a sandbox (resuming it if hibernated), holding a
// work slot while it runs: live sandboxes are many, but only as many
// commands run at once as there are slots. A relative or empty Dir is
// taken relative to WorkDir; the sandbox's env is added under the
// request's own.
func (s *Sandboxes) Exec(ctx context.Context, tenant, id string, req agentproto.ExecRequest, stdout, stderr io.Writer) (*agentproto.ExitResult, error) {
	switch {
	case req.Dir == "":
		req.Dir = WorkDir
	case !path.IsAbs(req.Dir):
		req.Dir = path.Join(WorkDir, req.Dir)
	}
	if err := req.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	release, err := s.workSlot(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	var res *agentproto.ExitResult
	err = s.withVM(ctx, tenant, id, func(ctx context.Context, sb state.Sandbox, vm *VM) error {
		r := req
		r.Env = withEnv(sb.Env, req.Env)
		var err error
		res, err = execBounded(ctx, vm, r, orDiscard(stdout), orDiscard(stderr))
		return err
	})
	return res, err
}

// workSlot takes a slot of the work gate, if there is one.
func (s *Sandboxes) workSlot(ctx context.Context) (func(), error) {
	if s.gate == nil {
		return func() {}, nil
	}
	return s.gate.Acquire(ctx)
}

// withEnv is base's variables (sorted, for a stable order) then env's,
// which win where both set one.
func withEnv(base map[string]string, env []string) []string {
	if len(base) == 0 {
		return env
	}
	set := map[string]bool{}
	for _, e := range env {
		k, _, _ := strings.Cut(e, "=")
		set[k] = true
	}
	keys := make([]string, 0, len(base))
	for k := range base {
		if !set[k] {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	out := make([]string, 0, len(keys)+len(env))
	for _, k := range keys {
		out = append(out, k+"="+base[k])
	}
	return append(out, env...)
}

// WriteFiles writes files (paths relative to WorkDir) into a sandbox.
func (s *Sandboxes) WriteFiles(ctx context.Context, tenant, id string, files []agentproto.File) error {
	if len(files) == 0 {
		return fmt.Errorf("%w: no files", ErrBadRequest)
	}
	for i, f := range files {
		if err := agentproto.ValidateRelPath(f.Path); err != nil {
			return fmt.Errorf("%w: file %d: %v", ErrBadRequest, i, err)
		}
		if len(f.Content) > agentproto.MaxFileTransfer {
			return fmt.Errorf("%w: file %s: %d bytes, at most %d per file", ErrBadRequest, f.Path, len(f.Content), agentproto.MaxFileTransfer)
		}
	}
	return s.withVM(ctx, tenant, id, func(ctx context.Context, _ state.Sandbox, vm *VM) error {
		// Batches that fit one agent request each.
		for len(files) > 0 {
			n, size := 0, 0
			for n < len(files) && n < agentproto.MaxFiles && size+len(files[n].Content) <= agentproto.MaxFileTransfer {
				size += len(files[n].Content)
				n++
			}
			if err := vm.Agent.WriteFiles(ctx, WorkDir, files[:n]); err != nil {
				return fmt.Errorf("write files: %w", err)
			}
			files = files[n:]
		}
		return nil
	})
}

// ReadFile reads a file (path relative to WorkDir) from a sandbox.
func (s *Sandboxes) ReadFile(ctx context.Context, tenant, id, rel string, maxBytes int64) ([]byte, error) {
	if err := agentproto.ValidateRelPath(rel); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	if maxBytes <= 0 || maxBytes > agentproto.MaxFileTransfer {
		maxBytes = agentproto.MaxFileTransfer
	}
	var data []byte
	err := s.withVM(ctx, tenant, id, func(ctx context.Context, _ state.Sandbox, vm *VM) error {
		var err error
		data, err = vm.Agent.ReadFile(ctx, path.Join(WorkDir, rel), maxBytes, agentproto.Within(WorkDir)) // no symlink leads out
		return err
	})
	return data, err
}
