package sandbox

import (
	"context"
	"fmt"
	"io"
	"path"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/state"
)

// File calls. Paths are relative to the sandbox's working directory
// (WorkDir), or absolute inside it: the agent resolves them inside the
// guest root, confined to WorkDir (no symlink planted by guest code leads
// out of it), with the sandbox user's permissions, and what they create
// belongs to that user.

// GuestPath turns a client's path into the guest path it names, or fails
// with ErrBadRequest. "" and "." are WorkDir itself.
func GuestPath(p string) (string, error) {
	switch {
	case p == "" || p == ".":
		return WorkDir, nil
	case path.IsAbs(p):
		if err := agentproto.ValidateGuestPath(p); err != nil {
			return "", fmt.Errorf("%w: %v", ErrBadRequest, err)
		}
		if !agentproto.Inside(p, WorkDir) {
			return "", fmt.Errorf("%w: %s is outside the sandbox's directory %s", ErrBadRequest, p, WorkDir)
		}
		return p, nil
	}
	if err := agentproto.ValidateRelPath(p); err != nil {
		return "", fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	return path.Join(WorkDir, p), nil
}

var within = agentproto.Within(WorkDir)

// fileCall resolves p and runs fn with the guest path and the sandbox's VM.
func (s *Sandboxes) fileCall(ctx context.Context, tenant, id, p string, fn func(ctx context.Context, vm *VM, gp string) error) error {
	gp, err := GuestPath(p)
	if err != nil {
		return err
	}
	return s.withVM(ctx, tenant, id, func(ctx context.Context, _ state.Sandbox, vm *VM) error { return fn(ctx, vm, gp) })
}

// Stat describes a file (a symlink itself, not its target).
func (s *Sandboxes) Stat(ctx context.Context, tenant, id, p string) (fi agentproto.FileInfo, err error) {
	err = s.fileCall(ctx, tenant, id, p, func(ctx context.Context, vm *VM, gp string) error {
		fi, err = vm.Agent.Stat(ctx, gp, within)
		return err
	})
	return fi, err
}

// ListDir lists a directory depth levels deep (1: its own entries).
func (s *Sandboxes) ListDir(ctx context.Context, tenant, id, p string, depth int) (out []agentproto.FileInfo, err error) {
	if depth < 1 || depth > agentproto.MaxListDepth {
		return nil, fmt.Errorf("%w: depth %d: want 1-%d", ErrBadRequest, depth, agentproto.MaxListDepth)
	}
	err = s.fileCall(ctx, tenant, id, p, func(ctx context.Context, vm *VM, gp string) error {
		out, err = vm.Agent.ListDir(ctx, gp, depth, within)
		return err
	})
	return out, err
}

// MakeDir creates a directory (and, with parents, what is missing above it).
func (s *Sandboxes) MakeDir(ctx context.Context, tenant, id, p string, parents bool) (fi agentproto.FileInfo, err error) {
	err = s.fileCall(ctx, tenant, id, p, func(ctx context.Context, vm *VM, gp string) error {
		fi, err = vm.Agent.MakeDir(ctx, gp, parents, within)
		return err
	})
	return fi, err
}

// Move renames from to to, replacing a file there.
func (s *Sandboxes) Move(ctx context.Context, tenant, id, from, to string) (fi agentproto.FileInfo, err error) {
	dst, err := GuestPath(to)
	if err != nil {
		return fi, err
	}
	err = s.fileCall(ctx, tenant, id, from, func(ctx context.Context, vm *VM, gp string) error {
		fi, err = vm.Agent.Move(ctx, gp, dst, within)
		return err
	})
	return fi, err
}

// Remove removes a file or empty directory; with recursive, a directory
// and everything in it. The working directory itself stays.
func (s *Sandboxes) Remove(ctx context.Context, tenant, id, p string, recursive bool) error {
	gp, err := GuestPath(p)
	if err != nil {
		return err
	}
	if gp == WorkDir {
		return fmt.Errorf("%w: the sandbox's working directory cannot be removed", ErrBadRequest)
	}
	return s.fileCall(ctx, tenant, id, p, func(ctx context.Context, vm *VM, gp string) error {
		return vm.Agent.Remove(ctx, gp, recursive, within)
	})
}

// Download copies a file of at most maxBytes into w (which may block:
// the transfer waits for it) and describes it.
func (s *Sandboxes) Download(ctx context.Context, tenant, id, p string, w io.Writer, maxBytes int64) (fi agentproto.FileInfo, err error) {
	if maxBytes <= 0 || maxBytes > agentproto.MaxTransfer {
		maxBytes = agentproto.MaxTransfer
	}
	err = s.fileCall(ctx, tenant, id, p, func(ctx context.Context, vm *VM, gp string) error {
		fi, err = vm.Agent.Download(ctx, gp, w, maxBytes, within)
		return err
	})
	return fi, err
}

// Upload writes r (size bytes, or -1 if unknown; at most
// agentproto.MaxTransfer) to a file, creating missing parent directories
// owned by the sandbox user, and describes it.
func (s *Sandboxes) Upload(ctx context.Context, tenant, id, p string, r io.Reader, size int64, mode uint32) (fi agentproto.FileInfo, err error) {
	gp, err := GuestPath(p)
	if err != nil {
		return fi, err
	}
	if gp == WorkDir {
		return fi, fmt.Errorf("%w: give a file path", ErrBadRequest)
	}
	err = s.fileCall(ctx, tenant, id, p, func(ctx context.Context, vm *VM, gp string) error {
		if dir := path.Dir(gp); dir != WorkDir {
			if _, err := vm.Agent.MakeDir(ctx, dir, true /* parents */, within); err != nil {
				return err
			}
		}
		fi, err = vm.Agent.Upload(ctx, gp, r, size, mode, within)
		return err
	})
	return fi, err
}

// Watch reports changes in a directory (and below it, with recursive) to
// fn until ctx ends or the session does (a pause, fork or delete). fn is
// called on the agent channel's reader and must not block.
func (s *Sandboxes) Watch(ctx context.Context, tenant, id, p string, recursive bool, ready func(), fn func(agentproto.WatchEvents)) error {
	gp, err := GuestPath(p)
	if err != nil {
		return err
	}
	return s.withSession(ctx, tenant, id, func(ctx context.Context, _ state.Sandbox, vm *VM) error {
		w, err := vm.Agent.Watch(ctx, gp, recursive, fn, within)
		if err != nil {
			return err
		}
		defer w.Close()
		if ready != nil {
			ready()
		}
		select {
		case <-w.Done():
			return w.Err()
		case <-ctx.Done():
			return ctx.Err()
		}
	})
}
