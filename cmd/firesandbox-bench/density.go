package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/sandbox"
)

// cpuTicks is a process's user+system time, all threads, in clock ticks
// (1/100 s on Linux).
func cpuTicks(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndex(s, ")")+2:])
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return u + st
}

const clockTicks = 100 // USER_HZ

// memAvailable is the host's MemAvailable, in KiB.
func memAvailable() int64 {
	b, _ := os.ReadFile("/proc/meminfo")
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && k == "MemAvailable" {
			n, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			return n
		}
	}
	return 0
}

// idleCPU is the share of one core the VMs' QEMUs used over window, per
// VM, in percent.
func idleCPU(vms []*sandbox.VM, window time.Duration) float64 {
	var before int64
	for _, vm := range vms {
		before += cpuTicks(vm.Machine.PID())
	}
	time.Sleep(window)
	var after int64
	for _, vm := range vms {
		after += cpuTicks(vm.Machine.PID())
	}
	return 100 * float64(after-before) / clockTicks / window.Seconds() / float64(len(vms))
}

type densityRow struct {
	n                 int
	pssMiB, usedMiB   float64
	idlePct, restoreS float64
}

// densityTable restores n VMs of e for each n, all alive together and
// idle, and measures PSS per VM, the host memory they take (MemAvailable
// before and after) and the CPU they use doing nothing over window.
func densityTable(ctx context.Context, mgr *sandbox.Manager, e *image.Entry, counts []int, window time.Duration, plotDir string) error {
	t, err := mgr.Template(ctx, e, sandbox.Shape{})
	if err != nil {
		return err
	}
	var rows []densityRow
	for _, n := range counts {
		if avail := memAvailable(); avail/1024 < int64(n)*150 {
			fmt.Printf("\nDensity: %d VMs skipped: %d MiB available, want %d\n", n, avail/1024, n*150)
			continue
		}
		row, err := densityOnce(ctx, mgr, t, n, window)
		if err != nil {
			return err
		}
		rows = append(rows, row)
	}
	fmt.Printf("\nDensity: N idle restored VMs of %s alive at once (%d MiB guests; idle CPU over %s, after a 3 s settle):\n", e.Name, mgr.Config().MemoryMiB, window)
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "VMs\tPSS per VM\thost memory used (PSS total)\tMemAvailable drop (host-wide)\tidle CPU per VM\trestoring them took\t")
	for _, r := range rows {
		fmt.Fprintf(tw, "%d\t%.0f MiB\t%.0f MiB\t%.0f MiB\t%.2f %% of a core\t%.1f s\t\n", r.n, r.pssMiB, r.pssMiB*float64(r.n), r.usedMiB, r.idlePct, r.restoreS)
	}
	tw.Flush()
	if plotDir != "" && len(rows) > 0 {
		var pss, cpu line
		pss.name, cpu.name = "PSS per VM (MiB)", "idle CPU per VM (% of a core x 100)"
		for _, r := range rows {
			pss.x, pss.y = append(pss.x, float64(r.n)), append(pss.y, r.pssMiB)
			cpu.x, cpu.y = append(cpu.x, float64(r.n)), append(cpu.y, r.idlePct*100)
		}
		p := filepath.Join(plotDir, "density.svg")
		if err := writePlot(p, "Idle restored VMs alive at once ("+e.Name+")", "VMs", "per VM", []line{pss, cpu}); err != nil {
			return err
		}
		fmt.Println("plot:", p)
	}
	return nil
}

func densityOnce(ctx context.Context, mgr *sandbox.Manager, t *sandbox.Template, n int, window time.Duration) (densityRow, error) {
	row := densityRow{n: n}
	var vms []*sandbox.VM
	defer func() {
		for _, vm := range vms {
			vm.Close()
		}
	}()
	before := memAvailable()
	start := time.Now()
	for i := 0; i < n; i++ {
		vm, err := mgr.Start(ctx, t, sandbox.StartOptions{})
		if err != nil {
			return row, fmt.Errorf("restore %d of %d: %w", i+1, n, err)
		}
		vms = append(vms, vm)
	}
	row.restoreS = time.Since(start).Seconds()
	time.Sleep(3 * time.Second) // the restores' own work settles
	row.idlePct = idleCPU(vms, window)
	var pss int64
	for _, vm := range vms {
		pss += smaps(vm.Machine.PID())["Pss"]
	}
	row.pssMiB = float64(pss) / 1024 / float64(n)
	row.usedMiB = float64(before-memAvailable()) / 1024 // other processes move it too
	return row, nil
}

// tbSizeTable restores one VM per TCG translation cache size and runs the
// test program three times in it: the first run translates from nothing,
// the third shows what retranslation a small cache keeps costing; PSS is
// read after. The knee is where a smaller cache starts costing warm time:
// measured here (python), between 32 MiB (the third run as slow as the
// first: the working set no longer fits) and 64, the default.
func tbSizeTable(ctx context.Context, dataDir string, e *image.Entry, sizes []int, n int) error {
	fmt.Printf("\nTCG translation cache (tb-size) of restored VMs, %s test program run 3 times in a fresh restore (median of %d restores):\n", e.Name, n)
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "tb-size\tfirst run\tthird run\tPSS after\t")
	for _, mib := range sizes {
		cfg := sandbox.Config{DataDir: dataDir}
		cfg.VMM.QEMU.TBSizeMiB = mib
		mgr, err := sandbox.New(cfg)
		if err != nil {
			return err
		}
		first, third, pss := &series{}, &series{}, &series{}
		for i := 0; i < n; i++ {
			vm, err := mgr.Acquire(ctx, e, false)
			if err != nil {
				mgr.Close()
				return err
			}
			for k := 0; k < 3; k++ {
				start := time.Now()
				var out bytes.Buffer
				if _, err := vm.Agent.Exec(ctx, agentproto.ExecRequest{Argv: append(append([]string{}, e.Run...), e.Test.Args...), Dir: "/tmp/box",
					Files: []agentproto.File{{Path: e.File, Content: []byte(e.Test.Code)}}}, &out, nil); err != nil {
					vm.Close()
					mgr.Close()
					return err
				}
				switch k {
				case 0:
					first.add(time.Since(start))
				case 2:
					third.add(time.Since(start))
				}
			}
			pss.add(time.Duration(smaps(vm.Machine.PID())["Pss"])) // KiB, in a series for its median
			vm.Close()
		}
		mgr.Close()
		fmt.Fprintf(tw, "%d MiB\t%s\t%s\t%.0f MiB\t\n", mib, ms(first.q(0.5)), ms(third.q(0.5)), float64(pss.q(0.5))/1024)
	}
	return tw.Flush()
}
