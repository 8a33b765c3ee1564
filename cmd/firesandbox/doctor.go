package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/firesandbox/firesandbox/internal/guestkernel"
	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/sandbox"
	"github.com/firesandbox/firesandbox/internal/vmm/firecracker"
	"github.com/firesandbox/firesandbox/internal/vmm/qemu"
	"github.com/spf13/cobra"
)

func newDoctorCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "doctor",
		Short: "Check this host: which drivers can run, and what is missing",
		Long: `Check, for each VMM driver, whether it can run VMs on this host and why
not (binary, version, KVM, cgroups, permissions), which driver and
accelerator ` + "`firesandbox run`" + ` will use, and whether the kernel and images are
prepared. Exits 1 if no driver is usable.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ok := doctor(cmd.Context(), g)
			if !ok {
				return exitError{code: 1}
			}
			return nil
		},
	}
}

func doctor(ctx context.Context, g *globalFlags) bool {
	p := func(f string, a ...any) { fmt.Printf(f+"\n", a...) }
	list := func(prefix string, items []string) {
		for _, it := range items {
			p("    %s %s", prefix, it)
		}
	}

	qd := qemuDiagnosis(ctx)
	fd := firecracker.Diagnose(ctx, firecracker.Config{})
	for _, d := range []firecracker.Diagnosis{fd, qd} {
		state := "usable"
		if !d.Usable {
			state = "NOT usable"
		}
		p("%s: %s", d.Driver, state)
		list("-", d.Problems)
		list("·", d.Notes)
	}

	pick := sandbox.ResolveDriver(g.driver, fd.Usable)
	p("run will use: %s (--driver %s)", pick, g.driver)
	if pick == "qemu" {
		p("    accelerator: %s", accelStatus(g))
	}

	if k, err := guestkernel.Load(g.dataDir); err != nil {
		p("guest kernel: %v", err)
	} else {
		p("guest kernel: %s (%s)", k.Release, k.Dir)
	}
	if ims, err := image.NewStore(g.dataDir).List(); err != nil || len(ims) == 0 {
		p("images: none built (firesandbox image build python)")
	} else {
		var names []string
		for _, im := range ims {
			names = append(names, im.Language)
		}
		p("images: %s", strings.Join(names, ", "))
	}
	return (pick == "qemu" && qd.Usable) || (pick == "firecracker" && fd.Usable)
}

// qemuDiagnosis reports the QEMU driver in the same shape as Firecracker's.
func qemuDiagnosis(ctx context.Context) firecracker.Diagnosis {
	d := firecracker.Diagnosis{Driver: "qemu", Usable: true}
	drv, _ := qemu.New(qemu.Config{})
	if path, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		d.Usable = false
		d.Problems = append(d.Problems, "qemu-system-x86_64 not found: run `make deps` (Debian: qemu-system-x86 from bookworm-backports)")
	} else if v, err := drv.Version(ctx); err != nil {
		d.Usable = false
		d.Problems = append(d.Problems, err.Error())
	} else {
		d.Version = v
		d.Notes = append(d.Notes, fmt.Sprintf("QEMU %s at %s", v, path))
	}
	if _, err := os.Stat("/usr/share/qemu/qboot.rom"); err != nil {
		d.Notes = append(d.Notes, "no qboot firmware (/usr/share/qemu/qboot.rom): boots use SeaBIOS, slower (install qemu-system-data)")
	}
	return d
}

func accelStatus(g *globalFlags) string {
	if v := os.Getenv("FIRESANDBOX_ACCEL"); v != "" {
		return v + " (FIRESANDBOX_ACCEL)"
	}
	if g.accel != "auto" {
		return g.accel + " (--accel)"
	}
	b, err := os.ReadFile(filepath.Join(g.dataDir, "accel.json"))
	var c sandbox.AccelChoice
	if err != nil || json.Unmarshal(b, &c) != nil {
		return "not probed yet: the first run boots a probe VM under KVM and falls back to TCG if it does not answer"
	}
	return fmt.Sprintf("%s: %s (probed %s)", c.Accel, c.Reason, c.Probed.Format("2006-01-02 15:04"))
}
