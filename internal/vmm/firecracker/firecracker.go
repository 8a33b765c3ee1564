package firecracker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os/exec"
	"path/filepath"
	"regexp"
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
	}
}

// Config configures the driver for one host. It is plain data.
type Config struct {
	// Binary is the firecracker executable: a path, or a name looked up in
	// PATH. Default "firecracker".
	Binary string `json:"binary,omitempty"`
	// ExtraArgs are passed to Firecracker after the driver's own
	// (--api-sock, --id), e.g. "--level", "Debug".
	ExtraArgs []string `json:"extra_args,omitempty"`
	// BootArgs replaces DefaultBootArgs when not nil.
	BootArgs []string `json:"boot_args,omitempty"`
	// VsockPort is the guest port of the agent. Default DefaultVsockPort.
	VsockPort uint32 `json:"vsock_port,omitempty"`

	// UseJailer runs Firecracker through the jailer: chroot, dropped
	// privileges, cgroups, optionally its own network and PID namespaces.
	// The fields below apply only with it.
	UseJailer bool `json:"use_jailer,omitempty"`
	// JailerBinary is the jailer executable. Default "jailer".
	JailerBinary string `json:"jailer_binary,omitempty"`
	// UID and GID Firecracker runs as under the jailer.
	UID int `json:"uid,omitempty"`
	GID int `json:"gid,omitempty"`
	// ChrootBase is where jails are built (<base>/firecracker/<id>/root).
	// Keep it short (unix socket paths) and on the filesystem of the disks
	// and snapshots, so they can be hard-linked in. Default /srv/jailer.
	ChrootBase string `json:"chroot_base,omitempty"`
	// CgroupVersion is "1" or "2". Default "2".
	CgroupVersion string `json:"cgroup_version,omitempty"`
	// ParentCgroup is the cgroup (relative to the hierarchy's root) the
	// jailer creates each VM's cgroup in. Default: the exec file's name.
	ParentCgroup string `json:"parent_cgroup,omitempty"`
	// Cgroups are cgroup files the jailer writes for each VM, such as
	// "cpu.max": "200000 100000" or "memory.max": "1100M".
	Cgroups map[string]string `json:"cgroups,omitempty"`
	// NetNS is a network namespace file the VMM joins (/var/run/netns/x).
	NetNS string `json:"netns,omitempty"`
	// NewPIDNS puts the VMM in its own PID namespace. The jailer then
	// exits after forking it, and the driver follows the VMM by pidfd.
	NewPIDNS bool `json:"new_pid_ns,omitempty"`
}

// withDefaults returns c with its zero fields filled in.
func (c Config) withDefaults() Config {
	if c.Binary == "" {
		c.Binary = DefaultBinary
	}
	if c.VsockPort == 0 {
		c.VsockPort = DefaultVsockPort
	}
	if c.UseJailer {
		if c.JailerBinary == "" {
			c.JailerBinary = DefaultJailerBinary
		}
		if c.ChrootBase == "" {
			c.ChrootBase = DefaultChrootBase
		}
		if c.CgroupVersion == "" {
			c.CgroupVersion = DefaultCgroupVersion
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
	if c.UseJailer {
		if !strings.Contains(filepath.Base(c.Binary), "firecracker") {
			errs = append(errs, fmt.Sprintf("binary %q: the jailer only runs files whose name contains \"firecracker\"", c.Binary))
		}
		if c.UID < 0 || c.GID < 0 {
			errs = append(errs, fmt.Sprintf("uid %d / gid %d: want the unprivileged ids Firecracker runs as", c.UID, c.GID))
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
		if c.NetNS != "" && !filepath.IsAbs(c.NetNS) {
			errs = append(errs, fmt.Sprintf("netns %q is not absolute", c.NetNS))
		}
		if strings.Contains(c.ParentCgroup, "..") || filepath.IsAbs(c.ParentCgroup) {
			errs = append(errs, fmt.Sprintf("parent cgroup %q: want a relative path", c.ParentCgroup))
		}
	} else {
		var jailOnly []string
		if len(c.Cgroups) > 0 {
			jailOnly = append(jailOnly, "cgroups")
		}
		if c.NetNS != "" {
			jailOnly = append(jailOnly, "netns")
		}
		if c.NewPIDNS {
			jailOnly = append(jailOnly, "new_pid_ns")
		}
		if len(jailOnly) > 0 {
			errs = append(errs, strings.Join(jailOnly, ", ")+" need use_jailer")
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
	stopGrace    time.Duration
	startTimeout time.Duration
	apiTimeout   time.Duration
}

var _ vmm.Driver = (*Driver)(nil)

// New returns a driver. cfg is validated when it is used (Boot, Restore),
// so a misconfigured driver still reports itself through Diagnose.
func New(cfg Config, opts ...Option) *Driver {
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
	return d
}

// Name is "firecracker".
func (d *Driver) Name() string { return "firecracker" }

// Capabilities: full snapshots restored with the File memory backend
// (mapped privately, so restores share clean pages), vsock channel.
func (d *Driver) Capabilities() vmm.Capabilities {
	return vmm.Capabilities{Snapshot: true, MemorySharing: true, Vsock: true}
}

var versionRe = regexp.MustCompile(`Firecracker v(\d+\.\d+\.\d+\S*)`)

// Version runs `firecracker --version` and returns the version without
// its "v", e.g. "1.10.1", as GET / reports it.
func (d *Driver) Version(ctx context.Context) (string, error) {
	return binaryVersion(ctx, d.cfg.Binary)
}

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
// then the agent's channel and the modules it needs for it (last, so
// they win over a caller's stray fs.channel).
func (d *Driver) bootArgs(cfg vmm.Config) string {
	base := d.cfg.BootArgs
	if base == nil {
		base = DefaultBootArgs()
	}
	args := append(append([]string{}, base...), cfg.Cmdline...)
	args = append(args, agentproto.Boot{Channel: agentproto.VsockChannel(d.cfg.VsockPort), Modules: agentModules}.MustArgs()...)
	return strings.Join(args, " ")
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
