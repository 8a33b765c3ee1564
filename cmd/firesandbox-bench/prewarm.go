package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/sandbox"
)

var (
	prewarmOnly  = flag.Bool("prewarm-only", false, "only compare restores with and without the prewarmed runtime (prewarm.go)")
	prewarmLangs = flag.String("prewarm-languages", "nodejs,ruby,typescript", "languages of the prewarm table")
	prewarmRuns  = flag.Int("prewarm-runs", 5, "runs per row of the prewarm table")
)

// prewarmTable measures, side by side, the time to a program's result
// from a snapshot restore with and without the language's prewarmed
// runtime, for each language whose image is built. The runs interleave,
// so drift hits both alike.
func prewarmTable(ctx context.Context, dataDir string) error {
	warm, err := sandbox.New(sandbox.Config{DataDir: dataDir})
	if err != nil {
		return err
	}
	defer warm.Close()
	plain, err := sandbox.New(sandbox.Config{DataDir: dataDir, NoPrewarm: true})
	if err != nil {
		return err
	}
	defer plain.Close()
	n := *prewarmRuns
	fmt.Printf("\nPrewarmed runtimes: time to the test program's result from a snapshot restore, median of %d:\n", n)
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "language\trestore, no prewarm\trestore, prewarmed\tspeedup\t")
	var skipped []string
	for _, lang := range strings.Split(*prewarmLangs, ",") {
		e, err := warm.Catalog().Lookup(lang, "")
		if err != nil {
			return err
		}
		if e.Prewarm == nil {
			skipped = append(skipped, lang+" (no prewarmed runtime)")
			continue
		}
		if _, err := warm.Images().ForEntry(e, warm.Config().ImageFormat); err != nil {
			skipped = append(skipped, fmt.Sprintf("%s (no image: firesandbox image build %s)", lang, lang))
			continue
		}
		once := func(mgr *sandbox.Manager, prewarmed bool) (*sandbox.RunResult, error) {
			var out bytes.Buffer
			res, err := mgr.Run(ctx, sandbox.RunRequest{Language: lang, Args: e.Test.Args, Stdin: []byte(e.Test.Stdin),
				Files: []agentproto.File{{Content: []byte(e.Test.Code)}}}, sandbox.Streams{Stdout: &out})
			switch {
			case err != nil:
				return nil, fmt.Errorf("%s: %w", lang, err)
			case out.String() != e.Test.Stdout:
				return nil, fmt.Errorf("%s: unexpected output %q", lang, out.String())
			case !res.Restored:
				return nil, fmt.Errorf("%s: not restored from a snapshot", lang)
			}
			used := res.Run != nil && res.Run.Prewarmed || res.Compile != nil && res.Compile.Prewarmed
			if used != prewarmed {
				return nil, fmt.Errorf("%s: prewarmed runtime used: %v, want %v", lang, used, prewarmed)
			}
			return res, nil
		}
		// Unmeasured: make both snapshots.
		if _, err := once(warm, true); err != nil {
			return err
		}
		if _, err := once(plain, false); err != nil {
			return err
		}
		with, without := &series{name: "prewarmed"}, &series{name: "no prewarm"}
		for range n {
			r, err := once(plain, false)
			if err != nil {
				return err
			}
			without.add(r.Total)
			if r, err = once(warm, true); err != nil {
				return err
			}
			with.add(r.Total)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.1fx\t\n", lang, ms(without.q(0.5)), ms(with.q(0.5)),
			float64(without.q(0.5))/float64(with.q(0.5)))
	}
	tw.Flush()
	if len(skipped) > 0 {
		fmt.Println("skipped:", strings.Join(skipped, ", "))
	}
	return nil
}
