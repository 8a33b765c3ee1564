package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/firesandbox/firesandbox/internal/buildinfo"
	"github.com/firesandbox/firesandbox/internal/snapshot"
	"github.com/firesandbox/firesandbox/internal/state"
)

// Local is this host's side of the sandboxes: what a Node compares with
// the directory and changes when ownership moves. *sandbox.Sandboxes
// implements it.
type Local interface {
	// Records returns every local sandbox record, deleted ones excepted.
	Records(ctx context.Context) ([]state.Sandbox, error)
	// Record returns one local record (state.ErrNotFound if none).
	Record(ctx context.Context, id string) (state.Sandbox, error)
	// Import adds a sandbox that moved here: hibernated (fill writes its
	// files), lost or deleted (no files).
	Import(ctx context.Context, sb state.Sandbox, fill func(ctx context.Context, spec snapshot.Spec, dir, disk string) error) error
	// Drop forgets a sandbox another host owns now.
	Drop(ctx context.Context, id string) error
	// WithHibernation runs fn with a hibernated sandbox's files, locked.
	WithHibernation(ctx context.Context, id string, fn func(ctx context.Context, sb state.Sandbox, spec snapshot.Spec, dir, disk string) error) error
}

// Option configures a Node.
type Option func(*Node)

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(n *Node) { n.log = l } }

// WithRemote keeps hibernations in r (signed pushes: give r a signer),
// and checks pulled ones with trust. Without a remote, a hibernated
// sandbox stays on its host: if the host dies, the sandbox is lost.
func WithRemote(r *snapshot.Remote, trust *snapshot.Trust) Option {
	return func(n *Node) { n.remote, n.trust = r, trust }
}

// WithLoad reports this host's load (VMs in use) with each heartbeat.
func WithLoad(f func() int) Option { return func(n *Node) { n.load = f } }

// Node is one host's membership in a cluster: its lease in the directory
// (renewed by a heartbeat), the hooks through which its sandboxes tell
// the directory of every change (sandbox.Directory), the takeover of dead
// hosts' sandboxes, the comparison of local and shared state, and the
// HTTP handler that forwards requests to a sandbox's owner.
type Node struct {
	cfg    Config
	id     string
	dir    *Directory
	remote *snapshot.Remote
	trust  *snapshot.Trust
	log    *slog.Logger
	load   func() int

	mu             sync.Mutex
	lease          Lease
	leaseUntil     time.Time // writes are allowed before it (local monotonic clock)
	connectedSince time.Time // start of the current run of good heartbeats; zero after a failure
	replaced       bool      // another process registered this host id: fenced for good
	draining       bool
	local          Local
	garbage        map[string]bool // S3 names nobody needs
	creating       map[string]bool // admitted here, not yet recorded locally

	kick    chan struct{}
	stop    chan struct{}
	stopped bool
	wg      sync.WaitGroup
}

// Open connects to the directory, registers this host (a new epoch) and
// starts its heartbeat. Attach the host's sandboxes next.
func Open(ctx context.Context, cfg Config, opts ...Option) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	id, err := cfg.hostID()
	if err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, id: id, log: slog.New(slog.DiscardHandler), load: func() int { return 0 },
		garbage: map[string]bool{}, creating: map[string]bool{}, kick: make(chan struct{}, 1), stop: make(chan struct{})}
	for _, o := range opts {
		o(n)
	}
	n.log = n.log.With("host", id)
	n.dir, err = OpenDirectory(ctx, DirectoryConfig{URL: cfg.URL, TTL: cfg.TTL, QueryTimeout: cfg.QueryTimeout})
	if err != nil {
		return nil, err
	}
	sent := time.Now()
	l, err := n.dir.Register(ctx, HostInfo{ID: id, Address: cfg.Address, Capacity: cfg.Capacity, Version: buildinfo.Version})
	if err != nil {
		n.dir.Close()
		return nil, err
	}
	n.lease, n.leaseUntil, n.connectedSince = l, n.expiry(sent), sent
	if _, err := n.dir.Prune(ctx, 7*24*time.Hour); err != nil {
		n.log.Warn("prune deleted sandboxes", "err", err)
	}
	n.log.Info("joined the cluster", "epoch", l.Epoch, "address", cfg.Address, "capacity", cfg.Capacity)
	n.wg.Add(1)
	go n.heartbeatLoop()
	return n, nil
}

// ID is this host's id in the directory.
func (n *Node) ID() string { return n.id }

// Directory returns the shared directory (for tenants and keys).
func (n *Node) Directory() *Directory { return n.dir }

// expiry is when a lease renewed at sent stops allowing writes here. The
// directory counts from when it received the heartbeat, which is later,
// and the others wait a TTL of their own after reconnecting before they
// judge: a quarter of the TTL is margin for clocks that run apart.
func (n *Node) expiry(sent time.Time) time.Time { return sent.Add(n.cfg.TTL * 3 / 4) }

// current returns the lease if writes are allowed now.
func (n *Node) current() (Lease, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.lease, !n.replaced && time.Now().Before(n.leaseUntil)
}

// connected says the last heartbeat got through.
func (n *Node) connected() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return !n.connectedSince.IsZero() && !n.replaced
}

// mayJudge says this host has heard the directory long enough to call
// other hosts dead: a host whose heartbeat is older than the TTL has had
// a whole TTL of working directory to renew it in. Without this, after
// an outage of the directory the first host back would take over all
// the others before they had a chance to beat again.
func (n *Node) mayJudge() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return !n.connectedSince.IsZero() && time.Since(n.connectedSince) >= n.cfg.TTL &&
		!n.replaced && !n.draining && n.local != nil && time.Now().Before(n.leaseUntil)
}

func (n *Node) heartbeatLoop() {
	defer n.wg.Done()
	t := time.NewTicker(n.cfg.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
			n.beat()
		}
	}
}

// beat renews the lease once.
func (n *Node) beat() {
	n.mu.Lock()
	l, replaced := n.lease, n.replaced
	n.mu.Unlock()
	if replaced {
		return
	}
	sent := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), n.cfg.Heartbeat)
	defer cancel()
	draining, err := n.dir.Heartbeat(ctx, l, n.load(), n.cfg.Capacity)
	n.mu.Lock()
	defer n.mu.Unlock()
	switch {
	case errors.Is(err, ErrFenced):
		n.replaced = true
		n.log.Error("another process registered this host id; this one stops changing shared state", "err", err)
	case err != nil:
		if !n.connectedSince.IsZero() {
			n.log.Warn("heartbeat failed: serving live sandboxes, refusing creates and resumes until the directory answers", "err", err)
		}
		n.connectedSince = time.Time{}
	default:
		if n.connectedSince.IsZero() {
			n.connectedSince = sent
			n.log.Info("directory reachable again")
			n.wake()
		}
		n.leaseUntil = n.expiry(sent)
		if draining != n.draining && draining {
			n.log.Info("host marked draining: no new sandboxes come here")
		}
		n.draining = draining
	}
}

// wake asks the work loop for a sync soon.
func (n *Node) wake() {
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

// Attach starts sharing local's sandboxes: it settles the differences
// between them and the directory (dropping local copies of sandboxes
// other hosts own now, recording what changed here while this host was
// away) and starts taking over dead hosts' sandboxes. Call it once, after
// the sandboxes are open and before serving.
func (n *Node) Attach(ctx context.Context, local Local) error {
	n.mu.Lock()
	if n.local != nil {
		n.mu.Unlock()
		return fmt.Errorf("attach: already attached")
	}
	n.local = local
	n.mu.Unlock()
	if err := n.sync(ctx); err != nil {
		return fmt.Errorf("attach: %w", err)
	}
	n.wg.Add(1)
	go n.workLoop()
	return nil
}

func (n *Node) workLoop() {
	defer n.wg.Done()
	claim := time.NewTicker(n.cfg.Heartbeat)
	defer claim.Stop()
	sync := time.NewTicker(n.cfg.SyncEvery)
	defer sync.Stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-n.stop
		cancel()
	}()
	for {
		select {
		case <-n.stop:
			return
		case <-claim.C:
			n.takeOver(ctx)
		case <-sync.C:
			n.logErr("sync", n.sync(ctx))
			n.collect(ctx)
		case <-n.kick:
			n.logErr("sync", n.sync(ctx))
		}
	}
}

func (n *Node) logErr(what string, err error) {
	if err != nil && !errors.Is(err, context.Canceled) {
		n.log.Warn(what+" failed", "err", err)
	}
}

// takeOver claims sandboxes of dead hosts: the ones that cannot move
// become lost here (so their clients learn why), hibernated ones with a
// copy in S3 are pulled and kept here, hibernated, until used.
func (n *Node) takeOver(ctx context.Context) {
	if !n.mayJudge() {
		return
	}
	l, _ := n.current()
	lost, err := n.dir.ClaimLost(ctx, l, 32)
	if err != nil {
		n.logErr("take over", err)
		return
	}
	for _, c := range lost {
		n.log.Warn("sandbox of a dead host taken over", "sandbox", c.ID, "from", c.From, "state", c.State, "reason", c.Reason)
		n.importPlain(ctx, c.Entry)
		n.discard(c.OldRemote)
	}
	hib, err := n.dir.ClaimHibernated(ctx, l, 4)
	if err != nil {
		n.logErr("take over", err)
		return
	}
	for _, c := range hib {
		n.log.Info("taking over hibernated sandbox", "sandbox", c.ID, "from", c.From, "remote", c.Remote)
		n.adopt(ctx, c.Entry)
	}
}

// importPlain records a lost or deleted sandbox here, replacing any stale
// local copy.
func (n *Node) importPlain(ctx context.Context, e Entry) {
	_ = n.local.Drop(ctx, e.ID)
	if e.State == state.Deleted {
		return // nothing to answer for: the tombstone is the directory's
	}
	n.logErr("import "+e.ID, n.local.Import(ctx, e.Record, nil))
}

// adopt pulls a hibernated sandbox this host owns now and records it here.
// A pull that can never succeed makes the sandbox lost, saying why; one
// that failed for now is retried by the next sync.
func (n *Node) adopt(ctx context.Context, e Entry) {
	if n.remote == nil {
		n.markLost(ctx, e, "no S3 remote is configured on host "+n.id)
		return
	}
	_ = n.local.Drop(ctx, e.ID)
	start := time.Now()
	err := n.local.Import(ctx, e.Record, func(ctx context.Context, spec snapshot.Spec, dir, disk string) error {
		return pullHibernation(ctx, n.remote, n.trust, e.Remote, spec, dir, disk)
	})
	switch {
	case err == nil:
		n.log.Info("sandbox moved here", "sandbox", e.ID, "generation", e.Generation, "took", time.Since(start))
	case permanent(err):
		n.markLost(ctx, e, fmt.Sprintf("its hibernation could not be moved to host %s: %v", n.id, err))
	default:
		n.log.Warn("pull of a hibernated sandbox failed; retrying later", "sandbox", e.ID, "err", err)
	}
}

func (n *Node) markLost(ctx context.Context, e Entry, reason string) {
	rec := e.Record
	rec.State, rec.Reason = state.Lost, reason
	l, _ := n.current()
	if _, err := n.dir.Update(ctx, l, rec); err != nil {
		n.logErr("mark "+e.ID+" lost", err)
		return
	}
	n.log.Warn("sandbox lost", "sandbox", e.ID, "reason", reason)
	e.Record, e.State = rec, state.Lost
	n.importPlain(ctx, e)
	n.discard(e.Remote)
}

// sync settles the differences between the local records and the
// directory. The directory decides ownership; this host decides the
// state of what it owns.
func (n *Node) sync(ctx context.Context) error {
	l, ok := n.current()
	if !ok || !n.connected() {
		return fmt.Errorf("%w: no current lease", ErrUnavailable)
	}
	// What this host owns is read before what it has, so a create that
	// lands in between is in the second list, never only in the first.
	owned, err := n.dir.Owned(ctx, n.id)
	if err != nil {
		return err
	}
	locals, err := n.local.Records(ctx)
	if err != nil {
		return err
	}
	ids := make([]string, len(locals))
	for i, sb := range locals {
		ids[i] = sb.ID
	}
	shared, err := n.dir.Entries(ctx, ids)
	if err != nil {
		return err
	}
	var errs []error
	here := map[string]bool{}
	for _, sb := range locals {
		e, ok := shared[sb.ID]
		switch {
		case !ok: // made before this host joined the cluster
			_, err := n.dir.Insert(ctx, l, sb)
			errs = append(errs, err)
			here[sb.ID] = true
		case e.Owner != n.id || e.Generation > sb.Generation:
			n.log.Info("dropping local copy of a sandbox owned elsewhere", "sandbox", sb.ID, "owner", e.Owner,
				"generation", e.Generation, "local_generation", sb.Generation)
			errs = append(errs, n.local.Drop(ctx, sb.ID))
		default:
			here[sb.ID] = true
			remote, err := e.Remote, error(nil)
			if differs(sb, e) {
				var old string
				old, err = n.dir.Update(ctx, l, sb)
				errs = append(errs, err)
				n.discard(old)
				if sb.State != state.Hibernated || e.Generation != sb.Generation {
					remote = "" // what Update did: the copy in S3 is not this state's
				}
			}
			if err == nil && sb.State == state.Hibernated && n.remote != nil && remote == "" {
				errs = append(errs, n.local.WithHibernation(ctx, sb.ID, n.pushLocked))
			}
		}
	}
	for _, e := range owned {
		if here[e.ID] || n.isCreating(e.ID) {
			continue
		}
		if _, err := n.local.Record(ctx, e.ID); err == nil {
			continue // arrived since the list was read
		}
		switch e.State {
		case state.Hibernated:
			if e.Remote != "" {
				n.adopt(ctx, e)
			} else {
				n.markLost(ctx, e, "host "+n.id+" owns it but has no copy, and its hibernation is not in S3")
			}
		case state.Lost:
			n.importPlain(ctx, e)
		case state.Deleting:
			rec := e.Record
			rec.State = state.Deleted
			_, err := n.dir.Update(ctx, l, rec)
			errs = append(errs, err)
		default:
			n.markLost(ctx, e, fmt.Sprintf("host %s restarted without its record of it while it was %s; its memory is gone", n.id, e.State))
		}
	}
	return errors.Join(errs...)
}

// differs says the directory's copy of a local record is out of date.
// Last-use times change with every exec and are left out.
func differs(local state.Sandbox, e Entry) bool {
	if local.State != e.State || local.Generation != e.Generation || local.Reason != e.Reason {
		return true
	}
	a, b := local, e.Record
	a.LastUsedAt, b.LastUsedAt, a.UpdatedAt, b.UpdatedAt = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	return !bytes.Equal(encodeRecord(a), encodeRecord(b))
}

// discard remembers S3 objects to remove.
func (n *Node) discard(name string) {
	if name == "" || n.remote == nil {
		return
	}
	n.mu.Lock()
	n.garbage[name] = true
	n.mu.Unlock()
}

// collect removes the S3 objects nobody needs any more.
func (n *Node) collect(ctx context.Context) {
	n.mu.Lock()
	names := make([]string, 0, len(n.garbage))
	for name := range n.garbage {
		names = append(names, name)
	}
	n.mu.Unlock()
	for _, name := range names {
		if !n.unused(ctx, name) {
			continue
		}
		err := n.remote.DeleteDir(ctx, name)
		if err == nil || errors.Is(err, snapshot.ErrNotFound) {
			n.mu.Lock()
			delete(n.garbage, name)
			n.mu.Unlock()
		}
	}
}

// unused says nobody can want the hibernation stored under name any
// more: its sandbox is gone, or has moved on to a newer generation and
// does not name it. A failed push of the current generation is not
// garbage yet: it is pushed again.
func (n *Node) unused(ctx context.Context, name string) bool {
	rest, ok := strings.CutPrefix(name, "sandboxes/")
	id, genS, ok2 := strings.Cut(rest, "/")
	gen, err := strconv.ParseInt(genS, 10, 64)
	if !ok || !ok2 || err != nil {
		return false
	}
	e, err := n.dir.Get(ctx, id)
	switch {
	case errors.Is(err, ErrNotFound):
		return true
	case err != nil || e.Remote == name:
		return false
	case e.State == state.Deleted || e.State == state.Lost:
		return true
	}
	return e.Generation > gen
}

// Admit implements sandbox.Directory: the directory must admit a new
// sandbox here, race-free against every other create.
func (n *Node) Admit(ctx context.Context, sb state.Sandbox) error {
	l, ok := n.current()
	if !ok {
		return fmt.Errorf("%w: host %s cannot reach the directory; creates wait until it can", ErrUnavailable, n.id)
	}
	n.mu.Lock()
	n.creating[sb.ID] = true
	n.mu.Unlock()
	err := n.dir.Admit(ctx, l, sb)
	if err != nil {
		n.created(sb.ID)
	}
	return err
}

// isCreating says sandbox id is being created here: admitted, perhaps
// not yet in the local records.
func (n *Node) isCreating(id string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.creating[id]
}

func (n *Node) created(id string) {
	n.mu.Lock()
	delete(n.creating, id)
	n.mu.Unlock()
}

// Begin implements sandbox.Directory. A resume needs the directory's
// word that this host still owns the sandbox: otherwise a host cut off
// from the directory could resume a sandbox another host took over, and
// two VMs would run it. Other moves are recorded after the fact.
func (n *Node) Begin(ctx context.Context, sb state.Sandbox, during state.State) error {
	if during != state.Resuming {
		return nil
	}
	l, ok := n.current()
	if !ok {
		return fmt.Errorf("%w: host %s cannot reach the directory; a hibernated sandbox resumes once it can", ErrUnavailable, n.id)
	}
	sb.State = during
	old, err := n.dir.Update(ctx, l, sb)
	if errors.Is(err, ErrFenced) {
		n.wake() // the local copy is stale: the sync drops it
	}
	n.discard(old)
	return err
}

// Changed implements sandbox.Directory: it records sb's new state, if
// the directory answers; the sync catches up otherwise.
func (n *Node) Changed(ctx context.Context, sb state.Sandbox) {
	if sb.State != state.Creating {
		defer n.created(sb.ID) // the create ended, one way or the other
	}
	l, ok := n.current()
	if !ok || !n.connected() {
		return
	}
	old, err := n.dir.Update(ctx, l, sb)
	if errors.Is(err, ErrFenced) {
		n.wake()
	}
	if err != nil {
		n.log.Warn("directory not updated", "sandbox", sb.ID, "state", sb.State, "err", err)
	}
	n.discard(old)
}

// Hibernated implements sandbox.Directory: it stores the hibernation in
// S3 and records that it is there. A failed upload leaves nothing a pull
// would use (the manifest goes last); the sync retries it.
func (n *Node) Hibernated(ctx context.Context, sb state.Sandbox, spec snapshot.Spec, dir, disk string) error {
	if n.remote == nil {
		return nil
	}
	if _, ok := n.current(); !ok || !n.connected() {
		return fmt.Errorf("%w: hibernation of %s not stored in S3 yet", ErrUnavailable, sb.ID)
	}
	return n.pushLocked(ctx, sb, spec, dir, disk)
}

// pushLocked uploads a hibernation and records it; the caller holds the
// sandbox's lock.
func (n *Node) pushLocked(ctx context.Context, sb state.Sandbox, spec snapshot.Spec, dir, disk string) error {
	// Stored already (a sync that raced the hibernation's own push)? A
	// second push would replace the manifest under a name others rely on.
	if e, err := n.dir.Get(ctx, sb.ID); err == nil && e.Remote != "" && e.Generation == sb.Generation {
		return nil
	}
	start := time.Now()
	name, err := pushHibernation(ctx, n.remote, sb, spec, dir, disk)
	if err != nil {
		if name, nerr := snapshot.HibernationName(sb.ID, sb.Generation); nerr == nil {
			n.discard(name) // what got there before the failure; a retry pushes it again
		}
		return fmt.Errorf("store hibernation of %s in S3: %w", sb.ID, err)
	}
	n.mu.Lock()
	delete(n.garbage, name)
	n.mu.Unlock()
	l, _ := n.current()
	if err := n.dir.SetRemote(ctx, l, sb.ID, sb.Generation, name); err != nil {
		return err
	}
	n.log.Info("hibernation stored in S3", "sandbox", sb.ID, "remote", name, "took", time.Since(start))
	return nil
}

// List implements sandbox.Directory: a tenant's sandboxes on every host,
// or this host's own while the directory does not answer.
func (n *Node) List(ctx context.Context, tenant string) ([]state.Sandbox, error) {
	es, err := n.dir.List(ctx, tenant)
	if errors.Is(err, ErrUnavailable) && n.local != nil {
		n.log.Warn("directory unavailable: listing this host's sandboxes only", "err", err)
		return n.local.Records(ctx)
	}
	if err != nil {
		return nil, err
	}
	out := make([]state.Sandbox, len(es))
	for i, e := range es {
		out[i] = e.Record
	}
	return out, nil
}

// Drain stops new sandboxes from being placed here; the host keeps
// serving what it has. Close drains first.
func (n *Node) Drain(ctx context.Context) error {
	n.mu.Lock()
	n.draining = true
	n.mu.Unlock()
	return n.dir.SetDraining(ctx, n.id, true)
}

// Draining says the host takes no new sandboxes.
func (n *Node) Draining() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.draining
}

// Close leaves the cluster: call it after the sandboxes were closed
// (hibernated, and stored in S3). Hibernated sandboxes stored in S3 are
// released for other hosts to adopt at once, and the lease is ended so
// the rest is taken over without waiting for the TTL.
func (n *Node) Close(ctx context.Context) error {
	n.mu.Lock()
	if n.stopped {
		n.mu.Unlock()
		return nil
	}
	n.stopped = true
	n.draining = true
	n.mu.Unlock()
	close(n.stop)
	n.wg.Wait()
	var err error
	if l, ok := n.current(); ok {
		var released int
		released, err = n.dir.Leave(ctx, l)
		if err == nil {
			n.log.Info("left the cluster", "released", released)
		}
	}
	n.dir.Close()
	return err
}

// Crash stops the node as if its process had died: no more heartbeats,
// no writes, no leaving. Its sandboxes are taken over once its lease runs
// out. Tests use it to kill a host in-process; a host whose local state
// can no longer be trusted may use it too.
func (n *Node) Crash() {
	n.mu.Lock()
	if n.stopped {
		n.mu.Unlock()
		return
	}
	n.stopped, n.replaced = true, true
	n.mu.Unlock()
	close(n.stop)
	n.wg.Wait()
	n.dir.Close()
}
