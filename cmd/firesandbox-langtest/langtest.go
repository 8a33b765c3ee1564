package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/sandbox"
)

// outcome is how one language's check ended.
type outcome int

const (
	passed outcome = iota
	failed
	unavailable
	skipped
)

// result is one row of the table.
type result struct {
	entry   *image.Entry
	outcome outcome
	status  string // what the STATUS column says
	packed  int64  // image size; 0 when there is no image
	build   string // build time, "cached" or "-"
	run     time.Duration
}

func run(ctx context.Context, cfg config) (int, error) {
	if err := cfg.validate(); err != nil {
		return 0, err
	}
	mgr, err := sandbox.New(sandbox.Config{DataDir: cfg.dataDir})
	if err != nil {
		return 0, err
	}
	defer mgr.Close()
	entries, err := selectEntries(mgr.Catalog(), cfg.languages)
	if err != nil {
		return 0, err
	}
	if err := os.MkdirAll(cfg.logDir, 0o755); err != nil {
		return 0, err
	}
	fmt.Fprintf(os.Stderr, "langtest: %d language(s), data %s, logs %s\n", len(entries), cfg.dataDir, cfg.logDir)

	t := &tester{cfg: cfg, mgr: mgr, base: image.DefaultBase}
	if cfg.mirror != "" {
		t.base.Mirror = cfg.mirror
	}
	results := make([]*result, len(entries))
	work := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex // serialises progress lines
	done := 0
	for range cfg.jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				r := t.check(ctx, entries[i])
				results[i] = r
				mu.Lock()
				done++
				fmt.Fprintf(os.Stderr, "[%d/%d] %s: %s\n", done, len(entries), r.entry.Name, r.status)
				mu.Unlock()
			}
		}()
	}
dispatch:
	for i := range entries {
		select {
		case work <- i:
		case <-ctx.Done(): // interrupted: the rest get no row
			break dispatch
		}
	}
	close(work)
	wg.Wait()

	printTable(os.Stdout, results)
	nfail := 0
	for _, r := range results {
		if r != nil && r.outcome == failed {
			nfail++
		}
	}
	return nfail, ctx.Err()
}

// selectEntries returns the entries named by names (by name or alias,
// available or not), or every entry when names is empty.
func selectEntries(cat *image.Catalog, names []string) ([]*image.Entry, error) {
	all := cat.Entries()
	if len(names) == 0 {
		return all, nil
	}
	var out []*image.Entry
	seen := map[string]bool{}
	for _, n := range names {
		e := findEntry(all, strings.ToLower(n))
		if e == nil {
			return nil, fmt.Errorf("%w %q", image.ErrUnknownLanguage, n)
		}
		if !seen[e.Name] {
			seen[e.Name] = true
			out = append(out, e)
		}
	}
	return out, nil
}

// findEntry looks a name up without Catalog.Lookup, which refuses
// unavailable entries: those still get a row saying why.
func findEntry(all []*image.Entry, name string) *image.Entry {
	for _, e := range all {
		if e.Name == name {
			return e
		}
		for _, a := range e.Aliases {
			if a == name {
				return e
			}
		}
	}
	return nil
}

// tester checks languages with one manager.
type tester struct {
	cfg  config
	mgr  *sandbox.Manager
	base image.Base
}

// check builds (if needed) and tests one language. Everything it learns
// goes to the language's log file.
func (t *tester) check(ctx context.Context, e *image.Entry) *result {
	r := &result{entry: e, build: "-"}
	if e.Unavailable != "" {
		r.outcome, r.status = unavailable, "unavailable: "+e.Unavailable
		return r
	}
	ctx, cancel := context.WithTimeout(ctx, t.cfg.timeout)
	defer cancel()

	logPath := filepath.Join(t.cfg.logDir, e.Name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		r.outcome, r.status = failed, "FAIL: "+err.Error()
		return r
	}
	defer f.Close()
	log := &lastLine{w: f}

	im, err := t.mgr.Images().ForEntry(e, image.FormatSquashFS)
	switch {
	case err == nil:
		r.build = "cached"
	case !errors.Is(err, image.ErrNotBuilt):
		r.outcome, r.status = failed, "FAIL: "+err.Error()
		return r
	case t.cfg.onlyBuilt:
		r.outcome, r.status = skipped, "skipped: image not built"
		return r
	default:
		start := time.Now()
		im, err = t.mgr.Images().Build(ctx, e, image.BuildOptions{Base: t.base, Progress: log})
		if err != nil && errors.Is(err, context.Canceled) {
			r.outcome, r.status = skipped, "interrupted"
			return r
		}
		if err != nil {
			last := log.last()
			fmt.Fprintf(log, "build failed: %v\n", err)
			if last == "" {
				last = err.Error()
			}
			r.outcome, r.status = failed, "build failed: "+oneLine(last)
			return r
		}
		r.build = time.Since(start).Round(time.Second).String()
	}
	r.packed = im.PackedBytes

	var stdout, stderr, cout, cerr bytes.Buffer
	fmt.Fprintf(log, "run %s %s with args %q\n", e.Name, e.Version, e.Test.Args)
	req := sandbox.RunRequest{
		Language: e.Name,
		Files:    []agentproto.File{{Content: []byte(e.Test.Code)}},
		Args:     e.Test.Args,
		Stdin:    []byte(e.Test.Stdin),
		Cold:     true,
	}
	start := time.Now()
	res, err := t.mgr.Run(ctx, req, sandbox.Streams{Stdout: &stdout, Stderr: &stderr, CompileStdout: &cout, CompileStderr: &cerr})
	r.run = time.Since(start)
	if errors.Is(err, context.Canceled) {
		r.outcome, r.status = skipped, "interrupted"
		return r
	}
	for _, s := range []struct {
		name string
		b    *bytes.Buffer
	}{{"compile stdout", &cout}, {"compile stderr", &cerr}, {"stdout", &stdout}, {"stderr", &stderr}} {
		if s.b.Len() > 0 {
			fmt.Fprintf(log, "--- %s ---\n%s\n", s.name, strings.TrimRight(s.b.String(), "\n"))
		}
	}
	r.outcome, r.status = failed, verdict(e, res, err, stdout.String(), cerr.String(), stderr.String())
	if r.status == "pass" {
		r.outcome = passed
	}
	fmt.Fprintf(log, "result: %s\n", r.status)
	return r
}

// verdict says "pass" or why not.
func verdict(e *image.Entry, res *sandbox.RunResult, err error, stdout, compileStderr, stderr string) string {
	switch {
	case err != nil:
		return "FAIL: " + oneLine(err.Error())
	case res.Compile != nil && res.Compile.Status != agentproto.StatusOK:
		return fmt.Sprintf("FAIL: compile %s: %s", describe(res.Compile), lastNonEmpty(compileStderr))
	case res.Run == nil:
		return "FAIL: no run result"
	case res.Run.Status != agentproto.StatusOK:
		return fmt.Sprintf("FAIL: run %s: %s", describe(res.Run), lastNonEmpty(stderr))
	case stdout != e.Test.Stdout:
		return fmt.Sprintf("FAIL: stdout %s, want %s", clip(stdout), clip(e.Test.Stdout))
	}
	return "pass"
}

func describe(x *agentproto.ExitResult) string {
	s := fmt.Sprintf("%s code %d", x.Status, x.Code)
	if x.Message != "" {
		s += " (" + x.Message + ")"
	}
	return s
}

func clip(s string) string {
	if len(s) > 60 {
		s = s[:60] + "..."
	}
	return fmt.Sprintf("%q", s)
}

func lastNonEmpty(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if l := strings.TrimSpace(lines[i]); l != "" {
			return oneLine(l)
		}
	}
	return "(no stderr)"
}

// oneLine keeps a table cell on one line and of bounded width.
func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 160 {
		s = s[:160] + "..."
	}
	return s
}

// lastLine passes writes through and remembers the last non-blank
// complete line, so a failed build can quote the tool's last words.
type lastLine struct {
	w         io.Writer
	mu        sync.Mutex
	cur, prev string
}

func (l *lastLine) last() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.prev
}

func (l *lastLine) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range strings.SplitAfter(string(p), "\n") {
		l.cur += line
		if strings.HasSuffix(l.cur, "\n") {
			if t := strings.TrimSpace(l.cur); t != "" {
				l.prev = t
			}
			l.cur = ""
		}
	}
	return l.w.Write(p)
}

func printTable(w io.Writer, results []*result) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	// STATUS is last: its reasons are long and would widen every column
	// after it.
	fmt.Fprintln(tw, "LANGUAGE\tVERSION\tPACKED\tBUILD\tRUN\tSTATUS")
	var n [4]int
	for _, r := range results {
		if r == nil { // interrupted before it started
			continue
		}
		n[r.outcome]++
		packed, runTime := "-", "-"
		if r.packed > 0 {
			packed = fmt.Sprintf("%d MiB", (r.packed+(1<<19))>>20)
		}
		if r.run > 0 {
			runTime = r.run.Round(100 * time.Millisecond).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.entry.Name, r.entry.Version, packed, r.build, runTime, r.status)
	}
	tw.Flush()
	fmt.Fprintf(w, "\n%d passed, %d failed, %d unavailable, %d skipped\n", n[passed], n[failed], n[unavailable], n[skipped])
}
