package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/cluster"
	"github.com/firesandbox/firesandbox/internal/state"
	"github.com/firesandbox/firesandbox/internal/tenant"
	"github.com/spf13/cobra"
)

// withKeys opens the key store serve uses: the shared directory of a
// cluster (--cluster), else the data directory's state database. Either
// way a running serve sees changes at once.
func withKeys(g *globalFlags, fn func(ctx context.Context, s tenant.KeyStore) error) error {
	ctx := context.Background()
	if g.cluster != "" {
		d, err := cluster.OpenDirectory(ctx, cluster.DirectoryConfig{URL: g.cluster, TTL: 10 * time.Second})
		if err != nil {
			return err
		}
		defer d.Close()
		return fn(ctx, cluster.NewKeys(d))
	}
	if err := os.MkdirAll(g.dataDir, 0o700); err != nil {
		return err
	}
	db, err := state.Open(filepath.Join(g.dataDir, "state.db"))
	if err != nil {
		return err
	}
	defer db.Close()
	s, err := tenant.OpenStore(db.SQL())
	if err != nil {
		return err
	}
	return fn(ctx, s)
}

func parseTenant(name string) (string, error) {
	t, err := tenant.Parse(name)
	if err != nil {
		return "", usageError{err}
	}
	return t, nil
}

func newKeyCreateCmd(g *globalFlags) *cobra.Command {
	var name, label string
	cmd := &cobra.Command{
		Use:   "create --tenant NAME",
		Short: "Make an API key for a tenant and print it (it is not shown again)",
		Long: `Make an API key for tenant NAME (made with its first key) and print it on
stdout. The key is "e2b_" and 40 hex digits, so E2B's SDKs take it as it is;
the same key works for the native API, Piston, Judge0 and E2B. Only its hash
is stored: keep the key, it is not shown again. Tenant "default" is the one
the single --api-key and key-less loopback requests act for.`,
		Example: `  firesandbox key create --tenant acme --name ci
  E2B_API_KEY=$(firesandbox key create --tenant acme) node app.js`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if name == "" {
				return usagef("--tenant is required")
			}
			t, err := parseTenant(name)
			if err != nil {
				return err
			}
			return withKeys(g, func(ctx context.Context, s tenant.KeyStore) error {
				secret, k, err := s.CreateKey(ctx, t, label)
				if err != nil {
					return err
				}
				fmt.Fprintf(os.Stderr, "key %s for tenant %s (shown once: keep it)\n", k.ID, tenant.Display(k.Tenant))
				fmt.Println(secret)
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&name, "tenant", "", "tenant the key acts for")
	cmd.Flags().StringVar(&label, "name", "", "a label for the key (who or what uses it)")
	return cmd
}

func newKeyLsCmd(g *globalFlags) *cobra.Command {
	var name string
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List API keys (their IDs, never the keys)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			all, t := name == "", ""
			if !all {
				var err error
				if t, err = parseTenant(name); err != nil {
					return err
				}
			}
			return withKeys(g, func(ctx context.Context, s tenant.KeyStore) error {
				keys, err := s.Keys(ctx, t, all)
				if err != nil {
					return err
				}
				tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tTENANT\tNAME\tCREATED\tLAST USED")
				for _, k := range keys {
					used := "never"
					if !k.LastUsedAt.IsZero() {
						used = k.LastUsedAt.Format(time.RFC3339)
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", k.ID, tenant.Display(k.Tenant), agentproto.TerminalSafe(k.Name), k.CreatedAt.Format(time.RFC3339), used)
				}
				return tw.Flush()
			})
		},
	}
	cmd.Flags().StringVar(&name, "tenant", "", "only this tenant's keys")
	return cmd
}

func newKeyRmCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "rm ID|KEY...",
		Short: "Remove API keys; requests with them fail from then on",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withKeys(g, func(ctx context.Context, s tenant.KeyStore) error {
				for _, ref := range args {
					k, err := s.RemoveKey(ctx, ref)
					if err != nil {
						return err
					}
					fmt.Fprintf(os.Stderr, "removed key %s of tenant %s\n", k.ID, tenant.Display(k.Tenant))
				}
				return nil
			})
		},
	}
}

func newKeyQuotaCmd(g *globalFlags) *cobra.Command {
	var name string
	vals := map[string]*int{}
	for _, flag := range []string{"vms", "sandboxes", "hibernated", "disk-mib", "memory-mib", "burst"} {
		vals[flag] = new(int)
	}
	var rate float64
	cmd := &cobra.Command{
		Use:   "quota --tenant NAME [--vms N] [--sandboxes N] ...",
		Short: "Show or change a tenant's quotas (overriding serve's --tenant-* defaults)",
		Long: `Without a quota flag, print the tenant's overrides. Each flag given sets that
quota for the tenant (0: unlimited), and -1 removes the override, so serve's
default (its --tenant-* flags) applies again. A running serve applies a
change within 2 seconds.`,
		Example: `  firesandbox key quota --tenant acme --vms 4 --sandboxes 20 --rate 10
  firesandbox key quota --tenant acme --rate -1`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if name == "" {
				return usagef("--tenant is required")
			}
			t, err := parseTenant(name)
			if err != nil {
				return err
			}
			return withKeys(g, func(ctx context.Context, s tenant.KeyStore) error {
				cur, err := s.Quota(ctx, t)
				if err != nil {
					return err
				}
				changed := false
				for flag, dst := range map[string]**int{"vms": &cur.VMs, "sandboxes": &cur.Sandboxes, "hibernated": &cur.Hibernated,
					"disk-mib": &cur.DiskMiB, "memory-mib": &cur.MemoryMiB, "burst": &cur.Burst} {
					if cmd.Flags().Changed(flag) {
						changed = true
						if v := *vals[flag]; v < 0 {
							*dst = nil
						} else {
							*dst = &v
						}
					}
				}
				if cmd.Flags().Changed("rate") {
					changed = true
					if rate < 0 {
						cur.Rate = nil
					} else {
						r := rate
						cur.Rate = &r
					}
				}
				if changed {
					if err := s.SetQuota(ctx, t, cur); err != nil {
						return err
					}
				}
				show := func(p *int) string {
					if p == nil {
						return "(server default)"
					}
					if *p == 0 {
						return "unlimited"
					}
					return fmt.Sprint(*p)
				}
				tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintf(tw, "tenant\t%s\n", tenant.Display(t))
				for _, f := range []struct {
					k string
					v *int
				}{{"vms", cur.VMs}, {"sandboxes", cur.Sandboxes}, {"hibernated", cur.Hibernated}, {"disk-mib", cur.DiskMiB}, {"memory-mib", cur.MemoryMiB}, {"burst", cur.Burst}} {
					fmt.Fprintf(tw, "%s\t%s\n", f.k, show(f.v))
				}
				r := "(server default)"
				if cur.Rate != nil {
					r = fmt.Sprintf("%g/s", *cur.Rate)
				}
				fmt.Fprintf(tw, "rate\t%s\n", r)
				return tw.Flush()
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&name, "tenant", "", "the tenant")
	fl.IntVar(vals["vms"], "vms", 0, "VMs at work at once (runs and running sandboxes)")
	fl.IntVar(vals["sandboxes"], "sandboxes", 0, "sandboxes in any state but deleted")
	fl.IntVar(vals["hibernated"], "hibernated", 0, "hibernated sandboxes")
	fl.IntVar(vals["disk-mib"], "disk-mib", 0, "total MiB of sandbox disks")
	fl.IntVar(vals["memory-mib"], "memory-mib", 0, "total MiB of memory of VMs at work")
	fl.IntVar(vals["burst"], "burst", 0, "requests at once above --rate")
	fl.Float64Var(&rate, "rate", 0, "requests per second")
	return cmd
}
