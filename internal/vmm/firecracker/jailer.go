package firecracker

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// Names inside a machine's VMM root: RunDir without the jailer (it is the
// VMM's working directory), the chroot with it (the jailer makes it the
// VMM's "/" and working directory). The API gets these relative names, so
// the paths a snapshot records (drives, vsock socket) resolve afresh in
// every restored VMM, jailed or not: Firecracker needs a snapshot's
// resources "at the same relative paths" in the process that loads it.
const (
	apiSockName   = "api.sock"
	vsockName     = "v.sock"
	vmmLogName    = "vmm.log"
	consoleName   = "console.log" // host-side only: the VMM's stdout/stderr
	kernelName    = "vmlinux"
	initrdName    = "initrd"
	drivesDir     = "drives"
	snapshotIn    = "snapshot"     // a snapshot being restored
	snapshotOut   = "snapshot-out" // a jailed VMM writes snapshots here
	netIfaceID    = "net0"         // the network interface's id (a snapshot records it)
	jailerPIDFile = ".pid"         // suffix: <exec file name>.pid
)

// layout says where a machine's files are on the host. Without the jailer
// root is RunDir; with it, root is <ChrootBase>/<exec name>/<id>/root.
type layout struct {
	runDir string // console log; removed at Stop
	root   string // the VMM's working directory / chroot
	jailed bool
	uid    int // owner of files the VMM must write (jailed only)
	gid    int
}

// host returns where a root-relative name is on the host.
func (l layout) host(name string) string { return filepath.Join(l.root, name) }

// apiSock is the --api-sock argument: inside the chroot when jailed.
func (l layout) apiSock() string {
	if l.jailed {
		return "/" + apiSockName
	}
	return l.host(apiSockName)
}

// jailDir is the directory the jailer builds for one VM (the chroot's
// parent), removed at Stop.
func jailDir(cfg Config, id string) string {
	return filepath.Join(cfg.ChrootBase, filepath.Base(cfg.Binary), id)
}

func newLayout(cfg Config, id, runDir string) layout {
	if !cfg.jailed() {
		return layout{runDir: runDir, root: runDir}
	}
	return layout{
		runDir: runDir,
		root:   filepath.Join(jailDir(cfg, id), "root"),
		jailed: true,
		uid:    cfg.UID,
		gid:    cfg.GID,
	}
}

// driveName is where disk d appears under the root. Firecracker's
// resource ids allow only alphanumerics and underscores; vmm disk ids use
// hyphens, so they map one to one.
func driveName(id string) string { return filepath.Join(drivesDir, driveID(id)) }

func driveID(id string) string { return strings.ReplaceAll(id, "-", "_") }

// placement says how a file may be brought into the root.
type placement int

const (
	// placeShared files are only read (kernel, initrd, read-only disks,
	// snapshot state): a copy is as good as a link if linking fails.
	placeShared placement = iota
	// placeMemory is a snapshot's memory file: a copy works but loses the
	// page-cache sharing between restores, so it is worth a warning.
	placeMemory
	// placeWritable is a writable disk: it must be the caller's file, so
	// writes land there; a copy would silently lose them.
	placeWritable
)

// place makes src reachable as name under the root: a symlink without the
// jailer; with it, a hard link (the chroot hides everything else), falling
// back to a copy for files that are only read. It reports whether it had to
// copy.
func (l layout) place(src, name string, how placement) (copied bool, err error) {
	dst := l.host(name)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return false, err
	}
	abs, err := filepath.Abs(src)
	if err != nil {
		return false, err
	}
	if !l.jailed {
		if err := os.Symlink(abs, dst); err != nil {
			return false, fmt.Errorf("link %s: %w", name, err)
		}
		return false, nil
	}
	var st syscall.Stat_t
	if err := syscall.Stat(abs, &st); err != nil {
		return false, fmt.Errorf("place %s: %w", name, err)
	}
	if st.Mode&syscall.S_IFMT == syscall.S_IFBLK {
		// A block device (a layered disk) lives on devtmpfs, which no
		// hard link reaches: the jail gets its own node for the same
		// device, as the jailer makes /dev/kvm.
		return false, l.blockNode(dst, name, st.Rdev, how)
	}
	err = os.Link(abs, dst)
	if err == nil {
		if how == placeWritable {
			// The jailed VMM opens it read-write as UID. It is the
			// machine's own disk; the chown is visible on the original.
			if err := os.Chown(dst, l.uid, l.gid); err != nil {
				return false, fmt.Errorf("hand %s to uid %d: %w", name, l.uid, err)
			}
		}
		return false, nil
	}
	if !errors.Is(err, syscall.EXDEV) && !errors.Is(err, syscall.EPERM) {
		return false, fmt.Errorf("link %s into the jail: %w", name, err)
	}
	if how == placeWritable {
		return false, fmt.Errorf("link writable disk %s into the jail: %w (put the chroot base on the disks' filesystem)", src, err)
	}
	if err := copyFile(abs, dst); err != nil {
		return false, fmt.Errorf("copy %s into the jail: %w", name, err)
	}
	return true, nil
}

// blockNode makes dst a node for block device rdev, which only the jailed
// user may open, and only read unless the disk is writable.
func (l layout) blockNode(dst, name string, rdev uint64, how placement) error {
	mode := uint32(0o400)
	if how == placeWritable {
		mode = 0o600
	}
	if err := syscall.Mknod(dst, syscall.S_IFBLK|mode, int(rdev)); err != nil {
		return fmt.Errorf("make device node %s in the jail: %w", name, err)
	}
	if err := os.Chown(dst, l.uid, l.gid); err != nil {
		os.Remove(dst)
		return fmt.Errorf("hand %s to uid %d: %w", name, l.uid, err)
	}
	return nil
}

// writable creates an empty file (or directory) the VMM may write, owned
// by the jailed user.
func (l layout) writable(name string, dir bool) error {
	p := l.host(name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	if dir {
		if err := os.Mkdir(p, 0o700); err != nil {
			return err
		}
	} else {
		f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return err
		}
		f.Close()
	}
	if l.jailed {
		return os.Chown(p, l.uid, l.gid)
	}
	return nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// moveFile renames src to dst, copying across filesystems.
func moveFile(src, dst string) error {
	err := os.Rename(src, dst)
	if !errors.Is(err, syscall.EXDEV) {
		return err
	}
	if err := copyFile(src, dst); err != nil {
		return err
	}
	return os.Remove(src)
}

// JailerArgs returns the jailer's argument list (without the program
// name) that runs cfg.Binary for machine id, with fcArgs passed through to
// Firecracker after "--". The jailer itself adds --id for Firecracker.
// The own network namespace (NetNS "") is not an argument: the driver
// starts the jailer in a new one.
func JailerArgs(cfg Config, id string, fcArgs []string) []string {
	args := []string{
		"--id", id,
		"--exec-file", cfg.Binary,
		"--uid", strconv.Itoa(cfg.UID),
		"--gid", strconv.Itoa(cfg.GID),
		"--chroot-base-dir", cfg.ChrootBase,
		"--cgroup-version", cfg.CgroupVersion,
	}
	if cfg.ParentCgroup != "" {
		args = append(args, "--parent-cgroup", cfg.ParentCgroup)
	}
	keys := make([]string, 0, len(cfg.Cgroups))
	for k := range cfg.Cgroups {
		keys = append(keys, k)
	}
	sort.Strings(keys) // same config, same argv
	for _, k := range keys {
		args = append(args, "--cgroup", k+"="+cfg.Cgroups[k])
	}
	if cfg.NetNS != "" && cfg.NetNS != NetNSHost {
		args = append(args, "--netns", cfg.NetNS)
	}
	if !cfg.HostPIDNS {
		args = append(args, "--new-pid-ns")
	}
	args = append(args, "--")
	return append(args, fcArgs...)
}

// cgroupDir is the cgroup the jailer creates for machine id (v2 only; v1
// has one per controller), removed after the VMM exits.
func cgroupDir(cfg Config, id string) string {
	if !cfg.jailed() || cfg.CgroupVersion != "2" || len(cfg.Cgroups) == 0 {
		return ""
	}
	mnt := cgroup2Mount()
	if mnt == "" {
		return ""
	}
	parent := cfg.ParentCgroup
	if parent == "" {
		parent = filepath.Base(cfg.Binary)
	}
	return filepath.Join(mnt, parent, id)
}
