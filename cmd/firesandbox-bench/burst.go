package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/sandbox"
)

// burstTable sends a burst of one-shot runs of one language, arriving
// gap apart, at a full pool of each size range (a fixed size, as pools
// were, and one that follows demand), and reports how many the pool
// served and the latency of all of them. Between ranges the pool is
// closed and the next one filled to its minimum, so each burst starts
// alike.
func burstTable(ctx context.Context, mgr *sandbox.Manager, e *image.Entry, runs int, gap time.Duration, ranges []sandbox.PoolRange) error {
	if runs <= 0 {
		return nil
	}
	once := func() (*sandbox.RunResult, error) {
		var out bytes.Buffer
		res, err := mgr.Run(ctx, sandbox.RunRequest{Language: e.Name, Args: e.Test.Args, Stdin: []byte(e.Test.Stdin),
			Files: []agentproto.File{{Content: []byte(e.Test.Code)}}}, sandbox.Streams{Stdout: &out})
		if err == nil && out.String() != e.Test.Stdout {
			err = fmt.Errorf("unexpected output %q", out.String())
		}
		return res, err
	}
	if _, err := once(); err != nil { // unmeasured: the snapshot exists
		return err
	}
	type row struct {
		r          sandbox.PoolRange
		hits       int
		lat        *series
		peak, made int64
	}
	var rows []row
	for _, r := range ranges {
		if err := mgr.StartPool(ctx, e.Name, r, true /* warm */); err != nil {
			return err
		}
		p := mgr.Pool(e.Name)
		if err := p.WaitFull(ctx); err != nil {
			return err
		}
		before := p.Stats()
		lat := &series{name: r.String()}
		var (
			mu   sync.Mutex
			wg   sync.WaitGroup
			hits int
			errs []error
			peak int
		)
		stop := make(chan struct{})
		go func() { // the pool's target size while the burst runs
			t := time.NewTicker(50 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-t.C:
					if s := p.Stats().Size; s > peak {
						mu.Lock()
						peak = s
						mu.Unlock()
					}
				}
			}
		}()
		for i := 0; i < runs; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				start := time.Now()
				res, err := once()
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					errs = append(errs, err)
					return
				}
				lat.add(time.Since(start))
				if res.Pooled {
					hits++
				}
			}()
			time.Sleep(gap)
		}
		wg.Wait()
		close(stop)
		after := p.Stats()
		mgr.StartPool(ctx, e.Name, sandbox.PoolRange{}, false)
		if len(errs) > 0 {
			return fmt.Errorf("burst at pool %s: %d of %d runs failed, first: %w", r, len(errs), runs, errs[0])
		}
		rows = append(rows, row{r: r, hits: hits, lat: lat, peak: int64(peak), made: after.Created - before.Created})
	}
	fmt.Printf("\nA burst of %d one-shot %s runs, one every %s, at a full pool (MIN..MAX ready; a fixed size is MIN = MAX):\n", runs, e.Name, gap)
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "pool\thits\thit rate\tp50\tp95\tmax\tlargest target\tVMs made\t")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%d/%d\t%.0f %%\t%s\t%s\t%s\t%d\t%d\t\n", r.r, r.hits, runs, 100*float64(r.hits)/float64(runs),
			ms(r.lat.q(0.5)), ms(r.lat.q(0.95)), ms(r.lat.q(1)), r.peak, r.made)
	}
	return tw.Flush()
}
