package sandbox

import (
	"context"

	"github.com/firesandbox/firesandbox/internal/guestkernel"
	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/vmm"
	"github.com/firesandbox/firesandbox/internal/vmm/drivers"
)

// Driver returns the VMM driver. internal/vmm/drivers chooses it, once per
// Manager and safely for concurrent callers; if that takes a KVM probe, the
// probe boots img on kernel k.
func (m *Manager) Driver(ctx context.Context, k *guestkernel.Kernel, img *image.Image) (vmm.Driver, error) {
	return m.drivers.Driver(ctx, drivers.Probe{Key: k.ID(), Boot: func(ctx context.Context, d vmm.Driver) error {
		return m.probeBoot(ctx, d, k, img, drivers.ProbeTimeout)
	}})
}

// vmmConfig is the drivers configuration: c.VMM, with the Driver and Accel
// fields (flags) taking precedence where they are set to something other
// than auto.
func (c Config) vmmConfig() drivers.Config {
	v := c.VMM
	if v.Driver == "" || (c.Driver != "" && c.Driver != drivers.Auto) {
		v.Driver = c.Driver
	}
	if v.Accel == "" || (c.Accel != "" && c.Accel != drivers.Auto) {
		v.Accel = c.Accel
	}
	return v
}
