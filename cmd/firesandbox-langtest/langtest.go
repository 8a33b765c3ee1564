package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/guestkernel"
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
	status  string        // what the STATUS column says
	packed  int64         // image size; 0 when there is no image
	build   string        // build time, "cached" or "-"
	cold    time.Duration // hello in a cold-booted VM
	restore time.Duration // hello restored from the snapshot
	checks  string        // "passed/total"
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

	t := &tester{cfg: cfg, mgr: mgr, base: image.DefaultBase, slowdown: cfg.slowdown}
	if cfg.mirror != "" {
		t.base.Mirror = cfg.mirror
	}
	if t.slowdown == 0 {
		accel, err := accelerator(ctx, mgr)
		if err != nil {
			return 0, err
		}
		t.slowdown = image.Slowdown(accel)
		fmt.Fprintf(os.Stderr, "langtest: accelerator %s: default limits x%g\n", accel, t.slowdown)
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

// accelerator is what this host's VMs run on ("kvm" or "tcg"), as the
// manager chooses it: the driver needs a kernel and an image for its
// probe, so it takes the first built image of the catalog.
func accelerator(ctx context.Context, mgr *sandbox.Manager) (string, error) {
	k, err := guestkernel.Load(mgr.Config().DataDir)
	if err != nil {
		return "", err
	}
	for _, e := range mgr.Catalog().Entries() {
		if e.Unavailable != "" {
			continue
		}
		im, err := mgr.Images().ForEntry(e, mgr.Config().ImageFormat)
		if err != nil {
			continue
		}
		d, err := mgr.Driver(ctx, k, im)
		if err != nil {
			return "", err
		}
		return d.Capabilities().Accel, nil
	}
	return "", errors.New("no image is built to probe the accelerator with: build one (make image) or give -slowdown")
}

// selectEntries returns the entries named by names (a name or alias for
// every version of a language, name@version for one; available or not),
// or every entry when names is empty.
func selectEntries(cat *image.Catalog, names []string) ([]*image.Entry, error) {
	all := cat.Entries()
	if len(names) == 0 {
		return all, nil
	}
	var out []*image.Entry
	seen := map[string]bool{}
	for _, n := range names {
		name, version, _ := strings.Cut(strings.ToLower(n), "@")
		var found bool
		for _, e := range all {
			if (e.Name == name || slices.Contains(aliases(all, e.Name), name)) && (version == "" || e.Version == version || strings.HasPrefix(e.Version, version+".")) {
				found = true
				if !seen[e.Key()] {
					seen[e.Key()] = true
					out = append(out, e)
				}
			}
		}
		if !found {
			return nil, fmt.Errorf("%w %q", image.ErrUnknownLanguage, n)
		}
	}
	return out, nil
}

// aliases are a language's aliases, which its default entry holds for
// every version. Catalog.Lookup is not used: it refuses unavailable
// entries, and those still get a row saying why.
func aliases(all []*image.Entry, name string) []string {
	for _, e := range all {
		if e.Name == name && e.Default() {
			return e.Aliases
		}
	}
	return nil
}

// tester checks languages with one manager.
type tester struct {
	cfg      config
	mgr      *sandbox.Manager
	base     image.Base
	slowdown float64 // how much slower than KVM this host's VMs run
}

// check builds (if needed) and tests one language version: its hello
// program once in a cold-booted VM (the COLD column), then every
// conformance program restored from the language's snapshot (the first
// of them makes the snapshot), then hello restored once more: the RESTORE
// column, a restore from a snapshot that exists. Everything it learns
// goes to its log file.
func (t *tester) check(ctx context.Context, e *image.Entry) *result {
	r := &result{entry: e, build: "-"}
	if e.Unavailable != "" {
		r.outcome, r.status = unavailable, "unavailable: "+e.Unavailable
		return r
	}
	if e.OCI != "" && t.cfg.registry == "" && !t.cfg.oci {
		r.outcome, r.status = unavailable, fmt.Sprintf("unavailable here: built from the OCI image %s; give -oci where its registry is reachable, or -registry HOST (a mirror)", e.OCI)
		return r
	}
	ctx, cancel := context.WithTimeout(ctx, t.cfg.timeout)
	defer cancel()

	logPath := filepath.Join(t.cfg.logDir, e.Key()+".log")
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
		im, err = t.mgr.Images().Build(ctx, e, image.BuildOptions{Base: t.base, Registry: t.cfg.registry, Progress: log})
		if err != nil && errors.Is(err, context.Canceled) {
			r.outcome, r.status = skipped, "interrupted"
			return r
		}
		if errors.Is(err, image.ErrRegistryUnreachable) {
			fmt.Fprintf(log, "build: %v\n", err)
			r.outcome, r.status = unavailable, "unavailable here: "+oneLine(err.Error())
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

	checks := e.Checks
	if len(checks) == 0 { // an entry without conformance programs: its test program
		checks = []image.Check{{Name: "hello", Code: e.Test.Code, Args: e.Test.Args, Stdin: e.Test.Stdin, Stdout: e.Test.Stdout}}
	}
	hello := checks[0]
	for _, c := range checks {
		if c.Name == "hello" {
			hello = c
		}
	}
	failures := map[string]string{}
	run := func(c image.Check, cold bool) (time.Duration, bool) {
		d, why, err := t.runCheck(ctx, log, e, c, cold)
		if errors.Is(err, context.Canceled) {
			return 0, false
		}
		if why != "" && failures[c.Name] == "" {
			failures[c.Name] = why
		}
		return d, true
	}
	var ok bool
	if r.cold, ok = run(hello, true); !ok {
		r.outcome, r.status = skipped, "interrupted"
		return r
	}
	for _, c := range append(checks[:len(checks):len(checks)], hello) { // hello last again: see above
		if r.restore, ok = run(c, false); !ok {
			r.outcome, r.status = skipped, "interrupted"
			return r
		}
	}
	r.checks = fmt.Sprintf("%d/%d", len(checks)-len(failures), len(checks))
	if len(failures) == 0 {
		r.outcome, r.status = passed, "pass"
	} else {
		var why []string
		for _, c := range checks {
			if f := failures[c.Name]; f != "" {
				why = append(why, c.Name+": "+f)
			}
		}
		r.outcome, r.status = failed, "FAIL: "+oneLine(strings.Join(why, "; "))
	}
	fmt.Fprintf(log, "result: %s\n", r.status)
	return r
}

// runCheck runs one conformance program and says why it failed ("" when
// it passed), and how long the run took.
func (t *tester) runCheck(ctx context.Context, log io.Writer, e *image.Entry, c image.Check, cold bool) (time.Duration, string, error) {
	var stdout, stderr, cout, cerr bytes.Buffer
	how := "restored"
	if cold {
		how = "cold"
	}
	fmt.Fprintf(log, "=== %s (%s) args %q\n", c.Name, how, c.Args)
	files := []agentproto.File{{Content: []byte(c.Code)}}
	for _, f := range c.Files {
		files = append(files, agentproto.File{Path: f.Path, Content: []byte(f.Content)})
	}
	// Until the Manager applies them itself, the scaled defaults travel
	// as the request's limits.
	lim := e.StepLimits(t.slowdown)
	req := sandbox.RunRequest{
		Language: e.Name, Version: e.Version, Files: files, Args: c.Args, Stdin: []byte(c.Stdin),
		CompileLimits: lim, RunLimits: lim, Cold: cold,
	}
	start := time.Now()
	res, err := t.mgr.Run(ctx, req, sandbox.Streams{Stdout: &stdout, Stderr: &stderr, CompileStdout: &cout, CompileStderr: &cerr})
	d := time.Since(start)
	if errors.Is(err, context.Canceled) {
		return d, "", err
	}
	for _, s := range []struct {
		name string
		b    *bytes.Buffer
	}{{"compile stdout", &cout}, {"compile stderr", &cerr}, {"stdout", &stdout}, {"stderr", &stderr}} {
		if s.b.Len() > 0 {
			fmt.Fprintf(log, "--- %s ---\n%s\n", s.name, strings.TrimRight(s.b.String(), "\n"))
		}
	}
	why := judge(c, res, err, outputs{cout.String(), cerr.String(), stdout.String(), stderr.String()})
	if res != nil {
		fmt.Fprintf(log, "compile %+v\nrun %+v\n", res.Compile, res.Run)
	}
	verdict := "pass"
	if why != "" {
		verdict = "FAIL " + why
	}
	fmt.Fprintf(log, "%s: %s in %s\n", c.Name, verdict, d.Round(time.Millisecond))
	return d, why, nil
}

// outputs are what the two steps wrote.
type outputs struct{ compileStdout, compileStderr, stdout, stderr string }

// judge says why a check's result is not what it expects, or "".
func judge(c image.Check, res *sandbox.RunResult, err error, o outputs) string {
	if err != nil {
		return oneLine(err.Error())
	}
	step, out, errOut := res.Run, o.stdout, o.stderr
	if c.Stage == "compile" {
		if res.Compile == nil {
			return "no compile step"
		}
		if res.Run != nil {
			return fmt.Sprintf("compiled (want a compile error), run %s", describe(res.Run))
		}
		step, out, errOut = res.Compile, o.compileStdout, o.compileStderr
	} else if res.Compile != nil && res.Compile.Status != agentproto.StatusOK {
		return fmt.Sprintf("compile %s: %s", describe(res.Compile), lastNonEmpty(o.compileStderr+o.compileStdout))
	}
	if step == nil {
		return "no run result"
	}
	if string(step.Status) != c.Status {
		want := c.Status
		if want == "" {
			want = "OK"
		}
		return fmt.Sprintf("%s, want %s: %s", describe(step), want, lastNonEmpty(errOut))
	}
	if c.Exit != nil && step.Code != *c.Exit {
		return fmt.Sprintf("exit code %d, want %d", step.Code, *c.Exit)
	}
	if c.Stdout != "" && out != c.Stdout {
		return fmt.Sprintf("stdout %s, want %s", clip(out), clip(c.Stdout))
	}
	if c.Contains != "" && !strings.Contains(out+errOut, c.Contains) {
		return fmt.Sprintf("output does not contain %q: %s", c.Contains, lastNonEmpty(errOut+out))
	}
	return ""
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
	fmt.Fprintln(tw, "LANGUAGE\tVERSION\tPACKED\tBUILD\tCOLD\tRESTORE\tCHECKS\tSTATUS")
	var n [4]int
	for _, r := range results {
		if r == nil { // interrupted before it started
			continue
		}
		n[r.outcome]++
		packed, checks := "-", r.checks
		if r.packed > 0 {
			packed = fmt.Sprintf("%d MiB", (r.packed+(1<<19))>>20)
		}
		if checks == "" {
			checks = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.entry.Name, r.entry.Version, packed, r.build,
			dur(r.cold), dur(r.restore), checks, r.status)
	}
	tw.Flush()
	fmt.Fprintf(w, "\n%d passed, %d failed, %d unavailable, %d skipped\n", n[passed], n[failed], n[unavailable], n[skipped])
}

func dur(d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	return d.Round(100 * time.Millisecond).String()
}
