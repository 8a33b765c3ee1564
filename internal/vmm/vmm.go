package vmm

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// State is a machine's lifecycle state.
type State int

// Machine states.
const (
	StateNew State = iota
	StateRunning
	StatePaused
	StateStopped
)

func (s State) String() string {
	switch s {
	case StateNew:
		return "new"
	case StateRunning:
		return "running"
	case StatePaused:
		return "paused"
	case StateStopped:
		return "stopped"
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// RequireState returns ErrInvalidState unless cur is one of allowed.
func RequireState(op string, cur State, allowed ...State) error {
	for _, a := range allowed {
		if cur == a {
			return nil
		}
	}
	return fmt.Errorf("%s: machine is %s: %w", op, cur, ErrInvalidState)
}

// Disk is a block device attached to the guest.
type Disk struct {
	// ID names the disk. QEMU passes it as the virtio serial, which the
	// agent looks up; Firecracker uses it as the drive id.
	ID       string `json:"id"`
	Path     string `json:"path"`
	ReadOnly bool   `json:"read_only"`
}

// NetDevice is a machine's network interface: a virtio-net device on a
// tap that already exists on the host (internal/network makes it, in the
// VM's own network namespace, and enforces the policy there; the driver
// only attaches the VMM to it). QEMU gets the tap as an open descriptor;
// Firecracker runs in Netns (the jailer's --netns) and opens Tap itself.
//
// A snapshot records the device: a restore needs a NetDevice exactly when
// the snapshot's machine had one, with the same MAC (the guest's driver
// state is in the snapshot). Tap names may repeat across namespaces, so
// every VM can use the same one and a snapshot restores anywhere.
type NetDevice struct {
	// MAC is the guest's Ethernet address: unicast, as aa:bb:cc:dd:ee:ff.
	MAC string `json:"mac"`
	// Tap is the tap device's name inside Netns.
	Tap string `json:"tap"`
	// Netns is the network namespace holding the tap, as a path
	// (/run/netns/NAME); empty means this process's own.
	Netns string `json:"netns,omitempty"`
}

func (n *NetDevice) validate() []string {
	var errs []string
	if hw, err := net.ParseMAC(n.MAC); err != nil || len(hw) != 6 || hw[0]&1 != 0 {
		errs = append(errs, fmt.Sprintf("net mac %q: want a unicast Ethernet address", n.MAC))
	}
	if n.Tap == "" || len(n.Tap) > 15 || strings.ContainsAny(n.Tap, "/ \t\n:") || n.Tap == "." || n.Tap == ".." {
		errs = append(errs, fmt.Sprintf("net tap %q: want an interface name of 1-15 bytes", n.Tap))
	}
	if n.Netns != "" && !filepath.IsAbs(n.Netns) {
		errs = append(errs, fmt.Sprintf("net netns %q: want an absolute path", n.Netns))
	} else if n.Netns != "" {
		if _, err := os.Stat(n.Netns); err != nil {
			errs = append(errs, fmt.Sprintf("net netns: %v", err))
		}
	}
	return errs
}

// Config describes one machine. It is plain data: it can be logged,
// stored, and recorded in a snapshot manifest.
type Config struct {
	// ID is unique among running machines; [a-z0-9-], at most 40 bytes.
	ID string `json:"id"`
	// Kernel is an uncompressed ELF vmlinux; Initrd a cpio archive.
	Kernel string `json:"kernel"`
	Initrd string `json:"initrd"`
	// Cmdline holds extra kernel arguments (the agent's fs.* settings).
	// Drivers add their own base arguments and the agent's fs.channel.
	Cmdline   []string `json:"cmdline,omitempty"`
	VCPUs     int      `json:"vcpus"`
	MemoryMiB int      `json:"memory_mib"`
	Disks     []Disk   `json:"disks"`
	// Net, if set, gives the machine a network interface; nil (the
	// default) gives it none, so the guest has no network at all.
	Net *NetDevice `json:"net,omitempty"`
	// RunDir is a directory the driver creates for this machine's sockets
	// and logs and removes in Stop. Keep it short: unix socket paths are
	// limited to 107 bytes.
	RunDir string `json:"run_dir"`
}

var idRe = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,39}$`)

// Validate checks a config before any process is started.
func (c *Config) Validate() error {
	var errs []string
	if !idRe.MatchString(c.ID) {
		errs = append(errs, fmt.Sprintf("id %q: want 1-40 of [a-z0-9-]", c.ID))
	}
	for _, f := range []struct{ what, path string }{{"kernel", c.Kernel}, {"initrd", c.Initrd}} {
		if f.path == "" {
			errs = append(errs, f.what+" not set")
		} else if _, err := os.Stat(f.path); err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", f.what, err))
		}
	}
	if c.VCPUs < 1 || c.VCPUs > 32 {
		errs = append(errs, fmt.Sprintf("vcpus %d: want 1-32", c.VCPUs))
	}
	if c.MemoryMiB < 64 || c.MemoryMiB > 64<<10 {
		errs = append(errs, fmt.Sprintf("memory %d MiB: want 64-65536", c.MemoryMiB))
	}
	seen := map[string]bool{}
	for _, d := range c.Disks {
		if !idRe.MatchString(d.ID) || seen[d.ID] {
			errs = append(errs, fmt.Sprintf("disk id %q: want a unique id of [a-z0-9-]", d.ID))
		}
		seen[d.ID] = true
		if _, err := os.Stat(d.Path); err != nil {
			errs = append(errs, fmt.Sprintf("disk %s: %v", d.ID, err))
		}
	}
	if c.Net != nil {
		errs = append(errs, c.Net.validate()...)
	}
	if c.RunDir == "" {
		errs = append(errs, "run dir not set")
	} else if len(c.RunDir) > 80 {
		errs = append(errs, fmt.Sprintf("run dir %q is too long for unix sockets", c.RunDir))
	}
	for _, a := range c.Cmdline {
		if a == "" || strings.ContainsAny(a, " \t\n") {
			errs = append(errs, fmt.Sprintf("kernel argument %q is empty or has blanks", a))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %s", ErrInvalidConfig, strings.Join(errs, "; "))
	}
	return nil
}

// Accelerators a driver can run guests with.
const (
	// AccelKVM is hardware virtualisation through /dev/kvm.
	AccelKVM = "kvm"
	// AccelTCG is QEMU's software emulation: it works everywhere but is
	// slower, and its isolation rests on the emulator alone.
	AccelTCG = "tcg"
)

// Capabilities says what a driver can do on this host. It is fixed when
// the driver is built: reading it costs nothing.
type Capabilities struct {
	Snapshot      bool // Pause + Snapshot + Restore
	MemorySharing bool // restores map the snapshot's memory copy-on-write
	Vsock         bool // the agent channel is vsock (else virtio-serial)
	// DiskSerials: the guest sees each Disk.ID as its virtio serial, so the
	// agent finds disks by id; otherwise disks appear as /dev/vda, vdb, ...
	// in the order of Config.Disks.
	DiskSerials bool
	// Accel is how guests run: AccelKVM or AccelTCG. A snapshot records
	// it, since a snapshot made under one does not restore under the other.
	Accel string
	// CPU is the guest CPU model ("host", "max"), also part of the saved
	// CPU state: a snapshot records it as it records Accel.
	CPU string
	// Confinement says in a few words what confines the VMM process
	// ("jailer: chroot, uid 123, ..."), or "none"; doctor prints it.
	Confinement string
}

// GuestDiskRef is how the agent should find disk i of cfg on the kernel
// command line (fs.root=...): by serial where the driver sets serials,
// else by its /dev path.
func GuestDiskRef(c Capabilities, i int, id string) string {
	if c.DiskSerials {
		return id
	}
	return "/dev/vd" + string(rune('a'+i))
}

// Files a driver writes into a snapshot directory. The memory file may be
// absent where a driver keeps RAM inside the state file (QEMU does for a
// snapshot of a machine that was itself restored).
const (
	SnapshotMemoryFile = "memory"
	SnapshotStateFile  = "vmstate"
)

// Driver starts machines with one VMM.
type Driver interface {
	// Name is the driver's name in configuration: "qemu", "firecracker".
	Name() string
	// Version is the VMM's version, recorded in snapshots. Drivers read
	// it once, when they are built, so asking costs no process start.
	Version() string
	Capabilities() Capabilities
	// Boot starts a machine from cfg and returns once the VMM runs it;
	// the guest may still be booting.
	Boot(ctx context.Context, cfg Config) (Machine, error)
	// Restore starts a machine from a snapshot directory written by
	// Machine.Snapshot of the same driver. cfg gives the new machine's
	// ID, RunDir and disks (the paths may differ from the snapshot's;
	// the disks' contents must match), and its network device, which
	// must be there exactly when the snapshot's machine had one (its tap
	// may be another, in another namespace). The machine runs when it
	// returns.
	Restore(ctx context.Context, snapshotDir string, cfg Config) (Machine, error)
}

// Machine is one running (or stopped) VM.
type Machine interface {
	ID() string
	State() State
	// DialAgent connects to the guest agent's channel. One connection at
	// a time; the caller closes it.
	DialAgent(ctx context.Context) (net.Conn, error)
	Pause(ctx context.Context) error
	Resume(ctx context.Context) error
	// Snapshot writes a full snapshot (memory and device state) of a
	// paused machine into dir, which must exist and be empty.
	Snapshot(ctx context.Context, dir string) error
	// Stop ends the VM (SIGTERM, a grace period, then SIGKILL) and removes
	// its RunDir and every file the driver made for it. A cancelled ctx
	// does not cut it short; concurrent and repeated calls all return
	// once everything is gone.
	Stop(ctx context.Context) error
	// Wait blocks until the VMM process exits or ctx ends. It returns nil
	// when the VMM exited cleanly or was ended by Stop, and an error
	// wrapping ErrExited, with the exit status and the VMM's last output,
	// when it died by itself.
	Wait(ctx context.Context) error
	// Console returns the last n bytes the guest wrote to its console
	// (the driver keeps a bounded tail, never the whole output).
	Console(n int) string
	// PID is the VMM process id, 0 once it exited or was stopped.
	PID() int
	// StartTimes breaks down the Boot or Restore that made the machine.
	StartTimes() StartTimes
}

// StartTimes are the parts of a Boot or Restore, as far as the driver can
// tell them apart; a part it cannot tell is zero. Together they are at
// most the call's own duration (the rest is the driver's preparation:
// claiming the run dir, opening files).
type StartTimes struct {
	// Process is from starting the VMM process to its control socket
	// answering (QEMU: the QMP greeting and capabilities negotiated;
	// Firecracker: its API socket accepting). Zero for a process that
	// was started ahead of the call (Prestarted).
	Process time.Duration `json:"process_ns"`
	// Incoming is loading the snapshot's device state (and the RAM that
	// a state file holds, if it does): a restore only.
	Incoming time.Duration `json:"incoming_ns"`
	// Resume is starting the vCPUs: QEMU's cont; Firecracker resumes
	// within its snapshot load, so it has none of its own.
	Resume time.Duration `json:"resume_ns"`
	// Calls counts the control round trips (QMP commands, API requests)
	// made during the call, the process's handshake included.
	Calls int `json:"calls"`
	// Prestarted says the VMM process was started ahead, waiting for
	// this restore, so the call skipped starting it.
	Prestarted bool `json:"prestarted,omitempty"`
}
