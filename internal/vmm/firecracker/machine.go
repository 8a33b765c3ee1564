package firecracker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/firecracker-microvm/firecracker-go-sdk/client/models"
	"github.com/firesandbox/firesandbox/internal/vmm"
	"github.com/firesandbox/firesandbox/internal/vmm/vmmproc"
	"golang.org/x/sys/unix"
)

// logTailBytes is how much of the VMM's own output goes into errors.
const logTailBytes = 2048

// Bounds on what a machine keeps of the guest console (Firecracker's
// stdout) and of Firecracker's stderr: a guest that floods its serial
// port costs nothing beyond these.
const (
	consoleKeep = 64 << 10
	stderrKeep  = 16 << 10
)

// machine is one Firecracker microVM. opMu serialises Pause, Resume and
// Snapshot; mu guards the state, read by State without waiting behind a
// slow snapshot. Stop takes neither while it waits for the VMM to end.
type machine struct {
	d   *Driver
	cfg vmm.Config
	lay layout
	log *slog.Logger

	claim   *vmmproc.Claim
	console *vmmproc.Ring
	stderr  *vmmproc.Ring
	proc    *vmmproc.Process // the VMM (after followNewPIDNS: Firecracker, not the jailer)
	api     *apiClient
	cg      string // cgroup directory to remove after exit ("" if none)

	opMu sync.Mutex

	mu    sync.Mutex
	state vmm.State

	stopOnce sync.Once
	stopErr  error

	times vmm.StartTimes // set by Boot or Restore, then fixed
	calls atomic.Int32   // API requests made
}

var _ vmm.Machine = (*machine)(nil)

// StartTimes implements vmm.Machine. Firecracker resumes within its
// snapshot load: a restore's Resume is part of Incoming.
func (m *machine) StartTimes() vmm.StartTimes { return m.times }

// Boot starts a VMM, configures the machine (shape, kernel, initramfs,
// drives in order, vsock, logs) and starts it. It returns once the VMM runs
// the guest; the agent may still be booting. On any error, everything it
// created is gone.
func (d *Driver) Boot(ctx context.Context, cfg vmm.Config) (vmm.Machine, error) {
	m, cu, err := d.prepare(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("boot %s: %w", cfg.ID, err)
	}
	defer cu.Clean()
	lay := m.lay
	if _, err := lay.place(cfg.Kernel, kernelName, placeShared); err != nil {
		return nil, fmt.Errorf("boot %s: %w", cfg.ID, err)
	}
	if _, err := lay.place(cfg.Initrd, initrdName, placeShared); err != nil {
		return nil, fmt.Errorf("boot %s: %w", cfg.ID, err)
	}
	if err := m.placeDisks(); err != nil {
		return nil, fmt.Errorf("boot %s: %w", cfg.ID, err)
	}
	if err := m.start(ctx, cu); err != nil {
		return nil, fmt.Errorf("boot %s: %w", cfg.ID, err)
	}

	vcpus, mem := int64(cfg.VCPUs), int64(cfg.MemoryMiB)
	smt := false
	type step struct {
		path string
		body any
	}
	steps := []step{
		{"/machine-config", &models.MachineConfiguration{VcpuCount: &vcpus, MemSizeMib: &mem, Smt: &smt}},
		{"/boot-source", &models.BootSource{
			KernelImagePath: strPtr(kernelName),
			InitrdPath:      initrdName,
			BootArgs:        d.bootArgs(cfg),
		}},
	}
	for _, disk := range cfg.Disks {
		steps = append(steps, step{"/drives/" + driveID(disk.ID), &models.Drive{
			DriveID:      strPtr(driveID(disk.ID)),
			PathOnHost:   strPtr(driveName(disk.ID)),
			IsRootDevice: boolPtr(false), // we boot from the initramfs
			IsReadOnly:   boolPtr(disk.ReadOnly),
		}})
	}
	if n := cfg.Net; n != nil {
		// The tap is opened by Firecracker, by name, in the namespace it
		// runs in (start put it in n.Netns).
		steps = append(steps, step{"/network-interfaces/" + netIfaceID, &models.NetworkInterface{
			IfaceID: strPtr(netIfaceID), HostDevName: strPtr(n.Tap), GuestMac: n.MAC,
		}})
	}
	cid := int64(GuestCID)
	steps = append(steps,
		step{"/vsock", &models.Vsock{GuestCid: &cid, UdsPath: strPtr(vsockName)}},
		step{"/actions", &models.InstanceActionInfo{ActionType: strPtr(models.InstanceActionInfoActionTypeInstanceStart)}},
	)
	for _, s := range steps {
		if err := m.call(ctx, http.MethodPut, s.path, s.body, d.apiTimeout); err != nil {
			return nil, fmt.Errorf("boot %s: %w", cfg.ID, err)
		}
	}
	m.times.Calls = int(m.calls.Load())
	m.setState(vmm.StateRunning)
	cu.Release()
	m.log.Info("booted", "op", "boot", "pid", m.proc.PID(), "vcpus", cfg.VCPUs, "memory_mib", cfg.MemoryMiB, "disks", len(cfg.Disks))
	return m, nil
}

// Restore starts a fresh VMM and loads the snapshot in snapshotDir into
// it, memory mapped from the snapshot's file (copy-on-write, shared with
// other restores), and resumes it. cfg gives the new machine's ID, RunDir
// and disks: each disk is placed where the snapshot expects the disk of the
// same id, so every restore has its own writable disk. Kernel, initrd,
// shape and command line come from the snapshot; cfg's are not used.
func (d *Driver) Restore(ctx context.Context, snapshotDir string, cfg vmm.Config) (vmm.Machine, error) {
	for _, f := range []string{vmm.SnapshotStateFile, vmm.SnapshotMemoryFile} {
		if _, err := os.Stat(filepath.Join(snapshotDir, f)); err != nil {
			return nil, fmt.Errorf("restore %s from %s: %w: %v", cfg.ID, snapshotDir, vmm.ErrIncompatible, err)
		}
	}
	m, cu, err := d.prepare(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("restore %s: %w", cfg.ID, err)
	}
	defer cu.Clean()
	lay := m.lay
	for _, f := range []string{vmm.SnapshotStateFile, vmm.SnapshotMemoryFile} {
		src := filepath.Join(snapshotDir, f)
		if lay.jailed {
			// The jailed VMM reads them as GID after dropping root.
			if err := shareWithGroup(src, d.cfg.GID); err != nil {
				return nil, fmt.Errorf("restore %s: %w", cfg.ID, err)
			}
		}
		how := placeShared
		if f == vmm.SnapshotMemoryFile {
			how = placeMemory
		}
		copied, err := lay.place(src, filepath.Join(snapshotIn, f), how)
		if err != nil {
			return nil, fmt.Errorf("restore %s: %w", cfg.ID, err)
		}
		if copied && how == placeMemory {
			m.log.Warn("snapshot memory copied into the jail: restores will not share its pages; put the chroot base on the snapshots' filesystem", "op", "restore")
		}
	}
	if err := m.placeDisks(); err != nil {
		return nil, fmt.Errorf("restore %s: %w", cfg.ID, err)
	}
	if err := m.start(ctx, cu); err != nil {
		return nil, fmt.Errorf("restore %s: %w", cfg.ID, err)
	}
	load := snapshotLoadParams{
		SnapshotPath: filepath.Join(snapshotIn, vmm.SnapshotStateFile),
		MemBackend:   memoryBackend{BackendType: "File", BackendPath: filepath.Join(snapshotIn, vmm.SnapshotMemoryFile)},
		ResumeVM:     true,
	}
	t := time.Now()
	err = m.call(ctx, http.MethodPut, "/snapshot/load", load, 0)
	m.times.Incoming = time.Since(t)
	if err != nil {
		err = fmt.Errorf("restore %s from %s: %w", cfg.ID, snapshotDir, err)
		var ae *APIError
		if errors.As(err, &ae) {
			// Firecracker refuses snapshots of another version or host
			// with a 400; the caller's manifest check should have caught it.
			err = fmt.Errorf("%w (%w)", err, vmm.ErrIncompatible)
		}
		return nil, err
	}
	m.times.Calls = int(m.calls.Load())
	m.setState(vmm.StateRunning)
	cu.Release()
	m.log.Info("restored", "op", "restore", "pid", m.proc.PID(), "snapshot", snapshotDir)
	return m, nil
}

// shareWithGroup makes a snapshot file readable by gid (the jailed VMMs'
// group) and by nobody else but its owner.
func shareWithGroup(path string, gid int) error {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return err
	}
	if int(st.Gid) == gid && st.Mode&0o077 == 0o040 {
		return nil
	}
	if err := unix.Fchown(int(f.Fd()), -1, gid); err != nil {
		return fmt.Errorf("give %s to gid %d: %w", filepath.Base(path), gid, err)
	}
	return unix.Fchmod(int(f.Fd()), 0o640)
}

// prepare validates, claims RunDir, creates the jail root and returns the
// machine with a cleanup stack that removes them again.
func (d *Driver) prepare(ctx context.Context, cfg vmm.Config) (*machine, *vmmproc.Cleanup, error) {
	if err := cfg.Validate(); err != nil {
		return nil, nil, err
	}
	if d.cfg.jailed() && len(cfg.ID) > d.cfg.maxJailedIDLen() {
		return nil, nil, fmt.Errorf("%w: id %q is too long for socket paths under %s", vmm.ErrInvalidConfig, cfg.ID, d.cfg.ChrootBase)
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	runDir, err := filepath.Abs(cfg.RunDir)
	if err != nil {
		return nil, nil, err
	}
	cfg.RunDir = runDir
	cu := &vmmproc.Cleanup{}
	claim, err := vmmproc.ClaimRunDir(runDir)
	if err != nil {
		return nil, nil, err
	}
	cu.Add(func() { _ = claim.Remove() })
	m := &machine{
		d:       d,
		cfg:     cfg,
		lay:     newLayout(d.cfg, cfg.ID, runDir),
		log:     d.log.With("vm", cfg.ID),
		claim:   claim,
		console: vmmproc.NewRing(consoleKeep),
		stderr:  vmmproc.NewRing(stderrKeep),
	}
	if m.lay.jailed {
		jd := jailDir(d.cfg, cfg.ID)
		if _, err := os.Stat(jd); err == nil {
			cu.Clean()
			return nil, nil, fmt.Errorf("jail %s already exists: another machine has id %s, or a stale one was not swept: %w", jd, cfg.ID, vmm.ErrInUse)
		}
		if err := os.MkdirAll(m.lay.root, 0o755); err != nil {
			cu.Clean()
			return nil, nil, err
		}
		cu.Add(func() { _ = os.RemoveAll(jd) })
	}
	if err := m.lay.writable(vmmLogName, false /* dir */); err != nil {
		cu.Clean()
		return nil, nil, fmt.Errorf("create VMM log: %w", err)
	}
	return m, cu, nil
}

func (m *machine) placeDisks() error {
	for _, disk := range m.cfg.Disks {
		how := placeShared
		if !disk.ReadOnly {
			how = placeWritable
		}
		if _, err := m.lay.place(disk.Path, driveName(disk.ID), how); err != nil {
			return fmt.Errorf("place disk %s: %w", disk.ID, err)
		}
	}
	return nil
}

// start runs the VMM (directly or through the jailer), its stdout (the
// guest's serial console) and stderr going into bounded rings, records
// it, and waits for its API socket.
func (m *machine) start(ctx context.Context, cu *vmmproc.Cleanup) error {
	started := time.Now()
	defer func() { m.times.Process = time.Since(started) }()
	dc := m.d.cfg
	// A machine with a network device runs where its tap is: the
	// device's namespace replaces the configured one (an empty one of
	// its own by default, which holds no tap).
	netns := ""
	if n := m.cfg.Net; n != nil {
		dc.NetNS, netns = n.Netns, n.Netns
		if n.Netns == "" {
			dc.NetNS = NetNSHost
		}
		if dc.jailed() {
			// The jailed VMM, unprivileged, may attach only to a tap of
			// its own.
			if err := vmmproc.GiveTap(n.Netns, n.Tap, dc.UID, dc.GID); err != nil {
				return fmt.Errorf("network device: %w", err)
			}
		}
	}
	fcArgs := append([]string{"--api-sock", m.lay.apiSock()}, dc.ExtraArgs...)
	var cmd *exec.Cmd
	// Its own process group: a signal meant for the daemon's terminal
	// does not reach the VMs; the VM's lifetime is ours to end.
	attr := &syscall.SysProcAttr{Setpgid: true}
	if dc.jailed() {
		cmd = exec.Command(dc.JailerBinary, JailerArgs(dc, m.cfg.ID, fcArgs)...)
		if dc.NetNS == "" {
			// Its own, empty network namespace: the VMM has no business
			// with the host's network.
			attr.Cloneflags |= syscall.CLONE_NEWNET
		}
	} else {
		cmd = exec.Command(dc.Binary, append([]string{"--id", m.cfg.ID}, fcArgs...)...)
		// Relative paths given to the API resolve here, in this
		// machine's RunDir, also when a snapshot recorded them.
		cmd.Dir = m.lay.root
	}
	cmd.SysProcAttr = attr
	var proc *vmmproc.Process
	err := func() error {
		if dc.jailed() {
			return startProc(&proc, cmd, m)
		}
		// Without the jailer the VMM is started from inside the
		// namespace, which it inherits.
		return vmmproc.InNetns(netns, func() error { return startProc(&proc, cmd, m) })
	}()
	if err != nil {
		return fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	m.proc = proc
	grace := m.d.stopGrace
	cu.Add(func() { m.proc.Stop(grace) })

	if dc.jailed() && !dc.HostPIDNS {
		if err := m.followNewPIDNS(ctx); err != nil {
			return err
		}
	}
	m.cg = cgroupDir(dc, m.cfg.ID)
	var owned []string
	if m.lay.jailed {
		owned = append(owned, jailDir(dc, m.cfg.ID))
	}
	if m.cg != "" {
		cg := m.cg
		cu.Add(func() { _ = os.Remove(cg) })
		owned = append(owned, cg)
	}
	// Firecracker has no parent-death signal: if this process is killed,
	// the record lets a sweep find and kill exactly this VMM.
	if err := vmmproc.WriteRecord(m.cfg.RunDir, m.proc.Record(owned...)); err != nil {
		return err
	}

	wctx, cancel := context.WithTimeout(ctx, m.d.startTimeout)
	defer cancel()
	if err := vmmproc.WaitSocket(wctx, m.lay.host(apiSockName), m.proc); err != nil {
		m.proc.Drained(100 * time.Millisecond)
		if errors.Is(err, vmm.ErrExited) {
			return fmt.Errorf("%w%s", err, m.logTail())
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%w%s", err, m.logTail())
	}
	m.api = newAPIClient(m.lay.host(apiSockName))
	cu.Add(m.api.close)
	logger := &models.Logger{LogPath: strPtr(vmmLogName), Level: strPtr(models.LoggerLevelInfo)}
	return m.call(ctx, http.MethodPut, "/logger", logger, m.d.apiTimeout)
}

func startProc(p **vmmproc.Process, cmd *exec.Cmd, m *machine) error {
	proc, err := vmmproc.Start(cmd, m.console, m.stderr)
	*p = proc
	return err
}

// followNewPIDNS waits for the jailer to fork Firecracker into its own PID
// namespace and exit, then follows Firecracker by the pid it recorded.
func (m *machine) followNewPIDNS(ctx context.Context) error {
	jailer := m.proc
	wctx, cancel := context.WithTimeout(ctx, m.d.startTimeout)
	defer cancel()
	select {
	case <-jailer.Exited():
	case <-wctx.Done():
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("wait for the jailer to fork: %w%s", wctx.Err(), m.logTail())
	}
	if err := jailer.Err(); err != nil {
		jailer.Drained(100 * time.Millisecond)
		return fmt.Errorf("%w: jailer: %v%s", vmm.ErrExited, err, m.logTail())
	}
	pidFile := m.lay.host(filepath.Base(m.d.cfg.Binary) + jailerPIDFile)
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return fmt.Errorf("read jailer pid file: %w%s", err, m.logTail())
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return fmt.Errorf("jailer pid file %s holds %q", pidFile, b)
	}
	p, err := vmmproc.Follow(pid)
	if err != nil {
		return err
	}
	m.proc = p // the cleanup registered for the jailer now stops this one
	return nil
}

// logTail is the end of the VMM's output, for errors: its log and its
// stderr (where it writes before the logger is configured).
func (m *machine) logTail() string {
	var b strings.Builder
	if t := strings.TrimSpace(vmmproc.Tail(m.lay.host(vmmLogName), logTailBytes)); t != "" {
		b.WriteString("\nfirecracker log:\n" + t)
	}
	if t := strings.TrimSpace(m.stderr.Tail(logTailBytes)); t != "" {
		b.WriteString("\nfirecracker output:\n" + t)
	}
	return b.String()
}

// call sends one API request. If it fails because the VMM died, the error
// says so and carries the VMM's last words.
func (m *machine) call(ctx context.Context, method, path string, body any, timeout time.Duration) error {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	m.calls.Add(1)
	err := m.api.do(ctx, method, path, body, nil)
	if err == nil {
		return nil
	}
	var ae *APIError
	if errors.As(err, &ae) {
		if ae.Status == http.StatusBadRequest && path == "/snapshot/load" {
			// Firecracker ends itself after a failed load; say so.
			return fmt.Errorf("%w%s", err, m.logTail())
		}
		return err
	}
	if m.proc.Done() {
		m.proc.Drained(100 * time.Millisecond)
		return fmt.Errorf("%w: %v (%v)%s", vmm.ErrExited, err, m.proc.Err(), m.logTail())
	}
	return err
}

func (m *machine) setState(s vmm.State) {
	m.mu.Lock()
	m.state = s
	m.mu.Unlock()
}

// ID is the machine's id.
func (m *machine) ID() string { return m.cfg.ID }

// State is the lifecycle state; a machine whose VMM exited by itself (the
// guest powered off or crashed) reports StateStopped, though Stop must
// still be called to free its files.
func (m *machine) State() vmm.State {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.state != vmm.StateStopped && m.proc.Done() {
		return vmm.StateStopped
	}
	return m.state
}

// check starts an operation: the state must be one of allowed and the VMM
// must still be alive.
func (m *machine) check(op string, allowed ...vmm.State) error {
	m.mu.Lock()
	st := m.state
	m.mu.Unlock()
	if err := vmm.RequireState(op, st, allowed...); err != nil {
		return err
	}
	if m.proc.Done() {
		return fmt.Errorf("%s %s: %w: %v%s", op, m.cfg.ID, vmm.ErrExited, m.proc.Err(), m.logTail())
	}
	return nil
}

// DialAgent connects to the agent's vsock port through Firecracker's unix
// socket: "CONNECT <port>\n", answered "OK <host port>\n". Until the agent
// listens, Firecracker closes the connection instead; the guest's listen
// cannot be observed from the host, so DialAgent retries (every 20ms) until
// ctx ends, 30s pass, or the VMM exits. While the machine is paused the
// handshake waits for the guest, so a dial then returns once it resumes.
func (m *machine) DialAgent(ctx context.Context) (net.Conn, error) {
	if err := m.check("dial agent", vmm.StateRunning, vmm.StatePaused); err != nil {
		return nil, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
	}
	sock := m.lay.host(vsockName)
	retry := time.NewTicker(20 * time.Millisecond)
	defer retry.Stop()
	for {
		conn, err := vsockConnect(ctx, sock, m.d.cfg.VsockPort)
		if err == nil {
			return conn, nil
		}
		select {
		case <-retry.C:
		case <-m.proc.Exited():
			return nil, fmt.Errorf("dial agent: %w: %v%s", vmm.ErrExited, m.proc.Err(), m.logTail())
		case <-ctx.Done():
			return nil, fmt.Errorf("dial agent on vsock port %d: %w (last: %v)", m.d.cfg.VsockPort, ctx.Err(), err)
		}
	}
}

// Pause stops the vCPUs.
func (m *machine) Pause(ctx context.Context) error {
	return m.patchVM(ctx, "pause", models.VMStatePaused, vmm.StateRunning, vmm.StatePaused)
}

// Resume starts the vCPUs again.
func (m *machine) Resume(ctx context.Context) error {
	return m.patchVM(ctx, "resume", models.VMStateResumed, vmm.StatePaused, vmm.StateRunning)
}

func (m *machine) patchVM(ctx context.Context, op, want string, from, to vmm.State) error {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	if err := m.check(op, from); err != nil {
		return err
	}
	if err := m.call(ctx, http.MethodPatch, "/vm", &models.VM{State: strPtr(want)}, m.d.apiTimeout); err != nil {
		return fmt.Errorf("%s %s: %w", op, m.cfg.ID, err)
	}
	m.setState(to)
	m.log.Debug(op, "op", op)
	return nil
}

// Snapshot writes a full snapshot of the paused machine into dir:
// vmm.SnapshotStateFile and vmm.SnapshotMemoryFile. A jailed VMM can only
// write inside its chroot, so it writes there and the files are moved
// (renamed when on one filesystem), then given to root and the jailed
// VMMs' group. The machine stays paused.
func (m *machine) Snapshot(ctx context.Context, dir string) error {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	if err := m.check("snapshot", vmm.StatePaused); err != nil {
		return err
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", m.cfg.ID, err)
	}
	if len(ents) > 0 {
		return fmt.Errorf("snapshot %s: directory %s is not empty", m.cfg.ID, dir)
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return err
	}
	state, mem := filepath.Join(dir, vmm.SnapshotStateFile), filepath.Join(dir, vmm.SnapshotMemoryFile)
	if m.lay.jailed {
		_ = os.RemoveAll(m.lay.host(snapshotOut))
		if err := m.lay.writable(snapshotOut, true /* dir */); err != nil {
			return fmt.Errorf("snapshot %s: %w", m.cfg.ID, err)
		}
		defer os.RemoveAll(m.lay.host(snapshotOut))
		state, mem = filepath.Join(snapshotOut, vmm.SnapshotStateFile), filepath.Join(snapshotOut, vmm.SnapshotMemoryFile)
	}
	req := &models.SnapshotCreateParams{
		SnapshotType: models.SnapshotCreateParamsSnapshotTypeFull,
		SnapshotPath: &state,
		MemFilePath:  &mem,
	}
	start := time.Now()
	if err := m.call(ctx, http.MethodPut, "/snapshot/create", req, 0); err != nil {
		return fmt.Errorf("snapshot %s: %w", m.cfg.ID, err)
	}
	for _, f := range []string{vmm.SnapshotStateFile, vmm.SnapshotMemoryFile} {
		dst := filepath.Join(dir, f)
		if m.lay.jailed {
			if err := moveFile(m.lay.host(filepath.Join(snapshotOut, f)), dst); err != nil {
				return fmt.Errorf("snapshot %s: move %s out of the jail: %w", m.cfg.ID, f, err)
			}
			// The jailed VMM made it as its uid: take it back.
			if err := os.Lchown(dst, os.Geteuid(), -1); err != nil {
				return fmt.Errorf("snapshot %s: %w", m.cfg.ID, err)
			}
		}
		if m.d.cfg.jailed() {
			if err := shareWithGroup(dst, m.d.cfg.GID); err != nil {
				return fmt.Errorf("snapshot %s: %w", m.cfg.ID, err)
			}
		}
	}
	m.log.Info("snapshot written", "op", "snapshot", "dir", dir, "took", time.Since(start))
	return nil
}

// Stop ends the VMM (SIGTERM, then SIGKILL after the grace period) and
// removes RunDir, the jail and the cgroup. It runs to the end even if ctx
// is cancelled; concurrent and repeated calls return once it has.
func (m *machine) Stop(ctx context.Context) error {
	m.stopOnce.Do(func() {
		m.proc.Stop(m.d.stopGrace)
		if m.api != nil {
			m.api.close()
		}
		m.opMu.Lock() // an operation in flight has failed by now
		defer m.opMu.Unlock()
		var errs []error
		if m.cg != "" {
			if err := os.Remove(m.cg); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("remove cgroup: %w", err))
			}
		}
		if m.lay.jailed {
			if err := os.RemoveAll(jailDir(m.d.cfg, m.cfg.ID)); err != nil {
				errs = append(errs, fmt.Errorf("remove jail: %w", err))
			}
		}
		if err := m.claim.Remove(); err != nil {
			errs = append(errs, fmt.Errorf("remove run dir: %w", err))
		}
		m.setState(vmm.StateStopped)
		if err := errors.Join(errs...); err != nil {
			m.stopErr = fmt.Errorf("stop %s: %w", m.cfg.ID, err)
		}
		m.log.Info("stopped", "op", "stop")
	})
	return m.stopErr
}

// Wait blocks until the VMM exits or ctx ends. It returns nil if the VMM
// exited cleanly or was stopped by Stop, else an error wrapping
// vmm.ErrExited with the exit status and the VMM's last output.
func (m *machine) Wait(ctx context.Context) error {
	err := m.proc.Wait(ctx)
	if errors.Is(err, vmm.ErrExited) {
		m.proc.Drained(100 * time.Millisecond)
		return fmt.Errorf("%s: %w%s", m.cfg.ID, err, m.logTail())
	}
	return err
}

// Console returns the last n bytes of the guest's serial console.
func (m *machine) Console(n int) string { return m.console.Tail(n) }

// PID is the VMM's process id, 0 once it exited or was stopped.
func (m *machine) PID() int {
	if m.State() == vmm.StateStopped {
		return 0
	}
	return m.proc.PID()
}

func strPtr(s string) *string { return &s }
func boolPtr(b bool) *bool    { return &b }
