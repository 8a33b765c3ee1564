package sandbox

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/disk"
)

// Mount makes a host directory visible in the guest, read-only, as it was
// when the VM started: it is packed into a SquashFS volume attached as a
// disk, so later changes on the host are not seen (the VM stays isolated).
type Mount struct {
	HostDir  string `json:"host_dir"`
	GuestDir string `json:"guest_dir"`
}

// MaxMounts bounds the volumes one VM gets.
const MaxMounts = 8

// ParseMount parses HOST:GUEST.
func ParseMount(s string) (Mount, error) {
	host, guest, ok := strings.Cut(s, ":")
	if !ok {
		return Mount{}, fmt.Errorf("%w: mount %q: want /host/dir:/guest/dir", ErrBadRequest, s)
	}
	m := Mount{HostDir: host, GuestDir: guest}
	return m, m.Validate()
}

// Validate checks a mount: an existing host directory, and a clean
// absolute guest path other than / that the kernel command line can carry.
func (m Mount) Validate() error {
	fi, err := os.Stat(m.HostDir)
	if err != nil {
		return fmt.Errorf("%w: mount: %v", ErrBadRequest, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%w: mount: %s is not a directory", ErrBadRequest, m.HostDir)
	}
	g := m.GuestDir
	// The kernel command line carries it: no control character, blank or
	// separator may pass (a carriage return once injected an argument).
	if err := agentproto.ValidateMountDir(g); err != nil {
		return fmt.Errorf("%w: mount: %v", ErrBadRequest, err)
	}
	for _, sys := range []string{"/proc", "/sys", "/dev", "/tmp"} {
		if g == sys || strings.HasPrefix(g, sys+"/") {
			return fmt.Errorf("%w: mount: %s is reserved in the guest", ErrBadRequest, sys)
		}
	}
	return nil
}

// packMounts packs each mount's directory into a volume for VM id and
// returns the volume files, in order.
func (m *Manager) packMounts(ctx context.Context, id string, mounts []Mount) ([]string, error) {
	if len(mounts) > MaxMounts {
		return nil, fmt.Errorf("%w: %d mounts, at most %d", ErrBadRequest, len(mounts), MaxMounts)
	}
	var vols []string
	fail := func(err error) ([]string, error) {
		for _, v := range vols {
			os.Remove(v)
		}
		return nil, err
	}
	for i, mt := range mounts {
		if err := mt.Validate(); err != nil {
			return fail(err)
		}
		v := disk.VolumePath(m.disksDir(), id, i)
		if err := disk.Pack(ctx, mt.HostDir, v); err != nil {
			return fail(err)
		}
		vols = append(vols, v)
	}
	return vols, nil
}
