package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/firesandbox/firesandbox/internal/state"
	"github.com/firesandbox/firesandbox/internal/vmm"
)

// ForkRequest asks for copies of a running sandbox.
type ForkRequest struct {
	// Count is how many children: 1 up to the configured maximum.
	Count int
	// Timeout is each child's lifetime (zero: the default).
	Timeout time.Duration
}

// Fork makes Count children of a sandbox: each is the parent as it was at
// the fork, memory included (its files, its running processes and what
// they hold), with its own id, its own copy of the disk, and its own
// clock, kernel randomness and identity. The parent is paused just long
// enough to save it (state forking), then runs on. A paused parent is
// resumed first. Either every child is created or none is.
//
// A host whose kernel, image or VMM changed since the parent started
// refuses the fork before touching the parent (vmm.ErrIncompatible).
func (s *Sandboxes) Fork(ctx context.Context, tenant, id string, req ForkRequest) ([]state.Sandbox, error) {
	if req.Count < 1 || req.Count > s.cfg.MaxForks {
		return nil, fmt.Errorf("%w: fork count %d: want 1 to %d", ErrBadRequest, req.Count, s.cfg.MaxForks)
	}
	lifetime, err := s.lifetime(req.Timeout)
	if err != nil {
		return nil, err
	}
	parent, err := s.Get(ctx, tenant, id)
	if err != nil {
		return nil, err
	}
	if err := usable(parent); err != nil {
		return nil, err
	}
	if parent.State == state.Hibernated {
		if parent, err = s.Resume(ctx, tenant, id, 0); err != nil {
			return nil, err
		}
	}
	e, err := s.mgr.catalog.Lookup(parent.Language, parent.Version)
	if err != nil {
		return nil, fmt.Errorf("fork %s: %w", id, err)
	}
	t, err := s.mgr.Template(ctx, e, s.liveShape(parent)) // with the parent's network device, if any
	if err != nil {
		return nil, fmt.Errorf("fork %s: %w", id, err)
	}
	// Every child is a new sandbox, admitted as a create is (the tenant's
	// quotas), with its memory, up front: all of them fit, or none starts.
	kids := make([]state.Sandbox, req.Count)
	var admits, releases []func()
	defer func() {
		for _, a := range admits {
			a()
		}
	}()
	releaseAll := func() {
		for _, r := range releases {
			r()
		}
	}
	for i := range kids {
		kids[i] = state.Sandbox{
			ID: newSandboxID(), Tenant: parent.Tenant, Language: parent.Language, Version: parent.Version,
			VCPUs: parent.VCPUs, MemoryMiB: parent.MemoryMiB, DiskMiB: parent.DiskMiB, IdleTimeout: parent.IdleTimeout,
			Metadata: parent.Metadata, Env: parent.Env, OnTimeout: parent.OnTimeout, Network: parent.Network,
			Parent: parent.ID,
		}
		a, err := s.admitted(ctx, opCreate, kids[i])
		if err != nil {
			releaseAll()
			return nil, fmt.Errorf("fork %s into %d: %w", id, req.Count, err)
		}
		admits = append(admits, a)
		r, err := s.reserve(ctx, t.Shape.MemoryMiB)
		if err != nil {
			releaseAll()
			return nil, fmt.Errorf("fork %s into %d: %w", id, req.Count, err)
		}
		releases = append(releases, r)
	}
	// The saved parent lives outside its directory, so deleting the
	// parent meanwhile cannot pull it from under the children. A crash
	// leaves it without a record: the next start sweeps it.
	dir, err := os.MkdirTemp(s.cfg.Dir, "."+forkDirPrefix)
	if err != nil {
		releaseAll()
		return nil, fmt.Errorf("fork %s: %w", id, err)
	}
	defer os.RemoveAll(dir)
	start := time.Now()
	saved, err := s.saveParent(ctx, id, t, dir)
	if err != nil {
		releaseAll()
		return nil, err
	}
	took := time.Since(start)
	kids, err = s.startChildren(ctx, parent.ID, kids, t, saved, releases, lifetime)
	if err != nil {
		return nil, err
	}
	s.log.Info("sandbox forked", "op", "fork", "sandbox", id, "children", len(kids), "saved", took, "took", time.Since(start))
	return kids, nil
}

// saveParent saves the running sandbox id into dir for its children and
// lets it run on, under its lock and the forking state.
func (s *Sandboxes) saveParent(ctx context.Context, id string, t *Template, dir string) (saved ForkSnapshot, err error) {
	b, err := s.boxFor(id)
	if err != nil {
		return saved, err
	}
	b.cutSessions() // its agent connection is about to close
	b.mu.Lock()
	defer b.mu.Unlock()
	sb, err := s.db.Get(ctx, id)
	if err != nil {
		return saved, err
	}
	if err := usable(sb); err != nil {
		return saved, err
	}
	if err := s.liveVM(ctx, sb, b); err != nil {
		return saved, err
	}
	vm := b.vm
	if diff := vm.Template.Spec.Diff(t.Spec); len(diff) > 0 {
		return saved, fmt.Errorf("%w: fork %s: the sandbox runs on what this host no longer has (%v); its children could not be restored. The sandbox keeps running; pause and resume it on a host with the same kernel, image and VMM to fork it",
			vmm.ErrIncompatible, id, diff)
	}
	err = s.transition(context.WithoutCancel(ctx), id, opFork, func(ctx context.Context) (state.Change, error) {
		var err error
		if saved, err = s.mgr.Fork(ctx, vm, dir); err != nil {
			if !vm.alive() {
				s.dropVM(b)
				return state.Change{}, lost("fork failed and the VM is gone: "+err.Error(), err)
			}
			return state.Change{}, err // the parent runs on
		}
		b.lastUsed.Store(s.now().UnixNano())
		return state.Change{}, nil
	})
	return saved, err
}

// startChildren restores one child per reservation from the fork saved,
// a few at once. If any fails, the others are deleted again.
func (s *Sandboxes) startChildren(ctx context.Context, parent string, kids []state.Sandbox, t *Template, saved ForkSnapshot, releases []func(), lifetime time.Duration) ([]state.Sandbox, error) {
	errs := make([]error, len(kids))
	var wg sync.WaitGroup
	sem := make(chan struct{}, max(runtime.NumCPU(), 1))
	for i, release := range releases {
		child := kids[i]
		child.ExpiresAt = s.now().Add(lifetime)
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			kids[i], errs[i] = s.launch(ctx, child, release, func(ctx context.Context, disk string) (*VM, error) {
				return s.mgr.StartFork(ctx, t, saved, disk)
			})
		}()
	}
	wg.Wait()
	err := errors.Join(errs...)
	if err == nil {
		return kids, nil
	}
	for i, k := range kids {
		if errs[i] == nil {
			if derr := s.Delete(context.WithoutCancel(ctx), k.Tenant, k.ID); derr != nil {
				err = errors.Join(err, derr)
			}
		}
	}
	return nil, fmt.Errorf("fork %s: %w", parent, err)
}
