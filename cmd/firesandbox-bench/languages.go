package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/sandbox"
)

// languagesTable measures, for every language whose image is built here:
// cold boot, restore and warm pool, each to ready and to the test
// program's result, and the snapshot's size on disk. Cold boots are
// slow under TCG: coldN of them per language, n of the rest.
func languagesTable(ctx context.Context, dataDir string, n, coldN int) error {
	mgr, err := sandbox.New(sandbox.Config{DataDir: dataDir})
	if err != nil {
		return err
	}
	defer mgr.Close()
	type row struct {
		e                      *image.Entry
		coldR, coldT           series
		restR, restT           series
		poolR, poolT           series
		snapDisk, snapApparent int64
		err                    error
	}
	var rows []*row
	for _, e := range mgr.Catalog().Entries() {
		if _, err := mgr.Images().ForEntry(e, mgr.Config().ImageFormat); err != nil {
			continue // not built here
		}
		if d, err := mgr.Catalog().Lookup(e.Name, ""); err != nil || d != e {
			continue // pools are per language's default version
		}
		r := &row{e: e}
		rows = append(rows, r)
		r.err = measureLanguage(ctx, mgr, e, n, coldN, func(kind string, res *sandbox.RunResult, ready time.Duration) {
			switch kind {
			case "cold":
				r.coldR.add(res.Ready)
				r.coldT.add(res.Total)
			case "restore":
				r.restR.add(res.Ready)
				r.restT.add(res.Total)
			case "pool":
				r.poolR.add(ready)
				r.poolT.add(res.Total)
			}
		})
		if t, err := mgr.Template(ctx, e, sandbox.Shape{}); err == nil {
			if snap, err := mgr.Snapshots().Get(t.Spec); err == nil {
				r.snapDisk, r.snapApparent = dirAllocated(snap.Dir), snap.Size()
			}
		}
		fmt.Fprintf(os.Stderr, "bench-languages: %s done\n", e.Key())
	}
	fmt.Printf("\nLanguages built here (default versions; median; cold: %d runs, restore and pool: %d; ready = VM answering, result = the test program's output; pool ready = taking a VM from a full pool):\n", coldN, n)
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "language\tcold ready\tcold result\trestore ready\trestore result\tpool ready\tpool result\tsnapshot on disk\t")
	for _, r := range rows {
		if r.err != nil {
			fmt.Fprintf(tw, "%s\tfailed: %v\t\t\t\t\t\t\t\n", r.e.Key(), r.err)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.0f MiB (of %.0f)\t\n", r.e.Key(), ms(r.coldR.q(0.5)), ms(r.coldT.q(0.5)),
			ms(r.restR.q(0.5)), ms(r.restT.q(0.5)), msf(r.poolR.q(0.5)), ms(r.poolT.q(0.5)),
			float64(r.snapDisk)/(1<<20), float64(r.snapApparent)/(1<<20))
	}
	return tw.Flush()
}

func measureLanguage(ctx context.Context, mgr *sandbox.Manager, e *image.Entry, n, coldN int, add func(kind string, res *sandbox.RunResult, ready time.Duration)) error {
	once := func(cold bool) (*sandbox.RunResult, error) {
		var out bytes.Buffer
		res, err := mgr.Run(ctx, sandbox.RunRequest{Language: e.Name, Version: e.Version, Cold: cold, Args: e.Test.Args,
			Stdin: []byte(e.Test.Stdin), Files: []agentproto.File{{Content: []byte(e.Test.Code)}}}, sandbox.Streams{Stdout: &out})
		if err == nil && out.String() != e.Test.Stdout {
			err = fmt.Errorf("unexpected output %q", out.String())
		}
		return res, err
	}
	if _, err := once(false); err != nil { // unmeasured: the snapshot
		return err
	}
	for i := 0; i < coldN; i++ {
		res, err := once(true)
		if err != nil {
			return err
		}
		add("cold", res, 0)
	}
	for i := 0; i < n; i++ {
		res, err := once(false)
		if err != nil {
			return err
		}
		add("restore", res, 0)
	}
	if err := mgr.StartPool(ctx, e.Name, sandbox.PoolRange{Min: 1, Max: 1}, true /* warm */); err != nil {
		return err
	}
	defer mgr.StartPool(ctx, e.Name, sandbox.PoolRange{}, false)
	p := mgr.Pool(e.Name)
	if p == nil {
		return errors.New("no pool")
	}
	for i := 0; i < n; i++ {
		// Ready: taking a VM from the full pool.
		if err := p.WaitFull(ctx); err != nil {
			return err
		}
		start := time.Now()
		vm, _, err := p.Get(ctx)
		if err != nil {
			return err
		}
		ready := time.Since(start)
		vm.Close()
		// Result: a run served by the pool.
		if err := p.WaitFull(ctx); err != nil {
			return err
		}
		res, err := once(false)
		if err != nil {
			return err
		}
		if !res.Pooled {
			return errors.New("pool miss while the pool was full")
		}
		add("pool", res, ready)
	}
	return nil
}
