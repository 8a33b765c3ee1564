// Package guesttest runs a package's tests inside a guest VM, on the
// guest kernel, for what this host's kernel lacks (device-mapper). The
// host test builds an initramfs whose /init is the test binary itself,
// with the tools it names, their libraries and kernel modules from the
// guest kernel's package, boots it under QEMU and reads the verdict off
// the console. In the guest, Main (the package's TestMain) sees it is
// PID 1, sets up /dev, /proc, /sys, /tmp and /run, loads the modules and
// runs the tests Run asked for.
//
//	func TestMain(m *testing.M) { guesttest.Main(m) }
//
//	func TestThingsInGuest(t *testing.T) {
//		guesttest.Run(t, guesttest.Options{Modules: []string{"drivers/md/dm-mod.ko.xz"},
//			Tools: []string{"dmsetup"}, Run: "^TestGuest", MustPass: []string{"TestGuestThings"}})
//	}
//
//	func TestGuestThings(t *testing.T) {
//		if !guesttest.InGuest() { t.Skip("runs inside a guest VM: see TestThingsInGuest") }
//		...
//	}
package guesttest

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

const (
	verdict     = "GUEST-TESTS-EXIT"
	moduleOrder = "/lib/modules/order" // the modules' file names, one a line, in load order
)

// InGuest says whether this test binary runs as a guest's init.
func InGuest() bool { return os.Getpid() == 1 }

// Main runs the tests, in the guest as its init (then it prints the
// verdict and ends the VM), elsewhere as usual.
func Main(m *testing.M) {
	if !InGuest() {
		os.Exit(m.Run())
	}
	code := 1
	if err := guestInit(); err != nil {
		fmt.Println("guest init:", err)
	} else {
		code = m.Run()
	}
	fmt.Printf("%s %d\n", verdict, code)
	unix.Sync()
	// QEMU runs with -no-reboot: a restart ends it.
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	select {}
}

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
	order, err := os.ReadFile(moduleOrder)
	if err != nil {
		return err
	}
	for _, name := range strings.Fields(string(order)) {
		f, err := os.Open("/lib/modules/" + name)
		if err != nil {
			return err
		}
		err = unix.FinitModule(int(f.Fd()), "", unix.MODULE_INIT_COMPRESSED_FILE)
		f.Close()
		if err != nil && err != unix.EEXIST {
			return fmt.Errorf("load %s: %w", name, err)
		}
	}
	return nil
}

// Options say what the guest gets and runs.
type Options struct {
	// Modules are paths under the guest kernel's kernel/ directory
	// (drivers/md/dm-mod.ko.xz), loaded in this order.
	Modules []string
	// Tools are host binaries copied into the guest's /bin.
	Tools []string
	// Run is the -test.run pattern of the tests to run in the guest.
	Run string
	// MustPass names tests that must have passed in the guest.
	MustPass []string
	// MemoryMiB is the guest's memory; default 768.
	MemoryMiB int
}

// Run boots a guest that runs this test binary's tests matching o.Run
// and fails t unless they all pass. It needs the VM fixtures (a guest
// kernel and its Debian package) and QEMU.
func Run(t *testing.T, o Options) {
	t.Helper()
	if InGuest() {
		t.Skip("the host side")
	}
	fx := testutil.RequireVMs(t)
	testutil.RequireQEMU(t)
	deb := kernelDeb(t, fx.Kernel.Release)
	dir := t.TempDir()
	initrd := filepath.Join(dir, "initrd.cpio")
	buildInitrd(t, o, deb, fx.Kernel.Release, initrd)

	d, err := qemu.New(qemu.Config{Accel: fx.Accel})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	run, err := os.MkdirTemp("", "fs-guest-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(run)
	mem := o.MemoryMiB
	if mem == 0 {
		mem = 768
	}
	m, err := d.Boot(ctx, vmm.Config{ID: fmt.Sprintf("guest-test-%d", os.Getpid()), Kernel: fx.Kernel.Vmlinux, Initrd: initrd,
		VCPUs: 1, MemoryMiB: mem, RunDir: run,
		Cmdline: []string{"--", "-test.run=" + o.Run, "-test.v", "-test.timeout=8m"}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Stop(context.Background())
	if err := m.Wait(ctx); err != nil {
		t.Fatalf("guest did not finish: %v\n%s", err, m.Console(16<<10))
	}
	m.Stop(context.Background())
	con := m.Console(256 << 10)
	t.Logf("guest console:\n%s", con)
	v := regexp.MustCompile(verdict + ` (\d+)`).FindStringSubmatch(con)
	switch {
	case v == nil:
		t.Fatal("the guest gave no verdict")
	case v[1] != "0":
		t.Fatal("tests failed in the guest")
	}
	for _, name := range o.MustPass {
		if !strings.Contains(con, "--- PASS: "+name+" ") {
			t.Errorf("%s did not pass in the guest", name)
		}
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

// buildInitrd writes an initramfs: this test binary as /init, the tools
// and every library they load, and the modules with their load order.
func buildInitrd(t *testing.T, o Options, deb, release, out string) {
	t.Helper()
	files := map[string]string{} // guest path -> host path
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	files["/init"] = self
	bins := []string{self}
	for _, tool := range o.Tools {
		p, err := exec.LookPath(tool)
		if err != nil {
			t.Fatalf("the guest test needs %s on the host", tool)
		}
		files["/bin/"+tool] = p
		bins = append(bins, p)
	}
	for _, b := range bins {
		for _, lib := range sharedLibs(t, b) {
			files[lib] = lib
		}
	}
	mods := extractModules(t, o.Modules, deb, release)

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
	var order []string
	for _, m := range o.Modules {
		name := filepath.Base(m)
		order = append(order, name)
		w.entry("/lib/modules/"+name, 0o100644, mods[name])
	}
	w.entry(moduleOrder, 0o100644, []byte(strings.Join(order, "\n")+"\n"))
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

// extractModules reads the guest modules out of the kernel package, by
// file name.
func extractModules(t *testing.T, modules []string, deb, release string) map[string][]byte {
	t.Helper()
	want := map[string]string{}
	for _, m := range modules {
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
		t.Fatalf("kernel package %s: found %d of the modules %v", deb, len(got), modules)
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
