package agentproto

import (
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"
)

// Kernel command-line keys of the boot contract. The host writes them
// (Boot.Args), the guest agent reads them (ParseBoot).
const (
	ArgChannel = "fs.channel" // "virtio-port:NAME" or "vsock:PORT"
	ArgRoot    = "fs.root"    // the image's layers, bottom first: disk refs, comma-separated
	ArgRootFS  = "fs.rootfs"  // squashfs (default), erofs or ext4
	ArgUpper   = "fs.upper"   // disk ref of an ext4 writable layer; default tmpfs
	ArgMounts  = "fs.mounts"  // read-only SquashFS volumes: REF@/guest/dir,...
	ArgUID     = "fs.uid"     // uid (and gid) that commands run as; default DefaultUID
	ArgModules = "fs.modules" // extra module groups to load, comma-separated
)

// AgentGODEBUG is the Go runtime setting the agent runs with; the kernel
// hands a command-line word with an '=' and no '.' to init (the agent) as
// an environment variable. No asynchronous preemption: the agent's
// goroutines are short, and under TCG, where everything runs slowly,
// sysmon's preemption signals cost a restored guest signal deliveries
// (kernel and runtime code that TCG translates afresh) in the middle of
// its first answer.
const AgentGODEBUG = "GODEBUG=asyncpreemptoff=1"

// Bounds of the boot contract.
const (
	MaxLayers     = 16
	MaxMounts     = 16
	MaxModules    = 32
	MaxRefBytes   = 64  // a disk ref: a virtio serial (20 bytes) or a /dev path
	MaxMountBytes = 256 // a mount's guest directory
	DefaultUID    = 1000
	DefaultRootFS = "squashfs"
)

// Root file system formats.
var rootFSFormats = []string{"squashfs", "erofs", "ext4"}

// Boot is the host↔guest boot contract: everything the agent learns from
// the kernel command line. The host builds one (a driver sets Channel and
// Modules, the sandbox manager the disks) and writes it with Args; the
// agent reads it back with ParseBoot.
//
// Every value is validated on both sides: kernel arguments are split on
// whitespace and agent lists on commas, so a control character, a blank
// or a separator inside a value would inject arguments of its own.
type Boot struct {
	// Channel is the agent's channel to the host: VirtioPortChannel or
	// VsockChannel.
	Channel string
	// Root is the image's read-only layers, bottom first, as disk refs:
	// virtio serials (QEMU) or /dev paths (Firecracker).
	Root []string
	// RootFS is the layers' format; empty means DefaultRootFS.
	RootFS string
	// Upper is the disk ref of an ext4 writable layer; empty means tmpfs.
	Upper string
	// Mounts are read-only SquashFS volumes (packed host directories).
	Mounts []Mount
	// UID is the uid (and gid) commands run as; zero means DefaultUID.
	UID int
	// Modules are extra module groups the agent loads, e.g. for vsock.
	Modules []string
}

// Mount is a read-only volume and where it appears in the guest root.
type Mount struct {
	Disk string // disk ref, as in Boot.Root
	Dir  string // clean absolute guest directory, see ValidateMountDir
}

// VirtioPortChannel names a virtio-serial port as the agent's channel.
func VirtioPortChannel(name string) string { return "virtio-port:" + name }

// VsockChannel names a vsock port as the agent's channel.
func VsockChannel(port uint32) string { return "vsock:" + strconv.FormatUint(uint64(port), 10) }

// ParseChannel splits a channel into its kind ("virtio-port" or "vsock")
// and its argument (a port name, or a port number).
func ParseChannel(ch string) (kind, name string, port uint32, err error) {
	kind, arg, _ := strings.Cut(ch, ":")
	switch kind {
	case "virtio-port":
		if !isToken(arg, false) || len(arg) > MaxRefBytes {
			return "", "", 0, fmt.Errorf("%w: %s: port name %q", ErrBadBoot, ArgChannel, truncate(arg, 40))
		}
		return kind, arg, 0, nil
	case "vsock":
		n, err := strconv.ParseUint(arg, 10, 32)
		if err != nil || n == 0 || strconv.FormatUint(n, 10) != arg {
			return "", "", 0, fmt.Errorf("%w: %s: vsock port %q", ErrBadBoot, ArgChannel, truncate(arg, 40))
		}
		return kind, "", uint32(n), nil
	}
	return "", "", 0, fmt.Errorf("%w: %s=%q: want virtio-port:NAME or vsock:PORT", ErrBadBoot, ArgChannel, truncate(ch, 40))
}

// Args encodes the fields that are set as kernel arguments, validating
// each; it does not require the fields a complete contract needs (a
// driver and the sandbox manager each contribute a part).
func (b Boot) Args() ([]string, error) {
	if err := b.validateParts(); err != nil {
		return nil, err
	}
	var args []string
	if b.Channel != "" {
		// The driver's part: the channel, and the agent's runtime settings.
		args = append(args, ArgChannel+"="+b.Channel, AgentGODEBUG)
	}
	if len(b.Root) > 0 {
		args = append(args, ArgRoot+"="+strings.Join(b.Root, ","))
	}
	if b.RootFS != "" {
		args = append(args, ArgRootFS+"="+b.RootFS)
	}
	if b.Upper != "" {
		args = append(args, ArgUpper+"="+b.Upper)
	}
	if len(b.Mounts) > 0 {
		ms := make([]string, len(b.Mounts))
		for i, m := range b.Mounts {
			ms[i] = m.Disk + "@" + m.Dir
		}
		args = append(args, ArgMounts+"="+strings.Join(ms, ","))
	}
	if b.UID != 0 {
		args = append(args, ArgUID+"="+strconv.Itoa(b.UID))
	}
	if len(b.Modules) > 0 {
		args = append(args, ArgModules+"="+strings.Join(b.Modules, ","))
	}
	return args, nil
}

// NetModules is the module group a guest with a network device loads:
// virtio_net and what it needs (the initramfs's "net" group).
const NetModules = "net"

// WithModules returns args with groups added to the module groups they
// ask for. Since a later fs.modules overrides an earlier one, every
// fs.modules argument is merged into one, at the end, each group once in
// the order first named. Drivers use it for the modules their devices
// need, whatever the caller's arguments already ask.
func WithModules(args []string, groups ...string) []string {
	out := make([]string, 0, len(args)+1)
	var mods []string
	add := func(g string) {
		if !slices.Contains(mods, g) {
			mods = append(mods, g)
		}
	}
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, ArgModules+"="); ok {
			for _, g := range splitList(v) {
				add(g)
			}
			continue
		}
		out = append(out, a)
	}
	for _, g := range groups {
		add(g)
	}
	if len(mods) > 0 {
		out = append(out, ArgModules+"="+strings.Join(mods, ","))
	}
	return out
}

// MustArgs is Args for values fixed by the caller's own code (a driver's
// channel and modules); it panics on invalid values, like
// regexp.MustCompile. Never use it for values from a request.
func (b Boot) MustArgs() []string {
	args, err := b.Args()
	if err != nil {
		panic(err)
	}
	return args
}

// Validate checks a complete contract: what the agent needs to boot.
func (b Boot) Validate() error {
	if err := b.validateParts(); err != nil {
		return err
	}
	if b.Channel == "" {
		return fmt.Errorf("%w: no %s", ErrBadBoot, ArgChannel)
	}
	if len(b.Root) == 0 {
		return fmt.Errorf("%w: no %s", ErrBadBoot, ArgRoot)
	}
	return nil
}

func (b Boot) validateParts() error {
	if b.Channel != "" {
		if _, _, _, err := ParseChannel(b.Channel); err != nil {
			return err
		}
	}
	if len(b.Root) > MaxLayers {
		return fmt.Errorf("%w: %s names %d layers, at most %d", ErrBadBoot, ArgRoot, len(b.Root), MaxLayers)
	}
	for _, r := range b.Root {
		if err := validateRef(ArgRoot, r); err != nil {
			return err
		}
	}
	if b.RootFS != "" && !slices.Contains(rootFSFormats, b.RootFS) {
		return fmt.Errorf("%w: %s=%q: want squashfs, erofs or ext4", ErrBadBoot, ArgRootFS, truncate(b.RootFS, 40))
	}
	if b.Upper != "" {
		if err := validateRef(ArgUpper, b.Upper); err != nil {
			return err
		}
	}
	if len(b.Mounts) > MaxMounts {
		return fmt.Errorf("%w: %s names %d volumes, at most %d", ErrBadBoot, ArgMounts, len(b.Mounts), MaxMounts)
	}
	seen := map[string]bool{}
	for _, m := range b.Mounts {
		if err := validateRef(ArgMounts, m.Disk); err != nil {
			return err
		}
		if err := ValidateMountDir(m.Dir); err != nil {
			return err
		}
		if seen[m.Dir] {
			return fmt.Errorf("%w: %s: %s mounted twice", ErrBadBoot, ArgMounts, m.Dir)
		}
		seen[m.Dir] = true
	}
	if b.UID < 0 || b.UID > 1<<31-2 {
		return fmt.Errorf("%w: %s=%d: want a positive uid", ErrBadBoot, ArgUID, b.UID)
	}
	if len(b.Modules) > MaxModules {
		return fmt.Errorf("%w: %s names %d groups, at most %d", ErrBadBoot, ArgModules, len(b.Modules), MaxModules)
	}
	for _, m := range b.Modules {
		if !isToken(m, false) || strings.Contains(m, ".") || len(m) > MaxRefBytes {
			return fmt.Errorf("%w: %s: bad module name %q", ErrBadBoot, ArgModules, truncate(m, 40))
		}
	}
	return nil
}

// ValidateMountDir checks a volume's guest directory: a clean absolute
// path, not the root and not under /proc, /sys or /dev (which the agent
// mounts itself), of printable ASCII without blanks, commas or quotes, so
// it travels on the kernel command line as exactly one list item.
func ValidateMountDir(dir string) error {
	switch {
	case dir == "" || !path.IsAbs(dir):
		return fmt.Errorf("%w: mount directory %q is not an absolute path", ErrBadBoot, truncate(dir, 80))
	case len(dir) > MaxMountBytes:
		return fmt.Errorf("%w: mount directory of %d bytes, at most %d", ErrBadBoot, len(dir), MaxMountBytes)
	case !isPrintableArg(dir):
		return fmt.Errorf("%w: mount directory %q: only printable ASCII without blanks, commas or quotes", ErrBadBoot, truncate(dir, 80))
	case path.Clean(dir) != dir:
		return fmt.Errorf("%w: mount directory %q is not clean (want %q)", ErrBadBoot, truncate(dir, 80), path.Clean(dir))
	case dir == "/":
		return fmt.Errorf("%w: cannot mount a volume over the guest root", ErrBadBoot)
	}
	for _, reserved := range []string{"/proc", "/sys", "/dev"} {
		if dir == reserved || strings.HasPrefix(dir, reserved+"/") {
			return fmt.Errorf("%w: mount directory %s: %s is the agent's", ErrBadBoot, dir, reserved)
		}
	}
	return nil
}

// validateRef checks a disk ref: a virtio serial or a /dev path.
func validateRef(key, ref string) error {
	if ref == "" || len(ref) > MaxRefBytes || !isToken(ref, true) {
		return fmt.Errorf("%w: %s: bad disk ref %q", ErrBadBoot, key, truncate(ref, 40))
	}
	if strings.Contains(ref, "/") && (!strings.HasPrefix(ref, "/dev/") || path.Clean(ref) != ref) {
		return fmt.Errorf("%w: %s: disk ref %q: a path must be a clean /dev path", ErrBadBoot, key, truncate(ref, 40))
	}
	return nil
}

// isToken reports whether s is non-empty and only [A-Za-z0-9_.-] (and
// '/' where slash is set).
func isToken(s string, slash bool) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '_', c == '-', c == '.':
		case c == '/' && slash:
		default:
			return false
		}
	}
	return true
}

// isPrintableArg reports whether s is printable ASCII without blanks,
// commas or double quotes (the kernel's own quoting).
func isPrintableArg(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c >= 0x7f || c == ',' || c == '"' {
			return false
		}
	}
	return true
}

// isKernelSpace is the kernel's isspace(), which splits the command line.
func isKernelSpace(r rune) bool {
	return r == ' ' || r == '\t' || r == '\n' || r == '\v' || r == '\f' || r == '\r'
}

// ParseBoot reads the boot contract from a kernel command line, split as
// the kernel splits it. Keys outside fs.* are the kernel's and ignored; an
// unknown fs.* key is an error, and a later key overrides an earlier one,
// as the kernel does. The result is validated as a complete contract.
func ParseBoot(cmdline string) (Boot, error) {
	var b Boot
	for _, f := range strings.FieldsFunc(cmdline, isKernelSpace) {
		k, v, _ := strings.Cut(f, "=")
		if !strings.HasPrefix(k, "fs.") {
			continue
		}
		if v == "" {
			return Boot{}, fmt.Errorf("%w: %s has no value", ErrBadBoot, truncate(k, 40))
		}
		switch k {
		case ArgChannel:
			b.Channel = v
		case ArgRoot:
			b.Root = splitList(v)
		case ArgRootFS:
			b.RootFS = v
		case ArgUpper:
			b.Upper = v
		case ArgMounts:
			b.Mounts = nil
			for _, m := range splitList(v) {
				disk, dir, ok := strings.Cut(m, "@")
				if !ok {
					return Boot{}, fmt.Errorf("%w: %s: %q: want REF@/guest/dir", ErrBadBoot, ArgMounts, truncate(m, 80))
				}
				b.Mounts = append(b.Mounts, Mount{Disk: disk, Dir: dir})
			}
		case ArgUID:
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 || strconv.Itoa(n) != v {
				return Boot{}, fmt.Errorf("%w: %s=%q: want a positive uid", ErrBadBoot, ArgUID, truncate(v, 40))
			}
			b.UID = n
		case ArgModules:
			b.Modules = splitList(v)
		default:
			return Boot{}, fmt.Errorf("%w: unknown kernel argument %s", ErrBadBoot, truncate(k, 40))
		}
	}
	if err := b.Validate(); err != nil {
		return Boot{}, err
	}
	return b, nil
}

// splitList splits a comma-separated value; an empty value is one empty
// item, which validation then refuses.
func splitList(v string) []string { return strings.Split(v, ",") }

// FSType is the layers' format, with the default applied.
func (b Boot) FSType() string {
	if b.RootFS == "" {
		return DefaultRootFS
	}
	return b.RootFS
}

// CommandUID is the uid commands run as, with the default applied.
func (b Boot) CommandUID() int {
	if b.UID == 0 {
		return DefaultUID
	}
	return b.UID
}
