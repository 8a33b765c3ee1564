package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/disk"
	"github.com/firesandbox/firesandbox/internal/guestkernel"
	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/network"
	"github.com/firesandbox/firesandbox/internal/sandbox"
	"github.com/firesandbox/firesandbox/internal/vmm/drivers"
	"github.com/spf13/cobra"
)

func newDoctorCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "doctor",
		Short: "Check this host: which drivers can run, and what is missing",
		Long: `Check, for each VMM driver, whether it can run VMs on this host and why
not (binary, version, KVM, cgroups, permissions, confinement), which driver
and accelerator ` + "`firesandbox run`" + ` will use, what confines the VMM, and
whether the kernel and images are prepared, and which network backend VMs
get (a tap in each VM's own namespace) or why none. Every problem is listed
at once. Exits 1 if the chosen driver is not usable, or if the network is
required ([serve.network] mode = "on") and not usable.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !doctor(cmd.Context(), g) {
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
	ch, err := drivers.New(g.vmmConfig(), drivers.WithAccelCache(g.dataDir))
	if err != nil {
		p("configuration: %v", err)
		return false
	}
	dg := ch.Diagnose(ctx)
	list("config:", dg.Problems)
	for _, d := range dg.Drivers {
		state := "usable"
		if !d.Usable {
			state = "NOT usable"
		}
		p("%s: %s", d.Driver, state)
		list("-", d.Problems)
		list("!", d.Warnings)
		list("·", d.Notes)
	}
	p("run will use: %s (--driver %s)", orNone(dg.Chosen), dg.Configured)
	if dg.Chosen != "" {
		p("    accelerator: %s: %s", orNone(dg.Accel), dg.AccelReason)
		if f := image.Slowdown(dg.Accel); f > 1 {
			p("    default time limits x%g: software emulation runs guests 10-50x slower than KVM (limits a request sets are kept exactly)", f)
		}
	}
	for _, w := range dg.Warnings {
		p("WARNING: %s", w)
	}

	k, kerr := guestkernel.Load(g.dataDir)
	if kerr != nil {
		p("guest kernel: %v", kerr)
	} else {
		p("guest kernel: %s (%s)", k.Release, k.Dir)
	}
	layersOK := true
	want, _ := disk.ParseLayering(g.layering)
	if l, err := disk.Choose(ctx, want, g.dataDir); err != nil {
		p("%v", err) // "disk layering dm: ..."
		layersOK = false
	} else {
		p("disk layering: %s (--disk-layering %s)", l.Kind(), want)
		if l.Kind() == disk.LayeringClone && want == disk.LayeringAuto {
			p("    · not dm: %v", disk.NewMapper().Available(ctx))
		}
	}
	netOK := doctorNetwork(ctx, g, k, p, list)
	if ims, err := image.NewStore(g.dataDir).List(); err != nil || len(ims) == 0 {
		p("images: none built (firesandbox image build python)")
	} else {
		var names []string
		for _, im := range ims {
			names = append(names, im.Language)
		}
		p("images: %s", strings.Join(names, ", "))
	}
	return dg.Usable() && netOK && layersOK
}

// doctorNetwork says which network backend VMs get here and why not;
// false only where the configuration insists on one (mode on) and this
// host cannot give it.
func doctorNetwork(ctx context.Context, g *globalFlags, k *guestkernel.Kernel, p func(string, ...any), list func(string, []string)) bool {
	nc := g.networkConfig("")
	if nc.Mode == sandbox.NetworkOff {
		p("network: off ([serve.network] mode): no VM gets a network device")
		return true
	}
	nd := network.Diagnose(ctx, nc.Config)
	if k != nil && len(k.Groups[agentproto.NetModules]) == 0 {
		nd.Problems = append(nd.Problems, "the guest kernel has no "+agentproto.NetModules+" module group (virtio_net): prepare it again (make kernel)")
		nd.Usable, nd.Backend = false, network.BackendNone
	}
	if nd.Usable {
		p("network: backend %s (mode %s): sandboxes get a device, runs one when they ask", nd.Backend, nc.Mode)
	} else {
		p("network: NOT usable (mode %s): no VM gets a network device; sandboxes and runs that ask for network are refused", nc.Mode)
	}
	list("-", nd.Problems)
	list("·", nd.Notes)
	return nd.Usable || nc.Mode != sandbox.NetworkOn
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
