package fctest

import (
	"fmt"
	"io"
	"os"
	"strings"
)

func (s *Server) putMachineConfig(body io.Reader) error {
	if err := s.preBoot(); err != nil {
		return err
	}
	var mc MachineConfig
	if err := decode(body, &mc); err != nil {
		return err
	}
	if mc.VcpuCount == nil || mc.MemSizeMib == nil {
		return badRequest("missing field: vcpu_count and mem_size_mib are required")
	}
	if n := *mc.VcpuCount; n < 1 || n > 32 {
		return badRequest("The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled.")
	}
	if mc.Smt != nil && *mc.Smt && *mc.VcpuCount > 1 && *mc.VcpuCount%2 == 1 {
		return badRequest("The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled.")
	}
	if *mc.MemSizeMib < 1 {
		return badRequest("The memory size (MiB) is invalid.")
	}
	if mc.HugePages != nil {
		switch *mc.HugePages {
		case "None", "Transparent", "2M":
		default:
			return badRequest("unknown huge_pages %q", *mc.HugePages)
		}
	}
	s.machine = &mc
	return nil
}

func (s *Server) putBootSource(body io.Reader) error {
	if err := s.preBoot(); err != nil {
		return err
	}
	var bs BootSource
	if err := decode(body, &bs); err != nil {
		return err
	}
	if bs.KernelImagePath == nil || *bs.KernelImagePath == "" {
		return badRequest("missing field `kernel_image_path`")
	}
	if err := s.mustExist("kernel image", *bs.KernelImagePath); err != nil {
		return err
	}
	if bs.InitrdPath != nil {
		if err := s.mustExist("initrd", *bs.InitrdPath); err != nil {
			return err
		}
	}
	if bs.BootArgs != nil && len(*bs.BootArgs) > 4096 {
		return badRequest("kernel command line too long")
	}
	s.boot = &bs
	return nil
}

func (s *Server) putDrive(id string, body io.Reader) error {
	if err := s.preBoot(); err != nil {
		return err
	}
	if err := checkID(id); err != nil {
		return err
	}
	var d Drive
	if err := decode(body, &d); err != nil {
		return err
	}
	if d.DriveID == nil || d.IsRootDevice == nil {
		return badRequest("missing field: drive_id and is_root_device are required")
	}
	if *d.DriveID != id {
		return badRequest("The id from the path does not match the id from the body!")
	}
	if d.Socket != nil {
		return badRequest("fctest: vhost-user block devices are not faked")
	}
	if d.PathOnHost == nil || d.IsReadOnly == nil {
		return badRequest("missing field: path_on_host and is_read_only are required for virtio-block")
	}
	if err := s.mustOpen("drive "+id, *d.PathOnHost, driveFlag(d)); err != nil {
		return err
	}
	for _, v := range []struct {
		name string
		val  *string
		ok   []string
	}{{"cache_type", d.CacheType, []string{"Unsafe", "Writeback"}}, {"io_engine", d.IoEngine, []string{"Sync", "Async"}}} {
		if v.val != nil && !contains(v.ok, *v.val) {
			return badRequest("unknown %s %q", v.name, *v.val)
		}
	}
	for i, old := range s.drives {
		if *old.DriveID == id {
			s.drives[i] = d
			return nil
		}
		if *d.IsRootDevice && *old.IsRootDevice {
			return badRequest("A root block device already exists!")
		}
	}
	s.drives = append(s.drives, d)
	return nil
}

func contains(list []string, v string) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

func (s *Server) putVsock(body io.Reader) error {
	if err := s.preBoot(); err != nil {
		return err
	}
	var v Vsock
	if err := decode(body, &v); err != nil {
		return err
	}
	if v.GuestCid == nil || v.UdsPath == nil {
		return badRequest("missing field: guest_cid and uds_path are required")
	}
	if *v.GuestCid < 3 || *v.GuestCid > 0xffffffff {
		return badRequest("Invalid guest CID: %d", *v.GuestCid)
	}
	if err := s.bindVsock(*v.UdsPath); err != nil {
		return err
	}
	s.vsock = &v
	return nil
}

func (s *Server) putLogger(body io.Reader) error {
	// Logger may be configured before a snapshot load, so it does not
	// count as configuring the VM; it still cannot change after start.
	if err := s.preBoot(); err != nil {
		return err
	}
	var l logger
	if err := decode(body, &l); err != nil {
		return err
	}
	if l.Level != nil && !contains([]string{"error", "warning", "warn", "info", "debug", "trace", "off"}, strings.ToLower(*l.Level)) {
		return badRequest("Invalid log level: %s", *l.Level)
	}
	if l.LogPath != nil {
		// Firecracker opens the log without creating it.
		lp, err := s.path(*l.LogPath)
		if err != nil {
			return badRequest("Failed to open target file: %v", err)
		}
		f, err := os.OpenFile(lp, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return badRequest("Failed to open target file: %v", err)
		}
		fmt.Fprintf(f, "fctest: logger configured (instance %s)\n", s.opts.ID)
		f.Close()
	}
	s.logger = true
	return nil
}

func (s *Server) putSerial(body io.Reader) error {
	if err := s.preBoot(); err != nil {
		return err
	}
	var sd serialDevice
	if err := decode(body, &sd); err != nil {
		return err
	}
	s.serial = true
	return nil
}

// driveFlag is how Firecracker opens a drive: read-write unless it is
// read-only, so a writable disk the VMM's user cannot write is refused.
func driveFlag(d Drive) int {
	if d.IsReadOnly != nil && *d.IsReadOnly {
		return os.O_RDONLY
	}
	return os.O_RDWR
}
