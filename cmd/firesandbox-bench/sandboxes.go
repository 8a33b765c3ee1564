package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/disk"
	"github.com/firesandbox/firesandbox/internal/sandbox"
	"github.com/firesandbox/firesandbox/internal/state"
)

// sandboxTable measures long-lived sandboxes side by side: a create that
// boots cold against one restored from the shape's snapshot (disk-backed,
// 1 GiB), forks of 1 and of 8, pause and resume at two memory sizes, and
// what an idle sandbox costs on the host's disk.
func sandboxTable(ctx context.Context, mgr *sandbox.Manager, lang string, n int) error {
	const diskMiB = 1024
	s, stateDir, done, err := benchSandboxes(ctx, mgr, ".bench-sandboxes-")
	if err != nil {
		return err
	}
	defer done()
	e, err := mgr.Catalog().Lookup(lang, "")
	if err != nil {
		return err
	}
	tmpl, err := mgr.Template(ctx, e, sandbox.Shape{DiskMiB: diskMiB})
	if err != nil {
		return err
	}
	create := func(shape sandbox.Shape) (state.Sandbox, time.Duration, error) {
		start := time.Now()
		sb, err := s.Create(ctx, sandbox.CreateRequest{Language: lang, Shape: shape, DiskMiB: shape.DiskMiB})
		return sb, time.Since(start), err
	}
	exec := func(id, script string) error {
		res, err := s.Exec(ctx, "", id, agentproto.ExecRequest{Argv: []string{"sh", "-c", script}}, nil, nil)
		if err == nil && res.Code != 0 {
			err = fmt.Errorf("%q: exit %d %s", script, res.Code, res.Message)
		}
		return err
	}
	// Unmeasured: the shape's snapshot (a cold boot on a fresh disk).
	warm, _, err := create(sandbox.Shape{DiskMiB: diskMiB})
	if err != nil {
		return err
	}
	if err := s.Delete(ctx, "", warm.ID); err != nil {
		return err
	}

	cold, restoredVM := &series{name: "VM, cold boot (fresh disk)"}, &series{name: "VM, restored (disk copy)"}
	restored := &series{name: "sandbox create, restored"}
	fork1, fork8 := &series{name: "fork of 1"}, &series{name: "fork of 8, per child"}
	scratch := filepath.Join(stateDir, "cold.ext4")
	for i := 0; i < n; i++ {
		start := time.Now()
		vm, err := mgr.Start(ctx, tmpl, sandbox.StartOptions{Cold: true, Disk: scratch})
		if err != nil {
			return err
		}
		cold.add(time.Since(start))
		vm.Close()
		os.Remove(scratch)
		start = time.Now()
		if vm, err = mgr.Start(ctx, tmpl, sandbox.StartOptions{Disk: scratch}); err != nil {
			return err
		}
		if !vm.Restored {
			return fmt.Errorf("a disk VM was not restored")
		}
		restoredVM.add(time.Since(start))
		vm.Close()
		os.Remove(scratch)

		sb, took, err := create(sandbox.Shape{DiskMiB: diskMiB})
		if err != nil {
			return err
		}
		restored.add(took)
		if err := exec(sb.ID, "echo parent > p.txt && sync"); err != nil {
			return err
		}
		for _, f := range []struct {
			n int
			s *series
		}{{1, fork1}, {8, fork8}} {
			start := time.Now()
			kids, err := s.Fork(ctx, "", sb.ID, sandbox.ForkRequest{Count: f.n})
			if err != nil {
				return err
			}
			f.s.add(time.Since(start) / time.Duration(f.n))
			for _, k := range kids {
				if err := s.Delete(ctx, "", k.ID); err != nil {
					return err
				}
			}
		}
		if err := s.Delete(ctx, "", sb.ID); err != nil {
			return err
		}
	}

	type pr struct {
		mib           int
		pause, resume *series
		size          int64
	}
	var prs []*pr
	for _, mib := range []int{512, 1024} {
		p := &pr{mib: mib, pause: &series{}, resume: &series{}}
		prs = append(prs, p)
		sb, _, err := create(sandbox.Shape{MemoryMiB: mib})
		if err != nil {
			return err
		}
		for i := 0; i < n; i++ {
			start := time.Now()
			hib, err := s.Pause(ctx, "", sb.ID)
			if err != nil {
				return err
			}
			p.pause.add(time.Since(start))
			p.size = dirAllocated(hib.SnapshotDir)
			start = time.Now()
			if _, err := s.Resume(ctx, "", sb.ID, 0); err != nil {
				return err
			}
			p.resume.add(time.Since(start))
		}
		if err := s.Delete(ctx, "", sb.ID); err != nil {
			return err
		}
	}

	// Host disk per idle sandbox: its disk copy right after the create,
	// and what it takes beyond 1 MiB written by the guest.
	const idle = 4
	var fresh, extra int64
	for i := 0; i < idle; i++ {
		sb, _, err := create(sandbox.Shape{DiskMiB: diskMiB})
		if err != nil {
			return err
		}
		dp := filepath.Join(stateDir, "sandboxes", sb.ID, "disk.ext4")
		a, err := disk.StoredAllocated(dp)
		if err != nil {
			return err
		}
		fresh += a
		if err := exec(sb.ID, "head -c 1048576 /dev/urandom > one-mib && sync"); err != nil {
			return err
		}
		time.Sleep(time.Second) // the guest's writeback and discards settle
		b, _ := disk.StoredAllocated(dp)
		extra += b - a - 1<<20
		defer s.Delete(ctx, "", sb.ID)
	}
	snapDisk := int64(0)
	if snap, err := mgr.Snapshots().Get(tmpl.Spec); err == nil {
		snapDisk, _ = disk.Allocated(filepath.Join(snap.Dir, "disk.ext4"))
	}

	fmt.Printf("\nSandboxes (%s; %d runs per row, median; disk-backed rows: %d MiB disk; per-VM disks: %s):\n",
		lang, n, diskMiB, layeringName(mgr, stateDir))
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "what\tmedian\tp95\tvs restored create\t")
	base := restored.q(0.5)
	for _, r := range []*series{cold, restoredVM, restored, fork1, fork8} {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.2fx\t\n", r.name, ms(r.q(0.5)), ms(r.q(0.95)), float64(r.q(0.5))/float64(base))
	}
	tw.Flush()
	fmt.Printf("goals: restored / cold = %.3f (VM) and %.3f (sandbox create; goal <= 0.1); fork of 1 / restored create = %.2f (goal <= 3)\n",
		float64(restoredVM.q(0.5))/float64(cold.q(0.5)), float64(restored.q(0.5))/float64(cold.q(0.5)), float64(fork1.q(0.5))/float64(base))

	tw = tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "\nguest memory\tpause median\tresume median\tpaused sandbox on disk\t")
	for _, p := range prs {
		fmt.Fprintf(tw, "%d MiB\t%s\t%s\t%.1f MiB\t\n", p.mib, ms(p.pause.q(0.5)), ms(p.resume.q(0.5)), float64(p.size)/(1<<20))
	}
	tw.Flush()
	fmt.Printf("\nHost disk per idle sandbox (%d MiB disk, mean of %d): %.0f KiB right after create; %.0f KiB beyond 1 MiB the guest wrote (goal <= 1024 KiB). The shape's pristine disk, shared by the snapshot: %.0f KiB.\n",
		diskMiB, idle, float64(fresh)/idle/1024, float64(extra)/idle/1024, float64(snapDisk)/1024)
	return layeringTable(ctx, mgr.Config(), lang, n, diskMiB)
}

func layeringName(mgr *sandbox.Manager, dir string) string {
	if l := mgr.DiskLayering(); l != disk.LayeringClone {
		return string(l)
	}
	return "clone, " + cloneMethod(dir)
}

// layeringTable compares the disk layerings side by side: a restored
// create and the host disk an idle sandbox takes, each under a Manager
// of its own over the same data (and snapshots).
func layeringTable(ctx context.Context, cfg sandbox.Config, lang string, n, diskMiB int) error {
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "\ndisk layering (%d MiB disk)\tcreate, restored, median\tidle sandbox on disk, after create\tbeyond 1 MiB the guest wrote\t\n", diskMiB)
	var notes []string
	defer func() {
		tw.Flush()
		for _, n := range notes {
			fmt.Println(n)
		}
	}()
	for _, l := range []disk.Layering{disk.LayeringClone, disk.LayeringDM} {
		cfg.DiskLayering = string(l)
		mgr, err := sandbox.New(cfg)
		if err != nil {
			fmt.Fprintf(tw, "%s\t-\t-\t-\t\n", l)
			notes = append(notes, fmt.Sprintf("%s: not measured: %v", l, err))
			continue
		}
		if err := func() error {
			defer mgr.Close()
			s, stateDir, done, err := benchSandboxes(ctx, mgr, ".bench-layering-")
			if err != nil {
				return err
			}
			defer done()
			create := &series{name: string(l)}
			var fresh, extra int64
			for i := 0; i < n; i++ {
				start := time.Now()
				sb, err := s.Create(ctx, sandbox.CreateRequest{Language: lang, DiskMiB: diskMiB})
				if err != nil {
					return err
				}
				create.add(time.Since(start))
				dp := filepath.Join(stateDir, "sandboxes", sb.ID, "disk.ext4")
				a, err := disk.StoredAllocated(dp)
				if err != nil {
					return err
				}
				res, err := s.Exec(ctx, "", sb.ID, agentproto.ExecRequest{Argv: []string{"sh", "-c", "head -c 1048576 /dev/urandom > one-mib && sync"}}, nil, nil)
				if err == nil && res.Code != 0 {
					err = fmt.Errorf("write 1 MiB: exit %d %s", res.Code, res.Message)
				}
				if err != nil {
					return err
				}
				time.Sleep(time.Second) // the guest's writeback and discards settle
				b, _ := disk.StoredAllocated(dp)
				fresh, extra = fresh+a, extra+b-a-1<<20
				if err := s.Delete(ctx, "", sb.ID); err != nil {
					return err
				}
			}
			fmt.Fprintf(tw, "%s\t%s\t%.0f KiB\t%.0f KiB\t\n", l, ms(create.q(0.5)), float64(fresh)/float64(n)/1024, float64(extra)/float64(n)/1024)
			return nil
		}(); err != nil {
			fmt.Fprintf(tw, "%s\t-\t-\t-\t\n", l)
			notes = append(notes, fmt.Sprintf("%s: failed: %v", l, err))
		}
	}
	return nil
}

// cloneMethod says how Clone copies disks on dir's file system.
func cloneMethod(dir string) string {
	src := filepath.Join(dir, ".probe")
	if err := os.WriteFile(src, []byte("x"), 0o600); err != nil {
		return "unknown"
	}
	defer os.Remove(src)
	defer os.Remove(src + ".copy")
	m, err := disk.Clone(context.Background(), src, src+".copy")
	if err != nil {
		return "unknown"
	}
	return string(m)
}

func dirAllocated(dir string) int64 {
	var n int64
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			a, _ := disk.Allocated(p)
			n += a
		}
		return nil
	})
	return n
}

// benchSandboxes opens a Service of mgr over a state directory of its own
// (under the data directory, so disk copies stay on its file system); done
// closes the Service and removes the directory.
func benchSandboxes(ctx context.Context, mgr *sandbox.Manager, prefix string) (s *sandbox.Sandboxes, stateDir string, done func(), err error) {
	stateDir, err = os.MkdirTemp(mgr.Config().DataDir, prefix)
	if err != nil {
		return nil, "", nil, err
	}
	svc, err := sandbox.OpenService(mgr, sandbox.ServiceConfig{StateDir: stateDir}, nil)
	if err != nil {
		os.RemoveAll(stateDir)
		return nil, "", nil, err
	}
	return svc.Sandboxes, stateDir, func() { svc.Close(ctx); os.RemoveAll(stateDir) }, nil
}
