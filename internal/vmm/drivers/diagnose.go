package drivers

import (
	"context"
	"fmt"
	"os"

	"github.com/firesandbox/firesandbox/internal/vmm"
	"github.com/firesandbox/firesandbox/internal/vmm/qemu"
)

// Diagnosis is what `firesandbox doctor` prints: each driver's own
// diagnosis, which one Driver would choose, QEMU's accelerator, and every
// problem and weakness at once.
type Diagnosis struct {
	Drivers []vmm.Diagnosis `json:"drivers"`
	// Configured is the configured driver ("auto", "qemu", "firecracker");
	// Chosen the one Driver would use ("" if none can run).
	Configured string `json:"configured"`
	Chosen     string `json:"chosen,omitempty"`
	// Accel and AccelReason say how QEMU runs guests and why; Accel is ""
	// while that is still to be probed.
	Accel       string `json:"accel,omitempty"`
	AccelReason string `json:"accel_reason"`
	// Problems are configuration problems; Warnings, weaknesses of the
	// chosen setup (software emulation, confinement switched off).
	Problems []string `json:"problems,omitempty"`
	Warnings []string `json:"warnings,omitempty"`
}

// Usable reports whether the chosen driver can run VMs.
func (d Diagnosis) Usable() bool {
	if d.Chosen == "" || len(d.Problems) > 0 {
		return false
	}
	for _, dg := range d.Drivers {
		if dg.Driver == d.Chosen {
			return dg.Usable
		}
	}
	return false
}

// TCGWarning is said wherever guests run under TCG.
const TCGWarning = "guests run under TCG, QEMU's software emulation: the only wall between untrusted code and this host is QEMU's emulator, a much weaker boundary than KVM's hardware virtualisation; do not run untrusted code like this in production"

// Diagnose reports on every driver without booting anything (a KVM probe
// that has not run yet is reported as such).
func (c *Chooser) Diagnose(ctx context.Context) Diagnosis {
	cfg := c.cfg
	dg := Diagnosis{Configured: cfg.Driver}
	if err := cfg.Validate(); err != nil {
		dg.Problems = append(dg.Problems, err.Error())
	}
	fc := c.h.diagnoseFC(ctx, cfg.Firecracker)
	qc := cfg.QEMU
	if cfg.Accel != Auto {
		qc.Accel = cfg.Accel
	}
	qd := qemu.Diagnose(qc)
	dg.Drivers = []vmm.Diagnosis{fc, qd}
	switch {
	case cfg.Driver == Firecracker || cfg.Driver == Auto && fc.Usable:
		dg.Chosen = Firecracker
	case cfg.Driver == QEMU || cfg.Driver == Auto:
		dg.Chosen = QEMU
	}
	if dg.Chosen == Firecracker {
		dg.Accel, dg.AccelReason = "kvm", "firecracker always uses KVM"
		dg.Warnings = append(dg.Warnings, fc.Warnings...)
		return dg
	}
	dg.Warnings = append(dg.Warnings, qd.Warnings...)
	c.mu.Lock()
	chosen, choice := c.driver, c.accel
	c.mu.Unlock()
	switch {
	case chosen != nil:
		dg.Accel, dg.AccelReason = chosen.Capabilities().Accel, choice.Reason
	case os.Getenv(AccelEnv) != "":
		dg.Accel, dg.AccelReason = os.Getenv(AccelEnv), AccelEnv
	case cfg.Accel != Auto:
		dg.Accel, dg.AccelReason = cfg.Accel, "configured (accel = "+cfg.Accel+")"
	default:
		if err := c.h.kvmOpen(); err != nil {
			dg.Accel, dg.AccelReason = vmm.AccelTCG, err.Error()
		} else if !cfg.QEMU.Unconfined && !c.h.kvmGroup() {
			dg.Accel, dg.AccelReason = vmm.AccelTCG, "/dev/kvm grants no group read-write access for the confined QEMU's uid (make it 0660 root:kvm)"
		} else if cached, err := ReadAccelChoice(c.cacheDir); err == nil {
			dg.Accel = cached.Accel
			dg.AccelReason = fmt.Sprintf("%s (probed %s)", cached.Reason, cached.Probed.Format("2006-01-02 15:04"))
		} else {
			dg.AccelReason = "not probed yet: the first run boots a probe VM under KVM and falls back to TCG if it does not answer"
		}
	}
	if dg.Accel == vmm.AccelTCG {
		dg.Warnings = append(dg.Warnings, TCGWarning)
	}
	return dg
}
