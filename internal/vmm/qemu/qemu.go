package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/firesandbox/firesandbox/internal/vmm"
)

// AgentPortName is the virtio-serial port name the guest agent looks for.
const AgentPortName = "org.firesandbox.agent"

// Accelerators.
const (
	AccelKVM = "kvm"
	AccelTCG = "tcg"
)

// Config configures the QEMU driver.
type Config struct {
	// Binary is the QEMU system emulator; default qemu-system-x86_64.
	Binary string `json:"binary,omitempty"`
	// Accel is "kvm" or "tcg". Choosing between them needs a real boot
	// (see ProbeKVM); the driver uses what it is told.
	Accel string `json:"accel"`
	// BIOS is the firmware; default qboot, which boots in milliseconds.
	BIOS string `json:"bios,omitempty"`
	// TBSizeMiB bounds TCG's translation cache per VM (QEMU's default is
	// far larger); 0 means 64.
	TBSizeMiB int `json:"tb_size_mib,omitempty"`
	// MemoryDir holds guest RAM files while a VM runs; default /dev/shm.
	// RAM lives in a file so a snapshot can save it without copying it
	// through the migration stream, and restores can map it privately.
	MemoryDir string `json:"memory_dir,omitempty"`
	// TSCKHz is passed as tsc_early_khz; 0 reads it from /proc/cpuinfo.
	// Without it the microvm guest may hang calibrating against a PIT it
	// does not have.
	TSCKHz int `json:"tsc_khz,omitempty"`
	// StopGrace is how long Stop waits after SIGTERM before SIGKILL.
	StopGrace time.Duration `json:"stop_grace,omitempty"`
}

func (c *Config) setDefaults() {
	if c.Binary == "" {
		c.Binary = "qemu-system-x86_64"
	}
	if c.Accel == "" {
		c.Accel = AccelTCG
	}
	if c.BIOS == "" {
		if _, err := os.Stat("/usr/share/qemu/qboot.rom"); err == nil {
			c.BIOS = "/usr/share/qemu/qboot.rom"
		}
	}
	if c.TBSizeMiB == 0 {
		c.TBSizeMiB = 64
	}
	if c.MemoryDir == "" {
		c.MemoryDir = "/dev/shm"
	}
	if c.TSCKHz == 0 {
		c.TSCKHz = hostTSCKHz()
	}
	if c.StopGrace == 0 {
		c.StopGrace = 2 * time.Second
	}
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	if c.Accel != AccelKVM && c.Accel != AccelTCG && c.Accel != "" {
		return fmt.Errorf("%w: accel %q: want kvm or tcg", vmm.ErrInvalidConfig, c.Accel)
	}
	if c.TBSizeMiB < 0 {
		return fmt.Errorf("%w: negative tb size", vmm.ErrInvalidConfig)
	}
	return nil
}

// Driver boots VMs with QEMU's microvm machine.
type Driver struct {
	cfg Config
	log *slog.Logger
}

// Option configures a Driver.
type Option func(*Driver)

// WithLogger sets the driver's logger.
func WithLogger(l *slog.Logger) Option { return func(d *Driver) { d.log = l } }

// New returns a QEMU driver.
func New(cfg Config, opts ...Option) (*Driver, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	d := &Driver{cfg: cfg, log: slog.New(slog.DiscardHandler)}
	for _, o := range opts {
		o(d)
	}
	return d, nil
}

// Name implements vmm.Driver.
func (d *Driver) Name() string { return "qemu" }

// Accel returns the accelerator this driver uses.
func (d *Driver) Accel() string { return d.cfg.Accel }

var versionRe = regexp.MustCompile(`QEMU emulator version (\S+)`)

// Version implements vmm.Driver.
func (d *Driver) Version(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, d.cfg.Binary, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("%w: run %s --version: %v", vmm.ErrUnavailable, d.cfg.Binary, err)
	}
	m := versionRe.FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("%w: unrecognised version output %q", vmm.ErrUnavailable, out)
	}
	return string(m[1]), nil
}

// Capabilities implements vmm.Driver.
func (d *Driver) Capabilities() vmm.Capabilities {
	return vmm.Capabilities{Snapshot: true, MemorySharing: true, DiskSerials: true}
}

// BaseCmdline is the kernel command line every QEMU guest gets, tuned for
// fast boots (see shared/MEASURED.md).
func (d *Driver) BaseCmdline() []string {
	args := []string{
		"console=ttyS0", "quiet", "panic=-1", "reboot=t",
		"tsc=reliable", "cryptomgr.notests", "mitigations=off", "init_on_alloc=0",
		"lsm=capability", "audit=0", "no_timer_check", "random.trust_cpu=on",
		"nowatchdog", "pci=off", "8250.nr_uarts=1",
		"fs.channel=virtio-port:" + AgentPortName,
	}
	if d.cfg.TSCKHz > 0 {
		args = append(args, "tsc_early_khz="+strconv.Itoa(d.cfg.TSCKHz))
	}
	return args
}

func hostTSCKHz() int {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "cpu MHz" {
			mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return int(mhz * 1000)
			}
		}
	}
	return 0
}

// args builds QEMU's command line. memPath holds guest RAM; share says
// whether writes go to the file (a VM that may be snapshotted) or stay
// private (a restore mapping the snapshot's RAM copy-on-write).
func (d *Driver) args(cfg *vmm.Config, memPath string, share bool) []string {
	run := cfg.RunDir
	a := []string{
		"-M", "microvm,memory-backend=mem",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-smp", strconv.Itoa(cfg.VCPUs),
		"-m", strconv.Itoa(cfg.MemoryMiB) + "M",
		"-object", memoryBackend(cfg.MemoryMiB, memPath, share),
		"-kernel", cfg.Kernel,
		"-initrd", cfg.Initrd,
		"-append", strings.Join(append(d.BaseCmdline(), cfg.Cmdline...), " "),
		"-chardev", "file,id=con,path=" + qemuEscape(filepath.Join(run, "console.log")),
		"-serial", "chardev:con",
		"-device", "virtio-serial-device,max_ports=2",
		"-chardev", "socket,id=agent,path=" + qemuEscape(filepath.Join(run, "agent.sock")) + ",server=on,wait=off",
		"-device", "virtserialport,chardev=agent,name=" + AgentPortName,
		"-qmp", "unix:" + qemuEscape(filepath.Join(run, "qmp.sock")) + ",server=on,wait=off",
	}
	if d.cfg.BIOS != "" {
		a = append(a, "-bios", d.cfg.BIOS)
	}
	if d.cfg.Accel == AccelKVM {
		a = append(a, "-accel", "kvm", "-cpu", "host")
	} else {
		a = append(a, "-accel", fmt.Sprintf("tcg,tb-size=%d", d.cfg.TBSizeMiB))
	}
	for i, disk := range cfg.Disks {
		id := fmt.Sprintf("d%d", i)
		drive := fmt.Sprintf("id=%s,file=%s,format=raw,if=none,cache=unsafe,discard=unmap", id, qemuEscape(disk.Path))
		if disk.ReadOnly {
			drive += ",readonly=on"
		}
		a = append(a, "-drive", drive, "-device", fmt.Sprintf("virtio-blk-device,drive=%s,serial=%s", id, disk.ID))
	}
	return a
}

// memoryBackend holds guest RAM: in a file when memPath is set (shared
// with the file, or mapped privately from it), else anonymous memory.
func memoryBackend(mib int, memPath string, share bool) string {
	if memPath == "" {
		return fmt.Sprintf("memory-backend-ram,id=mem,size=%dM", mib)
	}
	return fmt.Sprintf("memory-backend-file,id=mem,size=%dM,mem-path=%s,share=%s", mib, qemuEscape(memPath), onOff(share))
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// qemuEscape doubles commas, QEMU's escape inside option values.
func qemuEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// Boot implements vmm.Driver.
func (d *Driver) Boot(ctx context.Context, cfg vmm.Config) (vmm.Machine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	memPath := filepath.Join(d.cfg.MemoryDir, "firesandbox-"+cfg.ID+".ram")
	m, err := d.start(ctx, &cfg, memPath, true /* share */, true /* ownMem */, nil)
	if err != nil {
		return nil, err // not a typed nil *Machine inside the interface
	}
	return m, nil
}

// start runs QEMU and connects QMP. prepare, if set, runs on the QMP
// connection before start returns (restores use it to load state).
func (d *Driver) start(ctx context.Context, cfg *vmm.Config, memPath string, share, ownMem bool, extra []string) (*Machine, error) {
	if err := os.MkdirAll(cfg.RunDir, 0o700); err != nil {
		return nil, fmt.Errorf("create run dir: %w", err)
	}
	m := &Machine{
		d:      d,
		cfg:    *cfg,
		log:    d.log.With("vm", cfg.ID),
		exited: make(chan struct{}),
		state:  vmm.StateNew,
	}
	if ownMem {
		m.memPath = memPath
	}
	ok := false
	defer func() {
		if !ok {
			_ = m.Stop(context.WithoutCancel(ctx))
		}
	}()

	logf, err := os.Create(filepath.Join(cfg.RunDir, "qemu.log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	args := append(d.args(cfg, memPath, share), extra...)
	cmd := exec.Command(d.cfg.Binary, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	m.log.Debug("start qemu", "args", strings.Join(args, " "))
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", d.cfg.Binary, err)
	}
	m.cmd = cmd
	go func() {
		m.waitErr = cmd.Wait()
		close(m.exited)
	}()

	// Wait for QMP while watching for an early exit.
	qmpPath := filepath.Join(cfg.RunDir, "qmp.sock")
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	for m.qmp == nil {
		if _, err := os.Stat(qmpPath); err == nil {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			q, err := dialQMP(cctx, qmpPath)
			cancel()
			if err == nil {
				m.qmp = q
				break
			}
		}
		select {
		case <-m.exited:
			return nil, fmt.Errorf("%w before its monitor came up: %v\n%s", vmm.ErrExited, m.waitErr, m.vmmLog())
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-deadline.C:
			return nil, fmt.Errorf("qemu monitor did not come up within 10s\n%s", m.vmmLog())
		case <-time.After(5 * time.Millisecond):
		}
	}
	m.state = vmm.StateRunning
	ok = true
	return m, nil
}

// Machine is a VM run by QEMU.
type Machine struct {
	d   *Driver
	cfg vmm.Config
	log *slog.Logger

	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
	qmp     *qmp
	memPath string // RAM file this machine owns and removes; empty for a restore

	mu      sync.Mutex
	state   vmm.State
	console string // kept at Stop, when the run dir goes
}

// ID implements vmm.Machine.
func (m *Machine) ID() string { return m.cfg.ID }

// State implements vmm.Machine.
func (m *Machine) State() vmm.State {
	m.mu.Lock()
	defer m.mu.Unlock()
	select {
	case <-m.exited:
		if m.state != vmm.StateStopped {
			return vmm.StateStopped
		}
	default:
	}
	return m.state
}

// PID implements vmm.Machine.
func (m *Machine) PID() int {
	if m.State() == vmm.StateStopped || m.cmd == nil {
		return 0
	}
	return m.cmd.Process.Pid
}

// DialAgent implements vmm.Machine.
func (m *Machine) DialAgent(ctx context.Context) (net.Conn, error) {
	if err := vmm.RequireState("dial agent", m.State(), vmm.StateRunning, vmm.StatePaused); err != nil {
		return nil, err
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", filepath.Join(m.cfg.RunDir, "agent.sock"))
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
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := vmm.RequireState(op, m.state, from); err != nil {
		return err
	}
	if _, err := m.qmp.run(ctx, cmd, nil); err != nil {
		return fmt.Errorf("%s %s: %w", op, m.cfg.ID, err)
	}
	m.state = to
	return nil
}

// Snapshot implements vmm.Machine. A booted machine's RAM already lives in
// its file: device state goes through a migration to a file with
// x-ignore-shared (RAM skipped), then the RAM file is copied, sparsely,
// beside it. A restored machine maps its RAM privately, so there is no
// file to copy: its RAM goes into the migration stream instead, and the
// snapshot has no separate memory file.
func (m *Machine) Snapshot(ctx context.Context, dir string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := vmm.RequireState("snapshot", m.state, vmm.StatePaused); err != nil {
		return err
	}
	statePath := filepath.Join(dir, vmm.SnapshotStateFile)
	if err := m.migrate(ctx, "migrate", map[string]any{"uri": "file:" + statePath}); err != nil {
		return fmt.Errorf("snapshot %s: %w", m.cfg.ID, err)
	}
	if m.memPath == "" {
		return nil
	}
	if err := copySparse(m.memPath, filepath.Join(dir, vmm.SnapshotMemoryFile)); err != nil {
		return fmt.Errorf("snapshot %s: copy memory: %w", m.cfg.ID, err)
	}
	return nil
}

// migrate starts an outgoing or incoming migration and waits for it to
// complete. x-ignore-shared is always on: it skips only RAM mapped shared
// from a named file (a booted machine's), so a privately mapped restore
// still sends its RAM; and the stream records the capability, so both
// ends must agree on it.
func (m *Machine) migrate(ctx context.Context, cmd string, args map[string]any) error {
	caps := map[string]any{"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": true}}}
	if _, err := m.qmp.run(ctx, "migrate-set-capabilities", caps); err != nil {
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
	if _, err := m.qmp.run(ctx, cmd, args); err != nil {
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
			return fmt.Errorf("migration %s: %s", st.Status, st.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-m.exited:
			return fmt.Errorf("%w during migration\n%s", vmm.ErrExited, m.vmmLog())
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// Restore implements vmm.Driver: the snapshot's RAM file is mapped
// privately (share=off), so restores of one snapshot share its clean pages
// in the page cache and never write to it.
func (d *Driver) Restore(ctx context.Context, snapshotDir string, cfg vmm.Config) (vmm.Machine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	memPath := filepath.Join(snapshotDir, vmm.SnapshotMemoryFile)
	statePath := filepath.Join(snapshotDir, vmm.SnapshotStateFile)
	if _, err := os.Stat(statePath); err != nil {
		return nil, fmt.Errorf("restore: snapshot has no device state: %w: %v", vmm.ErrIncompatible, err)
	}
	// With a memory file, map it privately: restores share its clean
	// pages and never write to it. Without one, RAM is in the stream.
	ram := ""
	if _, err := os.Stat(memPath); err == nil {
		ram = memPath
	}
	m, err := d.start(ctx, &cfg, ram, false /* share */, false /* ownMem */, []string{"-incoming", "defer"})
	if err != nil {
		return nil, err
	}
	// No lock: nobody else holds m until it is returned.
	err = m.migrate(ctx, "migrate-incoming", map[string]any{"uri": "file:" + statePath})
	if err == nil {
		_, err = m.qmp.run(ctx, "cont", nil)
	}
	if err != nil {
		_ = m.Stop(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("restore %s from %s: %w", cfg.ID, snapshotDir, err)
	}
	return m, nil
}

// Stop implements vmm.Machine. ctx's cancellation does not shorten it: a
// stop always finishes (SIGTERM, the grace period, then SIGKILL).
func (m *Machine) Stop(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.state == vmm.StateStopped {
		return nil
	}
	if m.cmd != nil && m.cmd.Process != nil {
		select {
		case <-m.exited:
		default:
			_ = m.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-m.exited:
			case <-time.After(m.d.cfg.StopGrace):
				_ = syscall.Kill(-m.cmd.Process.Pid, syscall.SIGKILL)
				<-m.exited
			}
		}
	}
	if m.qmp != nil {
		m.qmp.close()
	}
	m.console = tail(filepath.Join(m.cfg.RunDir, "console.log"), 64<<10)
	m.state = vmm.StateStopped
	var errs []error
	if err := os.RemoveAll(m.cfg.RunDir); err != nil {
		errs = append(errs, err)
	}
	if m.memPath != "" {
		if err := os.Remove(m.memPath); err != nil && !os.IsNotExist(err) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Wait implements vmm.Machine.
func (m *Machine) Wait(ctx context.Context) error {
	select {
	case <-m.exited:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Exited is closed when the QEMU process has exited.
func (m *Machine) Exited() <-chan struct{} { return m.exited }

// Console implements vmm.Machine.
func (m *Machine) Console(n int) string {
	m.mu.Lock()
	c, stopped := m.console, m.state == vmm.StateStopped
	m.mu.Unlock()
	if !stopped {
		c = tail(filepath.Join(m.cfg.RunDir, "console.log"), n)
	}
	if len(c) > n {
		c = c[len(c)-n:]
	}
	return c
}

func (m *Machine) vmmLog() string {
	return "qemu: " + strings.TrimSpace(tail(filepath.Join(m.cfg.RunDir, "qemu.log"), 4<<10))
}

func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > int64(n) {
		_, _ = f.Seek(fi.Size()-int64(n), io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	return string(b)
}
