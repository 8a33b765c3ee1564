package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"golang.org/x/sys/unix"
)

// Guest paths used by Init. The initramfs is the agent's own root; the
// commands' root is the overlay at NewRoot.
const (
	ModulesList = "/etc/firesandbox/modules" // one .ko path per line, in load order
	NewRoot     = "/newroot"
	lowerDir    = "/run/lower"
	upperDir    = "/run/upper"
)

// Init prepares the guest as PID 1 and serves the host forever. It only
// returns on a fatal error; the caller then powers off.
func Init(version string, log *slog.Logger) error {
	boot := time.Now()
	if err := mountEarly(); err != nil {
		return err
	}
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return err
	}
	gc, err := agentproto.ParseBoot(string(cmdline))
	if err != nil {
		return err
	}
	if err := loadModules(ModulesList, log); err != nil {
		return err
	}
	groups := gc.Modules
	if gc.FSType() == "erofs" {
		groups = append(groups, "erofs")
	}
	for _, g := range groups {
		if err := loadGroup(g, log); err != nil {
			return err
		}
	}
	var devs []string
	for _, ref := range gc.Root {
		dev, err := findDisk(ref, 10*time.Second)
		if err != nil {
			return err
		}
		devs = append(devs, dev)
	}
	upper := ""
	if gc.Upper != "" {
		if upper, err = findDisk(gc.Upper, 10*time.Second); err != nil {
			return err
		}
	}
	if err := mountRoot(devs, gc.FSType(), upper); err != nil {
		return err
	}
	for _, gm := range gc.Mounts {
		dev, err := findDisk(gm.Disk, 10*time.Second)
		if err != nil {
			return err
		}
		if err := mountInRoot(dev, NewRoot, gm.Dir, "squashfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV); err != nil {
			return err
		}
	}
	if err := unix.Sethostname([]byte("sandbox")); err != nil {
		log.Warn("set hostname", "err", err)
	}
	if err := loopbackUp(); err != nil {
		log.Warn("bring up lo", "err", err)
	}
	cgParent, err := SetupCgroups("/sys/fs/cgroup", os.Getpid(), memTotal())
	if err != nil {
		log.Warn("cgroups unavailable: memory and process limits off", "err", err)
		cgParent = ""
	}
	// No user namespaces: unprivileged ones are a wide kernel attack
	// surface, and nothing a sandboxed program needs.
	if err := os.WriteFile("/proc/sys/user/max_user_namespaces", []byte("0"), 0); err != nil {
		log.Warn("disable user namespaces", "err", err)
	}
	// Quiet the kernel's periodic housekeeping: proactive compaction
	// (kcompactd every half second) and the per-CPU vm statistics fold
	// (every second) are work an idle guest does for nothing, and work
	// that lands in a restored guest's first moments, where TCG
	// translates it afresh.
	for k, v := range map[string]string{"vm/compaction_proactiveness": "0", "vm/stat_interval": "30"} {
		if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0); err != nil {
			log.Warn("sysctl", "key", k, "err", err)
		}
	}
	var uname unix.Utsname
	_ = unix.Uname(&uname)
	srv := NewServer(Config{
		Root:         NewRoot,
		UID:          gc.CommandUID(),
		GID:          gc.CommandUID(),
		CgroupParent: cgParent,
		Confine:      true,
		Version:      version,
		Kernel:       unix.ByteSliceToString(uname.Release[:]),
		BootTime:     boot.Add(-uptime()),
		Shutdown:     powerOff,
		Resync:       resync,
		SetClock: func(t time.Time) error {
			tv := unix.NsecToTimeval(t.UnixNano())
			return unix.Settimeofday(&tv)
		},
	}, log)
	srv.warmCodecs()
	_, _ = urandom()
	return serveChannel(gc.Channel, srv, log)
}

func uptime() time.Duration {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts) != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

func mount(src, dst, fstype string, flags uintptr, data string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(src, dst, fstype, flags, data); err != nil {
		return fmt.Errorf("mount %s on %s (%s): %w", src, dst, fstype, err)
	}
	return nil
}

// mountInRoot mounts src on dir, a path inside root, resolved inside
// root: a symlink in the guest's tree (an image's, or one that guest code
// left on a writable disk) cannot move the mount onto the agent's side.
func mountInRoot(src, root, dir, fstype string, flags uintptr) error {
	r, err := os.OpenRoot(root)
	if err != nil {
		return err
	}
	defer r.Close()
	rel := strings.TrimPrefix(dir, "/")
	if err := r.MkdirAll(rel, 0o755); err != nil {
		return fmt.Errorf("mount %s: %w", dir, err)
	}
	rfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(rfd)
	fd, err := unix.Openat2(rfd, rel, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return fmt.Errorf("mount %s: open target: %w", dir, err)
	}
	defer unix.Close(fd)
	if err := unix.Mount(src, fmt.Sprintf("/proc/self/fd/%d", fd), fstype, flags, ""); err != nil {
		return fmt.Errorf("mount %s on %s (%s): %w", src, dir, fstype, err)
	}
	return nil
}

func mountEarly() error {
	for _, m := range []struct{ src, dst, fs string }{
		{"devtmpfs", "/dev", "devtmpfs"},
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
		{"cgroup2", "/sys/fs/cgroup", "cgroup2"},
		{"tmpfs", "/run", "tmpfs"},
	} {
		if err := mount(m.src, m.dst, m.fs, unix.MS_NOSUID|unix.MS_NOEXEC, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			return err
		}
	}
	return nil
}

// loadModules loads each listed module, xz-compressed as shipped: the
// kernel decompresses it (MODULE_INIT_COMPRESSED_FILE).
func loadModules(list string, log *slog.Logger) error {
	f, err := os.Open(list)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		p := strings.TrimSpace(sc.Text())
		if p == "" || strings.HasPrefix(p, "#") {
			continue
		}
		if err := loadModule(p); err != nil {
			return err
		}
	}
	return sc.Err()
}

// loadGroup loads a named module group (/etc/firesandbox/modules.NAME, in
// dependency order) or, failing that, the single module /lib/modules/NAME.ko*.
func loadGroup(name string, log *slog.Logger) error {
	if name == "" || strings.ContainsAny(name, "/.") {
		return fmt.Errorf("%s: bad module name %q", agentproto.ArgModules, name)
	}
	list := ModulesList + "." + name
	if _, err := os.Stat(list); err == nil {
		return loadModules(list, log)
	}
	ms, _ := filepath.Glob("/lib/modules/" + name + ".ko*")
	if len(ms) == 0 {
		return fmt.Errorf("%s: no module or module group %q in the initramfs", agentproto.ArgModules, name)
	}
	return loadModule(ms[0])
}

func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("load module: %w", err)
	}
	defer f.Close()
	flags := 0
	if strings.HasSuffix(path, ".xz") || strings.HasSuffix(path, ".zst") || strings.HasSuffix(path, ".gz") {
		flags = unix.MODULE_INIT_COMPRESSED_FILE
	}
	if err := unix.FinitModule(int(f.Fd()), "", flags); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("load module %s: %w", filepath.Base(path), err)
	}
	return nil
}

// findDisk waits for the block device whose serial is id (QEMU sets
// serials) or, if id is a /dev path, for that device (Firecracker has no
// serials; its drives appear in the order they were attached).
func findDisk(id string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		if strings.HasPrefix(id, "/dev/") {
			if _, err := os.Stat(id); err == nil {
				return id, nil
			}
		} else {
			blocks, _ := filepath.Glob("/sys/block/*/serial")
			for _, s := range blocks {
				b, err := os.ReadFile(s)
				if err == nil && strings.TrimSpace(string(b)) == id {
					return "/dev/" + filepath.Base(filepath.Dir(s)), nil
				}
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("disk %q did not appear within %s", id, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// mountRoot stacks the image's read-only layers (bottom first) under a
// writable upper (tmpfs, or the ext4 disk upperDev mounted with discard so
// what the guest deletes is freed on the host) and prepares the commands'
// root: a minimal /dev, /proc, /tmp. Whiteouts and opaque directories in a
// layer hide what lies below it.
func mountRoot(devs []string, fstype, upperDev string) error {
	lowers := make([]string, len(devs))
	for i, dev := range devs {
		dir := fmt.Sprintf("%s/%d", lowerDir, i)
		if err := mount(dev, dir, fstype, unix.MS_RDONLY, ""); err != nil {
			return err
		}
		lowers[len(devs)-1-i] = dir // overlayfs lists the top layer first
	}
	if upperDev != "" {
		if err := mount(upperDev, upperDir, "ext4", unix.MS_NOATIME, "discard"); err != nil {
			return err
		}
	} else if err := mount("tmpfs", upperDir, "tmpfs", 0, "mode=0755"); err != nil {
		return err
	}
	for _, d := range []string{upperDir + "/data", upperDir + "/work"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s/data,workdir=%s/work", strings.Join(lowers, ":"), upperDir, upperDir)
	// nosuid: a setuid binary in the image (su, passwd, mount) runs with
	// its caller's rights; nodev: a device node made on the writable
	// layer opens nothing.
	if err := mount("overlay", NewRoot, "overlay", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
		return err
	}
	if err := mount("proc", NewRoot+"/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return err
	}
	if err := mountBootID(); err != nil {
		return err
	}
	if err := mount("sysfs", NewRoot+"/sys", "sysfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return err
	}
	if err := mount("tmpfs", NewRoot+"/tmp", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777"); err != nil {
		return err
	}
	return makeDev(NewRoot + "/dev")
}

// makeDev builds a /dev with only the harmless devices: no disks, no
// console, no memory.
func makeDev(dir string) error {
	if err := mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "mode=0755"); err != nil {
		return err
	}
	for _, d := range []struct {
		name         string
		major, minor uint32
	}{{"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7}, {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0}} {
		p := filepath.Join(dir, d.name)
		if err := unix.Mknod(p, unix.S_IFCHR|0o666, int(unix.Mkdev(d.major, d.minor))); err != nil {
			return fmt.Errorf("mknod %s: %w", p, err)
		}
		if err := os.Chmod(p, 0o666); err != nil {
			return err
		}
	}
	for name, target := range map[string]string{"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"} {
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			return err
		}
	}
	if err := mount("devpts", dir+"/pts", "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"); err != nil {
		return err
	}
	if err := os.Symlink("pts/ptmx", dir+"/ptmx"); err != nil {
		return err
	}
	return mount("tmpfs", dir+"/shm", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777")
}

func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

func powerOff() {
	unix.Sync()
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
}

// serveChannel opens the host channel and serves it, again and again: a
// virtio-serial port reads EOF while no host is attached (for example
// between a snapshot and its restore), and a new host may attach later.
// After an EOF the port stays open and the next session starts at once:
// its Hello waits in the port until a host attaches. A template's guest
// is snapshotted in that wait, so a restore's first answer costs no
// reopen (which a restored guest, whose translated code TCG does not
// keep, paid for in tens of milliseconds). Any other failure reopens the
// port.
func serveChannel(spec string, srv *Server, log *slog.Logger) error {
	kind, name, port, err := agentproto.ParseChannel(spec)
	if err != nil {
		return err
	}
	if kind == "vsock" {
		return serveVsock(port, srv, log)
	}
	dev, err := findPort(name, 10*time.Second)
	if err != nil {
		return err
	}
	for {
		f, err := os.OpenFile(dev, os.O_RDWR, 0)
		if err != nil {
			return fmt.Errorf("open channel %s: %w", dev, err)
		}
		for err = io.EOF; errors.Is(err, io.EOF); {
			err = srv.Serve(context.Background(), f)
		}
		f.Close()
		log.Warn("channel", "err", err)
		time.Sleep(10 * time.Millisecond)
	}
}

func findPort(name string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		names, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
		for _, n := range names {
			b, err := os.ReadFile(n)
			if err == nil && strings.TrimSpace(string(b)) == name {
				return "/dev/" + filepath.Base(filepath.Dir(n)), nil
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("virtio port %q did not appear within %s", name, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func serveVsock(port uint32, srv *Server, log *slog.Logger) error {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("vsock socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: port}); err != nil {
		return fmt.Errorf("vsock bind %d: %w", port, err)
	}
	if err := unix.Listen(fd, 4); err != nil {
		return fmt.Errorf("vsock listen: %w", err)
	}
	for {
		nfd, _, err := unix.Accept4(fd, unix.SOCK_CLOEXEC)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return fmt.Errorf("vsock accept: %w", err)
		}
		f := os.NewFile(uintptr(nfd), "vsock")
		err = srv.Serve(context.Background(), f)
		f.Close()
		if !errors.Is(err, io.EOF) {
			log.Warn("channel", "err", err)
		}
	}
}

// resync sets the clock and mixes host entropy into the kernel's pool, so
// clones restored from one snapshot diverge; a new identity (a restore or
// a fork's child, not its parent) also gets a new boot id.
func resync(r agentproto.ResyncRequest) error {
	if r.UnixNanos > 0 {
		tv := unix.NsecToTimeval(r.UnixNanos)
		if err := unix.Settimeofday(&tv); err != nil {
			return fmt.Errorf("set clock: %w", err)
		}
	}
	if len(r.Entropy) > 0 {
		if err := addEntropy(r.Entropy); err != nil {
			return err
		}
	}
	if r.Identity != "" && r.Identity != bootIDFor {
		if err := newBootID(); err != nil {
			return err
		}
		bootIDFor = r.Identity
	}
	return nil
}

// formatUUID writes u as the kernel writes a boot id: 8-4-4-4-12 hex
// digits and a newline (without fmt, whose code a restored guest would
// have TCG translate again).
func formatUUID(u [16]byte) []byte {
	b := make([]byte, 0, 37)
	for i, c := range u {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			b = append(b, '-')
		}
		b = append(b, hexDigits[c>>4], hexDigits[c&0xf])
	}
	return append(b, '\n')
}

const hexDigits = "0123456789abcdef"

// urandom is /dev/urandom, opened once: a restored guest's resync uses it
// and should not pay for an open.
var urandom = sync.OnceValues(func() (*os.File, error) {
	return os.OpenFile("/dev/urandom", os.O_WRONLY|unix.O_CLOEXEC, 0)
})

// bootIDFor is the identity the commands' boot id was made for.
var bootIDFor string

// bootIDFile is the file bind-mounted (read-only) over the commands'
// /proc/sys/kernel/random/boot_id, held open for writing by the agent.
// The mount is made once, at boot: a restore rewrites the file in place,
// one write where a new mount would cost a restored guest (whose
// translated code TCG does not keep) tens of milliseconds.
var bootIDFile *os.File

// bootIDSource is where bootIDFile lives, in the agent's own root.
const bootIDSource = "/run-boot-id"

// mountBootID shows commands a boot id the agent can replace: at first the
// kernel's own.
func mountBootID() error {
	id, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return fmt.Errorf("boot id: %w", err)
	}
	f, err := os.OpenFile(bootIDSource, os.O_RDWR|os.O_CREATE|os.O_TRUNC|unix.O_CLOEXEC, 0o444)
	if err != nil {
		return fmt.Errorf("boot id: %w", err)
	}
	if _, err := f.Write(id); err != nil {
		f.Close()
		return fmt.Errorf("boot id: %w", err)
	}
	dst := NewRoot + "/proc/sys/kernel/random/boot_id"
	if err := unix.Mount(bootIDSource, dst, "", unix.MS_BIND, ""); err != nil {
		f.Close()
		return fmt.Errorf("boot id: %w", err)
	}
	_ = unix.Mount("", dst, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
	bootIDFile = f
	return nil
}

// newBootID shows commands a fresh random boot id: the kernel's is made
// once per boot, so every VM restored from one snapshot would share it.
// The new id has the old one's length (a UUID and a newline), so
// rewriting the file in place leaves no trace of the old one.
func newBootID() error {
	var u [16]byte
	// getrandom(2) itself, not through the vDSO: Go's rand.Read and
	// unix.Getrandom would map a vDSO state for this thread first, in a
	// restored guest's first answer.
	if n, _, e := unix.Syscall(unix.SYS_GETRANDOM, uintptr(unsafe.Pointer(&u[0])), uintptr(len(u)), 0); e != 0 || n != uintptr(len(u)) { // reseeded just before
		return fmt.Errorf("boot id: getrandom: %d bytes, %v", n, e)
	}
	u[6], u[8] = u[6]&0x0f|0x40, u[8]&0x3f|0x80 // a version 4 UUID, as the kernel makes
	if bootIDFile == nil {
		return errors.New("boot id: not mounted at boot")
	}
	if _, err := bootIDFile.WriteAt(formatUUID(u), 0); err != nil {
		return fmt.Errorf("boot id: %w", err)
	}
	return nil
}

// addEntropy credits data to the kernel's entropy pool and forces the CRNG
// to reseed, so a restored clone stops producing its template's stream.
func addEntropy(data []byte) error {
	f, err := urandom()
	if err != nil {
		return err
	}
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	buf := make([]byte, 8+len(data)+3)
	*(*int32)(unsafe.Pointer(&buf[0])) = int32(len(data) * 8)
	*(*int32)(unsafe.Pointer(&buf[4])) = int32(len(data))
	copy(buf[8:], data)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&buf[0]))); e != 0 {
		return fmt.Errorf("add entropy: %w", e)
	}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDRESEEDCRNG, 0); e != 0 {
		return fmt.Errorf("reseed crng: %w", e)
	}
	return nil
}
