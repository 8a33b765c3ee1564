package firecracker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/vmm"
)

// Defaults for Config's zero fields.
const (
	DefaultBinary        = "firecracker"
	DefaultJailerBinary  = "jailer"
	DefaultChrootBase    = "/srv/jailer"
	DefaultCgroupVersion = "2"
	// DefaultVsockPort is the guest port the agent listens on.
	DefaultVsockPort = 1024
	// GuestCID is the guest's vsock context id. Each Firecracker VM has its
	// own vsock device behind its own unix socket, so every guest can use
	// the first non-reserved CID.
	GuestCID = 3
)

// agentModules are the modules the agent loads for its vsock channel
// (fs.modules); the initramfs ships them.
var agentModules = []string{"vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport"}

// DefaultBootArgs returns the kernel arguments every machine gets before
// the caller's. Firecracker's recommended base (serial console, reboot=k
// so a guest reboot ends the VMM, panic=1, pci=off) plus what measured
// faster boots without weakening the guest (MEASURED.md):
// cryptomgr.notests, init_on_alloc=0, no audit, a single LSM, trusting the
// CPU's RNG, no soft-lockup watchdog, and skipping clocksource checks that
// kvm-clock does not need. mitigations=off is left out on purpose: the
// guest kernel separates untrusted code from the agent; add it through
// Config.BootArgs if that trade is wanted. tsc_early_khz is not needed:
// unlike QEMU's microvm, Firecracker provides a PIT and kvm-clock.
func DefaultBootArgs() []string {
	return []string{
		"console=ttyS0", "reboot=k", "panic=1", "pci=off",
		"quiet", "cryptomgr.notests", "init_on_alloc=0", "lsm=capability", "audit=0",
		"random.trust_cpu=on", "nowatchdog", "tsc=reliable", "no_timer_check",
		"psi=0", // as QEMU's guests: pressure accounting nothing reads
	}
}

// Config configures the driver for one host. It is plain data; zero fields
// take the defaults, and the zero value runs Firecracker under its jailer
// in its own network and PID namespaces.
type Config struct {
	// Binary is the firecracker executable: a path, or a name looked up in
	// PATH. Default "firecracker".
	Binary string `json:"binary,omitempty" toml:"binary"`
	// ExtraArgs are passed to Firecracker after the driver's own
	// (--api-sock, --id), e.g. "--level", "Debug".
	ExtraArgs []string `json:"extra_args,omitempty" toml:"extra_args"`
	// BootArgs replaces DefaultBootArgs when not nil.
	BootArgs []string `json:"boot_args,omitempty" toml:"boot_args"`
	// VsockPort is the guest port of the agent. Default DefaultVsockPort.
	VsockPort uint32 `json:"vsock_port,omitempty" toml:"vsock_port"`

	// NoJailer runs Firecracker directly, as this process's user, with
	// nothing but its own seccomp filters around it. Only for development:
	// by default every Firecracker runs under the jailer (chroot, dropped
	// privileges, cgroups, its own network and PID namespaces). The fields
	// below apply to the jailer.
	NoJailer bool `json:"no_jailer,omitempty" toml:"no_jailer"`
	// JailerBinary is the jailer executable. Default "jailer".
	JailerBinary string `json:"jailer_binary,omitempty" toml:"jailer_binary"`
	// UID and GID Firecracker runs as under the jailer; default
	// DefaultUID and DefaultGID. Snapshot files are made readable to GID.
	UID int `json:"uid,omitempty" toml:"uid"`
	GID int `json:"gid,omitempty" toml:"gid"`
	// ChrootBase is where jails are built (<base>/<exec>/<id>/root).
	// Keep it short (unix socket paths) and on the filesystem of the disks
	// and snapshots, so they can be hard-linked in. Default /srv/jailer.
	ChrootBase string `json:"chroot_base,omitempty" toml:"chroot_base"`
	// CgroupVersion is "1" or "2". Default "2".
	CgroupVersion string `json:"cgroup_version,omitempty" toml:"cgroup_version"`
	// ParentCgroup is the cgroup (relative to the hierarchy's root) the
	// jailer creates each VM's cgroup in. Default: the exec file's name.
	ParentCgroup string `json:"parent_cgroup,omitempty" toml:"parent_cgroup"`
	// Cgroups are cgroup files the jailer writes for each VM, such as
	// "cpu.max": "200000 100000" or "memory.max": "1100M".
	Cgroups map[string]string `json:"cgroups,omitempty" toml:"cgroups"`
	// NetNS is the network namespace of the VMM: "" (the default) gives
	// each one a new, empty namespace of its own; a path (/var/run/netns/x)
	// is a namespace it joins (the network layer's, for a VM with a tap);
	// "host" leaves it in this process's namespace.
	NetNS string `json:"netns,omitempty" toml:"netns"`
	// HostPIDNS leaves the VMM in this process's PID namespace. By
	// default the jailer forks it into a new one and exits, and the
	// driver follows the VMM by pidfd.
	HostPIDNS bool `json:"host_pid_ns,omitempty" toml:"host_pid_ns"`
}

// Defaults for the jailer's ids: one unprivileged user and group that no
// login account has, shared with the group confined QEMUs run in.
const (
	DefaultUID = 1_900_000_000
	DefaultGID = 1_900_000_000
)

// NetNSHost is the NetNS value that keeps the VMM in the host's namespace.
const NetNSHost = "host"

// jailed reports whether the jailer is used.
func (c Config) jailed() bool { return !c.NoJailer }

// withDefaults returns c with its zero fields filled in.
func (c Config) withDefaults() Config {
	if c.Binary == "" {
		c.Binary = DefaultBinary
	}
	if c.VsockPort == 0 {
		c.VsockPort = DefaultVsockPort
	}
	if c.jailed() {
		if c.JailerBinary == "" {
			c.JailerBinary = DefaultJailerBinary
		}
		if c.ChrootBase == "" {
			c.ChrootBase = DefaultChrootBase
		}
		if c.CgroupVersion == "" {
			c.CgroupVersion = DefaultCgroupVersion
		}
		if c.UID == 0 {
			c.UID = DefaultUID
		}
		if c.GID == 0 {
			c.GID = DefaultGID
		}
	}
	return c
}

var cgroupFileRe = regexp.MustCompile(`^[a-z][a-z0-9_]*\.[a-z0-9_.]+$`)

// maxJailedIDLen is the longest machine id for which a jailed VMM's socket
// paths stay within the unix limit of 107 bytes.
func (c Config) maxJailedIDLen() int {
	// <base>/<exec>/<id>/root/api.sock
	return 107 - len(filepath.Join(c.ChrootBase, filepath.Base(c.Binary))) - len("/") - len("/root/") - len(apiSockName)
}

// Validate checks c, with defaults applied, and reports every problem.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []string
	if c.VsockPort == 0xFFFFFFFF {
		errs = append(errs, "vsock port 4294967295 is VMADDR_PORT_ANY")
	}
	for _, a := range c.ExtraArgs {
		if name, _, _ := strings.Cut(a, "="); name == "--api-sock" || name == "--id" || name == "--config-file" || name == "--no-api" {
			errs = append(errs, fmt.Sprintf("extra argument %s is the driver's to set", name))
		}
	}
	for _, a := range c.BootArgs {
		if a == "" || strings.ContainsAny(a, " \t\n") {
			errs = append(errs, fmt.Sprintf("boot argument %q is empty or has blanks", a))
		}
	}
	if c.jailed() {
		if !strings.Contains(filepath.Base(c.Binary), "firecracker") {
			errs = append(errs, fmt.Sprintf("binary %q: the jailer only runs files whose name contains \"firecracker\"", c.Binary))
		}
		if c.UID <= 0 || c.GID <= 0 {
			errs = append(errs, fmt.Sprintf("uid %d / gid %d: want the unprivileged ids Firecracker runs as, not root", c.UID, c.GID))
		}
		if !filepath.IsAbs(c.ChrootBase) {
			errs = append(errs, fmt.Sprintf("chroot base %q is not absolute", c.ChrootBase))
		} else if n := c.maxJailedIDLen(); n < 40 {
			errs = append(errs, fmt.Sprintf("chroot base %q is too long: socket paths would exceed the unix limit for 40-byte machine ids", c.ChrootBase))
		}
		if c.CgroupVersion != "1" && c.CgroupVersion != "2" {
			errs = append(errs, fmt.Sprintf("cgroup version %q: want 1 or 2", c.CgroupVersion))
		}
		for k, v := range c.Cgroups {
			if !cgroupFileRe.MatchString(k) || v == "" || strings.ContainsAny(v, "\n=") {
				errs = append(errs, fmt.Sprintf("cgroup setting %q=%q: want <controller>.<file>=<value>", k, v))
			}
		}
		if c.NetNS != "" && c.NetNS != NetNSHost && !filepath.IsAbs(c.NetNS) {
			errs = append(errs, fmt.Sprintf("netns %q: want a namespace file's absolute path, or \"host\"", c.NetNS))
		}
		if strings.Contains(c.ParentCgroup, "..") || filepath.IsAbs(c.ParentCgroup) {
			errs = append(errs, fmt.Sprintf("parent cgroup %q: want a relative path", c.ParentCgroup))
		}
	} else {
		var jailOnly []string
		if len(c.Cgroups) > 0 {
			jailOnly = append(jailOnly, "cgroups")
		}
		if c.NetNS != "" && c.NetNS != NetNSHost {
			jailOnly = append(jailOnly, "netns")
		}
		if len(jailOnly) > 0 {
			errs = append(errs, strings.Join(jailOnly, ", ")+" need the jailer (no_jailer is set)")
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: firecracker: %s", vmm.ErrInvalidConfig, strings.Join(errs, "; "))
	}
	return nil
}

// Option changes a Driver's collaborators or timings.
type Option func(*Driver)

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option { return func(d *Driver) { d.log = l } }

// WithStopGrace sets how long Stop waits after SIGTERM before SIGKILL
// (default 3s).
func WithStopGrace(g time.Duration) Option { return func(d *Driver) { d.stopGrace = g } }

// WithStartTimeout bounds the wait for a new VMM's API socket
// (default 10s), on top of the caller's context.
func WithStartTimeout(t time.Duration) Option { return func(d *Driver) { d.startTimeout = t } }

// WithAPITimeout bounds each configuration request (default 10s); snapshot
// requests are bounded by the caller's context only, since they write
// the guest's whole memory.
func WithAPITimeout(t time.Duration) Option { return func(d *Driver) { d.apiTimeout = t } }

// Driver starts Firecracker microVMs. It implements vmm.Driver.
type Driver struct {
	cfg          Config
	log          *slog.Logger
	version      string
	stopGrace    time.Duration
	startTimeout time.Duration
	apiTimeout   time.Duration
}

var _ vmm.Driver = (*Driver)(nil)

// New returns a driver. It validates cfg and runs `firecracker --version`
// once (Version never starts a process). Whether the host can run it at
// all is Diagnose's to say.
func New(cfg Config, opts ...Option) (*Driver, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	d := &Driver{
		cfg:          cfg.withDefaults(),
		log:          slog.New(slog.DiscardHandler),
		stopGrace:    3 * time.Second,
		startTimeout: 10 * time.Second,
		apiTimeout:   10 * time.Second,
	}
	for _, o := range opts {
		o(d)
	}
	d.log = d.log.With("driver", "firecracker")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, err := binaryVersion(ctx, d.cfg.Binary)
	if err != nil {
		return nil, err
	}
	d.version = v
	return d, nil
}

// Name is "firecracker".
func (d *Driver) Name() string { return "firecracker" }

// Capabilities: full snapshots restored with the File memory backend
// (mapped privately, so restores share clean pages), vsock channel, KVM.
func (d *Driver) Capabilities() vmm.Capabilities {
	return vmm.Capabilities{Snapshot: true, MemorySharing: true, Vsock: true, Accel: vmm.AccelKVM, Confinement: d.confinement()}
}

func (d *Driver) confinement() string {
	c := d.cfg
	if !c.jailed() {
		return "firecracker's seccomp filters only (no jailer: runs as uid " + strconv.Itoa(os.Geteuid()) + ")"
	}
	netns := "own network namespace"
	switch c.NetNS {
	case NetNSHost:
		netns = "host network namespace"
	case "":
	default:
		netns = "network namespace " + c.NetNS
	}
	pidns := "own PID namespace"
	if c.HostPIDNS {
		pidns = "host PID namespace"
	}
	return fmt.Sprintf("jailer: chroot under %s, uid %d gid %d, cgroup v%s, %s, %s", c.ChrootBase, c.UID, c.GID, c.CgroupVersion, netns, pidns)
}

var versionRe = regexp.MustCompile(`Firecracker v(\d+\.\d+\.\d+\S*)`)

// Version is Firecracker's version without its "v", e.g. "1.10.1", as
// GET / reports it; New read it.
func (d *Driver) Version() string { return d.version }

func binaryVersion(ctx context.Context, bin string) (string, error) {
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, "--version")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		var ee *exec.Error
		if errors.As(err, &ee) || errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
			return "", fmt.Errorf("run %s --version: %w: %v", bin, vmm.ErrUnavailable, err)
		}
		return "", fmt.Errorf("run %s --version: %w: %s", bin, err, strings.TrimSpace(out.String()))
	}
	m := versionRe.FindSubmatch(out.Bytes())
	if m == nil {
		return "", fmt.Errorf("parse %s --version output %q: %w", bin, firstLine(out.String()), vmm.ErrUnavailable)
	}
	return string(m[1]), nil
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return l
}

// bootArgs is the kernel command line: base arguments, the caller's,
// then the agent's channel (last, so it wins over a caller's stray
// fs.channel) and one fs.modules with the caller's groups and those the
// devices need: vsock for the channel, net for a network device.
func (d *Driver) bootArgs(cfg vmm.Config) string {
	base := d.cfg.BootArgs
	if base == nil {
		base = DefaultBootArgs()
	}
	args := append(append([]string{}, base...), cfg.Cmdline...)
	args = append(args, agentproto.Boot{Channel: agentproto.VsockChannel(d.cfg.VsockPort)}.MustArgs()...)
	mods := agentModules
	if cfg.Net != nil {
		mods = append(slices.Clone(mods), agentproto.NetModules)
	}
	return strings.Join(agentproto.WithModules(args, mods...), " ")
}

// DiskDevice is the guest device of the i-th disk in vmm.Config.Disks:
// /dev/vda, /dev/vdb, ... Firecracker has no disk serials; it attaches
// drives in the order they are configured (none is its "root device"; we
// boot from the initramfs), and the guest names them in that order.
// Callers pass DiskDevice(0) as fs.root for the image disk.
func DiskDevice(i int) string {
	name := ""
	for n := i; ; n = n/26 - 1 {
		name = string(rune('a'+n%26)) + name
		if n < 26 {
			break
		}
	}
	return "/dev/vd" + name
}
