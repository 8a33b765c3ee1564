// Package vmmfake is a vmm.Driver whose machines are Go values, for fast
// tests of everything above the VMM: no process, no kernel, no guest. A
// machine keeps the state the real contract promises (new, running, paused,
// stopped; snapshots only when paused), and its "guest memory" is a small
// file system that a fake agent serves over agentproto. Snapshot writes
// that memory into the snapshot directory and Restore reads it back, so a
// file written before a hibernation or a fork is there afterwards, as on a
// real VM. A machine with a network device holds its tap open while it
// runs (so a missing tap fails, as with a real VMM), restores only with
// the device its snapshot had, and its guest takes ConfigureNetwork for
// that device's MAC only, keeping it in its memory.
//
// Each function field of Driver, when set, runs first and may fail the
// call, so a test can make a boot fail, a restore hang or a machine die:
//
//	d := vmmfake.New()
//	d.RestoreHook = func(ctx context.Context, dir string, cfg vmm.Config) error {
//		return errors.New("disk full")
//	}
package vmmfake

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/vmm"
	"github.com/firesandbox/firesandbox/internal/vmm/vmmproc"
)

// Driver is a fake vmm.Driver. Its zero value is not usable: use New.
type Driver struct {
	// NameValue, VersionValue and Caps are what Name, Version and
	// Capabilities report.
	NameValue, VersionValue string
	Caps                    vmm.Capabilities

	// Hooks run before the default behaviour; an error fails the call.
	BootHook     func(ctx context.Context, cfg vmm.Config) error
	RestoreHook  func(ctx context.Context, dir string, cfg vmm.Config) error
	SnapshotHook func(ctx context.Context, m *Machine, dir string) error
	// Exec, if set, runs exec requests instead of the built-in commands
	// (see Guest).
	Exec ExecFunc

	// Boots, Restores and Snapshots count successful calls.
	Boots, Restores, Snapshots atomic.Int64

	mu       sync.Mutex
	machines map[string]*Machine
}

// New returns a driver named "fake" that can snapshot.
func New() *Driver {
	return &Driver{NameValue: "fake", VersionValue: "1.0",
		Caps: vmm.Capabilities{Snapshot: true, MemorySharing: true}, machines: map[string]*Machine{}}
}

// Name implements vmm.Driver.
func (d *Driver) Name() string { return d.NameValue }

// Version implements vmm.Driver.
func (d *Driver) Version() string { return d.VersionValue }

// Capabilities implements vmm.Driver.
func (d *Driver) Capabilities() vmm.Capabilities { return d.Caps }

// Live returns the machines not yet stopped.
func (d *Driver) Live() []*Machine {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []*Machine
	for _, m := range d.machines {
		if m.State() != vmm.StateStopped {
			out = append(out, m)
		}
	}
	return out
}

// Boot implements vmm.Driver.
func (d *Driver) Boot(ctx context.Context, cfg vmm.Config) (vmm.Machine, error) {
	if d.BootHook != nil {
		if err := d.BootHook(ctx, cfg); err != nil {
			return nil, err
		}
	}
	m, err := d.start(ctx, cfg, newMemory())
	if err == nil {
		d.Boots.Add(1)
	}
	return m, err
}

// Restore implements vmm.Driver: the machine's memory is the snapshot's.
func (d *Driver) Restore(ctx context.Context, dir string, cfg vmm.Config) (vmm.Machine, error) {
	if d.RestoreHook != nil {
		if err := d.RestoreHook(ctx, dir, cfg); err != nil {
			return nil, err
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, vmm.SnapshotMemoryFile))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", vmm.ErrIncompatible, err)
	}
	mem := newMemory()
	if err := json.Unmarshal(b, &mem.files); err != nil {
		return nil, fmt.Errorf("%w: snapshot memory: %v", vmm.ErrIncompatible, err)
	}
	st, err := os.ReadFile(filepath.Join(dir, vmm.SnapshotStateFile))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", vmm.ErrIncompatible, err)
	}
	// A restore needs the snapshot's devices, as QEMU's and Firecracker's
	// do: the guest's drivers are in the snapshot.
	var saved vmm.Config
	if err := json.Unmarshal(st, &saved); err != nil {
		return nil, fmt.Errorf("%w: snapshot state: %v", vmm.ErrIncompatible, err)
	}
	switch {
	case (saved.Net == nil) != (cfg.Net == nil):
		return nil, fmt.Errorf("%w: the snapshot's machine had network device %v, the restore has %v", vmm.ErrIncompatible, saved.Net != nil, cfg.Net != nil)
	case saved.Net != nil && saved.Net.MAC != cfg.Net.MAC:
		return nil, fmt.Errorf("%w: network device MAC %s, the snapshot's is %s", vmm.ErrIncompatible, cfg.Net.MAC, saved.Net.MAC)
	}
	m, err := d.start(ctx, cfg, mem)
	if err == nil {
		d.Restores.Add(1)
	}
	return m, err
}

func (d *Driver) start(ctx context.Context, cfg vmm.Config, mem *memory) (*Machine, error) {
	began := time.Now()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if cfg.ID == "" || cfg.RunDir == "" {
		return nil, fmt.Errorf("%w: id and run dir are required", vmm.ErrInvalidConfig)
	}
	for _, disk := range cfg.Disks {
		if _, err := os.Stat(disk.Path); err != nil {
			return nil, fmt.Errorf("%w: disk %s: %v", vmm.ErrInvalidConfig, disk.ID, err)
		}
	}
	var tap *os.File
	if n := cfg.Net; n != nil {
		// Held while the machine runs, as a VMM holds its tap: a tap that
		// is not there, or is another machine's, fails the start.
		var err error
		if tap, err = vmmproc.OpenTap(n.Netns, n.Tap); err != nil {
			return nil, fmt.Errorf("network device: %w", err)
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if old := d.machines[cfg.ID]; old != nil && old.State() != vmm.StateStopped {
		closeFile(tap)
		return nil, fmt.Errorf("%w: machine %s exists", vmm.ErrInvalidConfig, cfg.ID)
	}
	if err := os.MkdirAll(cfg.RunDir, 0o700); err != nil {
		closeFile(tap)
		return nil, err
	}
	m := &Machine{d: d, cfg: cfg, mem: mem, tap: tap, state: vmm.StateRunning, exited: make(chan struct{})}
	m.times = vmm.StartTimes{Process: time.Since(began), Calls: 1}
	m.resumed = sync.NewCond(&m.mu)
	d.machines[cfg.ID] = m
	return m, nil
}

// Machine is a fake running machine.
type Machine struct {
	d   *Driver
	cfg vmm.Config
	mem *memory

	mu      sync.Mutex
	state   vmm.State
	resumed *sync.Cond // broadcast on resume and stop
	conns   []net.Conn
	exited  chan struct{}
	crashed bool
	tap     *os.File // the network device's tap, held until Stop
	times   vmm.StartTimes
}

func closeFile(f *os.File) {
	if f != nil {
		f.Close()
	}
}

// netConfigFile holds, in the fake guest's memory, the network
// configuration it was given: like a real guest's, it survives a snapshot
// and comes back with every restore.
const netConfigFile = "/.fake-netconfig"

// NetConfig is the network configuration the guest has (agentproto's
// ConfigureNetwork, here or before the snapshot it came from), or nil.
func (m *Machine) NetConfig() *agentproto.NetConfigRequest {
	b, err := m.mem.read(netConfigFile)
	if err != nil {
		return nil
	}
	var r agentproto.NetConfigRequest
	if json.Unmarshal(b, &r) != nil {
		return nil
	}
	return &r
}

// Config returns the configuration the machine started with.
func (m *Machine) Config() vmm.Config { return m.cfg }

// ID implements vmm.Machine.
func (m *Machine) ID() string { return m.cfg.ID }

// State implements vmm.Machine.
func (m *Machine) State() vmm.State {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.state
}

// DialAgent implements vmm.Machine. It works while paused, as on a real
// VMM: the guest answers once resumed.
func (m *Machine) DialAgent(ctx context.Context) (net.Conn, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := vmm.RequireState("dial agent", m.state, vmm.StateRunning, vmm.StatePaused); err != nil {
		return nil, err
	}
	host, guest := net.Pipe()
	m.conns = append(m.conns, host, guest)
	go (&Guest{m: m, exec: m.d.Exec}).Serve(guest)
	return host, nil
}

// Pause implements vmm.Machine.
func (m *Machine) Pause(context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := vmm.RequireState("pause", m.state, vmm.StateRunning); err != nil {
		return err
	}
	m.state = vmm.StatePaused
	return nil
}

// Resume implements vmm.Machine.
func (m *Machine) Resume(context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := vmm.RequireState("resume", m.state, vmm.StatePaused); err != nil {
		return err
	}
	m.state = vmm.StateRunning
	m.resumed.Broadcast()
	return nil
}

// Snapshot implements vmm.Machine: memory and state files into dir.
func (m *Machine) Snapshot(ctx context.Context, dir string) error {
	if m.d.SnapshotHook != nil {
		if err := m.d.SnapshotHook(ctx, m, dir); err != nil {
			return err
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := vmm.RequireState("snapshot", m.state, vmm.StatePaused); err != nil {
		return err
	}
	b, err := m.mem.marshal()
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, vmm.SnapshotMemoryFile), b, 0o600); err != nil {
		return err
	}
	state, _ := json.Marshal(m.cfg)
	if err := os.WriteFile(filepath.Join(dir, vmm.SnapshotStateFile), state, 0o600); err != nil {
		return err
	}
	m.d.Snapshots.Add(1)
	return nil
}

// Stop implements vmm.Machine; it is idempotent.
func (m *Machine) Stop(context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stopLocked()
	return nil
}

func (m *Machine) stopLocked() {
	if m.state == vmm.StateStopped {
		return
	}
	m.state = vmm.StateStopped
	for _, c := range m.conns {
		c.Close()
	}
	m.conns = nil
	closeFile(m.tap)
	m.tap = nil
	close(m.exited)
	m.resumed.Broadcast()
	os.RemoveAll(m.cfg.RunDir)
}

// Crash makes the machine die as if its VMM process exited.
func (m *Machine) Crash() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.crashed = true
	m.stopLocked()
}

// Wait implements vmm.Machine.
func (m *Machine) Wait(ctx context.Context) error {
	select {
	case <-m.exited:
		m.mu.Lock()
		defer m.mu.Unlock()
		if m.crashed {
			return vmm.ErrExited
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Console implements vmm.Machine.
func (m *Machine) Console(int) string { return "fake console\n" }

// StartTimes implements vmm.Machine: a fake starts no process, and
// reports the time its start took as Process, and one call.
func (m *Machine) StartTimes() vmm.StartTimes { return m.times }

// PID implements vmm.Machine: a fake has no process.
func (m *Machine) PID() int { return 0 }

// Files returns a copy of the guest's files, by absolute path.
func (m *Machine) Files() map[string][]byte { return m.mem.snapshot() }

// waitRunning blocks while the machine is paused; false once stopped.
func (m *Machine) waitRunning() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for m.state == vmm.StatePaused {
		m.resumed.Wait()
	}
	return m.state == vmm.StateRunning
}

// memory is the guest's state: its files.
type memory struct {
	mu    sync.Mutex
	files map[string][]byte
}

func newMemory() *memory { return &memory{files: map[string][]byte{}} }

func (mem *memory) marshal() ([]byte, error) {
	mem.mu.Lock()
	defer mem.mu.Unlock()
	return json.Marshal(mem.files)
}

func (mem *memory) snapshot() map[string][]byte {
	mem.mu.Lock()
	defer mem.mu.Unlock()
	out := make(map[string][]byte, len(mem.files))
	for k, v := range mem.files {
		out[k] = append([]byte(nil), v...)
	}
	return out
}

func (mem *memory) read(p string) ([]byte, error) {
	mem.mu.Lock()
	defer mem.mu.Unlock()
	b, ok := mem.files[p]
	if !ok {
		return nil, fmt.Errorf("%s: %w", p, os.ErrNotExist)
	}
	return append([]byte(nil), b...), nil
}

func (mem *memory) write(p string, b []byte) {
	mem.mu.Lock()
	defer mem.mu.Unlock()
	mem.files[p] = append([]byte(nil), b...)
}
