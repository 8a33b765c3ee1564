package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/guestkernel"
	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/snapshot"
	"github.com/firesandbox/firesandbox/internal/vmm"
)

// Template is everything a VM of one language and shape needs, resolved
// once: the catalog entry, the kernel, the image layers, the driver, the
// snapshot Spec and the base machine configuration. Templates are cached
// by the Manager until one of their inputs (kernel, image, driver) changes
// on disk; their snapshot is created on first use, single-flight.
type Template struct {
	Entry  *image.Entry
	Shape  Shape
	Kernel *guestkernel.Kernel
	Image  *image.Image
	Layers []*image.Image
	Driver vmm.Driver
	// Spec is what this template's snapshot must match.
	Spec snapshot.Spec
	// Base is the machine every VM of the template starts from: kernel,
	// initramfs, shape, one read-only disk per image layer and the boot
	// arguments that stack them. ID, RunDir and per-VM disks are added
	// per VM (see machineConfig).
	Base vmm.Config

	inputs stamps // the files the template was resolved from

	snapMu    sync.Mutex // single-flight creation of the snapshot
	snap      *snapshot.Snapshot
	snapFiles stamps    // the snapshot's files when it was last verified
	snapUsed  time.Time // when the store last heard of a use
}

// templateKey names a template: a catalog entry (name and version) in one
// shape.
type templateKey struct {
	language, version string
	shape             Shape
}

// templates caches resolved templates; guarded by mu.
type templates struct {
	mu    sync.Mutex
	byKey map[templateKey]*Template
	// resolves counts resolutions (not cache hits), for tests and metrics.
	resolves int
}

// Template returns the template for e in shape, resolving it on first use
// or when its kernel, image or driver changed since. It does no fork/exec
// and reads no manifest on a hit: the inputs are checked by stat.
func (m *Manager) Template(ctx context.Context, e *image.Entry, shape Shape) (*Template, error) {
	if err := shape.Validate(); err != nil {
		return nil, err
	}
	shape = m.shapeFor(e, shape)
	key := templateKey{e.Name, e.Version, shape}
	m.tmpl.mu.Lock()
	defer m.tmpl.mu.Unlock()
	if t := m.tmpl.byKey[key]; t != nil && !t.inputs.changed() {
		return t, nil
	}
	t, err := m.resolve(ctx, e, key.shape)
	if err != nil {
		return nil, err
	}
	if m.tmpl.byKey == nil {
		m.tmpl.byKey = map[templateKey]*Template{}
	}
	m.tmpl.byKey[key] = t
	m.tmpl.resolves++
	m.log.Debug("template resolved", "op", "template", "language", e.Name, "snapshot", t.Spec.Key())
	return t, nil
}

// resolve reads the inputs of a template: the kernel, the entry's image and
// its layers, and the driver's version.
func (m *Manager) resolve(ctx context.Context, e *image.Entry, shape Shape) (*Template, error) {
	k, err := guestkernel.Load(m.cfg.DataDir)
	if err != nil {
		return nil, err
	}
	img, err := m.images.ForEntry(e, m.cfg.ImageFormat)
	if err != nil {
		return nil, err
	}
	d, err := m.vmmDriver(ctx, k, img)
	if err != nil {
		return nil, err
	}
	return m.newTemplate(ctx, e, shape, k, img, d)
}

// newTemplate assembles a template from resolved parts.
func (m *Manager) newTemplate(ctx context.Context, e *image.Entry, shape Shape, k *guestkernel.Kernel, img *image.Image, d vmm.Driver) (*Template, error) {
	layers, err := m.images.Layers(img)
	if err != nil {
		return nil, err
	}
	t := &Template{Entry: e, Shape: shape, Kernel: k, Image: img, Layers: layers, Driver: d}
	t.Spec = snapshot.Spec{
		Language: img.Language, Driver: d.Name(), DriverVersion: d.Version(), Machine: machineOf(d.Capabilities()),
		KernelID: k.ID(), ImageID: img.ID,
		VCPUs: shape.VCPUs, MemoryMiB: shape.MemoryMiB, DiskMiB: shape.DiskMiB, AgentProtocol: agentproto.ProtocolVersion,
	}
	if pe := m.prewarmEntry(e); pe != nil {
		t.Spec.Runtime = pe.RuntimeID()
	}
	t.Spec.Network = m.networkSpec(shape)
	var disks []vmm.Disk
	var refs []string
	for i, l := range layers {
		did := fmt.Sprintf("layer%d", i)
		disks = append(disks, vmm.Disk{ID: did, Path: l.Path(), ReadOnly: true})
		refs = append(refs, vmm.GuestDiskRef(d.Capabilities(), i, did))
	}
	args, err := agentproto.Boot{Root: refs, RootFS: img.Format}.Args()
	if err != nil {
		return nil, fmt.Errorf("template %s: %w", e.Name, err)
	}
	t.Base = vmm.Config{
		Kernel: k.Vmlinux, Initrd: k.Initramfs, VCPUs: shape.VCPUs, MemoryMiB: shape.MemoryMiB,
		Disks:   disks,
		Cmdline: args,
	}
	inputs := []string{filepath.Join(m.cfg.DataDir, "kernels", "current"), filepath.Join(k.Dir, "manifest.json")}
	for _, l := range layers {
		inputs = append(inputs, filepath.Join(l.Dir, "manifest.json"), l.Path())
	}
	if t.inputs, err = stampFiles(inputs...); err != nil {
		return nil, fmt.Errorf("template %s: %w", e.Name, err)
	}
	return t, nil
}

// machineOf is the Spec's Machine: what of the driver's setup is in the
// saved CPU state (accelerator and CPU model).
func machineOf(c vmm.Capabilities) string {
	if c.CPU == "" {
		return c.Accel
	}
	return c.Accel + ",cpu=" + c.CPU
}

// probeBoot boots one VM of img with driver d and stops it: the KVM probe.
func (m *Manager) probeBoot(ctx context.Context, d vmm.Driver, k *guestkernel.Kernel, img *image.Image, timeout time.Duration) error {
	e, err := m.catalog.Lookup(img.Language, "")
	if err != nil {
		return err
	}
	t, err := m.newTemplate(ctx, e, m.shapeFor(e, Shape{}), k, img, d)
	if err != nil {
		return err
	}
	vm, err := m.boot(ctx, t, timeout, StartOptions{})
	if err != nil {
		return err
	}
	return vm.Close()
}

// machineConfig is the configuration of one VM of t: the base plus its id,
// run directory, writable disk and packed mounts.
func (m *Manager) machineConfig(t *Template, id, disk string, mounts []Mount, volumes []string) (vmm.Config, error) {
	cfg := t.Base
	cfg.ID = id
	cfg.RunDir = filepath.Join(m.cfg.RunDir, id)
	cfg.Disks = append([]vmm.Disk(nil), t.Base.Disks...)
	cfg.Cmdline = append([]string(nil), t.Base.Cmdline...)
	caps := t.Driver.Capabilities()
	var boot agentproto.Boot
	if disk != "" {
		cfg.Disks = append(cfg.Disks, vmm.Disk{ID: "upper", Path: disk})
		boot.Upper = vmm.GuestDiskRef(caps, len(cfg.Disks)-1, "upper")
	}
	for i, v := range volumes {
		did := fmt.Sprintf("mount%d", i)
		cfg.Disks = append(cfg.Disks, vmm.Disk{ID: did, Path: v, ReadOnly: true})
		boot.Mounts = append(boot.Mounts, agentproto.Mount{Disk: vmm.GuestDiskRef(caps, len(cfg.Disks)-1, did), Dir: mounts[i].GuestDir})
	}
	args, err := boot.Args()
	if err != nil {
		return vmm.Config{}, fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	cfg.Cmdline = append(cfg.Cmdline, args...)
	return cfg, nil
}

// snapshot returns t's verified snapshot, creating it on first use and
// rebuilding it if it is corrupt or does not fit. Concurrent callers wait
// for one creation. A snapshot already verified is trusted while its files
// are unchanged (by stat), so a restore reads no manifest.
func (m *Manager) snapshot(ctx context.Context, t *Template) (*snapshot.Snapshot, error) {
	t.snapMu.Lock()
	defer t.snapMu.Unlock()
	if t.snap != nil && !t.snapFiles.changed() {
		if now := time.Now(); now.Sub(t.snapUsed) >= usedEvery {
			m.snapshots.Touch(t.snap, now)
			t.snapUsed = now
		}
		return t.snap, nil
	}
	t.snap = nil
	snap, err := m.snapshots.Get(t.Spec)
	if err != nil && !errors.Is(err, snapshot.ErrNotFound) {
		m.log.Warn("snapshot unusable; rebuilding it", "op", "snapshot", "snapshot", t.Spec.Key(), "err", err)
		if rerr := m.snapshots.Remove(t.Spec.Key()); rerr != nil {
			return nil, fmt.Errorf("remove bad snapshot: %w", rerr)
		}
	}
	if err != nil {
		if snap, err = m.createSnapshot(ctx, t); err != nil {
			return nil, err
		}
	}
	if err := m.remember(t, snap); err != nil {
		return nil, err
	}
	return snap, nil
}

// remember caches snap as t's verified snapshot.
func (m *Manager) remember(t *Template, snap *snapshot.Snapshot) error {
	paths := []string{filepath.Join(snap.Dir, "manifest.json")}
	for name := range snap.Files {
		paths = append(paths, filepath.Join(snap.Dir, name))
	}
	st, err := stampFiles(paths...)
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", snap.Key, err)
	}
	t.snap, t.snapFiles, t.snapUsed = snap, st, time.Now()
	return nil
}

// stamp identifies one version of a file without reading it.
type stamp struct {
	path  string
	dev   uint64
	ino   uint64
	size  int64
	mtime int64
}

// stamps are the versions of a set of files.
type stamps []stamp

func stampOf(p string) (stamp, error) {
	fi, err := os.Stat(p)
	if err != nil {
		return stamp{}, err
	}
	s := stamp{path: p, size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		s.dev, s.ino = uint64(st.Dev), st.Ino
	}
	return s, nil
}

func stampFiles(paths ...string) (stamps, error) {
	out := make(stamps, 0, len(paths))
	for _, p := range paths {
		s, err := stampOf(p)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// changed says whether any file is gone or differs from its stamp.
func (ss stamps) changed() bool {
	for _, s := range ss {
		now, err := stampOf(s.path)
		if err != nil || now != s {
			return true
		}
	}
	return false
}

// usedEvery is how often a restore refreshes its snapshot's last-use time
// (the LRU's clock): often enough for eviction, rarely enough to cost nothing.
const usedEvery = time.Minute
