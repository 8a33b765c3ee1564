package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/firesandbox/firesandbox/internal/api"
	"github.com/firesandbox/firesandbox/internal/cluster"
	"github.com/firesandbox/firesandbox/internal/sandbox"
	"github.com/firesandbox/firesandbox/internal/snapshot"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// clusterFlags are serve's flags for running as one host of many.
type clusterFlags struct {
	url        string
	advertise  string
	hostID     string
	capacity   int
	remote     string
	signingKey string
	heartbeat  time.Duration
	ttl        time.Duration
}

func (c *clusterFlags) register(fl *pflag.FlagSet) {
	fl.StringVar(&c.url, "cluster", os.Getenv("FIRESANDBOX_CLUSTER"),
		"PostgreSQL URL of the shared directory (postgres://user:pass@host/db): run as one host of many ($FIRESANDBOX_CLUSTER)")
	fl.StringVar(&c.advertise, "advertise", os.Getenv("FIRESANDBOX_ADVERTISE"),
		"base URL other hosts reach this one at (default http://<listen>, which must then not be a wildcard) ($FIRESANDBOX_ADVERTISE)")
	fl.StringVar(&c.hostID, "host-id", os.Getenv("FIRESANDBOX_HOST_ID"),
		"this host's id in the directory; keep it across restarts (default: generated once into <data-dir>/host-id)")
	fl.IntVar(&c.capacity, "capacity", 0, "sandboxes with a VM the directory places here (default --max-vms)")
	fl.StringVar(&c.remote, "remote", os.Getenv("FIRESANDBOX_REMOTE"),
		"S3 location for hibernated sandboxes, s3://bucket/prefix, so other hosts can resume them ($FIRESANDBOX_REMOTE)")
	fl.StringVar(&c.signingKey, "signing-key", os.Getenv("FIRESANDBOX_SIGNING_KEY"),
		"key that signs the hibernations this host stores in S3 (default <data-dir>/keys/snapshot-signing.key if it exists) ($FIRESANDBOX_SIGNING_KEY)")
	fl.DurationVar(&c.heartbeat, "heartbeat", 2*time.Second, "how often this host renews its lease in the directory")
	fl.DurationVar(&c.ttl, "cluster-ttl", 10*time.Second, "a host silent this long is dead and its sandboxes are taken over (the same on every host)")
}

// clusterConfig is the config file's [cluster] table: the same settings
// as serve's cluster flags, which win over it (and so does the
// environment they read).
type clusterConfig struct {
	URL        string        `toml:"url"`
	Advertise  string        `toml:"advertise"`
	HostID     string        `toml:"host_id"`
	Capacity   int           `toml:"capacity"`
	Remote     string        `toml:"remote"`
	SigningKey string        `toml:"signing_key"`
	Heartbeat  time.Duration `toml:"heartbeat"`
	TTL        time.Duration `toml:"ttl"`
}

// fromFile takes the [cluster] settings the command line and the
// environment left alone.
func (c *clusterFlags) fromFile(cmd *cobra.Command, fc clusterConfig) {
	unset := func(flag, env string) bool {
		return !cmd.Flags().Changed(flag) && (env == "" || os.Getenv(env) == "")
	}
	for _, s := range []struct {
		dst       *string
		v         string
		flag, env string
	}{
		{&c.url, fc.URL, "cluster", "FIRESANDBOX_CLUSTER"},
		{&c.advertise, fc.Advertise, "advertise", "FIRESANDBOX_ADVERTISE"},
		{&c.hostID, fc.HostID, "host-id", "FIRESANDBOX_HOST_ID"},
		{&c.remote, fc.Remote, "remote", "FIRESANDBOX_REMOTE"},
		{&c.signingKey, fc.SigningKey, "signing-key", "FIRESANDBOX_SIGNING_KEY"},
	} {
		if s.v != "" && unset(s.flag, s.env) {
			*s.dst = s.v
		}
	}
	if fc.Capacity != 0 && unset("capacity", "") {
		c.capacity = fc.Capacity
	}
	if fc.Heartbeat != 0 && unset("heartbeat", "") {
		c.heartbeat = fc.Heartbeat
	}
	if fc.TTL != 0 && unset("cluster-ttl", "") {
		c.ttl = fc.TTL
	}
}

// openNode joins the cluster, if --cluster is set; nil otherwise.
// load reports the VMs in use with each heartbeat.
func openNode(ctx context.Context, g *globalFlags, c *clusterFlags, listen string, maxVMs int, load func() int) (*cluster.Node, error) {
	if c.url == "" {
		return nil, nil
	}
	addr := c.advertise
	if addr == "" {
		host, _, err := net.SplitHostPort(listen)
		if err != nil || host == "" || net.ParseIP(host) != nil && net.ParseIP(host).IsUnspecified() {
			return nil, usagef("--advertise: listening on %s, other hosts need this host's own address, e.g. --advertise http://10.0.0.5:7070", listen)
		}
		addr = "http://" + listen
	}
	capacity := c.capacity
	if capacity == 0 {
		capacity = maxVMs
	}
	if capacity == 0 {
		capacity = runtime.NumCPU()
	}
	cfg := cluster.Config{URL: c.url, HostID: c.hostID, HostIDFile: filepath.Join(g.dataDir, "host-id"),
		Address: addr, Capacity: capacity, Heartbeat: c.heartbeat, TTL: c.ttl}
	if err := cfg.Validate(); err != nil {
		return nil, usageError{err}
	}
	opts := []cluster.Option{cluster.WithLogger(g.logger().With("component", "cluster")), cluster.WithLoad(load)}
	if c.remote != "" {
		trustCfg := g.config().Snapshots
		key := c.signingKey
		if key == "" {
			if _, err := os.Stat(defaultSigningKey(g.dataDir)); err == nil {
				key = defaultSigningKey(g.dataDir)
			}
		}
		trustCfg.SigningKey = key
		trust, err := trustCfg.Trust()
		if err != nil {
			return nil, usageError{err}
		}
		signer, err := trustCfg.Signer()
		if err != nil {
			return nil, err
		}
		if signer == nil && !trust.AllowsUnsigned() {
			return nil, usagef("--remote: hibernations stored in S3 are signed: give --signing-key (firesandbox key generate makes one) and trust its public key on every host ($FIRESANDBOX_TRUSTED_KEYS)")
		}
		// A few quick retries: a hibernation must not wait long for S3;
		// what fails is pushed again by the next sync.
		r, err := snapshot.NewRemote(c.remote, snapshot.WithRemoteSigner(signer), snapshot.WithRemoteTrust(trust),
			snapshot.WithRemoteRetry(3, 200*time.Millisecond, time.Second), snapshot.WithRemoteStallTimeout(10*time.Second),
			snapshot.WithRemoteLogger(g.logger()))
		if err != nil {
			return nil, usageError{err}
		}
		opts = append(opts, cluster.WithRemote(r, trust))
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return cluster.Open(ctx, cfg, opts...)
}

// clusterRoutes says what the router forwards: one-shot work is refused
// (503) while every VM slot is busy and the queue is full, so the load
// balancer tries another host instead of queueing here.
func clusterRoutes(lim *sandbox.Limiter) cluster.Routes {
	return cluster.Routes{Full: func() bool {
		st := lim.Stats()
		return st.InUse >= st.Max && st.Waiting >= st.QueueMax
	}}
}

// clusterOuter wraps the API in the node's router.
func clusterOuter(node *cluster.Node, svc *sandbox.Service) api.Option {
	return api.WithOuter(func(h http.Handler) http.Handler { return node.Handler(h, clusterRoutes(svc.Limiter)) })
}

// clusterShared are the API's options for what every host must share:
// API keys and quota overrides, and the secret of E2B's access tokens.
func clusterShared(ctx context.Context, node *cluster.Node) ([]api.Option, error) {
	secret, err := node.Directory().Secret(ctx, "e2b-access-tokens", 32)
	if err != nil {
		return nil, err
	}
	return []api.Option{api.WithKeyStore(cluster.NewKeys(node.Directory())), api.WithE2BSecret(secret)}, nil
}

func describeNode(node *cluster.Node) string {
	if node == nil {
		return ""
	}
	return fmt.Sprintf(", cluster host %s", node.ID())
}
