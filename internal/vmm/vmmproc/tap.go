package vmmproc

import (
	"fmt"
	"net"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TapFlags open a tap without packet information and with the virtio-net
// header: what QEMU's -netdev tap,vnet_hdr=on and Firecracker expect.
const TapFlags = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR

type ifreqFlags struct {
	name  [unix.IFNAMSIZ]byte
	flags uint16
	_     [22]byte
}

// OpenTap attaches to the existing tap name in the network namespace at
// netns ("" for this process's) and returns its descriptor. It refuses a
// name that is not there rather than letting TUNSETIFF make a new tap,
// which nothing would route or filter.
func OpenTap(netns, name string) (*os.File, error) {
	var f *os.File
	err := InNetns(netns, func() error {
		if _, err := net.InterfaceByName(name); err != nil {
			return fmt.Errorf("no tap %s in the VM's network namespace: %w", name, err)
		}
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open /dev/net/tun: %w", err)
		}
		var req ifreqFlags
		copy(req.name[:], name)
		req.flags = TapFlags
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&req))); e != 0 {
			unix.Close(fd)
			return fmt.Errorf("attach to tap %s: %w", name, e)
		}
		f = os.NewFile(uintptr(fd), "tap:"+name)
		return nil
	})
	return f, err
}

// GiveTap makes uid and gid the owner and group of the tap name in netns,
// so an unprivileged VMM (a jailed Firecracker, which opens its tap by
// name) may attach to it: without CAP_NET_ADMIN the kernel lets only a
// tap's owner or group attach, and a tap made by root has neither. The
// tap lives in the VM's own namespace, which no other VMM joins.
func GiveTap(netns, name string, uid, gid int) error {
	f, err := OpenTap(netns, name)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), unix.TUNSETOWNER, uid); err != nil {
		return fmt.Errorf("give tap %s to uid %d: %w", name, uid, err)
	}
	if err := unix.IoctlSetInt(int(f.Fd()), unix.TUNSETGROUP, gid); err != nil {
		return fmt.Errorf("give tap %s to gid %d: %w", name, gid, err)
	}
	return nil
}
