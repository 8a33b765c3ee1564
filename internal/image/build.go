package image

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Image formats.
const (
	FormatSquashFS = "squashfs"
	FormatEROFS    = "erofs"
	FormatExt4     = "ext4"
)

// SandboxUID is the uid (and gid) commands run as in the guest.
const SandboxUID = 1000

// BuildOptions controls a build.
type BuildOptions struct {
	Format string // default squashfs
	Base   Base   // default DefaultBase
	// Registry, if set, is the host[:port] OCI images are pulled from
	// instead of the registry their reference names (a mirror).
	Registry string
	// Progress receives one line per step and the tools' output.
	Progress io.Writer
}

// Build builds the image for e unless it exists, and returns it: the
// shared base layer (once) and the language's layer on top of it.
func (s *Store) Build(ctx context.Context, e *Entry, o BuildOptions) (*Image, error) {
	if e.Unavailable != "" {
		return nil, fmt.Errorf("build %s: not available: %s", e.Name, e.Unavailable)
	}
	if o.Format == "" {
		o.Format = FormatSquashFS
	}
	if o.Base.Suite == "" {
		o.Base = DefaultBase
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if im, err := s.Get(e.ID(o.Base, o.Format)); err == nil {
		fmt.Fprintf(o.Progress, "image %s: already built\n", im.ID)
		return im, nil
	}
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		return nil, err
	}
	unlock, err := lockDir(s.Dir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	s.sweep()
	if e.OCI != "" {
		return s.buildOCI(ctx, e, o)
	}
	return s.buildLayered(ctx, e, o)
}

// Pack packs a directory tree into a read-only filesystem image.
func Pack(ctx context.Context, format, dir, out string, progress io.Writer) error {
	switch format {
	case FormatSquashFS:
		return runTool(ctx, progress, "mksquashfs", dir, out, "-comp", "zstd", "-noappend", "-quiet", "-no-progress",
			"-mkfs-time", "0", "-all-time", "0")
	case FormatEROFS:
		// erofs-utils 1.5 (bookworm) compresses with lz4 or lz4hc only.
		return runTool(ctx, progress, "mkfs.erofs", "-zlz4hc", "-T0", out, dir)
	case FormatExt4:
		size, err := treeSize(dir)
		if err != nil {
			return err
		}
		// Room for metadata and the journal-less slack ext4 needs.
		mib := size>>20 + size>>22 + 64
		f, err := os.Create(out)
		if err != nil {
			return err
		}
		err = f.Truncate(mib << 20)
		f.Close()
		if err != nil {
			return err
		}
		return runTool(ctx, progress, "mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-E", "root_owner=0:0", "-d", dir, out)
	}
	return fmt.Errorf("pack: unknown format %q (want squashfs, erofs or ext4)", format)
}

// runTool runs an external command, forwarding its output line by line
// and keeping the tail for the error.
func runTool(ctx context.Context, progress io.Writer, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	// No SOURCE_DATE_EPOCH: mksquashfs refuses it together with the
	// explicit -all-time/-mkfs-time that make its output reproducible.
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	return runCmd(ctx, progress, cmd)
}

// runCmd runs a prepared command, forwarding its output line by line and
// keeping the tail for the error.
func runCmd(ctx context.Context, progress io.Writer, cmd *exec.Cmd) error {
	name := filepath.Base(cmd.Path)
	if len(cmd.Args) > 0 {
		name = cmd.Args[0]
	}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("run %s: %w", name, err)
	}
	var last []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			fmt.Fprintf(progress, "  %s: %s\n", name, sc.Text())
			last = append(last, sc.Text())
			if len(last) > 10 {
				last = last[1:]
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	err := cmd.Wait()
	pw.Close()
	<-done
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w", name, ctx.Err())
	}
	if err != nil {
		return fmt.Errorf("%s failed: %v: %s", name, err, strings.Join(last, " | "))
	}
	return nil
}

// customize makes a debootstrapped tree an image: the sandbox user, no
// caches, logs or per-machine ids.
func customize(root string) error {
	for _, d := range []string{"etc", "home", "proc", "sys", "dev", "run"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(filepath.Join(root, "tmp"), 0o755); err != nil {
		return err
	}
	if err := os.Chmod(filepath.Join(root, "tmp"), 0o1777); err != nil {
		return err
	}
	appendFile := func(rel, line string) error {
		f, err := os.OpenFile(filepath.Join(root, rel), os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o644)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = f.WriteString(line)
		return err
	}
	if err := appendFile("etc/passwd", fmt.Sprintf("sandbox:x:%d:%d:sandbox:/home/sandbox:/bin/sh\n", SandboxUID, SandboxUID)); err != nil {
		return err
	}
	if err := appendFile("etc/group", fmt.Sprintf("sandbox:x:%d:\n", SandboxUID)); err != nil {
		return err
	}
	if err := appendFile("etc/shadow", "sandbox:!:0:0:99999:7:::\n"); err != nil {
		return err
	}
	home := filepath.Join(root, "home/sandbox")
	if err := os.MkdirAll(home, 0o755); err != nil {
		return err
	}
	if err := os.Chown(home, SandboxUID, SandboxUID); err != nil {
		return err
	}
	for _, g := range []string{"var/cache/apt/*.bin", "var/cache/apt/archives/*.deb", "var/lib/apt/lists/*", "var/log/*", "var/cache/ldconfig/aux-cache", "var/cache/debconf/*-old", "var/lib/dpkg/*-old"} {
		ms, _ := filepath.Glob(filepath.Join(root, g))
		for _, m := range ms {
			if err := os.RemoveAll(m); err != nil {
				return err
			}
		}
	}
	if err := os.WriteFile(filepath.Join(root, "etc/machine-id"), nil, 0o444); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(root, "etc/hostname"), []byte("sandbox\n"), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(root, "etc/hosts"), []byte("127.0.0.1 localhost sandbox\n::1 localhost\n"), 0o644)
}

// treeSize is the apparent size of the files under dir.
func treeSize(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if fi, err := d.Info(); err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
		return nil
	})
	return n, err
}

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// removeTree unmounts anything still mounted below dir (debootstrap mounts
// /proc and /sys in the target and a killed run leaves them), then
// removes it.
func removeTree(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	b, _ := os.ReadFile("/proc/self/mountinfo")
	var mounts []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == abs || strings.HasPrefix(f[4], abs+"/")) {
			mounts = append(mounts, f[4])
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(mounts))) // deepest first
	for _, m := range mounts {
		_ = unix.Unmount(m, unix.MNT_DETACH)
	}
	return os.RemoveAll(dir)
}

// sweep removes builds that were interrupted (we hold the lock, so no
// build is running).
func (s *Store) sweep() {
	ms, _ := filepath.Glob(filepath.Join(s.Dir, ".build-*"))
	for _, m := range ms {
		_ = removeTree(m)
	}
}

// lockDir takes an exclusive lock on dir/.lock, waiting for other builders.
func lockDir(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return func() { f.Close() }, nil
}
