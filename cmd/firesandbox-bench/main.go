// Command firesandbox-bench measures firesandbox on this host and prints
// tables. Paths are measured side by side in one run, so they compare;
// numbers from different hosts do not. `make bench` runs it.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/sandbox"
)

func main() {
	n := flag.Int("n", 7, "runs per measurement")
	dataDir := flag.String("data-dir", envOr("FIRESANDBOX_DATA", sandbox.DefaultDataDir), "data directory")
	lang := flag.String("language", "python", "language to measure")
	flag.Parse()
	if err := run(*dataDir, *lang, *n); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func envOr(k, d string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return d
}

type series struct {
	name string
	d    []time.Duration
}

func (s *series) add(d time.Duration) { s.d = append(s.d, d) }

func (s *series) quantile(q float64) time.Duration {
	if len(s.d) == 0 {
		return 0
	}
	c := append([]time.Duration(nil), s.d...)
	sort.Slice(c, func(i, j int) bool { return c[i] < c[j] })
	i := int(q*float64(len(c)-1) + 0.5)
	return c[i]
}

func run(dataDir, lang string, n int) error {
	mgr, err := sandbox.New(sandbox.Config{DataDir: dataDir})
	if err != nil {
		return err
	}
	e, err := mgr.Catalog().Lookup(lang, "")
	if err != nil {
		return err
	}
	code := []byte(e.Test.Code)
	ctx := context.Background()
	fmt.Printf("firesandbox bench: %s, %d runs each, data %s\n", lang, n, dataDir)

	// Warm the host page cache and the accelerator choice, unmeasured.
	if _, err := mgr.Run(ctx, sandbox.RunRequest{Language: lang, Files: []agentproto.File{{Content: code}}, Args: e.Test.Args}, sandbox.Streams{}); err != nil {
		return err
	}
	ready := &series{name: "cold boot -> agent ready"}
	first := &series{name: "cold boot -> first result"}
	exec1 := &series{name: "first exec in a fresh VM"}
	exec2 := &series{name: "second exec, same VM"}
	for i := 0; i < n; i++ {
		start := time.Now()
		vm, err := mgr.Boot(ctx, e)
		if err != nil {
			return err
		}
		ready.add(time.Since(start))
		req := agentproto.ExecRequest{Argv: append(append([]string{}, e.Run...), e.Test.Args...), Dir: "/tmp/box",
			Files: []agentproto.File{{Path: e.File, Content: code}}}
		var out bytes.Buffer
		t1 := time.Now()
		res, err := vm.Agent.Exec(ctx, req, &out, nil)
		if err == nil && out.String() != e.Test.Stdout {
			err = fmt.Errorf("unexpected output %q (result %+v)", out.String(), res)
		}
		if err != nil {
			vm.Close()
			return err
		}
		first.add(time.Since(start))
		exec1.add(time.Since(t1))
		t2 := time.Now()
		if _, err := vm.Agent.Exec(ctx, req, nil, nil); err != nil {
			vm.Close()
			return err
		}
		exec2.add(time.Since(t2))
		vm.Close()
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "path\tmedian\tp95\tmin\tmax\t")
	for _, s := range []*series{ready, first, exec1, exec2} {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t\n", s.name, ms(s.quantile(0.5)), ms(s.quantile(0.95)), ms(s.quantile(0)), ms(s.quantile(1)))
	}
	return tw.Flush()
}

func ms(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d)/1e6) }
