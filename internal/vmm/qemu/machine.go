package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/firesandbox/firesandbox/internal/vmm"
	"github.com/firesandbox/firesandbox/internal/vmm/kvm"
	"github.com/firesandbox/firesandbox/internal/vmm/vmmproc"
	"golang.org/x/sys/unix"
)

// Names in a machine's RunDir.
const (
	qmpSock   = "qmp.sock"
	agentSock = "agent.sock"
	jailName  = "root" // the empty directory a confined QEMU chroots into
)

// Bounds on what a machine keeps of its VMM's output.
const (
	consoleKeep = 64 << 10
	logKeep     = 16 << 10
	logTail     = 4 << 10
)

// monitorTimeout bounds the wait for QEMU's monitor greeting.
const monitorTimeout = 10 * time.Second

const capSysChroot = 18 // CAP_SYS_CHROOT

// launch is what start needs beyond the machine's vmm.Config.
type launch struct {
	op string
	// ram backs guest memory: the machine's own new file (Boot), the
	// snapshot's memory mapped privately (Restore), or nil (Restore of a
	// snapshot with RAM inside the state file).
	ram      *os.File
	ramPath  string // the machine's own RAM file, removed at Stop
	share    bool   // guest writes reach ram (a machine that may be snapshotted)
	incoming bool   // wait for an incoming migration (-incoming defer)
}

// files collects descriptors for QEMU: each one is passed as fd 3+i and
// named on the command line as /proc/self/fd/N, or as an fdset for the
// block layer, so QEMU never opens a host path after it starts.
type files struct{ list []*os.File }

func (f *files) add(file *os.File) int {
	f.list = append(f.list, file)
	return 2 + len(f.list)
}

func (f *files) path(file *os.File) string { return "/proc/self/fd/" + strconv.Itoa(f.add(file)) }

func (f *files) close() {
	for _, file := range f.list {
		file.Close()
	}
	f.list = nil
}

// Boot implements vmm.Driver.
func (d *Driver) Boot(ctx context.Context, cfg vmm.Config) (vmm.Machine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// The RAM file is made here, exclusively, inside the private memory
	// dir: nobody can have prepared it, and nobody else can open it.
	ramPath := filepath.Join(d.cfg.MemoryDir, cfg.ID+".ram")
	ram, err := os.OpenFile(ramPath, os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("boot %s: create RAM file: %w", cfg.ID, err)
	}
	if err := ram.Truncate(int64(cfg.MemoryMiB) << 20); err != nil {
		ram.Close()
		os.Remove(ramPath)
		return nil, fmt.Errorf("boot %s: size RAM file: %w", cfg.ID, err)
	}
	m, err := d.start(ctx, &cfg, launch{op: "boot", ram: ram, ramPath: ramPath, share: true})
	if err != nil {
		return nil, err // not a typed nil *Machine inside the interface
	}
	m.log.Info("booted", "pid", m.proc.PID(), "vcpus", cfg.VCPUs, "memory_mib", cfg.MemoryMiB)
	return m, nil
}

// Restore implements vmm.Driver. The snapshot's RAM file is mapped
// privately (share=off, opened read-only), so restores of one snapshot
// share its clean pages in the page cache and never write to it. The
// device state is handed to QEMU as a descriptor, so a confined QEMU
// needs no access to the snapshot directory.
func (d *Driver) Restore(ctx context.Context, snapshotDir string, cfg vmm.Config) (vmm.Machine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	state, err := os.Open(filepath.Join(snapshotDir, vmm.SnapshotStateFile))
	if err != nil {
		return nil, fmt.Errorf("restore %s: snapshot has no device state: %w: %v", cfg.ID, vmm.ErrIncompatible, err)
	}
	defer state.Close()
	// Without a memory file, RAM is in the state stream.
	var ram *os.File
	if f, err := os.OpenFile(filepath.Join(snapshotDir, vmm.SnapshotMemoryFile), os.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0); err == nil {
		ram = f
		if !d.cfg.Unconfined {
			if err := shareWithGroup(ram, d.cfg.GID); err != nil {
				ram.Close()
				return nil, fmt.Errorf("restore %s: %w", cfg.ID, err)
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("restore %s: open snapshot memory: %w", cfg.ID, err)
	}
	key := ""
	if d.cfg.Prestart > 0 {
		key = spareKey(snapshotDir, cfg, ram)
	}
	var m *Machine
	if key != "" {
		m = d.takeSpare(key, cfg)
	}
	if m != nil {
		if ram != nil {
			ram.Close() // the spare has its own
		}
	} else if m, err = d.start(ctx, &cfg, launch{op: "restore", ram: ram, incoming: true}); err != nil {
		return nil, err
	}
	// Nobody else holds m until it is returned: no lock needed.
	t := time.Now()
	err = m.migrate(ctx, "migrate-incoming", state)
	m.times.Incoming = time.Since(t)
	if err == nil {
		t = time.Now()
		_, err = m.qmp.run(ctx, "cont", nil)
		m.times.Resume = time.Since(t)
	}
	m.times.Calls = int(m.qmp.calls.Load())
	if err != nil {
		_ = m.Stop(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("restore %s from %s: %w%s", cfg.ID, snapshotDir, err, m.vmmLog())
	}
	m.setState(vmm.StateRunning)
	m.log.Info("restored", "op", "restore", "pid", m.proc.PID(), "snapshot", snapshotDir, "prestarted", m.times.Prestarted)
	if key != "" {
		d.restored(key, snapshotDir, cfg)
	}
	return m, nil
}

// shareWithGroup makes a snapshot memory file readable by gid, the group
// confined QEMUs run in, and by nobody else but its owner.
func shareWithGroup(f *os.File, gid int) error {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return err
	}
	if int(st.Gid) == gid && st.Mode&0o077 == 0o040 {
		return nil
	}
	if err := unix.Fchown(int(f.Fd()), -1, gid); err != nil {
		return fmt.Errorf("give snapshot memory to gid %d: %w", gid, err)
	}
	if err := unix.Fchmod(int(f.Fd()), 0o640); err != nil {
		return fmt.Errorf("make snapshot memory group-readable: %w", err)
	}
	return nil
}

// start claims the run dir, opens everything QEMU will use, runs it and
// connects its monitor. It owns l.ram. On error everything is undone.
func (d *Driver) start(ctx context.Context, cfg *vmm.Config, l launch) (m *Machine, err error) {
	var fds files
	defer fds.close() // QEMU has its copies once started
	cu := &vmmproc.Cleanup{}
	defer cu.Clean()
	if l.ram != nil {
		ram := l.ram
		cu.Add(func() { ram.Close() })
	}
	if l.ramPath != "" {
		cu.Add(func() { os.Remove(l.ramPath) })
	}
	fail := func(err error) (*Machine, error) {
		return nil, fmt.Errorf("%s %s: %w", l.op, cfg.ID, err)
	}

	claim, err := vmmproc.ClaimRunDir(cfg.RunDir)
	if err != nil {
		return fail(err)
	}
	cu.Add(func() { _ = claim.Remove() })
	m = &Machine{
		d:       d,
		cfg:     *cfg,
		log:     d.log.With("vm", cfg.ID),
		console: vmmproc.NewRing(consoleKeep),
		vmmOut:  vmmproc.NewRing(logKeep),
		claim:   claim,
		ramPath: l.ramPath,
		state:   vmm.StateNew,
	}

	if !d.cfg.Unconfined {
		uid, lease, err := d.ids.Lease()
		if err != nil {
			return fail(err)
		}
		// QEMU inherits the lease: no other VMM gets this uid while it
		// lives.
		fds.add(lease)
		m.uid = uid
		if l.share {
			// Its own RAM file: QEMU maps it read-write after dropping
			// to uid. (A restore's snapshot memory is group-readable.)
			if err := l.ram.Chown(uid, d.cfg.GID); err != nil {
				return fail(fmt.Errorf("hand RAM file to uid %d: %w", uid, err))
			}
		}
	}
	args, err := d.args(cfg, &fds, l)
	if err != nil {
		return fail(err)
	}
	// The run dir's lock goes to QEMU too: the dir stays claimed while
	// QEMU lives, even if this process dies.
	fds.add(claim.File)
	claim.File = nil
	cmd := exec.Command(d.cfg.Binary, args...)
	cmd.ExtraFiles = fds.list
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid: true,
		// Set after the uid change (Go orders it so), so it survives it.
		Pdeathsig: syscall.SIGKILL,
	}
	if !d.cfg.Unconfined {
		uid := m.uid
		groups := []uint32{}
		if gid, ok := kvm.Group(); ok && d.cfg.Accel == AccelKVM {
			groups = append(groups, uint32(gid))
		}
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(d.cfg.GID), Groups: groups}
		cmd.SysProcAttr.AmbientCaps = []uintptr{capSysChroot}
		cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWPID | syscall.CLONE_NEWNET | syscall.CLONE_NEWIPC | syscall.CLONE_NEWUTS
	}
	m.log.Debug("start qemu", "op", l.op, "args", strings.Join(args, " "))
	spawned := time.Now()
	proc, err := vmmproc.Start(cmd, m.console, m.vmmOut)
	if err != nil {
		return fail(fmt.Errorf("start %s: %w", d.cfg.Binary, err))
	}
	m.proc = proc
	cu.Add(func() { proc.Stop(d.cfg.StopGrace) })
	fds.close()
	var paths []string
	if l.ramPath != "" {
		paths = append(paths, l.ramPath)
	}
	if err := vmmproc.WriteRecord(cfg.RunDir, proc.Record(paths...)); err != nil {
		return fail(err)
	}

	bctx, cancel := proc.Bound(ctx)
	defer cancel()
	bctx, cancelT := context.WithTimeout(bctx, monitorTimeout)
	defer cancelT()
	q, err := dialQMP(bctx, filepath.Join(cfg.RunDir, qmpSock))
	if err != nil {
		// A monitor that breaks off usually means QEMU is exiting.
		select {
		case <-proc.Exited():
		case <-time.After(500 * time.Millisecond):
		}
		proc.Drained(100 * time.Millisecond)
		switch {
		case proc.Done():
			return fail(fmt.Errorf("%w before its monitor came up: %v%s", vmm.ErrExited, proc.Err(), m.vmmLog()))
		case ctx.Err() != nil:
			return fail(ctx.Err())
		}
		return fail(fmt.Errorf("%w: no monitor greeting within %s: %v%s", ErrMonitor, monitorTimeout, err, m.vmmLog()))
	}
	m.qmp = q
	m.times.Process = time.Since(spawned)
	m.times.Calls = int(q.calls.Load())
	if !l.incoming {
		m.state = vmm.StateRunning
	}
	cu.Release()
	return m, nil
}

// args builds QEMU's command line, opening the files it names.
func (d *Driver) args(cfg *vmm.Config, fds *files, l launch) ([]string, error) {
	run := cfg.RunDir
	kernel, err := os.Open(cfg.Kernel)
	if err != nil {
		return nil, err
	}
	initrd, err := os.Open(cfg.Initrd)
	if err != nil {
		kernel.Close()
		return nil, err
	}
	qmpf, err := listen(filepath.Join(run, qmpSock))
	if err != nil {
		kernel.Close()
		initrd.Close()
		return nil, err
	}
	agentf, err := listen(filepath.Join(run, agentSock))
	if err != nil {
		kernel.Close()
		initrd.Close()
		qmpf.Close()
		return nil, err
	}
	a := []string{
		"-name", cfg.ID,
		"-M", "microvm,memory-backend=mem",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-smp", strconv.Itoa(cfg.VCPUs),
		"-m", strconv.Itoa(cfg.MemoryMiB) + "M",
		"-kernel", fds.path(kernel),
		"-initrd", fds.path(initrd),
		"-append", strings.Join(d.cmdline(cfg), " "),
		// The console is QEMU's stdout, which a bounded ring drains.
		"-chardev", "stdio,id=con,signal=off",
		"-serial", "chardev:con",
		"-device", "virtio-serial-device,max_ports=2",
		"-chardev", "socket,id=agent,fd=" + strconv.Itoa(fds.add(agentf)) + ",server=on,wait=off",
		"-device", "virtserialport,chardev=agent,name=" + AgentPortName,
		"-chardev", "socket,id=qmp,fd=" + strconv.Itoa(fds.add(qmpf)) + ",server=on,wait=off",
		"-mon", "chardev=qmp,mode=control",
		// Deny what a VMM never needs even when it is not otherwise
		// confined: obsolete syscalls, set*id, fork/exec, and changing
		// its own scheduling.
		"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
	}
	switch {
	case l.ram == nil:
		a = append(a, "-object", fmt.Sprintf("memory-backend-ram,id=mem,size=%dM", cfg.MemoryMiB))
	case l.share:
		a = append(a, "-object", fmt.Sprintf("memory-backend-file,id=mem,size=%dM,mem-path=%s,share=on", cfg.MemoryMiB, fds.path(l.ram)))
	default:
		// Opened read-only, mapped privately and writable (rom=off):
		// copy-on-write over the snapshot's file.
		a = append(a, "-object", fmt.Sprintf("memory-backend-file,id=mem,size=%dM,mem-path=%s,share=off,readonly=on,rom=off", cfg.MemoryMiB, fds.path(l.ram)))
	}
	if d.cfg.BIOS != "" {
		a = append(a, "-bios", d.cfg.BIOS)
	}
	if d.cfg.Accel == AccelKVM {
		a = append(a, "-accel", "kvm", "-cpu", d.cpuModel())
	} else {
		a = append(a, "-accel", fmt.Sprintf("tcg,tb-size=%d", d.cfg.TBSizeMiB), "-cpu", d.cpuModel())
	}
	for i, disk := range cfg.Disks {
		flag := os.O_RDWR
		if disk.ReadOnly {
			flag = os.O_RDONLY
		}
		f, err := os.OpenFile(disk.Path, flag|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("open disk %s: %w", disk.ID, err)
		}
		set := fds.add(f)
		a = append(a, "-add-fd", fmt.Sprintf("fd=%d,set=%d", set, set))
		if !disk.ReadOnly {
			// QEMU opens a writable drive read-only first (to probe it)
			// and takes from the set the descriptor whose access mode
			// matches: give it both.
			ro, err := os.OpenFile(disk.Path, os.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				return nil, fmt.Errorf("open disk %s: %w", disk.ID, err)
			}
			a = append(a, "-add-fd", fmt.Sprintf("fd=%d,set=%d", fds.add(ro), set))
		}
		id := fmt.Sprintf("d%d", i)
		// No image locking: each disk belongs to one VM (the sandbox's
		// lifecycle serialises its users), and on descriptors from an fd
		// set QEMU's own lock bytes refused a restore's activation
		// ("Failed to get shared write lock").
		drive := fmt.Sprintf("id=%s,file=/dev/fdset/%d,format=raw,if=none,cache=unsafe,discard=unmap,file.locking=off", id, set)
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeDevice != 0 && fi.Mode()&os.ModeCharDevice == 0 {
			// A block device (a layered disk): QEMU's "file" driver
			// takes only regular files.
			drive += ",file.driver=host_device"
		}
		if disk.ReadOnly {
			drive += ",readonly=on"
		}
		a = append(a, "-drive", drive, "-device", fmt.Sprintf("virtio-blk-device,drive=%s,serial=%s", id, disk.ID))
	}
	if n := cfg.Net; n != nil {
		// After the disks, always: a snapshot's device state follows
		// the command line's order, which a restore repeats.
		// QEMU never needs the namespace: a confined QEMU sits in an
		// empty one of its own and moves frames through this descriptor.
		tap, err := vmmproc.OpenTap(n.Netns, n.Tap)
		if err != nil {
			return nil, fmt.Errorf("network device: %w", err)
		}
		// No vnet_hdr=: with fd= QEMU refuses it and reads the header
		// mode from the descriptor, which OpenTap opened with one.
		a = append(a, "-netdev", fmt.Sprintf("tap,id=net0,fd=%d", fds.add(tap)),
			"-device", "virtio-net-device,netdev=net0,mac="+n.MAC)
	}
	if !d.cfg.Unconfined {
		// An empty directory nobody can write: QEMU chroots into it once
		// everything is open, before the guest runs.
		jail := filepath.Join(run, jailName)
		if err := os.Mkdir(jail, 0o555); err != nil {
			return nil, fmt.Errorf("create jail: %w", err)
		}
		jf, err := os.Open(jail)
		if err != nil {
			return nil, err
		}
		a = append(a, "-run-with", "chroot="+fds.path(jf))
	}
	if l.incoming {
		a = append(a, "-incoming", "defer")
	}
	return a, nil
}

// listen creates a listening unix socket at path and returns its file;
// the path stays when the listener is closed, for QEMU to serve on it.
func listen(path string) (*os.File, error) {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	ln.SetUnlinkOnClose(false)
	f, err := ln.File()
	ln.Close()
	return f, err
}

// Machine is a VM run by QEMU.
type Machine struct {
	d   *Driver
	cfg vmm.Config
	log *slog.Logger

	proc    *vmmproc.Process
	qmp     *qmp
	console *vmmproc.Ring // the guest's serial console
	vmmOut  *vmmproc.Ring // QEMU's own stderr
	claim   *vmmproc.Claim
	ramPath string // RAM file this machine owns and removes; empty for a restore
	uid     int    // the uid QEMU runs as (0: unconfined)

	// opMu serialises Pause, Resume and Snapshot. Stop does not wait for
	// it until the VMM is dead, so a stop is never held up by a slow
	// snapshot (which then fails at once).
	opMu sync.Mutex

	mu    sync.Mutex // guards state, read by State without waiting on ops
	state vmm.State

	stopOnce sync.Once
	stopErr  error

	times vmm.StartTimes // set by Boot or Restore, then fixed
	// spareFile names a spare (started ahead, not yet adopted) for the
	// sweep of a later driver; "" once adopted.
	spareFile string
	capsSet   bool // migration capabilities set (under opMu, or before m is shared)
}

var _ vmm.Machine = (*Machine)(nil)

// StartTimes implements vmm.Machine.
func (m *Machine) StartTimes() vmm.StartTimes { return m.times }

func (m *Machine) setState(s vmm.State) {
	m.mu.Lock()
	m.state = s
	m.mu.Unlock()
}

// ID implements vmm.Machine.
func (m *Machine) ID() string { return m.cfg.ID }

// State implements vmm.Machine. A machine whose QEMU exited by itself
// reports StateStopped, though Stop must still be called to free it.
func (m *Machine) State() vmm.State {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.state != vmm.StateStopped && m.proc.Done() {
		return vmm.StateStopped
	}
	return m.state
}

// PID implements vmm.Machine.
func (m *Machine) PID() int {
	if m.State() == vmm.StateStopped {
		return 0
	}
	return m.proc.PID()
}

// UID is the uid QEMU runs as (0 when unconfined).
func (m *Machine) UID() int { return m.uid }

// check starts an operation: the state must be one of allowed and QEMU
// must still be alive.
func (m *Machine) check(op string, allowed ...vmm.State) error {
	m.mu.Lock()
	st := m.state
	m.mu.Unlock()
	if err := vmm.RequireState(op, st, allowed...); err != nil {
		return err
	}
	if m.proc.Done() {
		return fmt.Errorf("%s %s: %w: %v%s", op, m.cfg.ID, vmm.ErrExited, m.proc.Err(), m.vmmLog())
	}
	return nil
}

// DialAgent implements vmm.Machine. It works while paused too: the
// connection is accepted by QEMU, and the guest answers once resumed.
func (m *Machine) DialAgent(ctx context.Context) (net.Conn, error) {
	if err := m.check("dial agent", vmm.StateRunning, vmm.StatePaused); err != nil {
		return nil, err
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", filepath.Join(m.cfg.RunDir, agentSock))
	if err != nil {
		return nil, fmt.Errorf("dial agent of %s: %w", m.cfg.ID, err)
	}
	return c, nil
}

// Pause implements vmm.Machine.
func (m *Machine) Pause(ctx context.Context) error {
	return m.transition(ctx, "pause", "stop", vmm.StateRunning, vmm.StatePaused)
}

// Resume implements vmm.Machine.
func (m *Machine) Resume(ctx context.Context) error {
	return m.transition(ctx, "resume", "cont", vmm.StatePaused, vmm.StateRunning)
}

func (m *Machine) transition(ctx context.Context, op, cmd string, from, to vmm.State) error {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	if err := m.check(op, from); err != nil {
		return err
	}
	if _, err := m.qmp.run(ctx, cmd, nil); err != nil {
		return fmt.Errorf("%s %s: %w", op, m.cfg.ID, m.died(err))
	}
	m.setState(to)
	m.log.Debug(op, "op", op)
	return nil
}

// died adds, when QEMU has exited, that it did and its last words.
func (m *Machine) died(err error) error {
	if m.proc.Done() {
		m.proc.Drained(100 * time.Millisecond)
		return fmt.Errorf("%w: %v (%v)%s", vmm.ErrExited, err, m.proc.Err(), m.vmmLog())
	}
	return err
}

// Snapshot implements vmm.Machine. A booted machine's RAM already lives in
// its file: device state goes through a migration into a file this
// process creates (exclusively) and hands to QEMU, with x-ignore-shared so
// RAM is skipped; then the RAM file is copied, sparsely, beside it. A
// restored machine maps its RAM privately, so there is no file to copy:
// its RAM goes into the migration stream instead, and the snapshot has no
// separate memory file.
func (m *Machine) Snapshot(ctx context.Context, dir string) error {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	if err := m.check("snapshot", vmm.StatePaused); err != nil {
		return err
	}
	start := time.Now()
	state, err := os.OpenFile(filepath.Join(dir, vmm.SnapshotStateFile), os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", m.cfg.ID, err)
	}
	err = m.migrate(ctx, "migrate", state)
	if cerr := state.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", m.cfg.ID, m.died(err))
	}
	if m.ramPath != "" {
		mem := filepath.Join(dir, vmm.SnapshotMemoryFile)
		if err := copySparse(m.ramPath, mem); err != nil {
			return fmt.Errorf("snapshot %s: copy memory: %w", m.cfg.ID, err)
		}
		if !m.d.cfg.Unconfined {
			f, err := os.Open(mem)
			if err != nil {
				return fmt.Errorf("snapshot %s: %w", m.cfg.ID, err)
			}
			err = shareWithGroup(f, m.d.cfg.GID)
			f.Close()
			if err != nil {
				return fmt.Errorf("snapshot %s: %w", m.cfg.ID, err)
			}
		}
	}
	m.log.Info("snapshot written", "op", "snapshot", "dir", dir, "took", time.Since(start))
	return nil
}

// migrate runs an outgoing ("migrate") or incoming ("migrate-incoming")
// migration through f, passed to QEMU as a descriptor, and waits for it to
// complete. x-ignore-shared is always on: it skips only RAM mapped shared
// from a named file (a booted machine's), so a privately mapped restore
// still sends its RAM; and the stream records the capability, so both
// ends must agree on it.
func (m *Machine) migrate(ctx context.Context, cmd string, f *os.File) error {
	if err := m.setMigrationCaps(ctx); err != nil {
		return err
	}
	if cmd == "migrate" {
		// A live migration's bandwidth cap (128 MiB/s by default) makes
		// no sense for a paused VM saved to a file: a restored VM's RAM
		// goes into the stream, and at the cap 100 MiB takes most of a
		// second.
		if _, err := m.qmp.run(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": int64(1) << 40}); err != nil {
			return err
		}
	}
	name := "mig" + strconv.FormatInt(time.Now().UnixNano(), 36)
	if _, err := m.qmp.runFile(ctx, "getfd", map[string]any{"fdname": name}, f); err != nil {
		return err
	}
	if _, err := m.qmp.run(ctx, cmd, map[string]any{"uri": "fd:" + name}); err != nil {
		return err
	}
	for {
		raw, err := m.qmp.run(ctx, "query-migrate", nil)
		if err != nil {
			return err
		}
		var st struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		_ = json.Unmarshal(raw, &st)
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("%w: %s: %s", ErrMigration, st.Status, st.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-m.proc.Exited():
			return fmt.Errorf("%w during migration", vmm.ErrExited)
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// setMigrationCaps turns x-ignore-shared on, once per machine (a spare
// has it on before its restore asks).
func (m *Machine) setMigrationCaps(ctx context.Context) error {
	if m.capsSet {
		return nil
	}
	caps := map[string]any{"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": true}}}
	if _, err := m.qmp.run(ctx, "migrate-set-capabilities", caps); err != nil {
		return err
	}
	m.capsSet = true
	return nil
}

// Stop implements vmm.Machine. ctx's cancellation does not shorten it: a
// stop always finishes (SIGTERM, the grace period, then SIGKILL), and
// concurrent calls all return once it has.
func (m *Machine) Stop(ctx context.Context) error {
	m.stopOnce.Do(func() {
		m.proc.Stop(m.d.cfg.StopGrace)
		m.qmp.close()
		m.opMu.Lock() // an operation in flight has failed by now
		defer m.opMu.Unlock()
		var errs []error
		if m.ramPath != "" {
			if err := os.Remove(m.ramPath); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
		if err := m.claim.Remove(); err != nil {
			errs = append(errs, err)
		}
		m.setState(vmm.StateStopped)
		m.stopErr = errorsJoin("stop "+m.cfg.ID, errs...)
		m.log.Info("stopped", "op", "stop")
	})
	return m.stopErr
}

// Wait implements vmm.Machine.
func (m *Machine) Wait(ctx context.Context) error {
	err := m.proc.Wait(ctx)
	if errors.Is(err, vmm.ErrExited) {
		m.proc.Drained(100 * time.Millisecond)
		return fmt.Errorf("%s: %w%s", m.cfg.ID, err, m.vmmLog())
	}
	return err
}

// Console implements vmm.Machine.
func (m *Machine) Console(n int) string { return m.console.Tail(n) }

func (m *Machine) vmmLog() string {
	t := strings.TrimSpace(m.vmmOut.Tail(logTail))
	if t == "" {
		return ""
	}
	return "\nqemu: " + t
}
