package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/firesandbox/firesandbox/internal/api"
	"github.com/firesandbox/firesandbox/internal/sandbox"
	"github.com/spf13/cobra"
)

type serveFlags struct {
	listen        string
	apiKey        string
	pools         string
	maxVMs        int
	queue         int
	queueWait     time.Duration
	maxTimeout    time.Duration
	idleHibernate time.Duration
	maxBody       int64
	grace         time.Duration
}

func newServeCmd(g *globalFlags) *cobra.Command {
	var f serveFlags
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve the HTTP API (native JSON and Piston v2)",
		Long: `Serve the HTTP API: the native JSON API under /v1 (languages, one-shot
runs, streaming runs, long-lived sandboxes), Piston v2 compatibility under
/api/v2 (runtimes, execute), /healthz and /metrics (Prometheus).

It listens on 127.0.0.1:7070 unless told otherwise; listening on anything
but a loopback address needs an API key (--api-key or $FIRESANDBOX_API_KEY),
which clients send as "Authorization: Bearer KEY" or "X-API-Key: KEY".

Sandboxes and their state live in <data-dir>/state.db and
<data-dir>/sandboxes/; they survive a restart. On SIGINT or SIGTERM the
server stops accepting requests, lets runs finish (then cancels them),
hibernates running sandboxes and stops its pools.`,
		Example: `  firesandbox serve
  curl -s localhost:7070/v1/run -d '{"language":"python","code":"print(6*7)"}'
  curl -s localhost:7070/api/v2/execute -d '{"language":"python","version":"*","files":[{"content":"print(1)"}]}'
  FIRESANDBOX_API_KEY=secret firesandbox serve --listen 0.0.0.0:7070 --pool python=2`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runServe(cmd.Context(), g, &f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.listen, "listen", api.DefaultListen, "address to listen on; non-loopback needs an API key")
	fl.StringVar(&f.apiKey, "api-key", os.Getenv("FIRESANDBOX_API_KEY"), "API key clients must send ($FIRESANDBOX_API_KEY)")
	fl.StringVar(&f.pools, "pool", "python=1..4", "warm pools: lang=N (fixed) or lang=MIN..MAX (MIN idle, more while runs come in), comma-separated (\"\" for none)")
	fl.IntVar(&f.maxVMs, "max-vms", 0, "VMs serving requests at once, runs and live sandboxes (default: number of CPUs)")
	fl.IntVar(&f.queue, "queue", 0, "requests that may wait for a VM before 429 (default 4 x --max-vms)")
	fl.DurationVar(&f.queueWait, "queue-wait", 30*time.Second, "how long a request waits for a VM before 503")
	fl.DurationVar(&f.maxTimeout, "max-timeout", time.Minute, "largest wall-clock limit a request may ask for")
	fl.DurationVar(&f.idleHibernate, "idle-hibernate", 10*time.Minute, "hibernate sandboxes unused this long (0: never)")
	fl.Int64Var(&f.maxBody, "max-body", 32<<20, "largest request body in bytes")
	fl.DurationVar(&f.grace, "shutdown-grace", 30*time.Second, "how long runs may finish on shutdown before they are cancelled")
	return cmd
}

// parsePools parses "python=2,go=1..4".
func parsePools(s string) (map[string]sandbox.PoolRange, error) {
	out := map[string]sandbox.PoolRange{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		lang, n, ok := strings.Cut(part, "=")
		if !ok || lang == "" {
			return nil, usagef("--pool %q: want lang=N or lang=MIN..MAX,...", part)
		}
		r, err := sandbox.ParsePoolRange(n)
		if err != nil {
			return nil, usagef("--pool %q: want lang=N or lang=MIN..MAX with 0 <= MIN <= MAX <= 64", part)
		}
		out[lang] = r
	}
	return out, nil
}

func runServe(ctx context.Context, g *globalFlags, f *serveFlags) error {
	pools, err := parsePools(f.pools)
	if err != nil {
		return err
	}
	cfg := api.Config{Listen: f.listen, APIKey: f.apiKey, MaxTimeout: f.maxTimeout, MaxBody: f.maxBody, ShutdownGrace: f.grace}
	if err := cfg.Validate(); err != nil {
		return usageError{err}
	}
	scfg := sandbox.ServiceConfig{MaxVMs: f.maxVMs, Queue: f.queue, QueueWait: f.queueWait, IdleHibernate: f.idleHibernate, Pools: pools}
	if err := scfg.Validate(); err != nil {
		return usageError{err}
	}
	release, err := g.serviceLock(0)
	if err != nil {
		return err
	}
	defer release()
	log := g.logger()
	mgr, err := g.manager()
	if err != nil {
		return err
	}
	svc, err := sandbox.OpenService(mgr, scfg, log)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := svc.Close(context.Background()); cerr != nil {
			fmt.Fprintf(os.Stderr, "firesandbox: %v\n", cerr)
		}
	}()
	srv, err := api.Open(cfg, svc, api.WithLogger(log))
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return errors.Join(fmt.Errorf("listen: %w", err), srv.Shutdown(context.Background()))
	}
	uln, err := listenSocket(g.socketPath())
	if err != nil {
		ln.Close()
		return errors.Join(err, srv.Shutdown(context.Background()))
	}
	defer os.Remove(g.socketPath())
	fmt.Fprintf(os.Stderr, "firesandbox: serving on http://%s and %s (native API /v1, Piston /api/v2)\n", ln.Addr(), g.socketPath())
	served := make(chan error, 2)
	go func() { served <- srv.Serve(ln) }()
	go func() { served <- srv.Serve(uln) }()
	select {
	case err = <-served: // the listener failed
	case <-ctx.Done():
		fmt.Fprintln(os.Stderr, "firesandbox: shutting down: finishing runs, hibernating sandboxes")
	}
	serr := srv.Shutdown(context.Background())
	if err == nil {
		err = errors.Join(<-served, <-served)
	}
	return errors.Join(err, serr)
}
