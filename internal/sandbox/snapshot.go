package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/disk"
	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/snapshot"
	"github.com/firesandbox/firesandbox/internal/vmm"
)

// restoreTimeout bounds a restore up to the agent's answer. Restores take
// a few hundred milliseconds even under TCG; a stuck one falls back to a
// cold boot rather than keeping the caller waiting.
const restoreTimeout = 20 * time.Second

// Snapshots returns the local snapshot store.
func (m *Manager) Snapshots() *snapshot.Store { return m.snapshots }

// Shape is a VM's size. Zero fields take the Manager's defaults.
type Shape struct {
	VCPUs     int `json:"vcpus"`
	MemoryMiB int `json:"memory_mib"`
	// DiskMiB, if set, gives the VM a writable layer on a sparse ext4
	// disk of that size (mounted with discard, so space freed in the
	// guest is freed on the host) instead of tmpfs in guest memory. Each
	// disk size has its own snapshot, which holds the pristine disk.
	DiskMiB int `json:"disk_mib,omitempty"`
	// Network gives the VM a network device (see network.go): its own
	// namespace and tap, what it may reach set by its policy. Templates
	// with one have their own snapshots; without it (the default) a VM
	// has no interface at all, and costs nothing for it.
	Network bool `json:"network,omitempty"`
}

// Validate checks a requested shape.
func (s Shape) Validate() error {
	if s.VCPUs < 0 || s.VCPUs > 32 || s.MemoryMiB < 0 || (s.MemoryMiB != 0 && (s.MemoryMiB < 128 || s.MemoryMiB > 64<<10)) {
		return fmt.Errorf("%w: %d vCPUs and %d MiB: want 1-32 vCPUs and 128-65536 MiB", ErrBadRequest, s.VCPUs, s.MemoryMiB)
	}
	if s.DiskMiB < 0 || (s.DiskMiB != 0 && (s.DiskMiB < 64 || s.DiskMiB > 64<<10)) {
		return fmt.Errorf("%w: disk %d MiB: want 0 (memory) or 64-65536 MiB", ErrBadRequest, s.DiskMiB)
	}
	return nil
}

// shapeFor fills a shape's zero fields for language e: the Manager's
// defaults, raised to what the language needs (a JVM wants 1 GiB).
func (m *Manager) shapeFor(e *image.Entry, s Shape) Shape {
	def := e.Shape(image.Shape{VCPUs: m.cfg.VCPUs, MemoryMiB: m.cfg.MemoryMiB})
	if s.VCPUs == 0 {
		s.VCPUs = def.VCPUs
	}
	if s.MemoryMiB == 0 {
		s.MemoryMiB = def.MemoryMiB
	}
	return s
}

// Slowdown is how much slower than KVM this host's guests run (10 under
// TCG, 1 on KVM): the language's default time limits are scaled by it, so
// a program that takes seconds on KVM does not hit its limit under
// emulation. Limits a request sets are kept exactly.
func (m *Manager) Slowdown(ctx context.Context, e *image.Entry) float64 {
	t, err := m.Template(ctx, e, Shape{})
	if err != nil {
		return 1
	}
	return image.Slowdown(t.Driver.Capabilities().Accel)
}

// stepLimits is what a compile or run step of vm's language gets: the
// request's limits over the language's defaults, scaled to the accelerator.
func stepLimits(vm *VM, e *image.Entry, req agentproto.Limits) agentproto.Limits {
	return merge(req, e.StepLimits(image.Slowdown(vm.Template.Driver.Capabilities().Accel)))
}

// Acquire returns a ready VM for a language: restored from its snapshot
// when the driver can (creating the snapshot on first use), else, or with
// cold, booted.
func (m *Manager) Acquire(ctx context.Context, e *image.Entry, cold bool) (*VM, error) {
	return m.AcquireShape(ctx, e, cold, Shape{})
}

// AcquireShape is Acquire for a VM of a given shape; each shape has its
// own snapshot.
func (m *Manager) AcquireShape(ctx context.Context, e *image.Entry, cold bool, shape Shape) (*VM, error) {
	t, err := m.Template(ctx, e, shape)
	if err != nil {
		return nil, err
	}
	return m.Start(ctx, t, StartOptions{Cold: cold})
}

// CreateSnapshot boots e's template, waits for the agent, pauses and saves
// a full snapshot, replacing any existing one.
func (m *Manager) CreateSnapshot(ctx context.Context, e *image.Entry) (*snapshot.Snapshot, error) {
	t, err := m.Template(ctx, e, Shape{})
	if err != nil {
		return nil, err
	}
	if !t.Driver.Capabilities().Snapshot {
		return nil, fmt.Errorf("driver %s: %w", t.Driver.Name(), vmm.ErrUnsupported)
	}
	t.snapMu.Lock()
	defer t.snapMu.Unlock()
	t.snap = nil
	snap, err := m.createSnapshot(ctx, t)
	if err != nil {
		return nil, err
	}
	return snap, m.remember(t, snap)
}

// createSnapshot makes t's snapshot; the caller holds t.snapMu. A shape
// with a disk boots on a fresh sparse disk, which goes into the snapshot
// as it was when the VM paused: the pristine disk every restore copies.
func (m *Manager) createSnapshot(ctx context.Context, t *Template) (*snapshot.Snapshot, error) {
	start := time.Now()
	name := t.Entry.Name
	vm, err := m.boot(ctx, t, m.cfg.BootTimeout, StartOptions{})
	if err != nil {
		return nil, fmt.Errorf("create snapshot of %s: %w", name, err)
	}
	defer vm.Close()
	if e := m.prewarmEntry(t.Entry); e != nil {
		wait := 2 * time.Minute
		if e.Prewarm.Spares > 0 { // each loads and warms up in turn (typescript's compiles a program)
			wait = time.Duration(2+e.Prewarm.Spares) * 2 * time.Minute
		}
		pctx, cancel := context.WithTimeout(ctx, wait)
		err := vm.Agent.Prewarm(pctx, agentproto.PrewarmRequest{
			Argv: e.Prewarm.Run, Env: e.Env, Dir: image.PrewarmDir,
			Files:  []agentproto.File{{Path: e.Prewarm.File, Content: []byte(e.Prewarm.Code)}},
			Spares: e.Prewarm.Spares, Accept: e.Prewarm.Accept, ReadyMillis: (wait / time.Duration(2+e.Prewarm.Spares)).Milliseconds(),
		})
		cancel()
		if err != nil {
			return nil, fmt.Errorf("create snapshot of %s: start prewarmed runtime: %w", name, err)
		}
	}
	// Close our end first: the guest sees the host leave and waits for
	// the next one, which is where every restore picks it up.
	vm.Agent.Close()
	vm.Agent = nil
	if err := vm.Machine.Pause(ctx); err != nil {
		return nil, fmt.Errorf("create snapshot of %s: %w", name, err)
	}
	snap, err := m.snapshots.Create(t.Spec, func(dir string) error {
		if err := vm.Machine.Snapshot(ctx, dir); err != nil {
			return err
		}
		if vm.disk == "" {
			return nil
		}
		// Nothing may write the disk once it is the snapshot's.
		if err := vm.Machine.Stop(context.WithoutCancel(ctx)); err != nil {
			return err
		}
		return moveFile(ctx, vm.disk, filepath.Join(dir, snapshotDisk))
	})
	if err != nil {
		return nil, fmt.Errorf("create snapshot of %s: %w", name, err)
	}
	m.snapshotsMade.Add(1)
	m.log.Info("snapshot created", "op", "snapshot", "snapshot", snap.Key, "disk_mib", t.Shape.DiskMiB, "took", time.Since(start))
	return snap, nil
}

// moveFile renames src to dst, or copies it where they are on different
// file systems.
func moveFile(ctx context.Context, src, dst string) error {
	err := os.Rename(src, dst)
	if errors.Is(err, syscall.EXDEV) {
		if _, err = disk.Clone(ctx, src, dst); err == nil {
			os.Remove(src)
		}
	}
	return err
}

// Hibernate saves a VM whole (memory and device state) into dir, which
// must exist and be empty, and stops it. A writable disk stays where it
// is, with its owner. Resume brings the VM back. On error the VM is left
// running if it can be.
func (m *Manager) Hibernate(ctx context.Context, vm *VM, dir string) error {
	if err := m.save(ctx, vm, dir); err != nil {
		return fmt.Errorf("hibernate: %w", err)
	}
	stopErr := vm.Machine.Stop(context.WithoutCancel(ctx))
	if err := sealHibernation(dir, vm.Template.Spec); err != nil {
		return errors.Join(fmt.Errorf("hibernate: %w", err), stopErr, vm.Close())
	}
	return errors.Join(stopErr, vm.Close())
}

// save pauses vm and writes its memory and device state into dir. The
// agent connection is closed first (the guest waits for the next host, as
// in a template). On error the VM is running again, if it can be.
func (m *Manager) save(ctx context.Context, vm *VM, dir string) error {
	if vm.Agent != nil {
		vm.Agent.Close()
		vm.Agent = nil
	}
	if err := vm.Machine.Pause(ctx); err != nil {
		return errors.Join(err, m.reconnect(ctx, vm))
	}
	if err := vm.Machine.Snapshot(ctx, dir); err != nil {
		return errors.Join(err, m.continueVM(ctx, vm))
	}
	return nil
}

// continueVM resumes a paused VM and connects to its agent again.
func (m *Manager) continueVM(ctx context.Context, vm *VM) error {
	if err := vm.Machine.Resume(context.WithoutCancel(ctx)); err != nil {
		return err
	}
	return m.reconnect(ctx, vm)
}

// reconnect dials a running VM's agent and waits for its Hello.
func (m *Manager) reconnect(ctx context.Context, vm *VM) error {
	if vm.Machine.State() != vmm.StateRunning {
		return nil
	}
	return m.connect(context.WithoutCancel(ctx), vm, restoreTimeout)
}

// Resume restores a VM of t hibernated into dir by Hibernate, with its
// writable disk at disk (if t's shape has one). A host whose kernel, image
// or VMM changed since refuses it with ErrIncompatible naming what
// changed, and leaves dir and disk as they were.
func (m *Manager) Resume(ctx context.Context, t *Template, dir, disk string) (*VM, error) {
	if err := checkHibernation(dir, t.Spec); err != nil {
		return nil, fmt.Errorf("resume: %w", err)
	}
	d := vmDisk{kept: true}
	if t.Shape.DiskMiB > 0 {
		if !m.layers.Exists(disk) {
			return nil, fmt.Errorf("resume: hibernated sandbox has no disk at %s", disk)
		}
		d.path = disk
	}
	vm, err := m.restore(ctx, t, dir, d)
	if err != nil {
		return nil, fmt.Errorf("resume: %w", err)
	}
	return vm, nil
}

// ForkSnapshot is a running VM saved by Fork for its children: the
// directory, and what the VM was made from.
type ForkSnapshot struct {
	Dir  string
	Spec snapshot.Spec
}

// Fork saves a running VM whole into dir, which must exist and be empty
// (memory, device state and, for a shape with a disk, a copy of the disk
// taken while the VM is paused), and lets it run on: the parent of a
// fork, with its clock set again. Children start from it with StartFork,
// each with its own disk. The directory is not sealed: it lives only
// while its children start, in this process, which wrote it. On error
// the VM runs on if it can.
func (m *Manager) Fork(ctx context.Context, vm *VM, dir string) (ForkSnapshot, error) {
	ctx = context.WithoutCancel(ctx) // a half-done fork must not strand the parent paused
	if err := m.save(ctx, vm, dir); err != nil {
		return ForkSnapshot{}, fmt.Errorf("fork: %w", err)
	}
	var err error
	if vm.layer != nil {
		err = vm.layer.Save(ctx, filepath.Join(dir, snapshotDisk))
	}
	if cerr := m.continueVM(ctx, vm); cerr != nil {
		return ForkSnapshot{}, errors.Join(fmt.Errorf("fork: resume the parent: %w", cerr), err)
	}
	// The parent was paused: its clock lags. It keeps its identity.
	if rerr := m.resync(ctx, vm, vm.identity); rerr != nil {
		m.log.Warn("fork: resync the parent", "op", "fork", "vm", vm.Machine.ID(), "err", rerr)
	}
	if err != nil {
		return ForkSnapshot{}, fmt.Errorf("fork: %w", err)
	}
	return ForkSnapshot{Dir: dir, Spec: vm.Template.Spec}, nil
}

// StartFork restores a child of a fork saved by Fork, with its own copy
// of the parent's disk at keep (for a shape with one). A template made
// for anything else than the parent (another kernel, image or VMM)
// refuses it with ErrIncompatible.
func (m *Manager) StartFork(ctx context.Context, t *Template, fs ForkSnapshot, keep string) (*VM, error) {
	if diff := fs.Spec.Diff(t.Spec); len(diff) > 0 {
		return nil, fmt.Errorf("fork: %w: the parent ran on another host state (%v)", vmm.ErrIncompatible, diff)
	}
	vm, err := m.restoreCopy(ctx, t, fs.Dir, keep, nil /* the parent's disk, copied */)
	if err != nil {
		return nil, fmt.Errorf("fork: %w", err)
	}
	return vm, nil
}

// prewarmEntry returns e if its snapshots hold a prewarmed runtime, else nil.
func (m *Manager) prewarmEntry(e *image.Entry) *image.Entry {
	if m.cfg.NoPrewarm || e.Prewarm == nil {
		return nil
	}
	return e
}
