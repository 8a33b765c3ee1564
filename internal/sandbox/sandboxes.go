package sandbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/firesandbox/firesandbox/internal/state"
)

// WorkDir is a sandbox's working directory in the guest: files are
// uploaded relative to it and commands start in it.
const WorkDir = "/home/sandbox"

// Gate bounds how much work runs at once: an exec holds a slot while it
// runs (see Limiter).
type Gate interface {
	Acquire(ctx context.Context) (release func(), err error)
}

// SandboxesConfig configures Sandboxes.
type SandboxesConfig struct {
	// Dir holds the sandboxes' files, one directory per id: a hibernation
	// (snapshot/) and a writable disk (disk.ext4, an image; layered with
	// device-mapper, disk.ext4.cow, .json and .base: see disk.Layerer).
	Dir string
	// IdleTimeout is the default time a sandbox may sit unused before
	// it is hibernated; zero disables idle hibernation by default.
	IdleTimeout time.Duration
	// IdleCheck is how often idle and expired sandboxes are looked for;
	// default 1s.
	IdleCheck time.Duration
	// Timeout is a sandbox's lifetime unless its create (or resume) says
	// otherwise; default DefaultTimeout. MaxTimeout bounds what a request
	// may ask for; default DefaultMaxTimeout.
	Timeout, MaxTimeout time.Duration
	// MaxForks bounds the children of one fork; default DefaultMaxForks.
	MaxForks int
	// HibernatedTTL, if set, deletes sandboxes that stayed hibernated this
	// long (counted from when they were hibernated).
	HibernatedTTL time.Duration
	// Directory, if set, is told of every change (many hosts); nil keeps
	// the sandboxes to this host.
	Directory Directory
}

// Defaults of SandboxesConfig.
const (
	DefaultTimeout    = 5 * time.Minute
	DefaultMaxTimeout = 24 * time.Hour
	DefaultMaxForks   = 16
)

func (c *SandboxesConfig) setDefaults() {
	if c.IdleCheck <= 0 {
		c.IdleCheck = time.Second
	}
	if c.MaxTimeout <= 0 {
		c.MaxTimeout = DefaultMaxTimeout
	}
	if c.Timeout <= 0 {
		c.Timeout = min(DefaultTimeout, c.MaxTimeout)
	}
	if c.MaxForks <= 0 {
		c.MaxForks = DefaultMaxForks
	}
}

// AdmitFunc is asked before an operation that takes room on the server
// ("create", "resume", or a client's "hibernate"), with the sandbox's
// record (its tenant and shape); an error refuses the operation, and
// release is called once it has ended. See SetAdmission.
type AdmitFunc func(ctx context.Context, op string, sb state.Sandbox) (release func(), err error)

// Sandboxes owns the long-lived sandboxes: their persisted records (the
// truth about each one's state) and the live VMs of the running ones.
// Operations on one sandbox are serialised against create, hibernate,
// resume, fork and delete by a per-sandbox lock; execs may overlap. A live
// VM holds its memory in the MemoryBudget; an exec holds a work slot
// (Gate) while it runs.
//
//	sbx, _ := sandbox.OpenSandboxes(mgr, db, cfg, gate, budget, log) // reconciles
//	sb, _ := sbx.Create(ctx, sandbox.CreateRequest{Language: "python"})
//	res, _ := sbx.Exec(ctx, "", sb.ID, agentproto.ExecRequest{Argv: argv}, w, w)
//	_, _ = sbx.Hibernate(ctx, "", sb.ID)  // VM gone, memory and disk on storage
//	res, _ = sbx.Exec(ctx, "", sb.ID, ...) // resumes first
//	kids, _ := sbx.Fork(ctx, "", sb.ID, sandbox.ForkRequest{Count: 2}) // sb runs on
//	sbx.Close(ctx)                        // hibernates what still runs
//
// Every method that names a sandbox takes the caller's tenant: a sandbox
// of another tenant does not exist for it (ErrNoSandbox).
type Sandboxes struct {
	mgr  *Manager
	db   *state.DB
	cfg  SandboxesConfig
	gate Gate          // work slots, for execs; nil: unbounded
	vms  Gate          // held by each live VM, e.g. a tenant's VM quota; nil: none
	mem  *MemoryBudget // live VMs; nil: unbounded
	log  *slog.Logger
	now  func() time.Time

	admit AdmitFunc // nil: everything is admitted

	mu     sync.Mutex
	boxes  map[string]*box
	closed bool

	stop chan struct{}
	wg   sync.WaitGroup
}

// box is the in-memory side of one sandbox.
type box struct {
	// mu: read-held by exec and file transfers, write-held by the
	// operations of the transition table.
	mu       sync.RWMutex
	vm       *VM    // the live VM while the record says running
	release  func() // frees vm's memory reservation
	lastUsed atomic.Int64
	netMu    sync.Mutex // serialises network policy changes (network.go)
	// stopOps is cancelled by Delete so running execs end promptly.
	opsCtx  context.Context
	stopOps context.CancelFunc

	// Sessions (a process's output streamed to a client, a terminal, a
	// watch) can last for hours, so instead of waiting for them, a pause
	// or fork cuts them; the processes run on in the guest.
	smu        sync.Mutex
	sessions   context.Context
	endSession context.CancelFunc
}

// sessionCtx is cancelled by the next cutSessions.
func (b *box) sessionCtx() context.Context {
	b.smu.Lock()
	defer b.smu.Unlock()
	if b.sessions == nil {
		b.sessions, b.endSession = context.WithCancel(b.opsCtx)
	}
	return b.sessions
}

// cutSessions ends every session on the box, so an operation that needs
// the box to itself gets it.
func (b *box) cutSessions() {
	b.smu.Lock()
	defer b.smu.Unlock()
	if b.endSession != nil {
		b.endSession()
		b.sessions, b.endSession = nil, nil
	}
}

// OpenSandboxes reconciles what a previous process left in db (running
// sandboxes lost their VMs, complete snapshots are resumable) and starts
// the loop that hibernates idle sandboxes and ends expired ones.
func OpenSandboxes(mgr *Manager, db *state.DB, cfg SandboxesConfig, gate Gate, mem *MemoryBudget, log *slog.Logger) (*Sandboxes, error) {
	if cfg.Dir == "" {
		return nil, fmt.Errorf("%w: sandboxes directory not set", ErrBadRequest)
	}
	cfg.setDefaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("open sandboxes: %w", err)
	}
	s := &Sandboxes{mgr: mgr, db: db, cfg: cfg, gate: gate, mem: mem, log: log, now: time.Now,
		boxes: map[string]*box{}, stop: make(chan struct{})}
	if err := s.reconcile(context.Background()); err != nil {
		return nil, fmt.Errorf("open sandboxes: %w", err)
	}
	s.sweep()
	s.wg.Add(1)
	go s.lifetimeLoop()
	return s, nil
}

// reconcile settles the records of a previous process, which took its
// VMs with it: what ran is lost (its data kept), what was caught between
// states is hibernated if its snapshot is complete, and unfinished
// deletions are finished.
func (s *Sandboxes) reconcile(ctx context.Context) error {
	changed, err := s.db.Reconcile(ctx, func(sb state.Sandbox) bool {
		return sb.SnapshotDir != "" && snapshotComplete(sb.SnapshotDir)
	})
	if err != nil {
		return err
	}
	for _, c := range changed {
		s.log.Info("sandbox reconciled", "sandbox", c.ID, "from", c.From, "to", c.State, "reason", c.Reason)
	}
	deleting, err := s.db.List(ctx, state.Deleting)
	if err != nil {
		return err
	}
	for _, sb := range deleting {
		os.RemoveAll(s.dirOf(sb.ID))
		if err := s.db.Transition(ctx, sb.ID, state.Change{To: state.Deleted}, state.Deleting); err != nil {
			return err
		}
	}
	return nil
}

// snapshotComplete says dir holds a finished hibernation: it is only
// renamed into place once written.
func snapshotComplete(dir string) bool {
	st, err := os.Stat(dir)
	return err == nil && st.IsDir() && filepath.Base(dir) == snapshotDirName
}

// Names inside a sandbox's directory.
const (
	snapshotDirName = "snapshot"
	diskName        = "disk.ext4"
	// forkDirPrefix, after a dot, names a fork in progress in the
	// sandboxes directory: the parent saved for its children. It has no
	// record, so the sweep removes one a crash left.
	forkDirPrefix = "fork-"
)

// sweep removes the directories of sandboxes that no longer exist and
// half-written snapshots. It never removes a directory whose sandbox
// still has a record (a lost sandbox keeps its data until deleted).
func (s *Sandboxes) sweep() {
	ents, err := os.ReadDir(s.cfg.Dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		sb, err := s.db.Get(context.Background(), e.Name())
		switch {
		case errors.Is(err, state.ErrNotFound) || (err == nil && sb.State == state.Deleted):
			s.log.Info("removing leftover sandbox directory", "sandbox", e.Name())
			os.RemoveAll(filepath.Join(s.cfg.Dir, e.Name()))
		case err == nil:
			os.RemoveAll(filepath.Join(s.cfg.Dir, e.Name(), snapshotDirName+".tmp"))
		}
	}
}

// SetAdmission installs a server's policy before it serves: vms, if not
// nil, is held by each live VM (its Acquire gets the caller's context, so
// it may count per tenant; it must not take work slots: live sandboxes do
// not hold those, see Unbounded), and admit decides on operations
// (per-tenant quotas, allowed shapes).
func (s *Sandboxes) SetAdmission(vms Gate, admit AdmitFunc) {
	s.vms = vms
	s.admit = admit
}

// Unbounded is a Gate that always admits.
var Unbounded Gate = unbounded{}

type unbounded struct{}

func (unbounded) Acquire(context.Context) (func(), error) { return func() {}, nil }

// admitted asks the admission policy about op on sb.
func (s *Sandboxes) admitted(ctx context.Context, o op, sb state.Sandbox) (func(), error) {
	if s.admit == nil {
		return func() {}, nil
	}
	return s.admit(ctx, string(o), sb)
}

func (s *Sandboxes) dirOf(id string) string  { return filepath.Join(s.cfg.Dir, id) }
func (s *Sandboxes) diskOf(id string) string { return filepath.Join(s.dirOf(id), diskName) }

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

func (s *Sandboxes) forget(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b := s.boxes[id]; b != nil {
		b.stopOps()
		delete(s.boxes, id)
	}
}

// Get returns a sandbox's record, if it belongs to tenant.
func (s *Sandboxes) Get(ctx context.Context, tenant, id string) (state.Sandbox, error) {
	sb, err := s.db.Get(ctx, id)
	if errors.Is(err, state.ErrNotFound) || (err == nil && sb.Tenant != tenant) {
		return state.Sandbox{}, fmt.Errorf("%w: %s", ErrNoSandbox, id)
	}
	return sb, err
}

// ListFilter selects sandboxes in List.
type ListFilter struct {
	// States, if set, keeps sandboxes in one of them.
	States []state.State
	// Metadata, if set, keeps sandboxes whose metadata has every pair.
	Metadata map[string]string
}

// List returns tenant's sandboxes that are not deleted, oldest first.
func (s *Sandboxes) List(ctx context.Context, tenant string, f ListFilter) ([]state.Sandbox, error) {
	var all []state.Sandbox
	var err error
	if s.cfg.Directory != nil { // every host's
		all, err = s.cfg.Directory.List(ctx, tenant)
	} else {
		all, err = s.db.List(ctx, f.States...)
	}
	if err != nil {
		return nil, err
	}
	out := all[:0]
outer:
	for _, sb := range all {
		if sb.Tenant != tenant || sb.State == state.Deleted || (len(f.States) > 0 && !slices.Contains(f.States, sb.State)) {
			continue
		}
		for k, v := range f.Metadata {
			if got, ok := sb.Metadata[k]; !ok || got != v {
				continue outer
			}
		}
		out = append(out, sb)
	}
	return out, nil
}

// Counts returns how many sandboxes are in each state.
func (s *Sandboxes) Counts(ctx context.Context) (map[state.State]int, error) { return s.db.Count(ctx) }

// Config returns the effective configuration.
func (s *Sandboxes) Config() SandboxesConfig { return s.cfg }

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
	case state.Deleted, state.Deleting:
		return fmt.Errorf("%w: sandbox %s was deleted", ErrSandboxDeleted, sb.ID)
	case state.Lost:
		return fmt.Errorf("%w: sandbox %s: %s; delete it and create a new one", ErrSandboxLost, sb.ID, sb.Reason)
	}
	return nil
}
