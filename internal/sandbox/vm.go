package sandbox

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/disk"
	"github.com/firesandbox/firesandbox/internal/vmm"
)

// VM is a booted machine with a connected agent.
type VM struct {
	Machine vmm.Machine
	Agent   *agentproto.Client
	// Ready is the time from asking for the VM to the agent's Hello
	// (after a restore: and its resync).
	Ready time.Duration
	// Restored says the VM came from a snapshot rather than a cold boot.
	Restored bool
	// Template is what the VM was made from.
	Template *Template
	// Timings break Ready down, for `run -v` and the bench.
	Timings Timings
	owner   string
	// disk is where the writable layer's disk is stored (see
	// disk.Layerer); removed with the VM unless a sandbox owns it
	// (keptDisk), which keeps it across hibernations. layer is it
	// attached: what the VMM opens.
	disk     string
	keptDisk bool
	layers   disk.Layerer
	layer    disk.Attached
	volumes  []string // packed mounts, removed with the VM
	// identity is what the guest was last told it is (Resync).
	identity string
	net      *vmNet // its network, if its template has a device (network.go)
}

// Timings are the parts of a VM's start: Start, Hello and Resync add up
// to Ready, and Process, Incoming and Resume are the VMM's share of Start.
// Parts lists the durations in this order.
type Timings struct {
	// Start is the host's part: the run dir, disk and network, and the
	// driver's Boot or Restore call.
	Start time.Duration `json:"start_ns"`
	// Hello is from the driver's return to the agent's Hello (after a
	// restore: the answer to the resync, which is the first request).
	Hello time.Duration `json:"hello_ns"`
	// Resync is the restored guest's clock, entropy and identity update,
	// counted from the agent's greeting where it came before the answer.
	Resync time.Duration `json:"resync_ns"`
	// Process is the VMM process's start, to its control socket
	// answering; zero when it was started ahead (Prestarted).
	Process time.Duration `json:"process_ns"`
	// Incoming is loading the snapshot's device state (a restore).
	Incoming time.Duration `json:"incoming_ns"`
	// Resume is starting the vCPUs (QEMU's cont).
	Resume time.Duration `json:"resume_ns"`
	// VMMCalls counts the control round trips (QMP commands, API
	// requests) of the driver's call.
	VMMCalls int `json:"vmm_calls"`
	// Prestarted says the VMM process was started ahead of the restore.
	Prestarted bool `json:"prestarted,omitempty"`
}

// setStart records the host's part of a start, up to now, and the VMM's
// breakdown of it.
func (t *Timings) setStart(since time.Time, m vmm.Machine) {
	t.Start = time.Since(since)
	st := m.StartTimes()
	t.Process, t.Incoming, t.Resume, t.VMMCalls, t.Prestarted = st.Process, st.Incoming, st.Resume, st.Calls, st.Prestarted
}

// layerPath is what the VMM opens as the writable disk: "" without one.
func (v *VM) layerPath() string {
	if v.layer == nil {
		return ""
	}
	return v.layer.Path()
}

// Shape returns the VM's shape.
func (v *VM) Shape() Shape { return v.Template.Shape }

// Close stops the VM and frees everything it held.
func (v *VM) Close() error {
	if v.Agent != nil {
		v.Agent.Close()
	}
	var err error
	if v.Machine != nil {
		err = v.Machine.Stop(context.Background())
	}
	err = errors.Join(err, v.closeNetwork())
	// After the VMM is gone, which held the device; before the owner
	// file, which tells a sweep the devices are still someone's.
	if v.layer != nil {
		err = errors.Join(err, v.layer.Close(context.Background()))
	}
	if v.disk != "" && !v.keptDisk {
		err = errors.Join(err, v.layers.Remove(v.disk))
	}
	if v.owner != "" {
		os.Remove(v.owner)
	}
	for _, vol := range v.volumes {
		os.Remove(vol)
	}
	return err
}

// alive says the VM's machine runs (or is paused) and its agent channel
// is open.
func (v *VM) alive() bool {
	if v.Machine == nil || v.Machine.State() == vmm.StateStopped || v.Agent == nil {
		return false
	}
	select {
	case <-v.Agent.Done():
		return false
	default:
		return true
	}
}

// disksDir holds the per-VM disks: in the data directory, so hibernation
// moves a disk with a rename.
func (m *Manager) disksDir() string { return filepath.Join(m.cfg.DataDir, "disks") }

// StartOptions say how to start one VM of a template.
type StartOptions struct {
	// Cold boots instead of restoring the template's snapshot.
	Cold bool
	// Mounts show host directories read-only in the guest (cold boot).
	Mounts []Mount
	// Disk, for a shape with a disk, is where the writable disk lives:
	// made there if missing, and kept when the VM stops (a sandbox's). If
	// empty, the VM gets a private disk that goes with it.
	Disk string
}

// Start returns a ready VM of t: restored from t's snapshot when the
// driver can (creating it on first use), else booted. A shape with a disk
// restores too: its snapshot holds the disk as it was, pristine, and the
// VM gets its own copy-on-write layer over it (see disk.Layerer).
func (m *Manager) Start(ctx context.Context, t *Template, o StartOptions) (*VM, error) {
	if o.Cold || len(o.Mounts) > 0 || !t.Driver.Capabilities().Snapshot {
		return m.boot(ctx, t, m.cfg.BootTimeout, o)
	}
	snap, err := m.snapshot(ctx, t)
	if err != nil {
		return nil, err
	}
	var base *disk.Base
	if t.Shape.DiskMiB > 0 {
		base = &disk.Base{Path: filepath.Join(snap.Dir, snapshotDisk), Digest: snap.Files[snapshotDisk].Digest}
	}
	vm, err := m.restoreCopy(ctx, t, snap.Dir, o.Disk, base)
	if err != nil && ctx.Err() == nil {
		m.log.Warn("restore failed; booting cold", "op", "restore", "snapshot", snap.Key, "err", err)
		return m.boot(ctx, t, m.cfg.BootTimeout, o)
	}
	return vm, err
}

// snapshotDisk is the writable disk inside a snapshot directory of a
// shape with one: the template's pristine disk, or a fork's copy of its
// parent's.
const snapshotDisk = "disk.ext4"

// restoreCopy restores a VM from snapDir, giving it its own disk (if t's
// shape has one) at keep, or, with keep empty, at a private path that
// goes with the VM: a new layer over base, the template's pristine disk,
// or without one, a copy of the disk in snapDir (a fork's). A failed
// restore removes the disk.
func (m *Manager) restoreCopy(ctx context.Context, t *Template, snapDir, keep string, base *disk.Base) (*VM, error) {
	if t.Shape.DiskMiB == 0 {
		return m.restore(ctx, t, snapDir, vmDisk{})
	}
	id := newID("vm-")
	d := vmDisk{path: keep, kept: keep != ""}
	if !d.kept {
		d.path = disk.WritablePath(m.disksDir(), id)
	}
	start := time.Now()
	m.layers.Remove(d.path) // a sandbox's disk from an earlier failed attempt
	var err error
	if base != nil {
		err = m.layers.Create(ctx, *base, int64(t.Shape.DiskMiB)<<20, d.path)
	} else {
		err = m.layers.Copy(ctx, filepath.Join(snapDir, snapshotDisk), d.path)
	}
	if err != nil {
		return nil, err
	}
	m.log.Debug("disk made", "op", "restore", "vm", id, "layering", m.layers.Kind(), "new", base != nil, "took", time.Since(start))
	vm, err := m.restoreAs(ctx, id, t, snapDir, d)
	if err != nil {
		m.layers.Remove(d.path)
		return nil, err
	}
	return vm, nil
}

// boot starts a VM of t from scratch and waits for its agent.
func (m *Manager) boot(ctx context.Context, t *Template, timeout time.Duration, o StartOptions) (*VM, error) {
	start := time.Now()
	id := newID("vm-")
	owner, err := m.claim(id)
	if err != nil {
		return nil, err
	}
	vm := &VM{owner: owner, Template: t, layers: m.layers}
	fail := func(err error) (*VM, error) {
		vm.Close() // releases whatever it holds so far
		return nil, err
	}
	if t.Shape.DiskMiB > 0 {
		p, kept := o.Disk, o.Disk != ""
		if !kept {
			p = disk.WritablePath(m.disksDir(), id)
		}
		if !m.layers.Exists(p) {
			if err := disk.NewWritable(ctx, p, t.Shape.DiskMiB); err != nil {
				return fail(err)
			}
		}
		vm.disk, vm.keptDisk = p, kept
		if vm.layer, err = m.layers.Attach(ctx, id, p); err != nil {
			return fail(err)
		}
	}
	if vm.volumes, err = m.packMounts(ctx, id, o.Mounts); err != nil {
		return fail(err)
	}
	cfg, err := m.machineConfig(t, id, vm.layerPath(), o.Mounts, vm.volumes)
	if err == nil {
		err = m.attachNetwork(ctx, vm, t, &cfg)
	}
	if err != nil {
		return fail(err)
	}
	mach, err := t.Driver.Boot(ctx, cfg)
	if err != nil {
		return fail(fmt.Errorf("boot %s: %w", t.Entry.Name, err))
	}
	vm.Machine = mach
	vm.Timings.setStart(start, mach)
	if err := m.connect(ctx, vm, timeout); err != nil {
		return fail(err)
	}
	if err := m.configureGuestNetwork(ctx, vm); err != nil {
		return fail(err)
	}
	vm.Ready = time.Since(start)
	vm.Timings.Hello = vm.Ready - vm.Timings.Start
	m.log.Debug("vm ready", "op", "boot", "vm", id, "image", t.Image.ID, "ready", vm.Ready)
	return vm, nil
}

// vmDisk is a VM's writable disk: path, and whether its owner keeps it
// when the VM stops (a sandbox's) or it goes with the VM.
type vmDisk struct {
	path string
	kept bool
}

// restore starts a VM from a snapshot directory of t, with d as the
// writable disk the snapshot's machine had (for a shape with one), and
// gives the guest its own clock, randomness and identity.
func (m *Manager) restore(ctx context.Context, t *Template, snapDir string, d vmDisk) (*VM, error) {
	return m.restoreAs(ctx, newID("vm-"), t, snapDir, d)
}

func (m *Manager) restoreAs(ctx context.Context, id string, t *Template, snapDir string, d vmDisk) (*VM, error) {
	start := time.Now()
	owner, err := m.claim(id)
	if err != nil {
		return nil, err
	}
	// The disk's removal on failure is the caller's: it made the disk.
	vm := &VM{owner: owner, Restored: true, Template: t, disk: d.path, keptDisk: true, layers: m.layers}
	fail := func(err error) (*VM, error) {
		vm.Close()
		return nil, err
	}
	if d.path != "" {
		if vm.layer, err = m.layers.Attach(ctx, id, d.path); err != nil {
			return fail(err)
		}
	}
	cfg, err := m.machineConfig(t, id, vm.layerPath(), nil, nil)
	if err == nil {
		err = m.attachNetwork(ctx, vm, t, &cfg)
	}
	if err != nil {
		return fail(err)
	}
	mach, err := t.Driver.Restore(ctx, snapDir, cfg)
	if err != nil {
		return fail(err)
	}
	vm.Machine = mach
	vm.Timings.setStart(start, mach)
	// The resync is the first request: its answer is the agent's Hello
	// too, a round trip fewer than a ping and then the resync.
	if err := m.connectWith(ctx, vm, restoreTimeout, func(ctx context.Context) error {
		if err := m.resync(ctx, vm, id); err != nil {
			return fmt.Errorf("resync restored VM: %w", err)
		}
		return nil
	}); err != nil {
		return fail(err)
	}
	vm.keptDisk = d.kept
	vm.Ready = time.Since(start)
	// Hello: until the guest was back (its greeting); Resync: the rest.
	vm.Timings.Hello = vm.Ready - vm.Timings.Start
	if g := vm.Agent.FirstHello(); !g.IsZero() && g.Sub(start) > vm.Timings.Start && g.Sub(start) <= vm.Ready {
		vm.Timings.Hello = g.Sub(start) - vm.Timings.Start
	}
	vm.Timings.Resync = vm.Ready - vm.Timings.Start - vm.Timings.Hello
	return vm, nil
}

// resync gives a guest the host's time, fresh entropy (the kernel reseeds
// its RNG) and identity, which a restored guest otherwise shares with
// every other restore of its snapshot.
func (m *Manager) resync(ctx context.Context, vm *VM, identity string) error {
	entropy := make([]byte, 64)
	_, _ = rand.Read(entropy)
	rctx, cancel := context.WithTimeout(ctx, restoreTimeout)
	defer cancel()
	if _, err := vm.Agent.Resync(rctx, agentproto.ResyncRequest{
		UnixNanos: time.Now().UnixNano(), Entropy: entropy, Identity: identity,
	}); err != nil {
		return err
	}
	vm.identity = identity
	return nil
}

// connect dials the agent and waits for its Hello, giving up early if the
// VMM exits; on failure the error carries the guest console's tail.
func (m *Manager) connect(ctx context.Context, vm *VM, timeout time.Duration) error {
	return m.connectWith(ctx, vm, timeout, func(ctx context.Context) error {
		_, err := vm.Agent.WaitHello(ctx)
		return err
	})
}

// connectWith is connect with first as the first request, which must
// wait for an answer (a Hello) as WaitHello does.
func (m *Manager) connectWith(ctx context.Context, vm *VM, timeout time.Duration, first func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	go func() {
		if err := vm.Machine.Wait(ctx); err == nil || errors.Is(err, vmm.ErrExited) {
			cancel() // the VMM exited: stop waiting for a Hello
		}
	}()
	conn, err := vm.Machine.DialAgent(ctx)
	if err == nil {
		vm.Agent = agentproto.NewClient(conn)
		err = first(ctx)
	}
	if err == nil {
		return nil
	}
	why := err.Error()
	if vm.Machine.State() == vmm.StateStopped {
		why = "the VM exited"
	} else if errors.Is(err, context.DeadlineExceeded) {
		why = fmt.Sprintf("no answer within %s", timeout)
	}
	return fmt.Errorf("%w (%s); guest console:\n%s", ErrNotReady, why, indent(vm.Machine.Console(2048)))
}

func indent(s string) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return "  (empty)"
	}
	return "  " + strings.ReplaceAll(s, "\n", "\n  ")
}

// portableDisk returns the disk stored at p as an image that needs
// nothing else on this host (to push it to another): p itself, or for a
// layered disk, a flattened copy beside it, which done removes.
func (m *Manager) portableDisk(ctx context.Context, p string) (image string, done func(), err error) {
	if !disk.Layered(p) {
		return p, func() {}, nil
	}
	id := newID("vm-") // the attach is a VM's, as a sweep tells them
	owner, err := m.claim(id)
	if err != nil {
		return "", nil, err
	}
	defer os.Remove(owner)
	image = p + ".image"
	os.Remove(image)
	if err := m.layers.Flatten(ctx, id, p, image); err != nil {
		return "", nil, err
	}
	return image, func() { os.Remove(image) }, nil
}
