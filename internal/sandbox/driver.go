package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/firesandbox/firesandbox/internal/guestkernel"
	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/vmm"
	"github.com/firesandbox/firesandbox/internal/vmm/firecracker"
	"github.com/firesandbox/firesandbox/internal/vmm/qemu"
	"golang.org/x/sys/unix"
)

// Driver returns the VMM driver, choosing it on first use. This is the one
// place a driver is chosen from configuration.
func (m *Manager) Driver(ctx context.Context, k *guestkernel.Kernel, img *image.Image) (vmm.Driver, error) {
	if m.driver != nil {
		return m.driver, nil
	}
	var fc firecracker.Diagnosis
	if m.cfg.Driver != "qemu" {
		fc = firecracker.Diagnose(ctx, firecracker.Config{})
	}
	switch ResolveDriver(m.cfg.Driver, fc.Usable) {
	case "qemu":
		accel, why, err := m.chooseAccel(ctx, k, img)
		if err != nil {
			return nil, err
		}
		m.log.Debug("qemu accelerator", "accel", accel, "why", why)
		d, err := qemu.New(qemu.Config{Accel: accel}, qemu.WithLogger(m.log))
		if err != nil {
			return nil, err
		}
		m.driver = d
	case "firecracker":
		if !fc.Usable {
			return nil, fmt.Errorf("%w: firecracker: %s (see `firesandbox doctor`)", vmm.ErrUnavailable, strings.Join(fc.Problems, "; "))
		}
		m.driver = firecracker.New(firecracker.Config{}, firecracker.WithLogger(m.log))
	}
	return m.driver, nil
}

// ResolveDriver turns a configured driver name into the one used: "auto"
// means Firecracker, the production VMM, where it can run, and QEMU
// everywhere else.
func ResolveDriver(configured string, firecrackerUsable bool) string {
	if configured != "auto" {
		return configured
	}
	if firecrackerUsable {
		return "firecracker"
	}
	return "qemu"
}

// AccelChoice is a cached answer to "does KVM really run our guest here?".
type AccelChoice struct {
	Key    string    `json:"key"`
	Accel  string    `json:"accel"`
	Reason string    `json:"reason"`
	Probed time.Time `json:"probed"`
}

// kvmProbeTimeout is how long a KVM boot may take to say Hello. A real KVM
// guest answers in well under a second; TCG takes 3-4 s, so waiting longer
// than this means KVM is not doing its job.
const kvmProbeTimeout = 12 * time.Second

// chooseAccel decides between KVM and TCG. /dev/kvm existing is not
// enough: under a nested PVM hypervisor it opens fine but ordinary guest
// kernels hang or die on it. So the first time, a VM is really booted
// with KVM; the answer is cached per host kernel, QEMU and guest kernel.
func (m *Manager) chooseAccel(ctx context.Context, k *guestkernel.Kernel, img *image.Image) (accel, why string, err error) {
	if v := os.Getenv("FIRESANDBOX_ACCEL"); v != "" {
		if v != qemu.AccelKVM && v != qemu.AccelTCG {
			return "", "", fmt.Errorf("%w: FIRESANDBOX_ACCEL=%q: want kvm or tcg", ErrBadRequest, v)
		}
		return v, "FIRESANDBOX_ACCEL", nil
	}
	if m.cfg.Accel == qemu.AccelKVM || m.cfg.Accel == qemu.AccelTCG {
		return m.cfg.Accel, "configured", nil
	}
	if err := kvmOpens(); err != nil {
		return qemu.AccelTCG, err.Error(), nil
	}
	probe, err := qemu.New(qemu.Config{Accel: qemu.AccelKVM})
	if err != nil {
		return "", "", err
	}
	ver, err := probe.Version(ctx)
	if err != nil {
		return "", "", err
	}
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	key := strings.Join([]string{unix.ByteSliceToString(uts.Release[:]), ver, k.ID()}, "/")
	cache := filepath.Join(m.cfg.DataDir, "accel.json")
	var c AccelChoice
	if b, err := os.ReadFile(cache); err == nil && json.Unmarshal(b, &c) == nil && c.Key == key {
		return c.Accel, c.Reason + " (cached)", nil
	}

	c = AccelChoice{Key: key, Accel: qemu.AccelKVM, Reason: "a probe VM booted under KVM", Probed: time.Now().UTC()}
	if err := m.probeBoot(ctx, probe, k, img, kvmProbeTimeout); err != nil {
		if ctx.Err() != nil {
			return "", "", ctx.Err()
		}
		first, _, _ := strings.Cut(err.Error(), "\n")
		c.Accel, c.Reason = qemu.AccelTCG, "KVM probe failed: "+first
	}
	b, _ := json.MarshalIndent(c, "", "  ")
	_ = os.WriteFile(cache, b, 0o644)
	return c.Accel, c.Reason, nil
}

// kvmOpens checks that /dev/kvm exists, opens, and speaks API version 12.
func kvmOpens() error {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("no usable /dev/kvm: %w", err)
	}
	defer f.Close()
	const kvmGetAPIVersion = 0xAE00
	v, err := unix.IoctlRetInt(int(f.Fd()), kvmGetAPIVersion)
	if err != nil {
		return fmt.Errorf("/dev/kvm: KVM_GET_API_VERSION: %w", err)
	}
	if v != 12 {
		return errors.New("/dev/kvm: unexpected KVM API version")
	}
	return nil
}
