package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/firesandbox/firesandbox/internal/network"
	"github.com/firesandbox/firesandbox/internal/state"
	"github.com/firesandbox/firesandbox/internal/vmm"
)

// CreateRequest describes a new sandbox.
type CreateRequest struct {
	// Tenant owns the sandbox.
	Tenant            string
	Language, Version string
	Shape             Shape
	// DiskMiB, if set, puts the writable layer on a sparse ext4 disk of
	// that size instead of guest memory (see Shape.DiskMiB).
	DiskMiB int
	// IdleTimeout overrides the default idle time before hibernation
	// (which is transparent: the next call resumes the sandbox).
	IdleTimeout time.Duration
	// Timeout is the sandbox's lifetime (zero: the default, 5 minutes; at
	// most the configured maximum). At its end the sandbox is deleted, or
	// paused if OnTimeout is "pause". SetTimeout moves the end.
	Timeout   time.Duration
	OnTimeout string
	// Metadata labels the sandbox for its owner (filterable in List);
	// Env is added to every exec's environment.
	Metadata map[string]string
	Env      map[string]string
	// Network is the sandbox's egress policy (nil: nothing gets out). It
	// can be changed while the sandbox runs (SetNetwork).
	Network *network.Policy
}

// Bounds of a CreateRequest's maps.
const (
	MaxMetadata     = 64
	MaxMetadataSize = 16 << 10
)

func (r *CreateRequest) validate() error {
	if r.DiskMiB < 0 || r.IdleTimeout < 0 || r.Timeout < 0 {
		return fmt.Errorf("%w: negative disk size or timeout", ErrBadRequest)
	}
	switch r.OnTimeout {
	case "", OnTimeoutKill, OnTimeoutPause:
	default:
		return fmt.Errorf("%w: on_timeout %q: want %q or %q", ErrBadRequest, r.OnTimeout, OnTimeoutKill, OnTimeoutPause)
	}
	for what, m := range map[string]map[string]string{"metadata": r.Metadata, "env": r.Env} {
		if len(m) > MaxMetadata {
			return fmt.Errorf("%w: %d %s entries, at most %d", ErrBadRequest, len(m), what, MaxMetadata)
		}
		n := 0
		for k, v := range m {
			n += len(k) + len(v)
			if k == "" {
				return fmt.Errorf("%w: %s: empty key", ErrBadRequest, what)
			}
		}
		if n > MaxMetadataSize {
			return fmt.Errorf("%w: %s of %d bytes, at most %d", ErrBadRequest, what, n, MaxMetadataSize)
		}
	}
	for k := range r.Env {
		if !validEnvName(k) {
			return fmt.Errorf("%w: env: %q is not a variable name", ErrBadRequest, k)
		}
	}
	return nil
}

func validEnvName(k string) bool {
	for i, c := range k {
		if c != '_' && (c < 'A' || c > 'Z') && (c < 'a' || c > 'z') && (i == 0 || c < '0' || c > '9') {
			return false
		}
	}
	return k != ""
}

// What a sandbox does at the end of its lifetime.
const (
	OnTimeoutKill  = "kill"
	OnTimeoutPause = "pause"
)

func newSandboxID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return "sb-" + hex.EncodeToString(b)
}

// Create starts a sandbox: a VM of the language, restored from its
// snapshot, that lives until deleted (hibernated while idle).
func (s *Sandboxes) Create(ctx context.Context, req CreateRequest) (state.Sandbox, error) {
	e, err := s.mgr.catalog.Lookup(req.Language, req.Version)
	if err != nil {
		return state.Sandbox{}, err
	}
	if err := req.validate(); err != nil {
		return state.Sandbox{}, err
	}
	shape := req.Shape
	shape.DiskMiB = req.DiskMiB
	if err := shape.Validate(); err != nil {
		return state.Sandbox{}, err
	}
	shape = s.mgr.shapeFor(e, shape)
	policy, device, err := s.createNetwork(&req)
	if err != nil {
		return state.Sandbox{}, err
	}
	shape.Network = device
	lifetime, err := s.lifetime(req.Timeout)
	if err != nil {
		return state.Sandbox{}, err
	}
	idle := req.IdleTimeout
	if idle == 0 {
		idle = s.cfg.IdleTimeout
	}
	sb := state.Sandbox{
		ID: newSandboxID(), Tenant: req.Tenant, Language: e.Name, Version: e.Version,
		VCPUs: shape.VCPUs, MemoryMiB: shape.MemoryMiB, DiskMiB: shape.DiskMiB, IdleTimeout: idle,
		State: moves[opCreate].during, Metadata: req.Metadata, Env: req.Env, OnTimeout: req.OnTimeout,
	}
	sb.Network = policy
	sb.ExpiresAt = s.now().Add(lifetime)
	admitted, err := s.admitted(ctx, opCreate, sb) // before a template of this shape is made
	if err != nil {
		return state.Sandbox{}, err
	}
	defer admitted()
	t, err := s.mgr.Template(ctx, e, shape)
	if err != nil {
		return state.Sandbox{}, err
	}
	release, err := s.reserve(ctx, shape.MemoryMiB)
	if err != nil {
		return state.Sandbox{}, err
	}
	return s.launch(ctx, sb, release, func(ctx context.Context, disk string) (*VM, error) {
		return s.mgr.Start(ctx, t, StartOptions{Disk: disk})
	})
}

// launch records a new sandbox sb (state creating), starts its VM with
// start (given where the sandbox's disk goes) and records it running. A
// failure leaves no record, no files and no VM; release (the VM's memory
// reservation) is the sandbox's from here on.
func (s *Sandboxes) launch(ctx context.Context, sb state.Sandbox, release func(), start func(ctx context.Context, disk string) (*VM, error)) (state.Sandbox, error) {
	sb.State = moves[opCreate].during
	b, err := s.boxFor(sb.ID)
	if err != nil {
		release()
		return state.Sandbox{}, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if s.cfg.Directory != nil {
		if err := s.cfg.Directory.Admit(ctx, sb); err != nil {
			release()
			s.forget(sb.ID)
			return state.Sandbox{}, fmt.Errorf("create sandbox: %w", err)
		}
	}
	fail := func(err error) (state.Sandbox, error) {
		release()
		s.forget(sb.ID)
		s.abandoned(ctx, sb)
		os.RemoveAll(s.dirOf(sb.ID))
		if rerr := s.db.Remove(context.WithoutCancel(ctx), sb.ID); rerr != nil {
			return state.Sandbox{}, errors.Join(fmt.Errorf("create sandbox: %w", err), rerr)
		}
		return state.Sandbox{}, fmt.Errorf("create sandbox: %w", err)
	}
	if err := s.db.Create(ctx, sb); err != nil {
		release()
		s.forget(sb.ID)
		s.abandoned(ctx, sb)
		return state.Sandbox{}, err
	}
	if err := os.MkdirAll(s.dirOf(sb.ID), 0o700); err != nil {
		return fail(err)
	}
	disk := ""
	if sb.DiskMiB > 0 {
		disk = s.diskOf(sb.ID)
	}
	vm, err := start(ctx, disk)
	if err == nil {
		// Before anyone can use it: the sandbox's network policy.
		if err = s.applyPolicy(ctx, sb, vm); err != nil {
			vm.Close()
		}
	}
	if err != nil {
		return fail(err)
	}
	if err := s.db.Transition(context.WithoutCancel(ctx), sb.ID, state.Change{To: moves[opCreate].success}, moves[opCreate].during); err != nil {
		vm.Close()
		return fail(err)
	}
	b.vm, b.release = vm, release
	b.lastUsed.Store(s.now().UnixNano())
	s.changed(ctx, sb.ID)
	s.log.Info("sandbox created", "op", "create", "sandbox", sb.ID, "language", sb.Language, "parent", sb.Parent,
		"vm", vm.Machine.ID(), "restored", vm.Restored, "ready", vm.Ready)
	return s.db.Get(ctx, sb.ID)
}

// abandoned tells the directory, if any, that a create it admitted failed.
func (s *Sandboxes) abandoned(ctx context.Context, sb state.Sandbox) {
	if s.cfg.Directory != nil {
		sb.State = state.Deleted
		s.cfg.Directory.Changed(context.WithoutCancel(ctx), sb)
	}
}

// lifetime checks a requested lifetime; zero means the default.
func (s *Sandboxes) lifetime(d time.Duration) (time.Duration, error) {
	switch {
	case d < 0 || d > s.cfg.MaxTimeout:
		return 0, fmt.Errorf("%w: timeout %s: want up to %s", ErrBadRequest, d, s.cfg.MaxTimeout)
	case d == 0:
		return s.cfg.Timeout, nil
	}
	return d, nil
}

// reserve admits one more live VM of memMiB guest memory: its memory in
// the budget and its place in the VM gate (a tenant's quota). The caller
// keeps release for as long as the VM lives.
func (s *Sandboxes) reserve(ctx context.Context, memMiB int) (func(), error) {
	rel := func() {}
	if s.vms != nil {
		r, err := s.vms.Acquire(ctx)
		if err != nil {
			return nil, err
		}
		rel = r
	}
	if s.mem != nil {
		r, err := s.mem.Reserve(memMiB)
		if err != nil {
			rel()
			return nil, err
		}
		prev := rel
		rel = func() { r(); prev() }
	}
	return rel, nil
}

// Hibernate pauses a running sandbox: memory and device state are saved
// under its directory and its VM stops; its disk stays where it is. Its
// lifetime stops too (a paused sandbox does not time out); a resume gives
// it a new one. Pausing a paused sandbox does nothing.
func (s *Sandboxes) Hibernate(ctx context.Context, tenant, id string) (state.Sandbox, error) {
	sb, err := s.Get(ctx, tenant, id)
	if err != nil {
		return state.Sandbox{}, err
	}
	if sb.State == state.Running {
		admitted, err := s.admitted(ctx, opHibernate, sb)
		if err != nil {
			return state.Sandbox{}, err
		}
		defer admitted()
	}
	b, err := s.boxFor(id)
	if err != nil {
		return state.Sandbox{}, err
	}
	b.cutSessions()
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := s.hibernateLocked(ctx, id, b); err != nil {
		return state.Sandbox{}, err
	}
	if err := s.db.SetExpiry(context.WithoutCancel(ctx), id, time.Time{}); err != nil {
		return state.Sandbox{}, err
	}
	return s.db.Get(ctx, id)
}

// Pause is Hibernate.
func (s *Sandboxes) Pause(ctx context.Context, tenant, id string) (state.Sandbox, error) {
	return s.Hibernate(ctx, tenant, id)
}

func (s *Sandboxes) hibernateLocked(ctx context.Context, id string, b *box) error {
	sb, err := s.db.Get(ctx, id)
	if err != nil {
		return err
	}
	if err := usable(sb); err != nil {
		return err
	}
	if sb.State == state.Hibernated {
		return nil
	}
	if err := s.liveVM(ctx, sb, b); err != nil {
		return err
	}
	// The slow part must not be cut short by a caller that goes away:
	// a half-written snapshot is worth nothing.
	ctx = context.WithoutCancel(ctx)
	start := time.Now()
	spec := b.vm.Template.Spec
	err = s.transition(ctx, id, opHibernate, func(ctx context.Context) (state.Change, error) {
		final := filepath.Join(s.dirOf(id), snapshotDirName)
		tmp := final + ".tmp"
		os.RemoveAll(tmp)
		if err := os.MkdirAll(tmp, 0o700); err != nil {
			return state.Change{}, err
		}
		vm := b.vm
		if err := s.mgr.Hibernate(ctx, vm, tmp); err != nil {
			os.RemoveAll(tmp)
			if vm.Agent != nil && vm.Machine.State() == vmm.StateRunning {
				return state.Change{}, err // still running: roll back
			}
			s.dropVM(b)
			return state.Change{}, lost("hibernation failed and the VM is gone: "+err.Error(), err)
		}
		s.dropVM(b)
		// A previous hibernation's files were removed on resume; a stale
		// one cannot be here, but never rename over it blindly.
		os.RemoveAll(final)
		if err := os.Rename(tmp, final); err != nil {
			os.RemoveAll(tmp)
			return state.Change{}, lost("hibernation could not be kept: "+err.Error(), err)
		}
		s.log.Info("sandbox hibernated", "op", "hibernate", "sandbox", id, "took", time.Since(start))
		return state.Change{SnapshotDir: &final, Bump: true}, nil
	})
	if err == nil && s.cfg.Directory != nil {
		if sb, gerr := s.db.Get(ctx, id); gerr == nil {
			spec.DiskMiB = sb.DiskMiB
			disk, done, herr := "", func() {}, error(nil)
			if sb.DiskMiB > 0 {
				disk, done, herr = s.mgr.portableDisk(ctx, s.diskOf(id))
			}
			if herr == nil {
				herr = s.cfg.Directory.Hibernated(ctx, sb, spec, sb.SnapshotDir, disk)
				done()
			}
			if herr != nil {
				s.log.Warn("hibernation kept on this host only", "op", "hibernate", "sandbox", id, "err", herr)
			}
		}
	}
	return err
}

// liveVM checks that a sandbox the record says is running has its VM in
// this process, and marks it lost if not (the VM died).
func (s *Sandboxes) liveVM(ctx context.Context, sb state.Sandbox, b *box) error {
	if sb.State != state.Running {
		return fmt.Errorf("%w: sandbox %s is %s", ErrSandboxBusy, sb.ID, sb.State)
	}
	if b.vm != nil && b.vm.alive() {
		return nil
	}
	s.dropVM(b)
	reason := "its VM stopped unexpectedly"
	if err := s.db.Transition(context.WithoutCancel(ctx), sb.ID, state.Change{To: state.Lost, Reason: reason}, state.Running); err != nil {
		return err
	}
	s.changed(ctx, sb.ID)
	return fmt.Errorf("%w: sandbox %s: %s", ErrSandboxLost, sb.ID, reason)
}

// dropVM forgets a stopped (or failed) VM and frees its slot.
func (s *Sandboxes) dropVM(b *box) {
	if b.vm != nil {
		b.vm.Close()
		b.vm = nil
	}
	if b.release != nil {
		b.release()
		b.release = nil
	}
}

// Resume restores a paused (hibernated) sandbox. Resuming a running one
// does nothing but set its timeout. timeout, if set, is its new lifetime
// from now; otherwise a sandbox whose lifetime was stopped by a pause gets
// the default one, and one hibernated while idle keeps its end. A resume
// the host cannot do (its kernel, image or VMM changed) fails with the
// sandbox still paused and its data kept.
func (s *Sandboxes) Resume(ctx context.Context, tenant, id string, timeout time.Duration) (state.Sandbox, error) {
	if _, err := s.lifetime(timeout); err != nil {
		return state.Sandbox{}, err
	}
	if _, err := s.Get(ctx, tenant, id); err != nil {
		return state.Sandbox{}, err
	}
	b, err := s.boxFor(id)
	if err != nil {
		return state.Sandbox{}, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := s.resumeLocked(ctx, id, b); err != nil {
		return state.Sandbox{}, err
	}
	sb, err := s.db.Get(ctx, id)
	if err != nil {
		return sb, err
	}
	if timeout > 0 || sb.ExpiresAt.IsZero() {
		d, _ := s.lifetime(timeout)
		if err := s.db.SetExpiry(context.WithoutCancel(ctx), id, s.now().Add(d)); err != nil {
			return sb, err
		}
	}
	return s.db.Get(ctx, id)
}

func (s *Sandboxes) resumeLocked(ctx context.Context, id string, b *box) error {
	sb, err := s.db.Get(ctx, id)
	if err != nil {
		return err
	}
	if err := usable(sb); err != nil {
		return err
	}
	if sb.State == state.Running {
		return s.liveVM(ctx, sb, b)
	}
	if sb.State != state.Hibernated {
		return fmt.Errorf("%w: sandbox %s is %s", ErrSandboxBusy, id, sb.State)
	}
	e, err := s.mgr.catalog.Lookup(sb.Language, sb.Version)
	if err != nil {
		return fmt.Errorf("resume %s: %w", id, err)
	}
	t, err := s.mgr.Template(ctx, e, resumeShape(sb))
	if err != nil {
		return fmt.Errorf("resume %s: %w", id, err)
	}
	admitted, err := s.admitted(ctx, opResume, sb)
	if err != nil {
		return err
	}
	defer admitted()
	release, err := s.reserve(ctx, t.Shape.MemoryMiB)
	if err != nil {
		return err
	}
	start := time.Now()
	err = s.transition(ctx, id, opResume, func(ctx context.Context) (state.Change, error) {
		vm, err := s.resumeVM(ctx, sb, t, s.diskOf(id))
		if err != nil {
			return state.Change{}, err // the snapshot is untouched: still resumable
		}
		b.vm, b.release = vm, release
		empty := ""
		return state.Change{SnapshotDir: &empty}, nil
	})
	if err != nil {
		if b.vm != nil { // resumed, but the record could not say so
			s.dropVM(b)
		} else {
			release()
		}
		return err
	}
	// The VM maps its memory privately from the snapshot; the files can go
	// once the record no longer points at them.
	os.RemoveAll(sb.SnapshotDir)
	b.lastUsed.Store(s.now().UnixNano())
	_ = s.db.Touch(context.WithoutCancel(ctx), id, s.now())
	s.log.Info("sandbox resumed", "op", "resume", "sandbox", id, "took", time.Since(start))
	return nil
}

// Delete stops a sandbox's VM (cancelling its running commands), removes
// its files and marks it deleted.
func (s *Sandboxes) Delete(ctx context.Context, tenant, id string) error {
	sb, err := s.Get(ctx, tenant, id)
	if err != nil {
		return err
	}
	if sb.State == state.Deleted {
		return usable(sb)
	}
	b, err := s.boxFor(id)
	if err != nil {
		return err
	}
	b.stopOps()
	b.mu.Lock()
	defer b.mu.Unlock()
	return s.deleteLocked(ctx, id, b)
}

func (s *Sandboxes) deleteLocked(ctx context.Context, id string, b *box) error {
	err := s.transition(context.WithoutCancel(ctx), id, opDelete, func(context.Context) (state.Change, error) {
		s.dropVM(b)
		os.RemoveAll(s.dirOf(id))
		empty := ""
		return state.Change{SnapshotDir: &empty}, nil
	})
	if err != nil {
		return err
	}
	s.mu.Lock()
	delete(s.boxes, id)
	s.mu.Unlock()
	s.log.Info("sandbox deleted", "op", "delete", "sandbox", id)
	return nil
}

// Close stops the lifetime loop, then hibernates every running sandbox so
// it survives the restart; one that cannot be hibernated is stopped and
// marked lost.
func (s *Sandboxes) Close(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	boxes := s.boxes
	s.mu.Unlock()
	close(s.stop)
	s.wg.Wait()

	var (
		wg   sync.WaitGroup
		emu  sync.Mutex
		errs []error
	)
	for id, b := range boxes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b.cutSessions()
			b.mu.Lock()
			defer b.mu.Unlock()
			if b.vm == nil {
				return
			}
			if err := s.hibernateLocked(ctx, id, b); err != nil {
				s.dropVM(b)
				emu.Lock()
				errs = append(errs, err)
				emu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
