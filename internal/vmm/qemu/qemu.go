package qemu

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/vmm"
	"github.com/firesandbox/firesandbox/internal/vmm/vmmproc"
)

// AgentPortName is the virtio-serial port name the guest agent looks for.
const AgentPortName = "org.firesandbox.agent"

// Accelerators, as vmm names them.
const (
	AccelKVM = vmm.AccelKVM
	AccelTCG = vmm.AccelTCG
)

// Defaults for Config's zero fields.
const (
	DefaultBinary    = "qemu-system-x86_64"
	DefaultBIOS      = "/usr/share/qemu/qboot.rom"
	DefaultMemoryDir = "/dev/shm/firesandbox"
	// DefaultUIDBase and DefaultUIDCount give each confined QEMU its own
	// uid, from a range no login user has and far above the usual subuid
	// ranges (100000+). 1_900_000_000 itself is the jailed Firecracker's.
	DefaultUIDBase  = 1_900_000_001
	DefaultUIDCount = 65535
	// DefaultGID is the group every confined QEMU runs in (the jailed
	// Firecracker's too). Snapshot memory files are made readable to it
	// (0640), since a restore's QEMU maps them as its own uid.
	DefaultGID = 1_900_000_000
)

// Config configures the QEMU driver. It is plain data; zero fields take
// the defaults above, and the zero value is confined.
type Config struct {
	// Binary is the QEMU system emulator; default qemu-system-x86_64.
	Binary string `json:"binary,omitempty" toml:"binary"`
	// Accel is "kvm" or "tcg". Choosing between them needs a real boot,
	// which internal/vmm/drivers does; this driver uses what it is told.
	Accel string `json:"accel" toml:"-"`
	// BIOS is the firmware; default qboot, which boots in milliseconds.
	BIOS string `json:"bios,omitempty" toml:"bios"`
	// TBSizeMiB bounds TCG's translation cache per VM (QEMU's default is
	// far larger); 0 means 64.
	TBSizeMiB int `json:"tb_size_mib,omitempty" toml:"tb_size_mib"`
	// MemoryDir holds guest RAM files while VMs run, and the uid leases.
	// RAM lives in a file so a snapshot can save it without copying it
	// through the migration stream, and restores can map it privately.
	// The driver makes it private (0700, ours, not a symlink) and refuses
	// one that is not: in a shared parent such as /dev/shm, another user
	// who made it first would read and write guest memory.
	MemoryDir string `json:"memory_dir,omitempty" toml:"memory_dir"`
	// TSCKHz is passed as tsc_early_khz; 0 reads it from /proc/cpuinfo.
	// Without it the microvm guest may hang calibrating against a PIT it
	// does not have.
	TSCKHz int `json:"tsc_khz,omitempty" toml:"tsc_khz"`
	// StopGrace is how long Stop waits after SIGTERM before SIGKILL;
	// default 2s.
	StopGrace time.Duration `json:"stop_grace,omitempty" toml:"stop_grace"`

	// Unconfined runs QEMU as this process's user, in its namespaces and
	// with the whole file system in view. By default (false) each QEMU
	// runs as its own uid (from UIDBase..UIDBase+UIDCount-1) in group
	// GID, with no capability but CAP_SYS_CHROOT, chrooted into an empty
	// directory before the guest starts, in its own PID, network, IPC and
	// UTS namespaces, under QEMU's seccomp sandbox; every file and socket
	// it uses is opened by the driver and passed in. That needs root.
	// QEMU's seccomp sandbox stays on either way.
	Unconfined bool `json:"unconfined,omitempty" toml:"unconfined"`
	// UIDBase and UIDCount are the uids confined QEMUs run as, one per
	// VM at a time.
	UIDBase  int `json:"uid_base,omitempty" toml:"uid_base"`
	UIDCount int `json:"uid_count,omitempty" toml:"uid_count"`
	// GID is the group of confined QEMUs.
	GID int `json:"gid,omitempty" toml:"gid"`
	// Prestart is how many QEMU processes to keep started ahead per
	// snapshot that is restored again and again, each waiting for its
	// restore (prestart.go); 0 starts QEMU in every restore (the
	// driver's default; serve keeps 1, see serve --prestart). A restore
	// that adopts one skips QEMU's start (30-80 ms of a 120-240 ms
	// restore under TCG here); each costs about 28 MiB PSS while it waits.
	Prestart int `json:"prestart,omitempty" toml:"prestart"`
}

func (c Config) withDefaults() Config {
	if c.Binary == "" {
		c.Binary = DefaultBinary
	}
	if c.Accel == "" {
		c.Accel = AccelTCG
	}
	if c.BIOS == "" {
		if _, err := os.Stat(DefaultBIOS); err == nil {
			c.BIOS = DefaultBIOS
		}
	}
	if c.TBSizeMiB == 0 {
		c.TBSizeMiB = 64
	}
	if c.MemoryDir == "" {
		c.MemoryDir = DefaultMemoryDir
	}
	if c.TSCKHz == 0 {
		c.TSCKHz = hostTSCKHz()
	}
	if c.StopGrace == 0 {
		c.StopGrace = 2 * time.Second
	}
	if c.UIDBase == 0 {
		c.UIDBase = DefaultUIDBase
	}
	if c.UIDCount == 0 {
		c.UIDCount = DefaultUIDCount
	}
	if c.GID == 0 {
		c.GID = DefaultGID
	}
	return c
}

// Validate checks the configuration and reports every problem.
func (c Config) Validate() error {
	var errs []string
	if c.Accel != AccelKVM && c.Accel != AccelTCG && c.Accel != "" {
		errs = append(errs, fmt.Sprintf("accel %q: want kvm or tcg", c.Accel))
	}
	if c.TBSizeMiB < 0 || c.TBSizeMiB > 4096 {
		errs = append(errs, fmt.Sprintf("tb size %d MiB: want 0-4096", c.TBSizeMiB))
	}
	if c.MemoryDir != "" && !strings.HasPrefix(c.MemoryDir, "/") {
		errs = append(errs, fmt.Sprintf("memory dir %q is not absolute", c.MemoryDir))
	}
	if c.StopGrace < 0 {
		errs = append(errs, "negative stop grace")
	}
	if c.Prestart < 0 || c.Prestart > 16 {
		errs = append(errs, fmt.Sprintf("prestart %d: want 0-16", c.Prestart))
	}
	if c.UIDBase < 0 || c.UIDCount < 0 || c.GID < 0 || c.UIDBase+c.UIDCount > 1<<32-2 {
		errs = append(errs, fmt.Sprintf("uids %d+%d / gid %d out of range", c.UIDBase, c.UIDCount, c.GID))
	}
	if !c.Unconfined && ((c.UIDBase != 0 && c.UIDBase < 1000) || (c.GID != 0 && c.GID < 1000)) {
		errs = append(errs, fmt.Sprintf("uid base %d / gid %d: want ids no system account uses (1000 and up)", c.UIDBase, c.GID))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: qemu: %s", vmm.ErrInvalidConfig, strings.Join(errs, "; "))
	}
	return nil
}

// Driver boots VMs with QEMU's microvm machine.
type Driver struct {
	cfg     Config
	log     *slog.Logger
	version string
	ids     vmmproc.IDs
	spares  *spares
}

var _ vmm.Driver = (*Driver)(nil)

// Option configures a Driver.
type Option func(*Driver)

// WithLogger sets the driver's logger (default: discard). Machines log
// with "vm" and "op" attributes.
func WithLogger(l *slog.Logger) Option { return func(d *Driver) { d.log = l } }

// New returns a QEMU driver. It runs `qemu --version` once (Version never
// starts a process) and prepares MemoryDir; a confined driver needs root.
func New(cfg Config, opts ...Option) (*Driver, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	d := &Driver{cfg: cfg, log: slog.New(slog.DiscardHandler), spares: newSpares()}
	for _, o := range opts {
		o(d)
	}
	d.log = d.log.With("driver", "qemu")
	v, err := binaryVersion(cfg.Binary)
	if err != nil {
		return nil, err
	}
	d.version = v
	if !cfg.Unconfined && os.Geteuid() != 0 {
		return nil, fmt.Errorf("%w: qemu: confinement (own uid, chroot, namespaces) needs root; run as root or set qemu.unconfined", vmm.ErrUnavailable)
	}
	if err := vmmproc.PrivateDir(cfg.MemoryDir); err != nil {
		return nil, fmt.Errorf("qemu memory dir: %w", err)
	}
	d.ids = vmmproc.IDs{Dir: cfg.MemoryDir, Base: cfg.UIDBase, Count: cfg.UIDCount}
	d.sweepSpares()
	return d, nil
}

// Name implements vmm.Driver.
func (d *Driver) Name() string { return "qemu" }

// Version implements vmm.Driver: QEMU's version, read once by New.
func (d *Driver) Version() string { return d.version }

// cpuModel is the guest CPU: the host's under KVM; under TCG "max", every
// feature TCG emulates. QEMU's default for TCG (qemu64) lacks SSSE3 and
// SSE4, and libraries that pick code by CPUID (OpenBLAS under numpy) die
// of SIGILL on it.
func (d *Driver) cpuModel() string {
	if d.cfg.Accel == AccelKVM {
		return "host"
	}
	return "max"
}

// Capabilities implements vmm.Driver.
func (d *Driver) Capabilities() vmm.Capabilities {
	return vmm.Capabilities{Snapshot: true, MemorySharing: true, DiskSerials: true, Accel: d.cfg.Accel, CPU: d.cpuModel(),
		Confinement: d.confinement()}
}

func (d *Driver) confinement() string {
	if d.cfg.Unconfined {
		return "seccomp sandbox only (unconfined: runs as uid " + strconv.Itoa(os.Geteuid()) + ")"
	}
	return fmt.Sprintf("seccomp sandbox, own uid (%d+) in gid %d, chroot into an empty dir, own pid/net/ipc/uts namespaces", d.cfg.UIDBase, d.cfg.GID)
}

var versionRe = regexp.MustCompile(`QEMU emulator version (\S+)`)

func binaryVersion(bin string) (string, error) {
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("%w: run %s --version: %v", vmm.ErrUnavailable, bin, err)
	}
	m := versionRe.FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("%w: unrecognised %s --version output %q", vmm.ErrUnavailable, bin, out)
	}
	return string(m[1]), nil
}

// BaseCmdline is the kernel command line every QEMU guest gets, tuned for
// fast boots (see shared/MEASURED.md). rcu_nocbs=0 hands RCU callbacks to
// kthreads: with callbacks queued on the CPU the idle guest keeps its
// tick (250 Hz), and a restored python guest took 80-250 timer
// interrupts a second doing nothing; with it, 7-9. psi=0: no pressure
// accounting, which nothing reads and every context switch paid for
// (kernel code a restored guest under TCG translates afresh).
// mitigations=off is only used under
// TCG, where there is no hardware boundary for the mitigations to guard
// and they cost boot time; under KVM the guest keeps its mitigations.
func (d *Driver) BaseCmdline() []string {
	args := []string{
		"console=ttyS0", "quiet", "panic=-1", "reboot=t",
		"tsc=reliable", "cryptomgr.notests", "init_on_alloc=0",
		"lsm=capability", "audit=0", "no_timer_check", "random.trust_cpu=on",
		"nowatchdog", "pci=off", "8250.nr_uarts=1", "rcu_nocbs=0", "psi=0",
	}
	args = append(args, agentproto.Boot{Channel: agentproto.VirtioPortChannel(AgentPortName)}.MustArgs()...)
	if d.cfg.Accel == AccelTCG {
		args = append(args, "mitigations=off")
	}
	if d.cfg.TSCKHz > 0 {
		args = append(args, "tsc_early_khz="+strconv.Itoa(d.cfg.TSCKHz))
	}
	return args
}

// cmdline is a machine's kernel command line: the base, the caller's
// arguments, and the module group its network device needs.
func (d *Driver) cmdline(cfg *vmm.Config) []string {
	args := append(d.BaseCmdline(), cfg.Cmdline...)
	if cfg.Net != nil {
		args = agentproto.WithModules(args, agentproto.NetModules)
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

// qemuEscape doubles commas, QEMU's escape inside option values.
func qemuEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// errorsJoin is errors.Join with a prefix when there is an error.
func errorsJoin(what string, errs ...error) error {
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}
