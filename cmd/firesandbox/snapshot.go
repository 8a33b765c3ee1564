package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/firesandbox/firesandbox/internal/guestkernel"
	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/snapshot"
	"github.com/spf13/cobra"
)

func newSnapshotCmd(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "Create, list, share and remove VM snapshots",
		Long: `A snapshot is a language's VM booted once, paused at "ready" and saved
(memory and device state). ` + "`firesandbox run`" + ` restores it instead of booting,
creating it on first use. Snapshots are tied to this host's VMM version,
kernel, image and VM shape; one that does not match, or whose files do not
match their digests, is refused and rebuilt.

Remote storage is any S3-compatible bucket: --remote s3://bucket/prefix
(or $FIRESANDBOX_REMOTE), with the endpoint and credentials from the usual
AWS variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_REGION).

Pushed snapshots are signed (ed25519, ` + "`firesandbox key generate`" + `), and a pull
refuses a snapshot whose signature is missing, altered, made for another
snapshot or made by a key it does not trust (--trusted-key), since
anyone who can write to the bucket could otherwise run code here.`,
	}
	var remote string
	var trust snapshot.Config
	addRemote := func(c *cobra.Command) {
		c.Flags().StringVar(&remote, "remote", os.Getenv("FIRESANDBOX_REMOTE"), "S3 location, s3://bucket/prefix ($FIRESANDBOX_REMOTE)")
	}
	addSigning := func(c *cobra.Command) {
		c.Flags().StringVar(&trust.SigningKey, "signing-key", os.Getenv("FIRESANDBOX_SIGNING_KEY"),
			"private key that signs the push ($FIRESANDBOX_SIGNING_KEY; default <data-dir>/keys/snapshot-signing.key)")
		c.Flags().BoolVar(&trust.AllowUnsigned, "allow-unsigned", false, "push without a signature (hosts that check signatures will refuse it)")
	}
	addTrust := func(c *cobra.Command) {
		c.Flags().StringSliceVar(&trust.TrustedKeys, "trusted-key", splitKeys(os.Getenv("FIRESANDBOX_TRUSTED_KEYS")),
			"public key (ed25519:...) whose signatures are accepted; repeat for several ($FIRESANDBOX_TRUSTED_KEYS, comma-separated)")
		c.Flags().BoolVar(&trust.AllowUnsigned, "allow-unsigned", false,
			"turn trust off: accept snapshots without checking signatures (anyone who can write to the bucket can then run code here)")
	}
	openRemote := func(push bool) (*snapshot.Remote, error) {
		if remote == "" {
			return nil, usagef("no remote: give --remote s3://bucket/prefix or set FIRESANDBOX_REMOTE")
		}
		t, err := trust.Trust()
		if err != nil {
			return nil, usageError{err}
		}
		opts := []snapshot.RemoteOption{snapshot.WithRemoteTrust(t), snapshot.WithRemoteLogger(g.logger())}
		if push {
			if trust.SigningKey == "" && !trust.AllowUnsigned {
				trust.SigningKey = defaultSigningKey(g.dataDir)
			}
			signer, err := trust.Signer()
			if err != nil {
				return nil, fmt.Errorf("%w (make one with `firesandbox key generate`, or push --allow-unsigned)", err)
			}
			opts = append(opts, snapshot.WithRemoteSigner(signer))
		}
		return snapshot.NewRemote(remote, opts...)
	}

	create := &cobra.Command{
		Use:     "create LANGUAGE...",
		Short:   "Boot each language once and save its snapshot (replacing an existing one)",
		Example: "  firesandbox snapshot create python",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			mgr, err := g.manager()
			if err != nil {
				return err
			}
			for _, name := range args {
				e, err := mgr.Catalog().Lookup(name, "")
				if err != nil {
					return err
				}
				start := time.Now()
				snap, err := mgr.CreateSnapshot(cmd.Context(), e)
				if err != nil {
					return err
				}
				fmt.Printf("%s: snapshot %s (%.0f MiB) in %s\n", e.Name, snap.Key, float64(snap.Size())/(1<<20), time.Since(start).Round(time.Millisecond))
			}
			return nil
		},
	}

	ls := &cobra.Command{
		Use:   "ls",
		Short: "List local snapshots, or those in --remote",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			defer tw.Flush()
			if remote != "" {
				r, err := openRemote(false)
				if err != nil {
					return err
				}
				list, err := r.List(cmd.Context())
				if err != nil {
					return err
				}
				fmt.Fprintln(tw, "KEY\tSIZE\tCREATED")
				for _, e := range list {
					fmt.Fprintf(tw, "%s\t%s\t%s\n", e.Key, mib(e.Size), e.Created.Format(time.DateTime))
				}
				return nil
			}
			list, err := snapshot.NewStore(filepath.Join(g.dataDir, "snapshots"), 0).List()
			if err != nil {
				return err
			}
			fmt.Fprintln(tw, "KEY\tLANGUAGE\tDRIVER\tMEMORY\tON DISK\tCREATED\tLAST USED")
			for _, e := range list {
				fmt.Fprintf(tw, "%s\t%s\t%s %s %s\t%d MiB\t%s\t%s\t%s\n", e.Key, e.Spec.Language, e.Spec.Driver, e.Spec.DriverVersion, e.Spec.Machine,
					e.Spec.MemoryMiB, mib(e.DiskBytes), e.Created.Format(time.DateTime), e.LastUsed.Format(time.DateTime))
			}
			return nil
		},
	}
	addRemote(ls)

	rm := &cobra.Command{
		Use:   "rm KEY...",
		Short: "Remove local snapshots (the next run rebuilds what it needs)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st := snapshot.NewStore(filepath.Join(g.dataDir, "snapshots"), 0)
			for _, k := range args {
				if err := st.Remove(k); err != nil {
					return err
				}
			}
			return nil
		},
	}

	push := &cobra.Command{
		Use:     "push KEY...",
		Short:   "Sign local snapshots and upload them to --remote (files first, manifest last)",
		Example: "  firesandbox snapshot push --remote s3://snapshots/prod python-a1f536ec0ecb7ac4",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := openRemote(true)
			if err != nil {
				return err
			}
			dir := filepath.Join(g.dataDir, "snapshots")
			for _, k := range args {
				if !snapshot.ValidKey(k) {
					return usagef("%q is not a snapshot key (see `firesandbox snapshot ls`)", k)
				}
				if _, err := os.Stat(filepath.Join(dir, k, "manifest.json")); err != nil {
					return fmt.Errorf("push %s: %w", k, snapshot.ErrNotFound)
				}
				if err := r.Push(cmd.Context(), filepath.Join(dir, k), progressPrinter("push "+k)); err != nil {
					return err
				}
				fmt.Fprintf(os.Stderr, "pushed %s\n", k)
			}
			return nil
		},
	}
	addRemote(push)
	addSigning(push)

	pull := &cobra.Command{
		Use:     "pull KEY...",
		Short:   "Download snapshots from --remote, verifying their signature, sizes and digests",
		Example: "  firesandbox snapshot pull --remote s3://snapshots/prod --trusted-key ed25519:3q2+7w... python-a1f536ec0ecb7ac4",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := openRemote(false)
			if err != nil {
				return err
			}
			t, _ := trust.Trust() // checked by openRemote
			st := snapshot.NewStore(filepath.Join(g.dataDir, "snapshots"), 0, snapshot.WithTrust(t))
			for _, k := range args {
				if err := pullOne(cmd.Context(), r, st, k); err != nil {
					return err
				}
			}
			return nil
		},
	}
	addRemote(pull)
	addTrust(pull)

	var dryRun bool
	prune := &cobra.Command{
		Use:   "prune",
		Short: "Remove local snapshots that nothing on this host can restore",
		Long: `Remove snapshots made for a guest kernel other than the current one or for
an image that is no longer built (each agent rebuild or image change makes
new ones; old ones are otherwise only evicted by the cache size limit).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			k, err := guestkernel.Load(g.dataDir)
			if err != nil {
				return err
			}
			images := image.NewStore(g.dataDir)
			keep := func(s snapshot.Spec) bool {
				_, err := images.Get(s.ImageID)
				return s.KernelID == k.ID() && err == nil
			}
			gone, err := snapshot.NewStore(filepath.Join(g.dataDir, "snapshots"), 0).Prune(keep, dryRun)
			for _, e := range gone {
				fmt.Printf("%s %s (%s)\n", map[bool]string{true: "would remove", false: "removed"}[dryRun], e.Key, mib(e.DiskBytes))
			}
			return err
		},
	}
	prune.Flags().BoolVar(&dryRun, "dry-run", false, "only list what would be removed")
	cmd.AddCommand(create, ls, rm, push, pull, prune)
	return cmd
}

func pullOne(ctx context.Context, r *snapshot.Remote, st *snapshot.Store, key string) error {
	if !snapshot.ValidKey(key) {
		return usagef("%q is not a snapshot key", key)
	}
	tmp, err := st.TempDir()
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	dest := filepath.Join(tmp, key)
	if err := r.Pull(ctx, key, dest, progressPrinter("pull "+key)); err != nil {
		return err
	}
	snap, err := st.Adopt(dest)
	if err != nil {
		return err
	}
	how := "signature, sizes and digests verified"
	if isUnsigned(snap.Dir) {
		how = "UNSIGNED (trust off), sizes and digests verified"
	}
	fmt.Fprintf(os.Stderr, "pulled %s (%.0f MiB), %s\n", snap.Key, float64(snap.Size())/(1<<20), how)
	return nil
}

// isUnsigned reports whether a pulled snapshot came without a signature.
func isUnsigned(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "manifest.sig"))
	return err != nil
}

// splitKeys splits a list of public keys separated by commas or spaces.
func splitKeys(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || unicode.IsSpace(r) })
}

// progressPrinter prints a transfer's progress to stderr, at most a few
// times a second per file.
func progressPrinter(what string) func(snapshot.Progress) {
	var mu sync.Mutex
	last := map[string]time.Time{}
	return func(p snapshot.Progress) {
		mu.Lock()
		defer mu.Unlock()
		done := p.Done >= p.Total
		if !done && time.Since(last[p.File]) < 250*time.Millisecond {
			return
		}
		last[p.File] = time.Now()
		pct := 100.0
		if p.Total > 0 {
			pct = 100 * float64(p.Done) / float64(p.Total)
		}
		fmt.Fprintf(os.Stderr, "%s: %s %5.1f%% (%s of %s)\n", what, p.File, pct, mib(p.Done), mib(p.Total))
	}
}
