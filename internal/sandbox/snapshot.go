package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
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
	// guest is freed on the host) instead of tmpfs in guest memory. Such
	// VMs boot cold: the language snapshots have a tmpfs layer.
	DiskMiB int `json:"disk_mib,omitempty"`
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

func (m *Manager) shape(s Shape) Shape {
	if s.VCPUs == 0 {
		s.VCPUs = m.cfg.VCPUs
	}
	if s.MemoryMiB == 0 {
		s.MemoryMiB = m.cfg.MemoryMiB
	}
	return s
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
	return m.acquire(ctx, t, cold, nil)
}

// acquire returns a VM of t. Mounts add disks, which a snapshot's machine
// does not have, so they mean a cold boot.
func (m *Manager) acquire(ctx context.Context, t *Template, cold bool, mounts []Mount) (*VM, error) {
	if cold || t.Shape.DiskMiB > 0 || len(mounts) > 0 || !t.Driver.Capabilities().Snapshot {
		return m.boot(ctx, t, m.cfg.BootTimeout, mounts...)
	}
	snap, err := m.snapshot(ctx, t)
	if err != nil {
		return nil, err
	}
	vm, err := m.restore(ctx, t, snap.Dir, "")
	if err != nil && ctx.Err() == nil {
		m.log.Warn("restore failed; booting cold", "op", "restore", "snapshot", snap.Key, "err", err)
		return m.boot(ctx, t, m.cfg.BootTimeout)
	}
	return vm, err
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

// createSnapshot makes t's snapshot; the caller holds t.snapMu.
func (m *Manager) createSnapshot(ctx context.Context, t *Template) (*snapshot.Snapshot, error) {
	start := time.Now()
	name := t.Entry.Name
	vm, err := m.boot(ctx, t, m.cfg.BootTimeout)
	if err != nil {
		return nil, fmt.Errorf("create snapshot of %s: %w", name, err)
	}
	defer vm.Close()
	if e := m.prewarmEntry(t.Entry); e != nil {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		err := vm.Agent.Prewarm(pctx, agentproto.PrewarmRequest{
			Argv: e.Prewarm.Run, Env: e.Env, Dir: image.PrewarmDir,
			Files: []agentproto.File{{Path: e.Prewarm.File, Content: []byte(e.Prewarm.Code)}},
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
	snap, err := m.snapshots.Create(t.Spec, func(dir string) error { return vm.Machine.Snapshot(ctx, dir) })
	if err != nil {
		return nil, fmt.Errorf("create snapshot of %s: %w", name, err)
	}
	m.snapshotsMade.Add(1)
	m.log.Info("snapshot created", "op", "snapshot", "snapshot", snap.Key, "took", time.Since(start))
	return snap, nil
}

// hibernatedDisk is the writable disk's name in a hibernation directory.
const hibernatedDisk = "upper.ext4"

// hibernationSpec is the Spec file of a hibernation directory: what the
// VM was, so a resume on a changed host is refused by name.
const hibernationSpec = "spec.json"

// Hibernate saves a VM whole (memory, which holds its writable layer, and
// device state) into dir, which must exist and be empty, and stops it.
// Resume brings it back. On error the VM is left running if it can be.
func (m *Manager) Hibernate(ctx context.Context, vm *VM, dir string) error {
	if vm.Agent != nil {
		vm.Agent.Close() // the guest waits for the next host, as in a template
		vm.Agent = nil
	}
	if err := vm.Machine.Pause(ctx); err != nil {
		return fmt.Errorf("hibernate: %w", err)
	}
	if err := vm.Machine.Snapshot(ctx, dir); err != nil {
		if rerr := vm.Machine.Resume(context.WithoutCancel(ctx)); rerr == nil {
			if conn, derr := vm.Machine.DialAgent(ctx); derr == nil {
				vm.Agent = agentproto.NewClient(conn)
			}
		}
		return fmt.Errorf("hibernate: %w", err)
	}
	stopErr := vm.Machine.Stop(context.WithoutCancel(ctx))
	if vm.disk != "" { // the writable layer goes with the memory
		if err := os.Rename(vm.disk, filepath.Join(dir, hibernatedDisk)); err != nil {
			return fmt.Errorf("hibernate: keep disk: %w", err)
		}
		vm.disk = ""
	}
	if err := sealHibernation(dir, vm.Template.Spec); err != nil {
		return errors.Join(fmt.Errorf("hibernate: %w", err), stopErr, vm.Close())
	}
	return errors.Join(stopErr, vm.Close())
}

// Resume restores a VM hibernated into dir by Hibernate. The language and
// shape must be those it was created with; a host whose kernel, image or
// VMM changed since refuses it with ErrIncompatible naming what changed,
// and leaves dir as it was.
func (m *Manager) Resume(ctx context.Context, e *image.Entry, shape Shape, dir string) (*VM, error) {
	t, err := m.Template(ctx, e, shape)
	if err != nil {
		return nil, err
	}
	if err := checkHibernation(dir, t.Spec); err != nil {
		return nil, fmt.Errorf("resume: %w", err)
	}
	disk := ""
	if t.Shape.DiskMiB > 0 { // take the disk back where restore looks for it
		disk = filepath.Join(dir, hibernatedDisk)
		if _, err := os.Stat(disk); err != nil {
			return nil, fmt.Errorf("resume: hibernated sandbox has no disk: %w", err)
		}
	}
	vm, err := m.restore(ctx, t, dir, disk)
	if err != nil {
		return nil, fmt.Errorf("resume: %w", err)
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
