package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/state"
	"github.com/firesandbox/firesandbox/internal/vmm"
)

// Errors of long-lived sandboxes; the API maps them to status codes.
var (
	ErrNoSandbox      = errors.New("no such sandbox")
	ErrSandboxDeleted = errors.New("sandbox deleted")
	ErrSandboxLost    = errors.New("sandbox lost")
	ErrSandboxBusy    = errors.New("sandbox busy")
	ErrClosed         = errors.New("sandboxes: shutting down")
)

// WorkDir is a sandbox's working directory in the guest: files are
// uploaded relative to it and commands start in it.
const WorkDir = "/home/sandbox"

// Gate bounds how many VMs run at once. A live sandbox holds a slot until
// it is hibernated or deleted.
type Gate interface {
	Acquire(ctx context.Context) (release func(), err error)
}

// SandboxesConfig configures Sandboxes.
type SandboxesConfig struct {
	// Dir holds hibernated sandboxes, one directory per id.
	Dir string
	// IdleTimeout is the default time a sandbox may sit unused before
	// it is hibernated; zero disables idle hibernation by default.
	IdleTimeout time.Duration
	// IdleCheck is how often idle sandboxes are looked for; default 1s.
	IdleCheck time.Duration
}

// Sandboxes owns the long-lived sandboxes: their live VMs, by id, and
// their persisted state. Operations on one sandbox are serialised against
// hibernate, resume and delete by a per-sandbox lock; execs may overlap.
//
//	sbx, _ := sandbox.OpenSandboxes(mgr, db, cfg, gate, log) // reconciles
//	sb, _ := sbx.Create(ctx, sandbox.CreateRequest{Language: "python"})
//	res, _ := sbx.Exec(ctx, sb.ID, agentproto.ExecRequest{Argv: argv}, w, w)
//	_, _ = sbx.Hibernate(ctx, sb.ID)  // VM gone, memory and disk on storage
//	res, _ = sbx.Exec(ctx, sb.ID, ...) // resumes first
//	sbx.Close(ctx)                    // hibernates what still runs
type Sandboxes struct {
	mgr  *Manager
	db   *state.DB
	cfg  SandboxesConfig
	gate Gate
	log  *slog.Logger

	mu     sync.Mutex
	boxes  map[string]*box
	closed bool

	stop chan struct{}
	wg   sync.WaitGroup
}

// box is the in-memory side of one sandbox.
type box struct {
	// mu: read-held by exec and file transfers, write-held by create,
	// hibernate, resume and delete.
	mu       sync.RWMutex
	vm       *VM    // nil unless the sandbox runs
	release  func() // frees vm's gate slot
	lastUsed atomic.Int64
	// stopOps is cancelled by Delete so running execs end promptly.
	opsCtx  context.Context
	stopOps context.CancelFunc
}

// OpenSandboxes reconciles what a previous process left in db (running
// sandboxes lost their VMs, complete snapshots are resumable) and starts
// the idle-hibernation loop.
func OpenSandboxes(mgr *Manager, db *state.DB, cfg SandboxesConfig, gate Gate, log *slog.Logger) (*Sandboxes, error) {
	if cfg.Dir == "" {
		return nil, fmt.Errorf("%w: sandboxes directory not set", ErrBadRequest)
	}
	if cfg.IdleCheck <= 0 {
		cfg.IdleCheck = time.Second
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("open sandboxes: %w", err)
	}
	s := &Sandboxes{mgr: mgr, db: db, cfg: cfg, gate: gate, log: log, boxes: map[string]*box{}, stop: make(chan struct{})}
	changed, err := db.Reconcile(context.Background(), func(sb state.Sandbox) bool {
		return sb.SnapshotDir != "" && snapshotComplete(sb.SnapshotDir)
	})
	if err != nil {
		return nil, fmt.Errorf("open sandboxes: %w", err)
	}
	for _, c := range changed {
		log.Info("sandbox reconciled", "sandbox", c.ID, "from", c.From, "to", c.State, "reason", c.Reason)
		if c.State == state.Lost {
			os.RemoveAll(s.dirOf(c.ID))
		}
	}
	s.sweep()
	s.wg.Add(1)
	go s.idleLoop()
	return s, nil
}

// snapshotComplete says dir holds a finished hibernation: it is only
// renamed into place once written.
func snapshotComplete(dir string) bool {
	st, err := os.Stat(dir)
	return err == nil && st.IsDir() && filepath.Base(dir) == "snapshot"
}

// sweep removes directories of sandboxes that are not hibernated and
// half-written snapshots.
func (s *Sandboxes) sweep() {
	ents, err := os.ReadDir(s.cfg.Dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		sb, err := s.db.Get(context.Background(), e.Name())
		switch {
		case errors.Is(err, state.ErrNotFound) || (err == nil && sb.State != state.Hibernated):
			s.log.Info("removing leftover sandbox directory", "sandbox", e.Name())
			os.RemoveAll(filepath.Join(s.cfg.Dir, e.Name()))
		case err == nil:
			os.RemoveAll(filepath.Join(s.cfg.Dir, e.Name(), "snapshot.tmp"))
		}
	}
}

func (s *Sandboxes) dirOf(id string) string { return filepath.Join(s.cfg.Dir, id) }

// boxFor returns the in-memory entry for id, creating it.
func (s *Sandboxes) boxFor(id string) (*box, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	b := s.boxes[id]
	if b == nil {
		b = &box{}
		b.opsCtx, b.stopOps = context.WithCancel(context.Background())
		s.boxes[id] = b
	}
	return b, nil
}

// CreateRequest describes a new sandbox.
type CreateRequest struct {
	Language, Version string
	Shape             Shape
	// DiskMiB, if set, puts the writable layer on a sparse ext4 disk of
	// that size instead of guest memory (see Shape.DiskMiB).
	DiskMiB int
	// IdleTimeout overrides the default idle time before hibernation.
	IdleTimeout time.Duration
}

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
	if err := req.Shape.Validate(); err != nil {
		return state.Sandbox{}, err
	}
	if req.DiskMiB < 0 || req.IdleTimeout < 0 {
		return state.Sandbox{}, fmt.Errorf("%w: negative disk size or timeout", ErrBadRequest)
	}
	idle := req.IdleTimeout
	if idle == 0 {
		idle = s.cfg.IdleTimeout
	}
	shape := s.mgr.shape(req.Shape)
	shape.DiskMiB = req.DiskMiB
	if err := shape.Validate(); err != nil {
		return state.Sandbox{}, err
	}
	sb := state.Sandbox{
		ID: newSandboxID(), Language: e.Name, Version: e.Version, VCPUs: shape.VCPUs, MemoryMiB: shape.MemoryMiB,
		DiskMiB: req.DiskMiB, IdleTimeout: idle, State: state.Creating,
	}
	b, err := s.boxFor(sb.ID)
	if err != nil {
		return state.Sandbox{}, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	release, err := s.acquireSlot(ctx)
	if err != nil {
		s.forget(sb.ID)
		return state.Sandbox{}, err
	}
	if err := s.db.Create(ctx, sb); err != nil {
		release()
		s.forget(sb.ID)
		return state.Sandbox{}, err
	}
	vm, err := s.mgr.AcquireShape(ctx, e, false /* cold */, shape)
	if err != nil {
		release()
		s.forget(sb.ID)
		if rerr := s.db.Remove(context.WithoutCancel(ctx), sb.ID); rerr != nil {
			return state.Sandbox{}, errors.Join(fmt.Errorf("create sandbox: %w", err), rerr)
		}
		return state.Sandbox{}, fmt.Errorf("create sandbox: %w", err)
	}
	if err := s.db.Transition(context.WithoutCancel(ctx), sb.ID, state.Change{To: state.Running}, state.Creating); err != nil {
		vm.Close()
		release()
		s.forget(sb.ID)
		return state.Sandbox{}, errors.Join(err, s.db.Remove(context.WithoutCancel(ctx), sb.ID))
	}
	b.vm, b.release = vm, release
	b.lastUsed.Store(time.Now().UnixNano())
	s.log.Info("sandbox created", "sandbox", sb.ID, "language", e.Name, "vm", vm.Machine.ID(), "ready", vm.Ready)
	return s.db.Get(ctx, sb.ID)
}

func (s *Sandboxes) acquireSlot(ctx context.Context) (func(), error) {
	if s.gate == nil {
		return func() {}, nil
	}
	return s.gate.Acquire(ctx)
}

func (s *Sandboxes) forget(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b := s.boxes[id]; b != nil {
		b.stopOps()
		delete(s.boxes, id)
	}
}

// Get returns a sandbox's record.
func (s *Sandboxes) Get(ctx context.Context, id string) (state.Sandbox, error) {
	sb, err := s.db.Get(ctx, id)
	if errors.Is(err, state.ErrNotFound) {
		return sb, fmt.Errorf("%w: %s", ErrNoSandbox, id)
	}
	return sb, err
}

// List returns every sandbox that is not deleted.
func (s *Sandboxes) List(ctx context.Context) ([]state.Sandbox, error) { return s.db.List(ctx) }

// Counts returns how many sandboxes are in each state.
func (s *Sandboxes) Counts(ctx context.Context) (map[state.State]int, error) { return s.db.Count(ctx) }

// Live returns how many sandboxes have a running VM.
func (s *Sandboxes) Live() int {
	s.mu.Lock()
	boxes := make([]*box, 0, len(s.boxes))
	for _, b := range s.boxes {
		boxes = append(boxes, b)
	}
	s.mu.Unlock()
	n := 0
	for _, b := range boxes {
		if b.mu.TryRLock() {
			if b.vm != nil {
				n++
			}
			b.mu.RUnlock()
		} else {
			n++ // busy: being created, resumed or hibernated, so it has a VM
		}
	}
	return n
}

// usable checks a record allows work on the sandbox.
func usable(sb state.Sandbox) error {
	switch sb.State {
	case state.Deleted:
		return fmt.Errorf("%w: sandbox %s was deleted", ErrSandboxDeleted, sb.ID)
	case state.Lost:
		return fmt.Errorf("%w: sandbox %s: %s; delete it and create a new one", ErrSandboxLost, sb.ID, sb.Reason)
	}
	return nil
}

// withVM runs fn with the sandbox's VM under the read lock, resuming the
// sandbox first if it is hibernated.
func (s *Sandboxes) withVM(ctx context.Context, id string, fn func(ctx context.Context, vm *VM) error) error {
	for attempt := 0; ; attempt++ {
		sb, err := s.Get(ctx, id)
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
		b.mu.RLock()
		if vm := b.vm; vm != nil {
			b.lastUsed.Store(time.Now().UnixNano())
			octx, cancel := context.WithCancel(ctx)
			stop := context.AfterFunc(b.opsCtx, cancel)
			err := fn(octx, vm)
			stop()
			cancel()
			b.lastUsed.Store(time.Now().UnixNano())
			b.mu.RUnlock()
			if err != nil && b.opsCtx.Err() != nil && ctx.Err() == nil {
				return fmt.Errorf("%w: sandbox %s was deleted while in use", ErrSandboxDeleted, id)
			}
			_ = s.db.Touch(context.WithoutCancel(ctx), id, time.Now())
			return err
		}
		b.mu.RUnlock()
		if attempt >= 3 {
			return fmt.Errorf("%w: sandbox %s keeps changing state; retry", ErrSandboxBusy, id)
		}
		if _, err := s.Resume(ctx, id); err != nil {
			return err
		}
	}
}

// Exec runs a command in a sandbox (resuming it if hibernated). A
// relative or empty Dir is taken relative to WorkDir.
func (s *Sandboxes) Exec(ctx context.Context, id string, req agentproto.ExecRequest, stdout, stderr io.Writer) (*agentproto.ExitResult, error) {
	switch {
	case req.Dir == "":
		req.Dir = WorkDir
	case !path.IsAbs(req.Dir):
		req.Dir = path.Join(WorkDir, req.Dir)
	}
	if err := req.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	var res *agentproto.ExitResult
	err := s.withVM(ctx, id, func(ctx context.Context, vm *VM) error {
		var err error
		res, err = execBounded(ctx, vm, req, orDiscard(stdout), orDiscard(stderr))
		return err
	})
	return res, err
}

// WriteFiles writes files (paths relative to WorkDir) into a sandbox.
func (s *Sandboxes) WriteFiles(ctx context.Context, id string, files []agentproto.File) error {
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
	return s.withVM(ctx, id, func(ctx context.Context, vm *VM) error {
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
func (s *Sandboxes) ReadFile(ctx context.Context, id, rel string, maxBytes int64) ([]byte, error) {
	if err := agentproto.ValidateRelPath(rel); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	if maxBytes <= 0 || maxBytes > agentproto.MaxFileTransfer {
		maxBytes = agentproto.MaxFileTransfer
	}
	var data []byte
	err := s.withVM(ctx, id, func(ctx context.Context, vm *VM) error {
		var err error
		data, err = vm.Agent.ReadFile(ctx, path.Join(WorkDir, rel), maxBytes)
		return err
	})
	return data, err
}

// Hibernate saves a running sandbox (memory, which holds its files, and
// device state) under its directory and stops its VM. Hibernating a
// hibernated sandbox does nothing.
func (s *Sandboxes) Hibernate(ctx context.Context, id string) (state.Sandbox, error) {
	b, err := s.boxFor(id)
	if err != nil {
		return state.Sandbox{}, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return s.hibernateLocked(ctx, id, b)
}

func (s *Sandboxes) hibernateLocked(ctx context.Context, id string, b *box) (state.Sandbox, error) {
	sb, err := s.Get(ctx, id)
	if err != nil {
		return sb, err
	}
	if err := usable(sb); err != nil {
		return sb, err
	}
	if b.vm == nil {
		return sb, nil // hibernated already
	}
	// The slow part must not be cut short by a caller that goes away:
	// a half-written snapshot is worth nothing.
	ctx = context.WithoutCancel(ctx)
	start := time.Now()
	if err := s.db.Transition(ctx, id, state.Change{To: state.Hibernating}, state.Running); err != nil {
		return sb, err
	}
	final := filepath.Join(s.dirOf(id), "snapshot")
	tmp := final + ".tmp"
	os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return sb, errors.Join(fmt.Errorf("hibernate %s: %w", id, err),
			s.db.Transition(ctx, id, state.Change{To: state.Running}, state.Hibernating))
	}
	vm := b.vm
	if err := s.mgr.Hibernate(ctx, vm, tmp); err != nil {
		os.RemoveAll(tmp)
		herr := fmt.Errorf("hibernate %s: %w", id, err)
		if vm.Agent != nil && vm.Machine.State() == vmm.StateRunning {
			return sb, errors.Join(herr, s.db.Transition(ctx, id, state.Change{To: state.Running}, state.Hibernating))
		}
		s.dropVM(b)
		return sb, errors.Join(herr, s.markLost(ctx, id, "hibernation failed: "+err.Error()))
	}
	s.dropVM(b)
	os.RemoveAll(final)
	if err := os.Rename(tmp, final); err != nil {
		os.RemoveAll(tmp)
		return sb, errors.Join(fmt.Errorf("hibernate %s: %w", id, err), s.markLost(ctx, id, "hibernation failed: "+err.Error()))
	}
	if err := s.db.Transition(ctx, id, state.Change{To: state.Hibernated, SnapshotDir: &final}, state.Hibernating); err != nil {
		return sb, err
	}
	s.log.Info("sandbox hibernated", "sandbox", id, "took", time.Since(start))
	return s.db.Get(ctx, id)
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

func (s *Sandboxes) markLost(ctx context.Context, id, reason string) error {
	empty := ""
	os.RemoveAll(s.dirOf(id))
	return s.db.Transition(context.WithoutCancel(ctx), id, state.Change{To: state.Lost, Reason: reason, SnapshotDir: &empty})
}

// Resume restores a hibernated sandbox. Resuming a running one does
// nothing.
func (s *Sandboxes) Resume(ctx context.Context, id string) (state.Sandbox, error) {
	b, err := s.boxFor(id)
	if err != nil {
		return state.Sandbox{}, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	sb, err := s.Get(ctx, id)
	if err != nil {
		return sb, err
	}
	if err := usable(sb); err != nil {
		return sb, err
	}
	if b.vm != nil {
		return sb, nil
	}
	if sb.State != state.Hibernated {
		return sb, fmt.Errorf("%w: sandbox %s is %s", ErrSandboxBusy, id, sb.State)
	}
	e, err := s.mgr.catalog.Lookup(sb.Language, sb.Version)
	if err != nil {
		return sb, fmt.Errorf("resume %s: %w", id, err)
	}
	release, err := s.acquireSlot(ctx)
	if err != nil {
		return sb, err
	}
	if err := s.db.Transition(ctx, id, state.Change{To: state.Resuming}, state.Hibernated); err != nil {
		release()
		return sb, err
	}
	start := time.Now()
	vm, err := s.mgr.Resume(ctx, e, Shape{VCPUs: sb.VCPUs, MemoryMiB: sb.MemoryMiB, DiskMiB: sb.DiskMiB}, sb.SnapshotDir)
	if err != nil {
		release()
		// The snapshot is untouched: the sandbox stays resumable.
		return sb, errors.Join(fmt.Errorf("resume %s: %w", id, err),
			s.db.Transition(context.WithoutCancel(ctx), id, state.Change{To: state.Hibernated}, state.Resuming))
	}
	empty := ""
	if err := s.db.Transition(context.WithoutCancel(ctx), id, state.Change{To: state.Running, SnapshotDir: &empty}, state.Resuming); err != nil {
		vm.Close()
		release()
		return sb, err
	}
	// The VM maps its memory privately from the snapshot; the files can go
	// once the record no longer points at them.
	os.RemoveAll(sb.SnapshotDir)
	b.vm, b.release = vm, release
	b.lastUsed.Store(time.Now().UnixNano())
	_ = s.db.Touch(context.WithoutCancel(ctx), id, time.Now())
	s.log.Info("sandbox resumed", "sandbox", id, "took", time.Since(start))
	return s.db.Get(ctx, id)
}

// Delete stops a sandbox's VM (cancelling its running commands), removes
// its files and marks it deleted.
func (s *Sandboxes) Delete(ctx context.Context, id string) error {
	sb, err := s.Get(ctx, id)
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
	s.dropVM(b)
	ctx = context.WithoutCancel(ctx)
	empty := ""
	if err := s.db.Transition(ctx, id, state.Change{To: state.Deleted, SnapshotDir: &empty}); err != nil {
		return err
	}
	os.RemoveAll(s.dirOf(id))
	s.mu.Lock()
	delete(s.boxes, id)
	s.mu.Unlock()
	s.log.Info("sandbox deleted", "sandbox", id)
	return nil
}

// idleLoop hibernates sandboxes left unused for their idle timeout.
func (s *Sandboxes) idleLoop() {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.IdleCheck)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case now := <-t.C:
			s.hibernateIdle(now)
		}
	}
}

func (s *Sandboxes) hibernateIdle(now time.Time) {
	s.mu.Lock()
	ids := make(map[string]*box, len(s.boxes))
	for id, b := range s.boxes {
		ids[id] = b
	}
	s.mu.Unlock()
	for id, b := range ids {
		if !b.mu.TryLock() { // in use
			continue
		}
		if b.vm != nil {
			sb, err := s.db.Get(context.Background(), id)
			idle := now.Sub(time.Unix(0, b.lastUsed.Load()))
			if err == nil && sb.IdleTimeout > 0 && idle >= sb.IdleTimeout {
				if _, err := s.hibernateLocked(context.Background(), id, b); err != nil {
					s.log.Warn("idle hibernation failed", "sandbox", id, "err", err)
				} else {
					s.log.Info("idle sandbox hibernated", "sandbox", id, "idle", idle.Round(time.Second))
				}
			}
		}
		b.mu.Unlock()
	}
}

// Close stops idle hibernation, then hibernates every running sandbox so
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
			b.mu.Lock()
			defer b.mu.Unlock()
			if b.vm == nil {
				return
			}
			if _, err := s.hibernateLocked(ctx, id, b); err != nil {
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
