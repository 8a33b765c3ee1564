// Package kvm checks /dev/kvm: the one place that decides whether KVM
// opens on this host. Opening is not the same as working (a nested or
// paravirtualised KVM may still hang ordinary guests); drivers/ decides
// that by booting a probe VM.
package kvm

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Device is the KVM device node.
const Device = "/dev/kvm"

// kvmGetAPIVersion is KVM_GET_API_VERSION, _IO(KVMIO, 0x00); KVM has
// answered 12 since Linux 2.6.22.
const (
	kvmGetAPIVersion = 0xAE00
	apiVersion       = 12
)

// Open checks that the device exists, is a character device, opens
// read-write for this process and speaks API version 12.
func Open() error { return open(Device) }

func open(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("%w: %v (load kvm_intel or kvm_amd, or enable nested virtualisation)", ErrUnusable, err)
	}
	if fi.Mode()&os.ModeCharDevice == 0 {
		return fmt.Errorf("%w: %s is not a character device", ErrUnusable, path)
	}
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("%w: open %s read-write: %v (add this user to the kvm group)", ErrUnusable, path, err)
	}
	defer f.Close()
	v, err := unix.IoctlRetInt(int(f.Fd()), kvmGetAPIVersion)
	if err != nil {
		return fmt.Errorf("%w: KVM_GET_API_VERSION on %s: %v", ErrUnusable, path, err)
	}
	if v != apiVersion {
		return fmt.Errorf("%w: KVM API version %d, want %d", ErrUnusable, v, apiVersion)
	}
	return nil
}

// PVM reports whether /dev/kvm is served by kvm_pvm: the host is itself a
// PVM guest, and its KVM boots only kernels built for PVM (ordinary guest
// kernels abort or hang, see shared/MEASURED.md).
func PVM() bool {
	_, err := os.Stat("/sys/module/kvm_pvm")
	return err == nil
}

// Group returns the group whose members may open the device read-write
// (a VMM that runs as an unprivileged uid needs to be in it), and whether
// the device's mode grants one.
func Group() (gid int, ok bool) {
	fi, err := os.Stat(Device)
	if err != nil {
		return 0, false
	}
	st, ok := fi.Sys().(*unix.Stat_t)
	if !ok || fi.Mode().Perm()&0o060 != 0o060 {
		return 0, false
	}
	return int(st.Gid), true
}
