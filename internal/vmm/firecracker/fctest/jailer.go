package fctest

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// JailRecordName is the file the fake jailer writes beside the jail's
// root (in <chroot-base>/<exec name>/<id>/, out of the VMM's reach): what
// it was asked for and what it saw, for tests of the driver.
const JailRecordName = "fctest-jailer.json"

// JailRecord is what JailRecordName holds.
type JailRecord struct {
	Args []string `json:"args"`
	UID  int      `json:"uid"`
	GID  int      `json:"gid"`
	// Dropped says the fake ran as root and really dropped to UID/GID.
	Dropped bool `json:"dropped"`
	// NetNS is the network namespace the VMM runs in (the link target of
	// /proc/self/ns/net, or of --netns), HostNetNS the one of PID 1.
	NetNS     string `json:"netns"`
	HostNetNS string `json:"host_netns"`
	// NewPIDNS says the VMM was forked into a new PID namespace (or, not
	// root, into a new session standing in for one).
	NewPIDNS bool `json:"new_pid_ns"`
}

var (
	jailIDRe      = regexp.MustCompile(`^[a-zA-Z0-9-]{1,64}$`)
	cgroupArgRe   = regexp.MustCompile(`^[a-z][a-z0-9_]*\.[a-z0-9_.]+=[^=\n]+$`)
	rlimitArgRe   = regexp.MustCompile(`^(no-file|fsize)=[0-9]+$`)
	jailerFlags   = map[string]bool{"--id": true, "--exec-file": true, "--uid": true, "--gid": true, "--chroot-base-dir": true, "--cgroup-version": true, "--parent-cgroup": true, "--netns": true, "--cgroup": true, "--resource-limit": true, "--numa-node": true}
	repeatedFlags = map[string]bool{"--cgroup": true, "--resource-limit": true}
)

// JailerMain runs a fake jailer with the given arguments (without the
// program name) and returns its exit code. It validates its arguments as
// the real jailer does (and is stricter where that catches driver bugs),
// then does what the real one does to the file system:
// <chroot-base>/<exec name>/<id>/root is created, the exec file is copied
// into it (a hard link when it can), and the root is handed to --uid:--gid.
// It cannot pivot_root into the jail (test binaries are not static), so
// the fake Firecracker starts in the root as its working directory and
// resolves every path inside it, refusing one that leads out. Running as
// root, it really joins --netns, drops to --uid:--gid (so files the VMM must read or
// write but cannot are refused, as they would be), forks with --new-pid-ns
// into a new PID namespace and writes <root>/<exec name>.pid; not root, it
// keeps its ids and uses a new session instead. It execs the copy with
// --id=<id> --start-time-us=... --start-time-cpu-us=... and the arguments
// after "--".
func JailerMain(args []string) int {
	fail := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "jailer: "+format+"\n", a...)
		return 1
	}
	vals := map[string][]string{}
	var (
		newPIDNS bool
		rest     []string
	)
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			rest = args[i+1:]
			break
		}
		switch {
		case a == "--new-pid-ns" || a == "--daemonize":
			if vals[a] != nil {
				return fail("argument %s given twice", a)
			}
			vals[a] = []string{""}
			newPIDNS = newPIDNS || a == "--new-pid-ns"
		case jailerFlags[a]:
			if i+1 >= len(args) || strings.HasPrefix(args[i+1], "--") {
				return fail("%s needs a value", a)
			}
			if vals[a] != nil && !repeatedFlags[a] {
				return fail("argument %s given twice", a)
			}
			i++
			vals[a] = append(vals[a], args[i])
		default:
			return fail("unknown argument %q", a)
		}
	}
	one := func(name, def string) string {
		if v := vals[name]; v != nil {
			return v[0]
		}
		return def
	}
	id, execFile := one("--id", ""), one("--exec-file", "")
	base, cgv := one("--chroot-base-dir", "/srv/jailer"), one("--cgroup-version", "1")
	uid, uerr := strconv.ParseUint(one("--uid", ""), 10, 32)
	gid, gerr := strconv.ParseUint(one("--gid", ""), 10, 32)
	switch {
	case !jailIDRe.MatchString(id):
		return fail("invalid id %q: want 1-64 of [a-zA-Z0-9-]", id)
	case !filepath.IsAbs(execFile) || !strings.Contains(filepath.Base(execFile), "firecracker"):
		return fail("exec file %q must be an absolute path whose name contains \"firecracker\"", execFile)
	case uerr != nil || gerr != nil:
		return fail("--uid and --gid are required numbers (%v, %v)", uerr, gerr)
	case !filepath.IsAbs(base):
		return fail("chroot base %q is not absolute", base)
	case cgv != "1" && cgv != "2":
		return fail("invalid cgroup version %q", cgv)
	}
	if fi, err := os.Stat(execFile); err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return fail("exec file %s is not an executable file (%v)", execFile, err)
	}
	for _, c := range vals["--cgroup"] {
		if !cgroupArgRe.MatchString(c) {
			return fail("invalid cgroup %q: want <controller>.<file>=<value>", c)
		}
	}
	if p := one("--parent-cgroup", ""); filepath.IsAbs(p) || strings.Contains(p, "..") {
		return fail("invalid parent cgroup %q", p)
	}
	for _, r := range vals["--resource-limit"] {
		if !rlimitArgRe.MatchString(r) {
			return fail("invalid resource limit %q", r)
		}
	}
	hostNetNS, _ := os.Readlink("/proc/1/ns/net")
	netns, _ := os.Readlink("/proc/self/ns/net")
	if ns := one("--netns", ""); ns != "" {
		var st unix.Statfs_t
		if err := unix.Statfs(ns, &st); err != nil || st.Type != unix.NSFS_MAGIC {
			return fail("--netns %s is not a network namespace file (%v)", ns, err)
		}
		netns = "netns file " + ns
	}
	for _, a := range rest {
		if name, _, _ := strings.Cut(a, "="); name == "--id" {
			return fail("--id after \"--\": the jailer passes Firecracker its --id itself")
		}
	}

	jail := filepath.Join(base, filepath.Base(execFile), id)
	root := filepath.Join(jail, "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return fail("%v", err)
	}
	exe := filepath.Join(root, filepath.Base(execFile))
	if _, err := os.Lstat(exe); err == nil {
		return fail("%s already exists in the jail", filepath.Base(execFile))
	}
	if err := linkOrCopy(execFile, exe); err != nil {
		return fail("copy the exec file into the jail: %v", err)
	}
	root0 := os.Geteuid() == 0
	if root0 {
		if err := os.Chown(root, int(uid), int(gid)); err != nil {
			return fail("chown the jail root: %v", err)
		}
		// The jailer makes the devices the VMM opens inside the jail,
		// owned by the VMM's ids: /dev/net/tun for its taps.
		if err := makeDevice(filepath.Join(root, "dev", "net", "tun"), 10, 200, int(uid), int(gid)); err != nil {
			return fail("create /dev/net/tun in the jail: %v", err)
		}
		if ns := one("--netns", ""); ns != "" {
			// As the real jailer does before it execs Firecracker: this
			// thread joins the namespace, and the VMM forked from it is
			// born there (so it sees the taps in it, and nothing else).
			if err := joinNetns(ns); err != nil {
				return fail("join --netns %s: %v", ns, err)
			}
			netns, _ = os.Readlink("/proc/thread-self/ns/net")
		}
	}
	rec := JailRecord{Args: args, UID: int(uid), GID: int(gid), Dropped: root0, NetNS: netns, HostNetNS: hostNetNS, NewPIDNS: newPIDNS}
	if b, err := json.Marshal(rec); err == nil {
		_ = os.WriteFile(filepath.Join(jail, JailRecordName), b, 0o644)
	}

	start := time.Now()
	fcArgs := append([]string{"--id=" + id, "--start-time-us=" + strconv.FormatInt(start.UnixMicro(), 10), "--start-time-cpu-us=0"}, rest...)
	cmd := exec.Command(exe, fcArgs...)
	cmd.Dir = root
	// The real jailer clears the environment; the fake keeps only what
	// makes the test binary act as the fake Firecracker.
	cmd.Env = []string{MainEnv + "=1", RootEnv + "=" + root}
	if root0 {
		cmd.Env = append(cmd.Env, fmt.Sprintf("%s=%d:%d", DropEnv, uid, gid))
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if !newPIDNS {
		// The real jailer execs in place; running a child and passing on
		// signals is the closest a fake that cannot chroot gets.
		if err := cmd.Start(); err != nil {
			return fail("%v", err)
		}
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
		go func() {
			for s := range sigs {
				_ = cmd.Process.Signal(s)
			}
		}()
		if err := cmd.Wait(); err != nil {
			var ee *exec.ExitError
			if errors.As(err, &ee) && ee.ExitCode() > 0 {
				return ee.ExitCode()
			}
			return 1
		}
		return 0
	}
	if root0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID, Setsid: true}
	} else {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	}
	if err := cmd.Start(); err != nil {
		return fail("%v", err)
	}
	if err := os.WriteFile(exe+".pid", []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		return fail("%v", err)
	}
	return 0
}

// makeDevice creates a character device node owned by uid:gid, 0600.
func makeDevice(path string, major, minor uint32, uid, gid int) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if err := unix.Mknod(path, unix.S_IFCHR|0o600, int(unix.Mkdev(major, minor))); err != nil {
		return err
	}
	return os.Chown(path, uid, gid)
}

// joinNetns moves the calling goroutine's thread, locked to it for the
// rest of the process, into the network namespace at path.
func joinNetns(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	runtime.LockOSThread() // never unlocked: this thread now belongs to the namespace
	return unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
}

// linkOrCopy hard-links src to dst, or copies it (mode 0755) across
// filesystems.
func linkOrCopy(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
