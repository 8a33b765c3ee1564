package fctest

import (
	"fmt"
	"io"
	"net"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// putNetworkInterface is PUT /network-interfaces/{id}. As Firecracker
// does, it opens the tap named host_dev_name, in the network namespace
// the process runs in, at once (not at InstanceStart), and keeps it open:
// a tap that is not there, or that another VMM holds, fails the request.
// Only pre-boot; the fake knows nothing of rate limiters but their shape.
func (s *Server) putNetworkInterface(id string, body io.Reader) error {
	if err := s.preBoot(); err != nil {
		return err
	}
	if err := checkID(id); err != nil {
		return err
	}
	var n NetworkInterface
	if err := decode(body, &n); err != nil {
		return err
	}
	if n.IfaceID == nil || n.HostDevName == nil {
		return badRequest("missing field: iface_id and host_dev_name are required")
	}
	if *n.IfaceID != id {
		return badRequest("The id from the path does not match the id from the body!")
	}
	if n.GuestMac != nil {
		if hw, err := net.ParseMAC(*n.GuestMac); err != nil || len(hw) != 6 {
			return badRequest("Invalid MAC address: %s", *n.GuestMac)
		}
	}
	for _, old := range s.nets {
		if *old.IfaceID == id {
			continue
		}
		if *old.HostDevName == *n.HostDevName {
			return badRequest("The host device name %s is already in use.", *n.HostDevName)
		}
		if n.GuestMac != nil && old.GuestMac != nil && *old.GuestMac == *n.GuestMac {
			return badRequest("The MAC address %s is already in use.", *n.GuestMac)
		}
	}
	tap, err := s.openTap(*n.HostDevName)
	if err != nil {
		return badRequest("Could not create the network device: %v", err)
	}
	for i, old := range s.nets {
		if *old.IfaceID == id {
			s.taps[i].Close()
			s.nets[i], s.taps[i] = n, tap
			return nil
		}
	}
	s.nets = append(s.nets, n)
	s.taps = append(s.taps, tap)
	return nil
}

// openTaps opens the taps of a snapshot's network interfaces, by their
// recorded names in this process's namespace, as a load does.
func (s *Server) openTaps(nets []NetworkInterface) error {
	for _, n := range nets {
		tap, err := s.openTap(*n.HostDevName)
		if err != nil {
			return badRequest("Load snapshot error: Cannot restore the network device %s: %v", *n.IfaceID, err)
		}
		s.taps = append(s.taps, tap)
	}
	s.nets = nets
	return nil
}

type ifreqFlags struct {
	name  [unix.IFNAMSIZ]byte
	flags uint16
	_     [22]byte
}

// openTap attaches to an existing tap as Firecracker does (IFF_TAP,
// IFF_NO_PI, IFF_VNET_HDR), through /dev/net/tun: the jail's when jailed
// (the jailer made it, for the VMM's user). Firecracker, unprivileged in
// its jail, cannot create a tap; the fake refuses a missing one even
// when it could.
func (s *Server) openTap(name string) (*os.File, error) {
	if len(name) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("Open tap device failed: %s: name too long", name)
	}
	if _, err := net.InterfaceByName(name); err != nil {
		return nil, fmt.Errorf("Open tap device failed: Invalid TUN/TAP Backend provided by %s: %v", name, err)
	}
	tun, err := s.path("/dev/net/tun")
	if err != nil {
		return nil, fmt.Errorf("Open tap device failed: /dev/net/tun: %v", err)
	}
	fd, err := unix.Open(tun, unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("Open tap device failed: /dev/net/tun: %v", err)
	}
	var req ifreqFlags
	copy(req.name[:], name)
	req.flags = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&req))); e != 0 {
		unix.Close(fd)
		return nil, fmt.Errorf("Open tap device failed: Error while creating ifreq structure: %v. Invalid TUN/TAP Backend provided by %s", e, name)
	}
	return os.NewFile(uintptr(fd), "tap:"+name), nil
}
