package sandbox

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/guestkernel"
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
	return m.acquire(ctx, e, cold, shape, nil)
}

// acquire is AcquireShape with host directories mounted; mounts add disks,
// which a snapshot's machine does not have, so they mean a cold boot.
func (m *Manager) acquire(ctx context.Context, e *image.Entry, cold bool, shape Shape, mounts []Mount) (*VM, error) {
	if err := shape.Validate(); err != nil {
		return nil, err
	}
	shape = m.shape(shape)
	k, img, d, err := m.prepare(ctx, e)
	if err != nil {
		return nil, err
	}
	if cold || shape.DiskMiB > 0 || len(mounts) > 0 || !d.Capabilities().Snapshot {
		return m.boot(ctx, d, k, img, shape, m.cfg.BootTimeout, mounts...)
	}
	snap, err := m.snapshotFor(ctx, d, k, img, shape)
	if err != nil {
		return nil, err
	}
	vm, err := m.restore(ctx, d, k, img, shape, snap.Dir)
	if err != nil && ctx.Err() == nil {
		m.log.Warn("restore failed; booting cold", "snapshot", snap.Key, "err", err)
		return m.boot(ctx, d, k, img, shape, m.cfg.BootTimeout)
	}
	return vm, err
}

// SnapshotSpec is what a snapshot of img, in the default shape, must match
// on this host.
func (m *Manager) SnapshotSpec(ctx context.Context, d vmm.Driver, k *guestkernel.Kernel, img *image.Image) (snapshot.Spec, error) {
	return m.snapshotSpec(ctx, d, k, img, m.shape(Shape{}))
}

func (m *Manager) snapshotSpec(ctx context.Context, d vmm.Driver, k *guestkernel.Kernel, img *image.Image, shape Shape) (snapshot.Spec, error) {
	spec := snapshot.Spec{
		Language: img.Language, Driver: d.Name(), DriverVersion: d.Version(),
		KernelID: k.ID(), ImageID: img.ID, Machine: d.Capabilities().Accel,
		VCPUs: shape.VCPUs, MemoryMiB: shape.MemoryMiB, AgentProtocol: agentproto.ProtocolVersion,
	}
	if e := m.prewarmEntry(img.Language); e != nil {
		spec.Runtime = e.RuntimeID()
	}
	return spec, nil
}

// snapshotFor returns a verified snapshot, creating it if there is none
// and rebuilding it if the one there is corrupt or does not fit.
func (m *Manager) snapshotFor(ctx context.Context, d vmm.Driver, k *guestkernel.Kernel, img *image.Image, shape Shape) (*snapshot.Snapshot, error) {
	spec, err := m.snapshotSpec(ctx, d, k, img, shape)
	if err != nil {
		return nil, err
	}
	snap, err := m.snapshots.Get(spec)
	if err == nil {
		return snap, nil
	}
	if !errors.Is(err, snapshot.ErrNotFound) {
		m.log.Warn("snapshot unusable; rebuilding it", "snapshot", spec.Key(), "err", err)
		if rerr := m.snapshots.Remove(spec.Key()); rerr != nil {
			return nil, fmt.Errorf("remove bad snapshot: %w", rerr)
		}
	}
	return m.createSnapshot(ctx, d, k, img, shape, spec)
}

// CreateSnapshot boots img, waits for the agent, pauses and saves a full
// snapshot, replacing any existing one.
func (m *Manager) CreateSnapshot(ctx context.Context, e *image.Entry) (*snapshot.Snapshot, error) {
	k, img, d, err := m.prepare(ctx, e)
	if err != nil {
		return nil, err
	}
	if !d.Capabilities().Snapshot {
		return nil, fmt.Errorf("driver %s: %w", d.Name(), vmm.ErrUnsupported)
	}
	spec, err := m.SnapshotSpec(ctx, d, k, img)
	if err != nil {
		return nil, err
	}
	return m.createSnapshot(ctx, d, k, img, m.shape(Shape{}), spec)
}

func (m *Manager) createSnapshot(ctx context.Context, d vmm.Driver, k *guestkernel.Kernel, img *image.Image, shape Shape, spec snapshot.Spec) (*snapshot.Snapshot, error) {
	start := time.Now()
	vm, err := m.boot(ctx, d, k, img, shape, m.cfg.BootTimeout)
	if err != nil {
		return nil, fmt.Errorf("create snapshot of %s: %w", img.Language, err)
	}
	defer vm.Close()
	if e := m.prewarmEntry(img.Language); e != nil {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		err := vm.Agent.Prewarm(pctx, agentproto.PrewarmRequest{
			Argv: e.Prewarm.Run, Env: e.Env, Dir: image.PrewarmDir,
			Files: []agentproto.File{{Path: e.Prewarm.File, Content: []byte(e.Prewarm.Code)}},
		})
		cancel()
		if err != nil {
			return nil, fmt.Errorf("create snapshot of %s: start prewarmed runtime: %w", img.Language, err)
		}
	}
	// Close our end first: the guest sees the host leave and waits for
	// the next one, which is where every restore picks it up.
	vm.Agent.Close()
	vm.Agent = nil
	if err := vm.Machine.Pause(ctx); err != nil {
		return nil, fmt.Errorf("create snapshot of %s: %w", img.Language, err)
	}
	snap, err := m.snapshots.Create(spec, func(dir string) error { return vm.Machine.Snapshot(ctx, dir) })
	if err != nil {
		return nil, fmt.Errorf("create snapshot of %s: %w", img.Language, err)
	}
	m.log.Info("snapshot created", "snapshot", snap.Key, "took", time.Since(start))
	return snap, nil
}

// restore starts a VM from a snapshot directory and gives the guest its
// own clock, randomness and identity.
func (m *Manager) restore(ctx context.Context, d vmm.Driver, k *guestkernel.Kernel, img *image.Image, shape Shape, snapDir string) (*VM, error) {
	start := time.Now()
	id := newID("vm-")
	owner, err := m.claim(id)
	if err != nil {
		return nil, err
	}
	vm := &VM{owner: owner, Restored: true, Shape: shape}
	giveBack := "" // where a hibernated sandbox's disk returns if this fails
	fail := func(err error) (*VM, error) {
		if giveBack != "" {
			if vm.Machine != nil {
				_ = vm.Machine.Stop(context.WithoutCancel(ctx)) // before its disk moves
			}
			if os.Rename(vm.disk, giveBack) == nil {
				vm.disk = "" // the sandbox keeps its only copy
			}
		}
		vm.Close()
		return nil, err
	}
	if shape.DiskMiB > 0 {
		disk := m.diskPath(id)
		if err := os.MkdirAll(filepath.Dir(disk), 0o700); err != nil {
			return fail(err)
		}
		if err := os.Rename(filepath.Join(snapDir, hibernatedDisk), disk); err != nil {
			return fail(fmt.Errorf("restore: writable disk: %w", err))
		}
		vm.disk, giveBack = disk, filepath.Join(snapDir, hibernatedDisk)
	}
	cfg, err := m.vmConfig(d, k, img, shape, id, vm.disk, nil, nil)
	if err != nil {
		return fail(err)
	}
	mach, err := d.Restore(ctx, snapDir, cfg)
	if err != nil {
		return fail(err)
	}
	vm.Machine = mach
	if err := m.connect(ctx, vm, restoreTimeout); err != nil {
		return fail(err)
	}
	entropy := make([]byte, 64)
	_, _ = rand.Read(entropy)
	rctx, cancel := context.WithTimeout(ctx, restoreTimeout)
	defer cancel()
	if _, err := vm.Agent.Resync(rctx, agentproto.ResyncRequest{
		UnixNanos: time.Now().UnixNano(), Entropy: entropy, Identity: id,
	}); err != nil {
		return fail(fmt.Errorf("resync restored VM: %w", err))
	}
	vm.Ready = time.Since(start)
	return vm, nil
}

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
	return errors.Join(stopErr, vm.Close())
}

// hibernatedDisk is the writable disk's name in a hibernation directory.
const hibernatedDisk = "upper.ext4"

// Resume restores a VM hibernated into dir by Hibernate. The language and
// shape must be those it was created with.
func (m *Manager) Resume(ctx context.Context, e *image.Entry, shape Shape, dir string) (*VM, error) {
	if err := shape.Validate(); err != nil {
		return nil, err
	}
	shape = m.shape(shape)
	k, img, d, err := m.prepare(ctx, e)
	if err != nil {
		return nil, err
	}
	if shape.DiskMiB > 0 { // take the disk back where restore looks for it
		if _, err := os.Stat(filepath.Join(dir, hibernatedDisk)); err != nil {
			return nil, fmt.Errorf("resume: hibernated sandbox has no disk: %w", err)
		}
	}
	vm, err := m.restore(ctx, d, k, img, shape, dir)
	if err != nil {
		return nil, fmt.Errorf("resume: %w", err)
	}
	return vm, nil
}

// prewarmEntry returns the language's entry if its snapshots hold a
// prewarmed runtime, else nil.
func (m *Manager) prewarmEntry(language string) *image.Entry {
	if m.cfg.NoPrewarm {
		return nil
	}
	e, err := m.catalog.Lookup(language, "")
	if err != nil || e.Prewarm == nil {
		return nil
	}
	return e
}
