package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/firesandbox/firesandbox/internal/api"
	"github.com/firesandbox/firesandbox/internal/sandbox"
	"github.com/firesandbox/firesandbox/internal/tenant"
	"github.com/spf13/cobra"
)

type serveFlags struct {
	prestart          int
	memoryBudget      int64
	sandboxTimeout    time.Duration
	maxSandboxTimeout time.Duration
	maxForks          int
	poolRanges        map[string]sandbox.PoolRange // from the config file
	maxOutput         int64                        // from the config file
	listen            string
	apiKey            string
	pools             string
	maxVMs            int
	queue             int
	queueWait         time.Duration
	maxTimeout        time.Duration
	idleHibernate     time.Duration
	maxBody           int64
	grace             time.Duration
	requireKey        bool
	maxConns          int
	bodyTimeout       time.Duration
	hibernatedTTL     time.Duration
	allowedHosts      []string
	allowedOrigin     []string
	quota             tenant.Quota
	caps              api.ShapeCaps
	cluster           clusterFlags
	network           string
}

func newServeCmd(g *globalFlags) *cobra.Command {
	var f serveFlags
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve the HTTP API (native JSON and Piston v2)",
		Long: `Serve the HTTP API: the native JSON API under /v1 (languages, one-shot
runs, streaming runs, long-lived sandboxes), Piston v2 compatibility under
/api/v2 (runtimes, execute, and the interactive WebSocket connect), the
Judge0 CE API (/submissions, /languages, ...), /healthz and /metrics
(Prometheus).

It listens on 127.0.0.1:7070 unless told otherwise; listening on anything
but a loopback address needs API keys: --api-key (or $FIRESANDBOX_API_KEY),
a key of the default tenant, or --require-key with tenants' keys from
` + "`firesandbox key create`" + `. Clients send a key as "Authorization: Bearer KEY",
"X-API-Key: KEY" (E2B's SDKs) or "X-Auth-Token: KEY" (Judge0). Without a
required key, loopback requests with none act for the default tenant, and
are refused when they look like a browser's on another site's behalf.

Each tenant gets the --tenant-* quotas (override per tenant with ` + "`key quota`" + `);
each sandbox's shape is capped and must be one of --shape.

Sandboxes and their state live in <data-dir>/state.db and
<data-dir>/sandboxes/; they survive a restart. On SIGINT or SIGTERM the
server stops accepting requests, lets runs finish (then cancels them),
hibernates running sandboxes and stops its pools.`,
		Example: `  firesandbox serve
  curl -s localhost:7070/v1/run -d '{"language":"python","code":"print(6*7)"}'
  curl -s localhost:7070/api/v2/execute -d '{"language":"python","version":"*","files":[{"content":"print(1)"}]}'
  FIRESANDBOX_API_KEY=secret firesandbox serve --listen 0.0.0.0:7070 --pool python=2`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f.cluster.fromFile(cmd, g.file.Cluster)
			if err := f.fromFile(cmd, g.file.Serve); err != nil {
				return err
			}
			// serve restores the same snapshots again and again: QEMUs
			// started ahead pay off ([qemu] prestart in the file, or the
			// flag, which wins).
			if !cmd.Flags().Changed("prestart") && g.file.QEMU.Prestart != 0 {
				f.prestart = g.file.QEMU.Prestart
			}
			g.file.QEMU.Prestart = f.prestart
			return runServe(cmd.Context(), g, &f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.listen, "listen", api.DefaultListen, "address to listen on; non-loopback needs an API key")
	fl.StringVar(&f.apiKey, "api-key", os.Getenv("FIRESANDBOX_API_KEY"), "API key clients must send ($FIRESANDBOX_API_KEY)")
	fl.StringVar(&f.pools, "pool", "python=1..4", "warm pools: lang=N (fixed) or lang=MIN..MAX (MIN idle, more while runs come in), comma-separated (\"\" for none)")
	fl.IntVar(&f.prestart, "prestart", 1, "QEMU processes kept started ahead, waiting in -incoming defer, per snapshot restored again and again (one-shot runs without a network); a restore that takes one skips QEMU's start, ~20 ms of ~65; each costs ~28 MiB while it waits, for at most 8 snapshots (0: none; [qemu] prestart in the config file)")
	fl.IntVar(&f.maxVMs, "max-vms", 0, "work slots: runs and execs at once (default: number of CPUs); live sandboxes are bounded by --memory-budget")
	fl.Int64Var(&f.memoryBudget, "memory-budget", 0, "MiB of guest memory live VMs may take together (default: host RAM minus an eighth, minus room for the work slots and pools)")
	fl.DurationVar(&f.sandboxTimeout, "sandbox-timeout", 5*time.Minute, "a sandbox's lifetime unless its create asks for another")
	fl.DurationVar(&f.maxSandboxTimeout, "max-sandbox-timeout", 24*time.Hour, "the longest lifetime a sandbox may ask for")
	fl.IntVar(&f.maxForks, "max-forks", 16, "children one fork may make at most")
	fl.IntVar(&f.queue, "queue", 0, "requests that may wait for a VM before 429 (default 4 x --max-vms)")
	fl.DurationVar(&f.queueWait, "queue-wait", 30*time.Second, "how long a request waits for a VM before 503")
	fl.DurationVar(&f.maxTimeout, "max-timeout", time.Minute, "largest wall-clock limit a request may ask for")
	fl.DurationVar(&f.idleHibernate, "idle-hibernate", 10*time.Minute, "hibernate sandboxes unused this long (0: never)")
	fl.Int64Var(&f.maxBody, "max-body", 32<<20, "largest request body in bytes")
	fl.DurationVar(&f.grace, "shutdown-grace", 30*time.Second, "how long runs may finish on shutdown before they are cancelled")
	fl.BoolVar(&f.requireKey, "require-key", false, "every TCP request needs a key (--api-key or one from `key create`); needed to listen beyond loopback without --api-key")
	fl.IntVar(&f.maxConns, "max-conns", 1024, "open TCP connections at most; more are answered 503")
	fl.DurationVar(&f.bodyTimeout, "body-timeout", 30*time.Second, "how long a request body may take to arrive (plus 1s per 64 KiB received)")
	fl.DurationVar(&f.hibernatedTTL, "hibernated-ttl", 0, "delete sandboxes hibernated this long (0: keep them until deleted)")
	fl.StringVar(&f.network, "network", "", "VM networks: auto (where this host can; see doctor), on (fail without) or off (no VM gets a network device); default [serve.network] mode, else auto")
	fl.StringSliceVar(&f.allowedHosts, "allowed-host", nil, "Host names, besides loopback ones, that requests without a key may use")
	fl.StringSliceVar(&f.allowedOrigin, "allowed-origin", nil, "browser origins (http://host:port) whose pages may call the API without a key")
	fl.IntVar(&f.quota.VMs, "tenant-vms", 0, "per tenant: VMs at work at once, runs and running sandboxes (0: unlimited)")
	fl.IntVar(&f.quota.Sandboxes, "tenant-sandboxes", 0, "per tenant: sandboxes in any state but deleted (0: unlimited)")
	fl.IntVar(&f.quota.Hibernated, "tenant-hibernated", 0, "per tenant: hibernated sandboxes (0: unlimited)")
	fl.IntVar(&f.quota.DiskMiB, "tenant-disk-mib", 0, "per tenant: total MiB of sandbox disks (0: unlimited)")
	fl.IntVar(&f.quota.MemoryMiB, "tenant-memory-mib", 0, "per tenant: total MiB of memory of its VMs at work (0: unlimited)")
	fl.Float64Var(&f.quota.Rate, "tenant-rate", 0, "per tenant: requests per second (0: unlimited)")
	fl.IntVar(&f.quota.Burst, "tenant-burst", 0, "per tenant: requests at once above --tenant-rate (default 2 x rate)")
	fl.IntVar(&f.caps.MaxVCPUs, "max-sandbox-vcpus", 4, "vCPUs of one sandbox at most")
	fl.IntVar(&f.caps.MaxMemoryMiB, "max-sandbox-memory", 8192, "MiB of memory of one sandbox at most")
	fl.IntVar(&f.caps.MaxDiskMiB, "max-sandbox-disk", 16384, "MiB of disk of one sandbox at most")
	fl.StringSliceVar(&f.caps.Shapes, "shape", api.DefaultShapes, "sandbox shapes offered, VCPUSxMEMORY_MIB (each has its own snapshots); the default shape is always offered")
	f.cluster.register(fl)
	return cmd
}

// fromFile takes the config file's [serve] settings for every flag the
// command line left alone.
func (f *serveFlags) fromFile(cmd *cobra.Command, c serveConfig) error {
	unset := func(name string) bool { return !cmd.Flags().Changed(name) }
	if c.Listen != "" && unset("listen") {
		f.listen = c.Listen
	}
	if len(c.Pools) > 0 && unset("pool") {
		f.poolRanges = c.Pools
	}
	for _, o := range []struct {
		flag string
		set  bool
		do   func()
	}{
		{"max-vms", c.MaxVMs != 0, func() { f.maxVMs = c.MaxVMs }},
		{"memory-budget", c.MemoryBudgetMiB != 0, func() { f.memoryBudget = c.MemoryBudgetMiB }},
		{"sandbox-timeout", c.SandboxTimeout != 0, func() { f.sandboxTimeout = c.SandboxTimeout }},
		{"max-sandbox-timeout", c.MaxSandboxTimeout != 0, func() { f.maxSandboxTimeout = c.MaxSandboxTimeout }},
		{"max-forks", c.MaxForks != 0, func() { f.maxForks = c.MaxForks }},
		{"hibernated-ttl", c.HibernatedTTL != 0, func() { f.hibernatedTTL = c.HibernatedTTL }},
		{"queue", c.Queue != 0, func() { f.queue = c.Queue }},
		{"queue-wait", c.QueueWait != 0, func() { f.queueWait = c.QueueWait }},
		{"max-timeout", c.MaxTimeout != 0, func() { f.maxTimeout = c.MaxTimeout }},
		{"idle-hibernate", c.IdleHibernate != 0, func() { f.idleHibernate = c.IdleHibernate }},
		{"max-body", c.MaxBody != 0, func() { f.maxBody = c.MaxBody }},
		{"shutdown-grace", c.ShutdownGrace != 0, func() { f.grace = c.ShutdownGrace }},
	} {
		if o.set && unset(o.flag) {
			o.do()
		}
	}
	f.maxOutput = c.MaxOutput
	return nil
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
	pools := f.poolRanges
	if pools == nil {
		var err error
		if pools, err = parsePools(f.pools); err != nil {
			return err
		}
	}
	cfg := api.Config{Listen: f.listen, APIKey: f.apiKey, MaxTimeout: f.maxTimeout, MaxBody: f.maxBody, MaxOutput: f.maxOutput, ShutdownGrace: f.grace,
		RequireKey: f.requireKey, MaxConns: f.maxConns, BodyTimeout: f.bodyTimeout, AllowedHosts: f.allowedHosts,
		AllowedOrigins: f.allowedOrigin, Quota: f.quota, Caps: f.caps}
	if err := cfg.Validate(); err != nil {
		return usageError{err}
	}
	scfg := sandbox.ServiceConfig{MaxVMs: f.maxVMs, Queue: f.queue, QueueWait: f.queueWait, IdleHibernate: f.idleHibernate,
		HibernatedTTL: f.hibernatedTTL, Pools: pools, MemoryBudgetMiB: f.memoryBudget,
		SandboxTimeout: f.sandboxTimeout, MaxSandboxTimeout: f.maxSandboxTimeout, MaxForks: f.maxForks,
		Network: g.networkConfig(f.network)}
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
	var opened atomic.Pointer[sandbox.Service] // for the node's load reports, once open
	node, err := openNode(ctx, g, &f.cluster, f.listen, f.maxVMs, func() int {
		if s := opened.Load(); s != nil {
			return s.Limiter.Stats().InUse
		}
		return 0
	})
	if err != nil {
		return err
	}
	if node != nil {
		scfg.Directory = node
		// Last, after the sandboxes were hibernated into S3: hand them over.
		defer func() {
			if cerr := node.Close(context.Background()); cerr != nil {
				fmt.Fprintf(os.Stderr, "firesandbox: leave cluster: %v\n", cerr)
			}
		}()
	}
	svc, err := sandbox.OpenService(mgr, scfg, log)
	if err != nil {
		return err
	}
	opened.Store(svc)
	defer func() {
		if cerr := svc.Close(context.Background()); cerr != nil {
			fmt.Fprintf(os.Stderr, "firesandbox: %v\n", cerr)
		}
	}()
	apiOpts := []api.Option{api.WithLogger(log)}
	if node != nil {
		if err := node.Attach(ctx, svc.Sandboxes); err != nil {
			return err
		}
		shared, err := clusterShared(ctx, node)
		if err != nil {
			return err
		}
		apiOpts = append(append(apiOpts, clusterOuter(node, svc)), shared...)
	}
	srv, err := api.Open(cfg, svc, apiOpts...)
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
	fmt.Fprintf(os.Stderr, "firesandbox: serving on http://%s and %s (native API /v1, Piston /api/v2%s)\n", ln.Addr(), g.socketPath(), describeNode(node))
	served := make(chan error, 2)
	go func() { served <- srv.Serve(ln) }()
	go func() { served <- srv.Serve(uln) }()
	select {
	case err = <-served: // the listener failed
	case <-ctx.Done():
		fmt.Fprintln(os.Stderr, "firesandbox: shutting down: finishing runs, hibernating sandboxes")
	}
	if node != nil { // no new sandboxes here; the balancer sees /healthz fail
		if derr := node.Drain(context.Background()); derr != nil {
			fmt.Fprintf(os.Stderr, "firesandbox: drain: %v\n", derr)
		}
	}
	serr := srv.Shutdown(context.Background())
	if err == nil {
		err = errors.Join(<-served, <-served)
	}
	return errors.Join(err, serr)
}
