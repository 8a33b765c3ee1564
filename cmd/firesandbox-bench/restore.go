package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/firesandbox/firesandbox/internal/sandbox"
	"github.com/firesandbox/firesandbox/internal/vmm"
)

// variant is one configuration measured beside others in a table.
type variant struct {
	name string
	cfg  sandbox.Config
}

// phaseSeries collects a restore's parts over many restores.
type phaseSeries struct {
	host, process, incoming, resume, hello, resync, ready series
	// answerCPU is the CPU time the VMM process used from the driver's
	// return to ready: under TCG, the guest's first answer is the VMM
	// translating and running guest code, and where it is less than the
	// wall time the rest was waiting (for a CPU, on a loaded host).
	answerCPU  series
	calls      []int
	prestarted int
}

// cpuDriver wraps a template's driver to read its VMM process's CPU time
// when a Restore returns.
type cpuDriver struct {
	vmm.Driver
	mu  sync.Mutex
	pid int
	cpu time.Duration
}

func (d *cpuDriver) Restore(ctx context.Context, dir string, cfg vmm.Config) (vmm.Machine, error) {
	m, err := d.Driver.Restore(ctx, dir, cfg)
	if err == nil {
		d.mu.Lock()
		d.pid, d.cpu = m.PID(), processCPU(m.PID())
		d.mu.Unlock()
	}
	return m, err
}

// since is the CPU time the last restored VMM used since its Restore
// returned.
func (d *cpuDriver) since() time.Duration {
	d.mu.Lock()
	defer d.mu.Unlock()
	return processCPU(d.pid) - d.cpu
}

// processCPU is the CPU time all threads of pid have run (schedstat: ns).
func processCPU(pid int) time.Duration {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	var total time.Duration
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		if f := strings.Fields(string(b)); len(f) > 0 {
			n, _ := strconv.ParseInt(f[0], 10, 64)
			total += time.Duration(n)
		}
	}
	return total
}

func (p *phaseSeries) add(vm *sandbox.VM) {
	t := vm.Timings
	p.host.add(t.Start - t.Process - t.Incoming - t.Resume)
	p.process.add(t.Process)
	p.incoming.add(t.Incoming)
	p.resume.add(t.Resume)
	p.hello.add(t.Hello)
	p.resync.add(t.Resync)
	p.ready.add(vm.Ready)
	p.calls = append(p.calls, t.VMMCalls)
	if t.Prestarted {
		p.prestarted++
	}
}

// restoreTable breaks restore-to-ready into its parts, n restores per
// variant, the variants interleaved so drift in the host's load hits them
// alike, and prints median and p95 of each part side by side.
func restoreTable(ctx context.Context, lang string, n int, variants []variant) error {
	type col struct {
		v   variant
		mgr *sandbox.Manager
		t   *sandbox.Template
		cpu *cpuDriver
		p   phaseSeries
	}
	var cols []*col
	defer func() {
		for _, c := range cols {
			c.mgr.Close()
		}
	}()
	for _, v := range variants {
		mgr, err := sandbox.New(v.cfg)
		if err != nil {
			return err
		}
		c := &col{v: v, mgr: mgr}
		cols = append(cols, c)
		e, err := mgr.Catalog().Lookup(lang, "")
		if err != nil {
			return err
		}
		if c.t, err = mgr.Template(ctx, e, sandbox.Shape{}); err != nil {
			return err
		}
		c.cpu = &cpuDriver{Driver: c.t.Driver}
		c.t.Driver = c.cpu
	}
	restore := func(c *col, measure bool) error {
		if measure {
			settle() // a spare started after the last restore is ready
		}
		vm, err := c.mgr.Start(ctx, c.t, sandbox.StartOptions{})
		if err != nil {
			return fmt.Errorf("%s: %w", c.v.name, err)
		}
		defer vm.Close()
		if !vm.Restored {
			return fmt.Errorf("%s: the VM was booted, not restored", c.v.name)
		}
		if measure {
			c.p.add(vm)
			c.p.answerCPU.add(c.cpu.since())
		}
		return nil
	}
	for _, c := range cols { // unmeasured: the snapshot, the driver's choice, warm caches
		for i := 0; i < 2; i++ {
			if err := restore(c, false); err != nil {
				return err
			}
		}
	}
	for i := 0; i < n; i++ {
		for _, c := range cols {
			if err := restore(c, true); err != nil {
				return err
			}
		}
	}
	fmt.Printf("\nRestore to ready, its parts (%s, %d restores per column, one at a time; median / p95):\n", lang, n)
	for _, c := range cols {
		fmt.Printf("  %s: %s\n", c.v.name, describeVariant(c.v.cfg))
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	hdr := "part\t"
	for _, c := range cols {
		hdr += c.v.name + "\t"
	}
	fmt.Fprintln(tw, hdr)
	rows := []struct {
		name string
		s    func(*phaseSeries) *series
	}{
		{"host: run dir, files, network", func(p *phaseSeries) *series { return &p.host }},
		{"VMM process start (to QMP ready)", func(p *phaseSeries) *series { return &p.process }},
		{"incoming migration", func(p *phaseSeries) *series { return &p.incoming }},
		{"cont", func(p *phaseSeries) *series { return &p.resume }},
		{"agent hello (answer to the resync)", func(p *phaseSeries) *series { return &p.hello }},
		{"resync, after the greeting", func(p *phaseSeries) *series { return &p.resync }},
		{"ready, total", func(p *phaseSeries) *series { return &p.ready }},
		{"VMM CPU time during the answer", func(p *phaseSeries) *series { return &p.answerCPU }},
	}
	for _, r := range rows {
		line := r.name + "\t"
		for _, c := range cols {
			s := r.s(&c.p)
			line += fmt.Sprintf("%s / %s\t", msf(s.q(0.5)), msf(s.q(0.95)))
		}
		fmt.Fprintln(tw, line)
	}
	line := "QMP round trips (median)\t"
	for _, c := range cols {
		line += fmt.Sprintf("%d\t", medianInt(c.p.calls))
	}
	fmt.Fprintln(tw, line)
	line = "VMM started ahead\t"
	for _, c := range cols {
		line += fmt.Sprintf("%d of %d\t", c.p.prestarted, n)
	}
	fmt.Fprintln(tw, line)
	tw.Flush()
	if len(cols) > 1 {
		a, b := cols[0].p.ready.q(0.5), cols[len(cols)-1].p.ready.q(0.5)
		fmt.Printf("ready p50: %s -> %s (%.0f%%); goal <= 60 ms\n", msf(a), msf(b), 100*float64(b-a)/float64(a))
	}
	return nil
}

func describeVariant(c sandbox.Config) string {
	q := c.VMM.QEMU
	var parts []string
	if q.TBSizeMiB != 0 {
		parts = append(parts, fmt.Sprintf("tb-size %d MiB", q.TBSizeMiB))
	}
	if q.Prestart > 0 {
		parts = append(parts, fmt.Sprintf("%d QEMU per snapshot started ahead, waiting in -incoming defer", q.Prestart))
	} else {
		parts = append(parts, "QEMU started in each restore")
	}
	return strings.Join(parts, ", ")
}

func medianInt(v []int) int {
	if len(v) == 0 {
		return 0
	}
	c := append([]int(nil), v...)
	for i := range c { // small: insertion sort
		for j := i; j > 0 && c[j] < c[j-1]; j-- {
			c[j], c[j-1] = c[j-1], c[j]
		}
	}
	return c[len(c)/2]
}

// restoreVariants are the configurations the restore table compares:
// the default, and each way to cut restore time that is measured.
func restoreVariants(dataDir string) []variant {
	base := sandbox.Config{DataDir: dataDir}
	pre := base
	pre.VMM.QEMU.Prestart = 1
	return []variant{{"QEMU per restore", base}, {"QEMU started ahead", pre}}
}

// settle gives background work of the last restore (a spare QEMU
// starting) time to finish, as a pool's pace would.
func settle() { time.Sleep(500 * time.Millisecond) }
