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
	"syscall"
	"time"

	"github.com/firecracker-microvm/firecracker-go-sdk/client/models"
	"github.com/firesandbox/firesandbox/internal/vmm"
)

// logTailBytes is how much of the VMM's own output goes into errors.
const logTailBytes = 2048

// consoleKeep is how much console output Console can still return after
// Stop removed the log.
const consoleKeep = 64 << 10

// machine is one Firecracker microVM. opMu serialises lifecycle
// operations; mu guards the fields read by State, PID and Console, which
// must not wait behind a slow snapshot.
type machine struct {
	d   *Driver
	cfg vmm.Config
	lay layout
	log *slog.Logger

	opMu sync.Mutex
	proc *process
	api  *apiClient
	cg   string // cgroup directory to remove after exit ("" if none)

	mu          sync.Mutex
	state       vmm.State
	stopped     bool   // Stop ran: everything is gone
	lastConsole string // console tail kept across Stop
}

var _ vmm.Machine = (*machine)(nil)

// Boot starts a VMM, configures the machine (shape, kernel, initramfs,
// drives in order, vsock, logs) and starts it. It returns once the VMM runs
// the guest; the agent may still be booting. On any error, everything it
// created is gone.
func (d *Driver) Boot(ctx context.Context, cfg vmm.Config) (vmm.Machine, error) {
	m, cu, err := d.prepare(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("boot %s: %w", cfg.ID, err)
	}
	defer cu.clean()
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
	steps := []struct {
		path string
		body any
	}{
		{"/machine-config", &models.MachineConfiguration{VcpuCount: &vcpus, MemSizeMib: &mem, Smt: &smt}},
		{"/boot-source", &models.BootSource{
			KernelImagePath: strPtr(kernelName),
			InitrdPath:      initrdName,
			BootArgs:        d.bootArgs(cfg),
		}},
	}
	for _, disk := range cfg.Disks {
		steps = append(steps, struct {
			path string
			body any
		}{"/drives/" + driveID(disk.ID), &models.Drive{
			DriveID:      strPtr(driveID(disk.ID)),
			PathOnHost:   strPtr(driveName(disk.ID)),
			IsRootDevice: boolPtr(false), // we boot from the initramfs
			IsReadOnly:   boolPtr(disk.ReadOnly),
		}})
	}
	cid := int64(GuestCID)
	steps = append(steps, struct {
		path string
		body any
	}{"/vsock", &models.Vsock{GuestCid: &cid, UdsPath: strPtr(vsockName)}})
	steps = append(steps, struct {
		path string
		body any
	}{"/actions", &models.InstanceActionInfo{ActionType: strPtr(models.InstanceActionInfoActionTypeInstanceStart)}})
	for _, s := range steps {
		if err := m.call(ctx, http.MethodPut, s.path, s.body, d.apiTimeout); err != nil {
			return nil, fmt.Errorf("boot %s: %w", cfg.ID, err)
		}
	}
	m.setState(vmm.StateRunning)
	cu.release()
	m.log.Info("booted", "pid", m.proc.pid, "vcpus", cfg.VCPUs, "memory_mib", cfg.MemoryMiB, "disks", len(cfg.Disks))
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
	defer cu.clean()
	lay := m.lay
	if _, err := lay.place(filepath.Join(snapshotDir, vmm.SnapshotStateFile), filepath.Join(snapshotIn, vmm.SnapshotStateFile), placeShared); err != nil {
		return nil, fmt.Errorf("restore %s: %w", cfg.ID, err)
	}
	copied, err := lay.place(filepath.Join(snapshotDir, vmm.SnapshotMemoryFile), filepath.Join(snapshotIn, vmm.SnapshotMemoryFile), placeMemory)
	if err != nil {
		return nil, fmt.Errorf("restore %s: %w", cfg.ID, err)
	}
	if copied {
		m.log.Warn("snapshot memory copied into the jail: restores will not share its pages; put the chroot base on the snapshots' filesystem")
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
	if err := m.call(ctx, http.MethodPut, "/snapshot/load", load, 0); err != nil {
		err = fmt.Errorf("restore %s from %s: %w", cfg.ID, snapshotDir, err)
		var ae *APIError
		if errors.As(err, &ae) {
			// Firecracker refuses snapshots of another version or host
			// with a 400; the caller's manifest check should have caught it.
			err = fmt.Errorf("%w (%w)", err, vmm.ErrIncompatible)
		}
		return nil, err
	}
	m.setState(vmm.StateRunning)
	cu.release()
	m.log.Info("restored", "pid", m.proc.pid, "snapshot", snapshotDir)
	return m, nil
}

// prepare validates, creates RunDir (and the jail root) and returns the
// machine with a cleanup stack that removes them again.
func (d *Driver) prepare(ctx context.Context, cfg vmm.Config) (*machine, *cleanupStack, error) {
	if err := d.cfg.Validate(); err != nil {
		return nil, nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, nil, err
	}
	if d.cfg.UseJailer && len(cfg.ID) > d.cfg.maxJailedIDLen() {
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
	m := &machine{
		d:   d,
		cfg: cfg,
		lay: newLayout(d.cfg, cfg.ID, runDir),
		log: d.log.With("vm", cfg.ID, "driver", "firecracker"),
	}
	cu := &cleanupStack{}
	if err := claimDir(runDir); err != nil {
		return nil, nil, err
	}
	cu.add(func() { _ = os.RemoveAll(runDir) })
	if m.lay.jailed {
		jd := jailDir(d.cfg, cfg.ID)
		if _, err := os.Stat(jd); err == nil {
			cu.clean()
			return nil, nil, fmt.Errorf("jail %s already exists: another machine has id %s, or a stale one was not cleaned up", jd, cfg.ID)
		}
		if err := os.MkdirAll(m.lay.root, 0o755); err != nil {
			cu.clean()
			return nil, nil, err
		}
		cu.add(func() { _ = os.RemoveAll(jd) })
	}
	if err := m.lay.writable(vmmLogName, false /* dir */); err != nil {
		cu.clean()
		return nil, nil, fmt.Errorf("create VMM log: %w", err)
	}
	return m, cu, nil
}

// claimDir creates RunDir, or takes over an existing one whose VMM is gone
// (a daemon restart), refusing one whose VMM still answers.
func claimDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create run dir: %w", err)
	}
	sock := filepath.Join(dir, apiSockName)
	if c, err := net.Dial("unix", sock); err == nil {
		c.Close()
		return fmt.Errorf("run dir %s is in use by a running VMM", dir)
	}
	for _, name := range []string{apiSockName, vsockName, vmmLogName, consoleName, kernelName, initrdName, drivesDir, snapshotIn, snapshotOut} {
		if err := os.RemoveAll(filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("clear run dir: %w", err)
		}
	}
	return nil
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

// start runs the VMM (directly or through the jailer), its stdout and
// stderr (the guest's serial console and early VMM errors) going to the
// console log, and waits for its API socket.
func (m *machine) start(ctx context.Context, cu *cleanupStack) error {
	dc := m.d.cfg
	console, err := os.OpenFile(filepath.Join(m.cfg.RunDir, consoleName), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("create console log: %w", err)
	}
	defer console.Close() // the child has its own copy
	fcArgs := append([]string{"--api-sock", m.lay.apiSock()}, dc.ExtraArgs...)
	var cmd *exec.Cmd
	if dc.UseJailer {
		cmd = exec.Command(dc.JailerBinary, JailerArgs(dc, m.cfg.ID, fcArgs)...)
	} else {
		cmd = exec.Command(dc.Binary, append([]string{"--id", m.cfg.ID}, fcArgs...)...)
		// Relative paths given to the API resolve here, in this
		// machine's RunDir, also when a snapshot recorded them.
		cmd.Dir = m.lay.root
	}
	cmd.Stdout, cmd.Stderr = console, console
	// Its own process group: a signal meant for the daemon's terminal
	// does not reach the VMs; the VM's lifetime is ours to end.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	proc, err := startChild(cmd)
	if err != nil {
		return fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	m.proc = proc
	grace := m.d.stopGrace
	cu.add(func() { m.proc.stop(context.Background(), grace) })

	if dc.UseJailer && dc.NewPIDNS {
		if err := m.followNewPIDNS(ctx); err != nil {
			return err
		}
	}
	m.cg = cgroupDir(dc, m.cfg.ID)
	if m.cg != "" {
		cu.add(func() { _ = os.Remove(m.cg) })
	}

	wctx, cancel := context.WithTimeout(ctx, m.d.startTimeout)
	defer cancel()
	if err := waitSocket(wctx, m.lay.host(apiSockName), m.proc); err != nil {
		if errors.Is(err, errExitedEarly) {
			return fmt.Errorf("%w: %v%s", vmm.ErrExited, err, m.logTail())
		}
		return fmt.Errorf("%w%s", err, m.logTail())
	}
	m.api = newAPIClient(m.lay.host(apiSockName))
	cu.add(m.api.close)
	logger := &models.Logger{LogPath: strPtr(vmmLogName), Level: strPtr(models.LoggerLevelInfo)}
	return m.call(ctx, http.MethodPut, "/logger", logger, m.d.apiTimeout)
}

// followNewPIDNS waits for the jailer to fork Firecracker into its own PID
// namespace and exit, then follows Firecracker by the pid it recorded.
func (m *machine) followNewPIDNS(ctx context.Context) error {
	jailer := m.proc
	wctx, cancel := context.WithTimeout(ctx, m.d.startTimeout)
	defer cancel()
	select {
	case <-jailer.exited:
	case <-wctx.Done():
		return fmt.Errorf("wait for the jailer to fork: %w%s", wctx.Err(), m.logTail())
	}
	if jailer.err != nil {
		return fmt.Errorf("%w: jailer: %v%s", vmm.ErrExited, jailer.err, m.logTail())
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
	p, err := watchPID(pid)
	if err != nil {
		return err
	}
	m.proc = p // the cleanup registered for the jailer now stops this one
	return nil
}

// logTail is the end of the VMM's output, for errors: its log and its
// stdout/stderr (where it writes before the logger is configured).
func (m *machine) logTail() string {
	var b strings.Builder
	if t := strings.TrimSpace(tail(m.lay.host(vmmLogName), logTailBytes)); t != "" {
		b.WriteString("\nfirecracker log:\n" + t)
	}
	if t := strings.TrimSpace(tail(filepath.Join(m.cfg.RunDir, consoleName), logTailBytes)); t != "" {
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
	select {
	case <-m.proc.exited:
		return fmt.Errorf("%w: %v (%v)%s", vmm.ErrExited, err, m.proc.err, m.logTail())
	default:
		return err
	}
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
	if m.state != vmm.StateStopped && m.proc != nil && m.proc.done() {
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
	if m.proc.done() {
		return fmt.Errorf("%s: %w: %v%s", op, vmm.ErrExited, m.proc.err, m.logTail())
	}
	return nil
}

// DialAgent connects to the agent's vsock port through Firecracker's unix
// socket: "CONNECT <port>\n", answered "OK <host port>\n". Until the agent
// listens, Firecracker closes the connection instead; the guest's listen
// cannot be observed from the host, so DialAgent retries (every 20ms) until
// ctx ends, 30s pass, or the VMM exits.
func (m *machine) DialAgent(ctx context.Context) (net.Conn, error) {
	if err := m.check("dial agent", vmm.StateRunning); err != nil {
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
		case <-m.proc.exited:
			return nil, fmt.Errorf("dial agent: %w: %v%s", vmm.ErrExited, m.proc.err, m.logTail())
		case <-ctx.Done():
			return nil, fmt.Errorf("dial agent on vsock port %d: %w (last: %v)", m.d.cfg.VsockPort, ctx.Err(), err)
		}
	}
}

// vsockConnect makes one attempt at the CONNECT handshake.
func vsockConnect(ctx context.Context, sock string, port uint32) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return nil, err
	}
	// ctx bounds the handshake, not the connection.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if _, err := fmt.Fprintf(conn, "CONNECT %d\n", port); err != nil {
		conn.Close()
		return nil, fmt.Errorf("vsock connect: %w", err)
	}
	// Read the answer a byte at a time: what follows it is the agent's
	// stream, which must not be buffered away here.
	line, err := readLine(conn, 64)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("vsock connect to port %d: %w", port, err)
	}
	if !strings.HasPrefix(line, "OK ") {
		conn.Close()
		return nil, fmt.Errorf("vsock connect to port %d: answer %q", port, line)
	}
	if !stop() || ctx.Err() != nil {
		conn.Close()
		return nil, fmt.Errorf("vsock connect to port %d: %w", port, context.Cause(ctx))
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, nil
}

func readLine(c net.Conn, max int) (string, error) {
	var b [1]byte
	var line []byte
	for len(line) < max {
		if _, err := c.Read(b[:]); err != nil {
			return "", err
		}
		if b[0] == '\n' {
			return string(line), nil
		}
		line = append(line, b[0])
	}
	return "", errors.New("answer too long")
}

// Pause stops the vCPUs.
func (m *machine) Pause(ctx context.Context) error {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	if err := m.check("pause", vmm.StateRunning); err != nil {
		return err
	}
	if err := m.call(ctx, http.MethodPatch, "/vm", &models.VM{State: strPtr(models.VMStatePaused)}, m.d.apiTimeout); err != nil {
		return fmt.Errorf("pause %s: %w", m.cfg.ID, err)
	}
	m.setState(vmm.StatePaused)
	return nil
}

// Resume starts the vCPUs again.
func (m *machine) Resume(ctx context.Context) error {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	if err := m.check("resume", vmm.StatePaused); err != nil {
		return err
	}
	if err := m.call(ctx, http.MethodPatch, "/vm", &models.VM{State: strPtr(models.VMStateResumed)}, m.d.apiTimeout); err != nil {
		return fmt.Errorf("resume %s: %w", m.cfg.ID, err)
	}
	m.setState(vmm.StateRunning)
	return nil
}

// Snapshot writes a full snapshot of the paused machine into dir:
// vmm.SnapshotStateFile and vmm.SnapshotMemoryFile. A jailed VMM can only
// write inside its chroot, so it writes there and the files are moved
// (renamed when on one filesystem). The machine stays paused.
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
	if m.lay.jailed {
		for _, f := range []string{vmm.SnapshotStateFile, vmm.SnapshotMemoryFile} {
			if err := moveFile(m.lay.host(filepath.Join(snapshotOut, f)), filepath.Join(dir, f)); err != nil {
				return fmt.Errorf("snapshot %s: move %s out of the jail: %w", m.cfg.ID, f, err)
			}
		}
	}
	m.log.Info("snapshot written", "dir", dir, "took", time.Since(start))
	return nil
}

// Stop ends the VMM (SIGTERM, then SIGKILL after the grace period) and
// removes RunDir and the jail. It runs to the end even if ctx is
// cancelled, and stopping a stopped machine does nothing.
func (m *machine) Stop(ctx context.Context) error {
	ctx = context.WithoutCancel(ctx) // a cancelled request must not leave a half-stopped VM
	m.opMu.Lock()
	defer m.opMu.Unlock()
	m.mu.Lock()
	done := m.stopped
	m.mu.Unlock()
	if done {
		return nil
	}
	m.proc.stop(ctx, m.d.stopGrace)
	if m.api != nil {
		m.api.close()
	}
	console := tail(filepath.Join(m.cfg.RunDir, consoleName), consoleKeep)
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
	if err := os.RemoveAll(m.cfg.RunDir); err != nil {
		errs = append(errs, fmt.Errorf("remove run dir: %w", err))
	}
	m.mu.Lock()
	m.state, m.stopped, m.lastConsole = vmm.StateStopped, true, console
	m.mu.Unlock()
	m.log.Info("stopped")
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("stop %s: %w", m.cfg.ID, err)
	}
	return nil
}

// Wait blocks until the VMM exits or ctx ends. It returns nil if the VMM
// exited cleanly or was stopped by Stop, else an error wrapping
// vmm.ErrExited with the exit status and the VMM's last output.
func (m *machine) Wait(ctx context.Context) error {
	select {
	case <-m.proc.exited:
	case <-ctx.Done():
		return ctx.Err()
	}
	m.mu.Lock()
	stopped := m.stopped
	m.mu.Unlock()
	if m.proc.err == nil || stopped {
		return nil
	}
	return fmt.Errorf("%s: %w: %v%s", m.cfg.ID, vmm.ErrExited, m.proc.err, m.logTail())
}

// Console returns the last n bytes of the guest's serial console (which
// also holds Firecracker's own messages from before its logger was set).
func (m *machine) Console(n int) string {
	m.mu.Lock()
	stopped, last := m.stopped, m.lastConsole
	m.mu.Unlock()
	if stopped {
		if len(last) > n {
			last = last[len(last)-n:]
		}
		return last
	}
	return tail(filepath.Join(m.cfg.RunDir, consoleName), n)
}

// PID is the VMM's process id, 0 once it exited or was stopped.
func (m *machine) PID() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped || m.proc == nil || m.proc.done() {
		return 0
	}
	return m.proc.pid
}

func strPtr(s string) *string { return &s }
func boolPtr(b bool) *bool    { return &b }
