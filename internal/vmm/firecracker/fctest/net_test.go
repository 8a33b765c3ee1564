package fctest

import (
	"os"
	"os/exec"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// inNetnsEnv marks the re-executed test binary that runs in a network
// namespace of its own (see inOwnNetns).
const inNetnsEnv = "FCTEST_IN_OWN_NETNS"

// inOwnNetns re-runs the calling test in a fresh network namespace, where
// it may make taps that vanish with the process. It reports whether the
// caller is that re-run (and should do the test) or the parent (done).
func inOwnNetns(t *testing.T) bool {
	t.Helper()
	if os.Getenv(inNetnsEnv) == "1" {
		return true
	}
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root (a network namespace with taps)")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^"+t.Name()+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), inNetnsEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	out, err := cmd.CombinedOutput()
	t.Logf("in its own network namespace:\n%s", out)
	if err != nil {
		t.Fatalf("the test failed in its own network namespace: %v", err)
	}
	return false
}

// makeTap creates a persistent tap, as internal/network does for a VM.
func makeTap(t *testing.T, name string) {
	t.Helper()
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	var req ifreqFlags
	copy(req.name[:], name)
	req.flags = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&req))); e != 0 {
		t.Fatal(e)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
		t.Fatal(err)
	}
}

// TestNetworkInterfaces: an interface opens its tap when it is put (a
// missing or busy one is refused), is pre-boot only, and a snapshot's
// interfaces open their taps again at load.
func TestNetworkInterfaces(t *testing.T) {
	if !inOwnNetns(t) {
		return
	}
	makeTap(t, "tap0")
	makeTap(t, "tap1")
	iface := func(id, tap, mac string) string {
		return `{"iface_id": "` + id + `", "host_dev_name": "` + tap + `", "guest_mac": "` + mac + `"}`
	}
	net0 := step{"PUT", "/network-interfaces/net0", iface("net0", "tap0", "06:fe:00:00:00:01"), 204, ""}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"no such tap", []step{fault("PUT", "/network-interfaces/net0", iface("net0", "tap9", "06:fe:00:00:00:01"), "Open tap device failed")}},
		{"id mismatch", []step{fault("PUT", "/network-interfaces/net0", iface("net1", "tap0", "06:fe:00:00:00:01"), "does not match")}},
		{"bad id", []step{fault("PUT", "/network-interfaces/net-0", iface("net-0", "tap0", "06:fe:00:00:00:01"), "alphanumeric")}},
		{"missing tap name", []step{fault("PUT", "/network-interfaces/net0", `{"iface_id": "net0"}`, "host_dev_name")}},
		{"bad mac", []step{fault("PUT", "/network-interfaces/net0", iface("net0", "tap0", "06:fe:00"), "MAC")}},
		{"unknown field", []step{fault("PUT", "/network-interfaces/net0", `{"iface_id": "net0", "host_dev_name": "tap0", "allow_mmds_requests": true}`, "unknown field")}},
		{"tap in use by another interface", []step{net0, fault("PUT", "/network-interfaces/net1", iface("net1", "tap0", "06:fe:00:00:00:02"), "already in use")}},
		{"same mac twice", []step{net0, fault("PUT", "/network-interfaces/net1", iface("net1", "tap1", "06:fe:00:00:00:01"), "already in use")}},
		{"put again updates", []step{net0, {"PUT", "/network-interfaces/net0", iface("net0", "tap1", "06:fe:00:00:00:01"), 204, ""}}},
		{"pre-boot only", []step{machine, boot, net0, start, fault("PUT", "/network-interfaces/net0", iface("net0", "tap0", "06:fe:00:00:00:01"), "after starting")}},
	} {
		t.Run(tc.name, func(t *testing.T) { newEnv(t).run(tc.steps...) })
	}

	// The tap is held: a second VMM cannot attach to it.
	a := newEnv(t)
	a.run(machine, boot, net0, vsock, start)
	newEnv(t).run(fault("PUT", "/network-interfaces/net0", iface("net0", "tap0", "06:fe:00:00:00:01"), "resource busy"))
	a.run(pause, snapshot)
	a.srv.Close() // lets go of tap0, as the VMM's exit does

	load := step{"PUT", "/snapshot/load", `{"snapshot_path": "` + a.dir + `/vmstate", "mem_backend": {"backend_type": "File", "backend_path": "` + a.dir + `/memory"}, "resume_vm": true, "vsock_override": {"uds_path": "$D/v.sock"}}`, 204, ""}
	b := newEnv(t)
	b.run(load, state("Running"))
	// tap0 is b's now: a load that needs it fails, and ends its process.
	c := newEnv(t)
	c.run(fault(load.method, load.path, load.body, "network device net0"))
	if code := <-c.srv.Exited(); code == 0 {
		t.Fatal("a failed load exited 0")
	}
}
