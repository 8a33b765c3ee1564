package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/sandbox"
)

type throughputRow struct {
	kind     string
	c        int
	perSec   float64
	p50, p95 time.Duration
}

// throughputTable runs ops operations at each concurrency: restores to
// ready (then stopped), and one-shot runs of the test program to their
// result. Rate is operations over the wall time of the level.
func throughputTable(ctx context.Context, mgr *sandbox.Manager, e *image.Entry, levels []int, ops int, plotDir string) error {
	t, err := mgr.Template(ctx, e, sandbox.Shape{})
	if err != nil {
		return err
	}
	restore := func() error {
		vm, err := mgr.Start(ctx, t, sandbox.StartOptions{})
		if err != nil {
			return err
		}
		return vm.Close()
	}
	run := func() error {
		var out bytes.Buffer
		_, err := mgr.Run(ctx, sandbox.RunRequest{Language: e.Name, Args: e.Test.Args, Stdin: []byte(e.Test.Stdin),
			Files: []agentproto.File{{Content: []byte(e.Test.Code)}}}, sandbox.Streams{Stdout: &out})
		if err == nil && out.String() != e.Test.Stdout {
			err = fmt.Errorf("unexpected output %q", out.String())
		}
		return err
	}
	var rows []throughputRow
	for _, k := range []struct {
		name string
		op   func() error
	}{{"restore to ready", restore}, {"one-shot run to result", run}} {
		if err := k.op(); err != nil { // unmeasured: snapshot, caches
			return err
		}
		for _, c := range levels {
			row, err := level(k.name, c, ops, k.op)
			if err != nil {
				return err
			}
			rows = append(rows, row)
		}
	}
	fmt.Printf("\nThroughput (%s, %d operations per row, %d host CPUs; rate = operations / wall time):\n", e.Name, ops, runtime.NumCPU())
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "operation\tconcurrency\tper second\tper second per core\tp50\tp95\t")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%d\t%.2f\t%.2f\t%s\t%s\t\n", r.kind, r.c, r.perSec, r.perSec/float64(runtime.NumCPU()), ms(r.p50), ms(r.p95))
	}
	tw.Flush()
	if plotDir != "" {
		byKind := map[string]*line{}
		var lines []*line
		for _, r := range rows {
			l := byKind[r.kind]
			if l == nil {
				l = &line{name: r.kind + " (per s)"}
				byKind[r.kind] = l
				lines = append(lines, l)
			}
			l.x, l.y = append(l.x, float64(r.c)), append(l.y, r.perSec)
		}
		var ls []line
		for _, l := range lines {
			ls = append(ls, *l)
		}
		p := filepath.Join(plotDir, "throughput.svg")
		if err := writePlot(p, "Throughput ("+e.Name+", TCG)", "concurrency", "operations per second", ls); err != nil {
			return err
		}
		fmt.Println("plot:", p)
	}
	return nil
}

func level(kind string, c, ops int, op func() error) (throughputRow, error) {
	row := throughputRow{kind: kind, c: c}
	lat := &series{}
	var mu sync.Mutex
	var firstErr error
	work := make(chan struct{}, ops)
	for i := 0; i < ops; i++ {
		work <- struct{}{}
	}
	close(work)
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < c; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range work {
				t := time.Now()
				err := op()
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				lat.add(time.Since(t))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return row, fmt.Errorf("%s at concurrency %d: %w", kind, c, firstErr)
	}
	row.perSec = float64(ops) / time.Since(start).Seconds()
	row.p50, row.p95 = lat.q(0.5), lat.q(0.95)
	return row, nil
}
