package network

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/firesandbox/firesandbox/internal/netns"
)

// inNS runs fn on an OS thread that has joined the network namespace ns
// (netns.Do).
func inNS(ns *os.File, fn func() error) error { return netns.Do(ns, fn) }

// ensureNetnsDir makes dir a shared mount point, as iproute2 does for
// /run/netns, so namespaces bound there are visible in mount namespaces
// created later (a jailer's, a confined VMM's).
func ensureNetnsDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	err := unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if errors.Is(err, unix.EINVAL) { // not a mount point yet
		if err := unix.Mount(dir, dir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind %s: %w", dir, err)
		}
		err = unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, "")
	}
	if err != nil {
		return fmt.Errorf("make %s shared: %w", dir, err)
	}
	return nil
}

// createNamedNS creates a network namespace and binds it at dir/name (the
// `ip netns add` layout). It returns the namespace opened.
func createNamedNS(dir, name string) (*os.File, error) {
	path := filepath.Join(dir, name)
	if err := netns.Create(path); err != nil {
		return nil, err
	}
	ns, err := os.Open(path)
	if err != nil {
		deleteNamedNS(dir, name)
		return nil, err
	}
	return ns, nil
}

// deleteNamedNS unbinds and removes dir/name. The namespace itself goes
// away with its last user; its links, taps and rules with it.
func deleteNamedNS(dir, name string) error { return netns.Delete(filepath.Join(dir, name)) }

// Tap flags: a tap without packet information, with the virtio-net header
// QEMU and Firecracker both use.
const tapFlags = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR

type ifreqFlags struct {
	name  [unix.IFNAMSIZ]byte
	flags uint16
	_     [22]byte
}

// openTap opens (creating if needed) the tap called name in the calling
// thread's namespace. persist keeps the device after the fd is closed.
func openTap(name string, persist bool) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	var req ifreqFlags
	copy(req.name[:], name)
	req.flags = tapFlags
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&req))); e != 0 {
		unix.Close(fd)
		return nil, fmt.Errorf("TUNSETIFF %s: %w", name, e)
	}
	if persist {
		if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("TUNSETPERSIST %s: %w", name, err)
		}
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun:"+name), nil // non-blocking: pollable
}

// writeSysctl writes a /proc/sys value; /proc/sys/net is that of the
// calling thread's namespace, so call it inside inNS.
func writeSysctl(key, value string) error {
	path := filepath.Join("/proc/sys", filepath.FromSlash(key))
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", key, value, err)
	}
	return nil
}
