// Command firesandbox-langtest checks the language catalog end to end: for
// every language version (or those named on the command line) it builds
// the image if it is missing, runs the entry's hello program in a
// cold-booted VM, then each of its conformance programs (print, stdin,
// args, two files, a compile error, a runtime error, exit code 3)
// restored from its snapshot, checks what each must give back, and
// prints a table with the cold and restore times. It exits non-zero when
// any available language fails. `make test-languages` runs it.
//
//	firesandbox-langtest                 # every language
//	firesandbox-langtest bash c nodejs   # some, by name or alias (every version)
//	firesandbox-langtest python@3.13     # one version
//	firesandbox-langtest --only-built    # only those whose images exist
//
// Build logs go to one file per language under --log-dir, so the terminal
// shows one line per finished language and the table.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/sandbox"
)

func main() {
	var cfg config
	flag.StringVar(&cfg.dataDir, "data-dir", envOr("FIRESANDBOX_DATA", sandbox.DefaultDataDir), "data directory ($FIRESANDBOX_DATA)")
	flag.StringVar(&cfg.logDir, "log-dir", filepath.Join(os.TempDir(), "firesandbox-langtest"), "directory for one build and run log per language")
	flag.StringVar(&cfg.mirror, "mirror", os.Getenv("FIRESANDBOX_MIRROR"), "Debian mirror for builds ($FIRESANDBOX_MIRROR; default "+image.DefaultBase.Mirror+")")
	flag.IntVar(&cfg.jobs, "j", 1, "languages handled at once; the image store builds one image at a time, so more than 1 overlaps builds with test runs")
	flag.BoolVar(&cfg.onlyBuilt, "only-built", false, "skip languages whose images are not built instead of building them")
	flag.StringVar(&cfg.registry, "registry", os.Getenv("FIRESANDBOX_REGISTRY"), "host[:port] of an OCI registry mirror to pull OCI entries' images from ($FIRESANDBOX_REGISTRY)")
	flag.BoolVar(&cfg.oci, "oci", false, "build OCI entries from the registries they name (only where those are reachable); without it or -registry they are listed as unavailable here")
	flag.Float64Var(&cfg.slowdown, "slowdown", 0, "factor default limits are scaled by; 0: from the accelerator (1 on KVM, "+fmt.Sprint(image.TCGSlowdown)+" under TCG)")
	flag.DurationVar(&cfg.timeout, "timeout", 30*time.Minute, "limit per language, build and run together")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: %s [flags] [LANGUAGE...]\n\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	cfg.languages = flag.Args()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	failed, err := run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "langtest:", err)
		os.Exit(2)
	}
	if failed > 0 {
		fmt.Fprintf(os.Stderr, "langtest: %d language(s) failed; logs in %s\n", failed, cfg.logDir)
		os.Exit(1)
	}
}

func envOr(k, d string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return d
}

// config is what the flags say.
type config struct {
	dataDir, logDir, mirror string
	registry                string
	oci                     bool
	slowdown                float64
	jobs                    int
	onlyBuilt               bool
	timeout                 time.Duration
	languages               []string
}

func (c *config) validate() error {
	if c.jobs < 1 {
		return errors.New("-j must be at least 1")
	}
	if c.slowdown < 0 {
		return errors.New("-slowdown must not be negative")
	}
	if c.timeout <= 0 {
		return errors.New("--timeout must be positive")
	}
	return nil
}
