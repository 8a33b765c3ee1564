package disk

// Device-mapper cannot run on this host's kernel, but the guest kernel has
// it as modules. So the dm tests run inside a real guest: the host test
// (TestDeviceMapperInGuest) builds an initramfs whose /init is this very
// test binary, with dmsetup, losetup, their libraries and the modules
// they need, boots it, and reads the verdict off the console. In the
// guest, TestMain sees it is PID 1, sets up /dev, /proc, /sys and /tmp,
// loads the modules and runs the TestGuest* tests, which skip anywhere else.

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/testutil"
	"github.com/firesandbox/firesandbox/internal/vmm"
	"github.com/firesandbox/firesandbox/internal/vmm/qemu"
	"golang.org/x/sys/unix"
)

// guestModules are loaded in this order (dependencies first).
var guestModules = []string{
	"drivers/md/dm-mod.ko.xz", "drivers/md/dm-bufio.ko.xz", "drivers/md/dm-snapshot.ko.xz",
	"drivers/md/dm-zero.ko.xz", "drivers/block/loop.ko.xz",
}

// guestTools are the host binaries copied into the guest, with their
// shared libraries.
var guestTools = []string{"dmsetup", "losetup"}

const guestVerdict = "GUEST-TESTS-EXIT"

func TestMain(m *testing.M) {
	if os.Getpid() != 1 {
		os.Exit(m.Run())
	}
	code := 1
	if err := guestInit(); err != nil {
		fmt.Println("guest init:", err)
	} else {
		code = m.Run()
	}
	fmt.Printf("%s %d\n", guestVerdict, code)
	unix.Sync()
	// QEMU runs with -no-reboot: a restart ends it.
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	select {}
}

func inGuest() bool { return os.Getpid() == 1 }

// guestInit makes the initramfs a usable system for the tests.
func guestInit() error {
	if err := os.MkdirAll("/dev", 0o755); err != nil {
		return err
	}
	if err := unix.Mount("devtmpfs", "/dev", "devtmpfs", 0, ""); err != nil {
		return fmt.Errorf("mount /dev: %w", err)
	}
	// The kernel found no /dev/console in the initramfs: open it now.
	if con, err := os.OpenFile("/dev/console", os.O_RDWR, 0); err == nil {
		for fd := 0; fd <= 2; fd++ {
			_ = unix.Dup3(int(con.Fd()), fd, 0)
		}
	}
	for _, m := range []struct{ src, dst, fs string }{
		{"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"}, {"tmpfs", "/tmp", "tmpfs"}, {"tmpfs", "/run", "tmpfs"},
	} {
		if err := os.MkdirAll(m.dst, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(m.src, m.dst, m.fs, 0, ""); err != nil {
			return fmt.Errorf("mount %s: %w", m.dst, err)
		}
	}
	os.Setenv("PATH", "/bin")
	os.Setenv("TMPDIR", "/tmp")
	for _, mod := range guestModules {
		f, err := os.Open("/lib/modules/" + filepath.Base(mod))
		if err != nil {
			return err
		}
		err = unix.FinitModule(int(f.Fd()), "", unix.MODULE_INIT_COMPRESSED_FILE)
		f.Close()
		if err != nil && err != unix.EEXIST {
			return fmt.Errorf("load %s: %w", mod, err)
		}
	}
	return nil
}

// TestDeviceMapperInGuest boots a guest that runs the TestGuest* tests
// against the real device-mapper of the guest kernel.
func TestDeviceMapperInGuest(t *testing.T) {
	if inGuest() {
		t.Skip("the host side")
	}
	fx := testutil.RequireVMs(t)
	testutil.RequireQEMU(t)
	deb := kernelDeb(t, fx.Kernel.Release)
	dir := t.TempDir()
	initrd := filepath.Join(dir, "initrd.cpio")
	buildGuestInitrd(t, deb, fx.Kernel.Release, initrd)

	d, err := qemu.New(qemu.Config{Accel: fx.Accel})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	run, err := os.MkdirTemp("", "fs-dmt-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(run)
	m, err := d.Boot(ctx, vmm.Config{ID: "dm-guest-test", Kernel: fx.Kernel.Vmlinux, Initrd: initrd,
		VCPUs: 1, MemoryMiB: 768, RunDir: run,
		Cmdline: []string{"--", "-test.run=^TestGuest", "-test.v", "-test.timeout=8m"}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Stop(context.Background())
	if err := m.Wait(ctx); err != nil {
		t.Fatalf("guest did not finish: %v\n%s", err, m.Console(16<<10))
	}
	m.Stop(context.Background())
	con := m.Console(64 << 10)
	t.Logf("guest console:\n%s", con)
	verdict := regexp.MustCompile(guestVerdict + ` (\d+)`).FindStringSubmatch(con)
	switch {
	case verdict == nil:
		t.Fatal("the guest gave no verdict")
	case verdict[1] != "0":
		t.Fatal("tests failed in the guest")
	case !strings.Contains(con, "--- PASS: TestGuestLayeredDisks"):
		t.Fatal("the layering test did not run in the guest")
	case !strings.Contains(con, "--- PASS: TestGuestDMLayers"):
		t.Fatal("the Layerer suite did not run in the guest")
	}
}

// kernelDeb finds the cached Debian package of the guest kernel, which
// holds the modules the initramfs leaves out.
func kernelDeb(t *testing.T, release string) string {
	t.Helper()
	if p := os.Getenv("FIRESANDBOX_KERNEL_DEB"); p != "" {
		return p
	}
	ms, _ := filepath.Glob("/var/cache/firesandbox/linux-image-" + release + "_*.deb")
	if len(ms) == 0 {
		t.Fatalf("no kernel package for %s in /var/cache/firesandbox: run scripts/fetch-kernel.sh (or set FIRESANDBOX_KERNEL_DEB)", release)
	}
	return ms[0]
}

// buildGuestInitrd writes an initramfs: this test binary as /init, the
// tools and every library they load, and the dm and loop modules.
func buildGuestInitrd(t *testing.T, deb, release, out string) {
	t.Helper()
	files := map[string]string{} // guest path -> host path
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	files["/init"] = self
	bins := []string{self}
	for _, tool := range guestTools {
		p, err := exec.LookPath(tool)
		if err != nil {
			t.Fatalf("the guest test needs %s on the host (apt-get install dmsetup mount)", tool)
		}
		files["/bin/"+tool] = p
		bins = append(bins, p)
	}
	for _, b := range bins {
		for _, lib := range sharedLibs(t, b) {
			files[lib] = lib
		}
	}
	mods := extractModules(t, deb, release)

	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := &newcWriter{w: bufio.NewWriter(f)}
	dirs := map[string]bool{}
	mkdirs := func(p string) {
		var parts []string
		for d := filepath.Dir(p); d != "/"; d = filepath.Dir(d) {
			parts = append([]string{d}, parts...)
		}
		for _, d := range parts {
			if !dirs[d] {
				dirs[d] = true
				w.entry(d, 0o040755, nil)
			}
		}
	}
	for _, d := range []string{"/dev", "/proc", "/sys", "/tmp", "/run", "/lib/modules"} {
		mkdirs(d + "/x")
	}
	for guest, host := range files {
		b, err := os.ReadFile(host)
		if err != nil {
			t.Fatal(err)
		}
		mkdirs(guest)
		w.entry(guest, 0o100755, b)
	}
	for name, b := range mods {
		w.entry("/lib/modules/"+name, 0o100644, b)
	}
	w.entry("TRAILER!!!", 0, nil)
	if err := w.close(); err != nil {
		t.Fatal(err)
	}
}

// sharedLibs lists what the dynamic loader maps for bin (none if static).
func sharedLibs(t *testing.T, bin string) []string {
	t.Helper()
	out, err := exec.Command("ldd", bin).CombinedOutput()
	if err != nil {
		if bytes.Contains(out, []byte("not a dynamic executable")) {
			return nil
		}
		t.Fatalf("ldd %s: %v: %s", bin, err, out)
	}
	var libs []string
	for _, line := range strings.Split(string(out), "\n") {
		for _, f := range strings.Fields(line) {
			if strings.HasPrefix(f, "/") {
				libs = append(libs, f)
				break
			}
		}
	}
	return libs
}

// extractModules reads the guest modules out of the kernel package.
func extractModules(t *testing.T, deb, release string) map[string][]byte {
	t.Helper()
	want := map[string]string{}
	for _, m := range guestModules {
		want["./lib/modules/"+release+"/kernel/"+m] = filepath.Base(m)
	}
	cmd := exec.Command("dpkg-deb", "--fsys-tarfile", deb)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("dpkg-deb: %v", err)
	}
	got := map[string][]byte{}
	tr := tar.NewReader(stdout)
	for len(got) < len(want) {
		h, err := tr.Next()
		if err != nil {
			break
		}
		if name, ok := want[h.Name]; ok {
			if got[name], err = io.ReadAll(tr); err != nil {
				t.Fatal(err)
			}
		}
	}
	io.Copy(io.Discard, stdout)
	cmd.Wait()
	if len(got) != len(want) {
		t.Fatalf("kernel package %s: found %d of the modules %v", deb, len(got), guestModules)
	}
	return got
}

// newcWriter writes a cpio archive in the "newc" format the kernel reads.
type newcWriter struct {
	w   *bufio.Writer
	ino int
	n   int64
}

func (c *newcWriter) write(b []byte) {
	c.w.Write(b)
	c.n += int64(len(b))
}

func (c *newcWriter) pad() {
	if r := c.n % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}

func (c *newcWriter) entry(name string, mode uint32, data []byte) {
	c.ino++
	name = strings.TrimPrefix(name, "/")
	nlink := 1
	if mode&0o040000 != 0 {
		nlink = 2
	}
	c.write(fmt.Appendf(nil, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name)+1, 0))
	c.write(append([]byte(name), 0))
	c.pad()
	c.write(data)
	c.pad()
}

func (c *newcWriter) close() error { return c.w.Flush() }
