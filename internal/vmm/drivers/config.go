package drivers

import (
	"fmt"
	"strings"

	"github.com/firesandbox/firesandbox/internal/vmm"
	"github.com/firesandbox/firesandbox/internal/vmm/firecracker"
	"github.com/firesandbox/firesandbox/internal/vmm/qemu"
)

// Driver names.
const (
	Auto        = "auto"
	QEMU        = "qemu"
	Firecracker = "firecracker"
)

// Config chooses and configures the VMM driver. It is plain data with TOML
// names (a config file's [qemu] and [firecracker] tables); zero fields take
// each driver's defaults, which are the confined ones.
type Config struct {
	// Driver is "auto" (Firecracker where usable, else QEMU), "qemu" or
	// "firecracker".
	Driver string `toml:"driver" json:"driver"`
	// Accel is QEMU's accelerator: "auto" (KVM if a probe VM boots under
	// it, else TCG), "kvm" or "tcg". Firecracker always uses KVM.
	Accel       string             `toml:"accel" json:"accel"`
	QEMU        qemu.Config        `toml:"qemu" json:"qemu"`
	Firecracker firecracker.Config `toml:"firecracker" json:"firecracker"`
}

// Default returns the configuration used when nothing is configured.
func Default() Config { return Config{Driver: Auto, Accel: Auto} }

func (c Config) withDefaults() Config {
	if c.Driver == "" {
		c.Driver = Auto
	}
	if c.Accel == "" {
		c.Accel = Auto
	}
	return c
}

// Validate checks the whole configuration, both drivers' sections
// included (with "auto" either may be used), and reports every problem.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []string
	switch c.Driver {
	case Auto, QEMU, Firecracker:
	default:
		errs = append(errs, fmt.Sprintf("driver %q: want auto, qemu or firecracker", c.Driver))
	}
	switch c.Accel {
	case Auto, vmm.AccelKVM, vmm.AccelTCG:
	default:
		errs = append(errs, fmt.Sprintf("accel %q: want auto, kvm or tcg", c.Accel))
	}
	q := c.QEMU
	q.Accel = ""
	for _, err := range []error{q.Validate(), c.Firecracker.Validate()} {
		if err != nil {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %s", vmm.ErrInvalidConfig, strings.Join(errs, "; "))
	}
	return nil
}
