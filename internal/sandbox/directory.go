package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/firesandbox/firesandbox/internal/snapshot"
	"github.com/firesandbox/firesandbox/internal/state"
)

// Directory is where the sandboxes of many hosts are known: a cluster's
// shared directory (internal/cluster's Node implements it). Sandboxes
// tells it of every change; without one (nil), a host keeps its sandboxes
// to itself, as on one machine.
//
//	create:     Admit (may refuse: no room, no lease) -> VM -> Changed(running)
//	transition: Begin(during) (may refuse) -> slow step -> Changed(result)
//	hibernate:  ... Changed(hibernated) -> Hibernated(files), under the sandbox's lock
//	list:       List(tenant) answers for every host
type Directory interface {
	// Admit reserves room on this host for sb (state creating) before its
	// VM starts; an error fails the create and leaves nothing behind.
	Admit(ctx context.Context, sb state.Sandbox) error
	// Begin is told that sb is about to enter the in-between state during;
	// an error refuses the operation, leaving the sandbox as it was.
	Begin(ctx context.Context, sb state.Sandbox, during state.State) error
	// Changed is told where sb ended up. Its failures are the directory's
	// to retry; the change stands on this host.
	Changed(ctx context.Context, sb state.Sandbox)
	// Hibernated is given a fresh hibernation's files (its sealed snapshot
	// directory, its disk or "") and spec (the template's, with DiskMiB)
	// while no operation can change them, to keep a copy elsewhere. An
	// error leaves the sandbox hibernated here.
	Hibernated(ctx context.Context, sb state.Sandbox, spec snapshot.Spec, dir, disk string) error
	// List returns a tenant's sandboxes on every host.
	List(ctx context.Context, tenant string) ([]state.Sandbox, error)
}

// begin asks the directory, if any, to let sandbox id enter during.
func (s *Sandboxes) begin(ctx context.Context, id string, during state.State) error {
	if s.cfg.Directory == nil {
		return nil
	}
	sb, err := s.db.Get(ctx, id)
	if err != nil {
		return err
	}
	return s.cfg.Directory.Begin(ctx, sb, during)
}

// changed tells the directory, if any, where sandbox id is now.
func (s *Sandboxes) changed(ctx context.Context, id string) {
	if s.cfg.Directory == nil {
		return
	}
	if sb, err := s.db.Get(context.WithoutCancel(ctx), id); err == nil {
		s.cfg.Directory.Changed(context.WithoutCancel(ctx), sb)
	}
}

// hibernationSpec is the Spec a copy of sb's hibernation, disk included,
// must match on this host.
func (s *Sandboxes) hibernationSpec(ctx context.Context, sb state.Sandbox) (*Template, snapshot.Spec, error) {
	e, err := s.mgr.catalog.Lookup(sb.Language, sb.Version)
	if err != nil {
		return nil, snapshot.Spec{}, err
	}
	// A sandbox has a network device where its host has a network: the
	// hosts of a cluster are alike in that, as in their kernel and VMM.
	t, err := s.mgr.Template(ctx, e, Shape{VCPUs: sb.VCPUs, MemoryMiB: sb.MemoryMiB, DiskMiB: sb.DiskMiB, Network: s.mgr.HasNetwork()})
	if err != nil {
		return nil, snapshot.Spec{}, err
	}
	spec := t.Spec
	spec.DiskMiB = sb.DiskMiB
	return t, spec, nil
}

// Records returns every sandbox this host has a record of, deleted ones
// excepted, for a directory to compare with its own.
func (s *Sandboxes) Records(ctx context.Context) ([]state.Sandbox, error) { return s.db.List(ctx) }

// Record returns one local sandbox record, whoever its tenant is.
func (s *Sandboxes) Record(ctx context.Context, id string) (state.Sandbox, error) {
	return s.db.Get(ctx, id)
}

// Import adds a sandbox another host had: a hibernated one, or a lost or
// deleted one (no files; fill is not called), so that its clients get
// the sandbox's real state from here. For a hibernated one, fill writes
// the hibernation into dir (its snapshot files) and disk (its writable
// disk, "" if it has none), having checked it against spec, this host's
// Spec for it; the files are then sealed as this host's own. The record
// keeps sb's generation. A sandbox this host already has is refused
// (Drop it first).
func (s *Sandboxes) Import(ctx context.Context, sb state.Sandbox, fill func(ctx context.Context, spec snapshot.Spec, dir, disk string) error) error {
	if _, err := s.db.Get(ctx, sb.ID); err == nil {
		return fmt.Errorf("import sandbox %s: %w: it is already here", sb.ID, state.ErrConflict)
	} else if !errors.Is(err, state.ErrNotFound) {
		return err
	}
	b, err := s.boxFor(sb.ID)
	if err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	sb.SnapshotDir = ""
	switch sb.State {
	case state.Lost, state.Deleted:
	case state.Hibernated:
		t, spec, err := s.hibernationSpec(ctx, sb)
		if err != nil {
			return fmt.Errorf("import sandbox %s: %w", sb.ID, err)
		}
		dir := s.dirOf(sb.ID)
		final := filepath.Join(dir, snapshotDirName)
		tmp := final + ".tmp"
		disk := ""
		if sb.DiskMiB > 0 {
			disk = s.diskOf(sb.ID)
		}
		fail := func(err error) error {
			os.RemoveAll(dir)
			s.forget(sb.ID)
			return fmt.Errorf("import sandbox %s: %w", sb.ID, err)
		}
		os.RemoveAll(dir)
		if err := os.MkdirAll(tmp, 0o700); err != nil {
			return fail(err)
		}
		if err := fill(ctx, spec, tmp, disk); err != nil {
			return fail(err)
		}
		if err := sealHibernation(tmp, t.Spec); err != nil {
			return fail(err)
		}
		if err := os.Rename(tmp, final); err != nil {
			return fail(err)
		}
		sb.SnapshotDir = final
	default:
		return fmt.Errorf("%w: import sandbox %s in state %s: only hibernated, lost or deleted ones move", ErrBadRequest, sb.ID, sb.State)
	}
	if err := s.db.Create(ctx, sb); err != nil {
		os.RemoveAll(s.dirOf(sb.ID))
		s.forget(sb.ID)
		return err
	}
	s.log.Info("sandbox imported", "op", "import", "sandbox", sb.ID, "state", sb.State, "generation", sb.Generation)
	return nil
}

// Drop forgets a sandbox that another host owns now: its VM (if any) is
// stopped without a hibernation, its files and its record go. The
// directory is not told: it is the reason.
func (s *Sandboxes) Drop(ctx context.Context, id string) error {
	b, err := s.boxFor(id)
	if err != nil {
		return err
	}
	b.stopOps()
	b.mu.Lock()
	defer b.mu.Unlock()
	s.dropVM(b)
	os.RemoveAll(s.dirOf(id))
	if err := s.db.Remove(context.WithoutCancel(ctx), id); err != nil {
		return err
	}
	s.mu.Lock()
	delete(s.boxes, id)
	s.mu.Unlock()
	s.log.Info("sandbox dropped: another host owns it now", "op", "drop", "sandbox", id)
	return nil
}

// WithHibernation runs fn with a hibernated sandbox's files (as
// Directory.Hibernated gets them) while no operation can change them.
func (s *Sandboxes) WithHibernation(ctx context.Context, id string, fn func(ctx context.Context, sb state.Sandbox, spec snapshot.Spec, dir, disk string) error) error {
	b, err := s.boxFor(id)
	if err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	sb, err := s.db.Get(ctx, id)
	if err != nil {
		return err
	}
	if sb.State != state.Hibernated || sb.SnapshotDir == "" {
		return fmt.Errorf("%w: sandbox %s is %s", ErrSandboxBusy, id, sb.State)
	}
	_, spec, err := s.hibernationSpec(ctx, sb)
	if err != nil {
		return err
	}
	disk, done := "", func() {}
	if sb.DiskMiB > 0 {
		if disk, done, err = s.mgr.portableDisk(ctx, s.diskOf(id)); err != nil {
			return err
		}
	}
	defer done()
	return fn(ctx, sb, spec, sb.SnapshotDir, disk)
}
