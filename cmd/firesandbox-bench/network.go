package main

import (
	"context"
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/firesandbox/firesandbox/internal/network"
	"github.com/firesandbox/firesandbox/internal/sandbox"
)

// networkTable measures what a VM's network adds: the host side alone
// (namespace, link, tap, rules, resolver and filter, then their removal)
// and restores of real VMs with a network device against ones without.
// Nothing is sent anywhere.
func networkTable(ctx context.Context, dataDir, lang string, n int) error {
	tmp, err := os.MkdirTemp("", "fsbench-net")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	// Its own prefix and run dir: a serve on this host is left alone.
	cfg := network.Config{RunDir: tmp, Prefix: "fsb"}
	// Nothing is sent, so no reply needs forwarding back in: the host's
	// forwarding setting is left as it is, and not asked about.
	probe := cfg
	probe.EnableForwarding = true
	if dg := network.Diagnose(ctx, probe); !dg.Usable {
		fmt.Printf("\nNetwork: not measured, this host has no network backend: %v\n", dg.Problems)
		return nil
	}
	setup, err := network.BenchSetup(ctx, cfg, network.Policy{AllowOut: []string{"0.0.0.0/0", "example.com"}}, n)
	if err != nil {
		return fmt.Errorf("network setup: %w", err)
	}

	h, err := network.New(cfg)
	if err != nil {
		return err
	}
	defer h.Close()
	mgr, err := sandbox.New(sandbox.Config{DataDir: dataDir})
	if err != nil {
		return err
	}
	defer mgr.Close()
	mgr.UseNetwork(h)
	defer mgr.UseNetwork(nil)
	e, err := mgr.Catalog().Lookup(lang, "")
	if err != nil {
		return err
	}
	type row struct {
		name                 string
		device               bool
		ready, start, resync series
	}
	rows := []*row{{name: "restore, no network device"}, {name: "restore, network device", device: true}}
	restore := func(r *row, measure bool) error {
		t, err := mgr.Template(ctx, e, sandbox.Shape{Network: r.device})
		if err != nil {
			return err
		}
		vm, err := mgr.Start(ctx, t, sandbox.StartOptions{})
		if err != nil {
			return err
		}
		defer vm.Close()
		if !vm.Restored {
			return fmt.Errorf("%s: the VM was booted, not restored", r.name)
		}
		if measure {
			r.ready.add(vm.Ready)
			r.start.add(vm.Timings.Start)
			r.resync.add(vm.Timings.Resync)
		}
		return nil
	}
	for _, r := range rows { // unmeasured: make both snapshots
		if err := restore(r, false); err != nil {
			return err
		}
	}
	for i := 0; i < n; i++ { // interleaved, so drift hits both alike
		for _, r := range rows {
			if err := restore(r, true); err != nil {
				return err
			}
		}
	}

	fmt.Printf("\nNetwork: what a VM's network device adds (median of %d). The host side alone:\n", n)
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "step\tmedian\t")
	for _, ph := range setup.Phases {
		fmt.Fprintf(tw, "create: %s\t%s\t\n", ph.Name, msf(ph.Duration))
	}
	fmt.Fprintf(tw, "create, all (namespace + link + tap + rules + resolver and filter)\t%s\t\n", msf(setup.Create))
	fmt.Fprintf(tw, "remove\t%s\t\n", msf(setup.Close))
	tw.Flush()
	fmt.Printf("Restores of %s (start: the host's part, with the namespace for a device; resync: the guest's clock and identity; a restored guest has its address from its snapshot):\n", lang)
	tw = tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "path\tstart\tresync\tready\t")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t\n", r.name, msf(r.start.q(0.5)), msf(r.resync.q(0.5)), msf(r.ready.q(0.5)))
	}
	a, b := rows[0], rows[1]
	fmt.Fprintf(tw, "added per VM\t%s\t%s\t%s\t\n", msf(b.start.q(0.5)-a.start.q(0.5)), msf(b.resync.q(0.5)-a.resync.q(0.5)), msf(b.ready.q(0.5)-a.ready.q(0.5)))
	tw.Flush()
	return nil
}
