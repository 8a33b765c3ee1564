package snapshot

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
)

// Spec is everything a snapshot depends on. A snapshot restores only on a
// host whose Spec is identical: the VMM (and its version), the guest kernel
// and initramfs, the image, the machine shape and the agent protocol.
type Spec struct {
	Language      string `json:"language"`
	Driver        string `json:"driver"`
	DriverVersion string `json:"driver_version"`
	// Machine is driver-specific detail that changes the saved CPU state,
	// e.g. QEMU's accelerator ("tcg" and "kvm" snapshots do not mix).
	Machine       string `json:"machine,omitempty"`
	KernelID      string `json:"kernel_id"`
	ImageID       string `json:"image_id"`
	VCPUs         int    `json:"vcpus"`
	MemoryMiB     int    `json:"memory_mib"`
	AgentProtocol int    `json:"agent_protocol"`
	// Runtime names the prewarmed runtime running in the snapshot, if any.
	Runtime string `json:"runtime,omitempty"`
	// DiskMiB is the size of the writable disk image a hibernated sandbox
	// carries in its snapshot; zero for snapshots without one (templates).
	DiskMiB int `json:"disk_mib,omitempty"`
	// Network describes the machine's network device, if it has one, as
	// the guest sees it (its address, gateway, MACs, MTU): a restore must
	// bring the device, and the guest has exactly this configuration.
	// Empty without a device, so those snapshots keep the keys they had
	// before it existed.
	Network string `json:"network,omitempty"`
}

// Bounds on what a Spec can ask for; they bound how much a snapshot's
// files may declare (see Manifest), so a bucket cannot fill the disk.
const (
	MaxMemoryMiB = 64 << 10 // as sandbox shapes allow
	MaxDiskMiB   = 64 << 10
	MaxVCPUs     = 64
	// deviceStateAllowance is what a snapshot may hold beyond guest
	// memory and disk: device state (QEMU's is ~70 KiB), logs.
	deviceStateAllowance = 64 << 20
)

// Key is the snapshot's name: the language and a digest of the Spec.
func (s Spec) Key() string {
	b, _ := json.Marshal(s)
	h := sha256.Sum256(b)
	return s.Language + "-" + hex.EncodeToString(h[:8])
}

// Validate checks that s describes a machine this package can hold.
func (s Spec) Validate() error {
	switch {
	case s.MemoryMiB < 1 || s.MemoryMiB > MaxMemoryMiB:
		return fmt.Errorf("%w: spec memory %d MiB, want 1 to %d", ErrInvalid, s.MemoryMiB, MaxMemoryMiB)
	case s.DiskMiB < 0 || s.DiskMiB > MaxDiskMiB:
		return fmt.Errorf("%w: spec disk %d MiB, want 0 to %d", ErrInvalid, s.DiskMiB, MaxDiskMiB)
	case s.VCPUs < 1 || s.VCPUs > MaxVCPUs:
		return fmt.Errorf("%w: spec vcpus %d, want 1 to %d", ErrInvalid, s.VCPUs, MaxVCPUs)
	case !ValidKey(s.Key()):
		return fmt.Errorf("%w: spec language %q", ErrInvalid, s.Language)
	}
	return nil
}

// MaxBytes is the most a snapshot of this Spec may hold: guest memory,
// the disk image and an allowance for device state.
func (s Spec) MaxBytes() int64 {
	return int64(s.MemoryMiB)<<20 + int64(s.DiskMiB)<<20 + deviceStateAllowance
}

// Change is one field in which a snapshot's Spec differs from the host's.
type Change struct {
	// Field names the field as people say it, e.g. "driver version".
	Field string
	// Snapshot and Host are the two values.
	Snapshot, Host string
}

func (c Change) String() string { return c.Field + " " + c.Snapshot + " -> " + c.Host }

// Diff lists the fields in which s (a snapshot's) differs from host.
func (s Spec) Diff(host Spec) []Change {
	var d []Change
	add := func(field string, snap, h any) {
		if snap != h {
			d = append(d, Change{Field: field, Snapshot: showValue(snap), Host: showValue(h)})
		}
	}
	add("language", s.Language, host.Language)
	add("driver", s.Driver, host.Driver)
	add("driver version", s.DriverVersion, host.DriverVersion)
	add("machine", s.Machine, host.Machine)
	add("kernel", s.KernelID, host.KernelID)
	add("image", s.ImageID, host.ImageID)
	add("vcpus", s.VCPUs, host.VCPUs)
	add("memory MiB", s.MemoryMiB, host.MemoryMiB)
	add("disk MiB", s.DiskMiB, host.DiskMiB)
	add("agent protocol", s.AgentProtocol, host.AgentProtocol)
	add("runtime", s.Runtime, host.Runtime)
	add("network device", s.Network, host.Network)
	return d
}

func showValue(v any) string {
	if v == "" {
		return "(none)"
	}
	return fmt.Sprint(v)
}
