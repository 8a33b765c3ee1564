package firecracker

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

func TestJailerArgs(t *testing.T) {
	cfg := Config{
		Binary: "/usr/local/bin/firecracker", UID: 123, GID: 100,
		ChrootBase: "/srv/jailer", CgroupVersion: "2", ParentCgroup: "firesandbox",
		Cgroups: map[string]string{"memory.max": "1100M", "cpu.max": "200000 100000"},
		NetNS:   "/var/run/netns/fs0",
	}.withDefaults()
	got := JailerArgs(cfg, "vm1", []string{"--api-sock", "/api.sock", "--level", "Debug"})
	want := []string{
		"--id", "vm1",
		"--exec-file", "/usr/local/bin/firecracker",
		"--uid", "123", "--gid", "100",
		"--chroot-base-dir", "/srv/jailer",
		"--cgroup-version", "2",
		"--parent-cgroup", "firesandbox",
		"--cgroup", "cpu.max=200000 100000",
		"--cgroup", "memory.max=1100M",
		"--netns", "/var/run/netns/fs0",
		"--new-pid-ns",
		"--", "--api-sock", "/api.sock", "--level", "Debug",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("JailerArgs:\n got %q\nwant %q", got, want)
	}
	minimal := JailerArgs(Config{Binary: "firecracker", HostPIDNS: true}.withDefaults(), "x", nil)
	if want := []string{"--id", "x", "--exec-file", "firecracker", "--uid", "1900000000", "--gid", "1900000000", "--chroot-base-dir", "/srv/jailer", "--cgroup-version", "2", "--"}; !slices.Equal(minimal, want) {
		t.Fatalf("minimal JailerArgs: %q", minimal)
	}
}

func TestJailLayout(t *testing.T) {
	base := t.TempDir()
	src := t.TempDir() // same filesystem as base: hard links work
	cfg := Config{Binary: "/opt/fc/firecracker-v1.10", UID: os.Getuid(), GID: os.Getgid(), ChrootBase: base}.withDefaults()
	lay := newLayout(cfg, "vm7", "/run/fs/vm7")
	root := filepath.Join(base, "firecracker-v1.10", "vm7", "root")
	if lay.root != root || !lay.jailed {
		t.Fatalf("jail root = %s, want %s", lay.root, root)
	}
	if lay.apiSock() != "/api.sock" || lay.host(apiSockName) != filepath.Join(root, "api.sock") {
		t.Fatalf("api socket: %s (host %s)", lay.apiSock(), lay.host(apiSockName))
	}
	if jailDir(cfg, "vm7") != filepath.Dir(root) {
		t.Fatalf("jailDir = %s", jailDir(cfg, "vm7"))
	}

	image := filepath.Join(src, "image.sqfs")
	scratch := filepath.Join(src, "scratch.ext4")
	for _, p := range []string{image, scratch} {
		if err := os.WriteFile(p, []byte(p), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if copied, err := lay.place(image, driveName("image"), placeShared); err != nil || copied {
		t.Fatalf("place image: copied=%v, %v", copied, err)
	}
	if _, err := lay.place(scratch, driveName("scratch-1"), placeWritable); err != nil {
		t.Fatalf("place scratch: %v", err)
	}
	for name, orig := range map[string]string{"drives/image": image, "drives/scratch_1": scratch} {
		a, err := os.Stat(filepath.Join(root, name))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := os.Stat(orig)
		if !os.SameFile(a, b) {
			t.Errorf("%s is not a hard link of %s", name, orig)
		}
		if a.Mode()&os.ModeSymlink != 0 {
			t.Errorf("%s is a symlink: it would dangle inside the chroot", name)
		}
	}
	if err := lay.writable(vmmLogName, false); err != nil {
		t.Fatal(err)
	}

	// Without the jailer: symlinks in RunDir.
	run := t.TempDir()
	plain := newLayout(Config{NoJailer: true}.withDefaults(), "vm8", run)
	if plain.jailed || plain.root != run || plain.apiSock() != filepath.Join(run, "api.sock") {
		t.Fatalf("plain layout: %+v", plain)
	}
	if _, err := plain.place(scratch, driveName("scratch"), placeWritable); err != nil {
		t.Fatal(err)
	}
	if target, _ := os.Readlink(filepath.Join(run, "drives", "scratch")); target != scratch {
		t.Fatalf("plain drive link -> %q, want %s", target, scratch)
	}
}

func TestJailCrossFilesystem(t *testing.T) {
	other, err := os.MkdirTemp("/dev/shm", "fctest")
	if err != nil {
		t.Skipf("no /dev/shm for a second filesystem: %v", err)
	}
	defer os.RemoveAll(other)
	base := t.TempDir()
	if sameFS(t, other, base) {
		t.Skip("/dev/shm and the temp dir share a filesystem")
	}
	lay := newLayout(Config{UID: os.Getuid(), GID: os.Getgid(), ChrootBase: base}.withDefaults(), "x", t.TempDir())
	ro := filepath.Join(other, "kernel")
	if err := os.WriteFile(ro, []byte("k"), 0o644); err != nil {
		t.Fatal(err)
	}
	if copied, err := lay.place(ro, kernelName, placeShared); err != nil || !copied {
		t.Fatalf("read-only file across filesystems: copied=%v, %v; want a copy", copied, err)
	}
	if _, err := lay.place(ro, driveName("rw"), placeWritable); err == nil {
		t.Fatal("a writable disk across filesystems was placed; its writes would be lost in a copy")
	}
}

func sameFS(t *testing.T, a, b string) bool {
	t.Helper()
	var sa, sb syscall.Stat_t
	if err := syscall.Stat(a, &sa); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Stat(b, &sb); err != nil {
		t.Fatal(err)
	}
	return sa.Dev == sb.Dev
}

// TestJailerWithoutPIDNS runs the jailed lifecycle with the VMM left in
// our PID namespace: the jailer (the fake runs it as a child) is then the
// process the driver follows and stops.
func TestJailerWithoutPIDNS(t *testing.T) {
	lifecycle(t, fakeDriver(t, Config{HostPIDNS: true}))
}

// A layered disk is a block device: the jail gets a node of its own for
// it (devtmpfs is out of a hard link's reach), through which the VMM's
// writes reach the device.
func TestJailBlockDevice(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIP: device nodes need root")
	}
	backing := filepath.Join(t.TempDir(), "disk")
	if err := os.WriteFile(backing, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", backing).CombinedOutput()
	if err != nil {
		t.Skipf("SKIP: no loop device for a block device: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	defer exec.Command("losetup", "--detach", dev).Run()
	base := t.TempDir()
	lay := newLayout(Config{UID: 4242, GID: 4243, ChrootBase: base}.withDefaults(), "vm9", t.TempDir())
	if _, err := lay.place(dev, driveName("upper"), placeWritable); err != nil {
		t.Fatal(err)
	}
	node := lay.host(driveName("upper"))
	var st, want syscall.Stat_t
	if err := syscall.Stat(node, &st); err != nil {
		t.Fatal(err)
	}
	syscall.Stat(dev, &want)
	if st.Mode&syscall.S_IFMT != syscall.S_IFBLK || st.Rdev != want.Rdev {
		t.Fatalf("jail node: mode %o rdev %d, want a block device %d", st.Mode, st.Rdev, want.Rdev)
	}
	if st.Uid != 4242 || st.Gid != 4243 || st.Mode&0o777 != 0o600 {
		t.Fatalf("jail node owned by %d:%d mode %o, want 4242:4243 0600", st.Uid, st.Gid, st.Mode&0o777)
	}
	f, err := os.OpenFile(node, os.O_RDWR, 0)
	if err != nil {
		t.Skipf("SKIP: the temp dir does not allow device nodes (nodev): %v", err)
	}
	if _, err := f.WriteAt([]byte("through the jail"), 4096); err != nil {
		t.Fatal(err)
	}
	f.Sync()
	f.Close()
	b, _ := os.ReadFile(backing)
	if string(b[4096:4096+16]) != "through the jail" {
		t.Fatal("a write through the jail's node did not reach the device")
	}
}
