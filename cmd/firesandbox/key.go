package main

import (
	"crypto/ed25519"
	"fmt"
	"os"
	"path/filepath"

	"github.com/firesandbox/firesandbox/internal/snapshot"
	"github.com/spf13/cobra"
)

// defaultSigningKey is where `key generate` puts the snapshot signing key
// and where `snapshot push` looks for it.
func defaultSigningKey(dataDir string) string {
	return filepath.Join(dataDir, "keys", "snapshot-signing.key")
}

func newKeyCmd(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "key",
		Short: "Make and manage API keys of tenants, and the keys that sign snapshots",
		Long: `API keys: every request to serve presents a key (Authorization: Bearer KEY,
X-API-Key, Judge0's X-Auth-Token, or E2B's X-API-KEY), and the key names its
tenant. A tenant sees only its own sandboxes, runs and submissions, within
its quotas. Keys are stored hashed in <data-dir>/state.db and take effect at
once, also on a serve that is running.

  firesandbox key create --tenant acme      # prints the key, once
  firesandbox key ls
  firesandbox key rm ID
  firesandbox key quota --tenant acme --sandboxes 10 --vms 4

Signing keys: snapshots pushed to a remote carry an ed25519 signature over
their manifest. Every host that pulls them must trust the signer's public
key (snapshots.trusted_keys in the configuration, or --trusted-key), or it
refuses them.`,
	}

	cmd.PersistentFlags().StringVar(&g.cluster, "cluster", os.Getenv("FIRESANDBOX_CLUSTER"),
		"API keys and quotas: those of the cluster whose directory this is (postgres://…), not of <data-dir>/state.db ($FIRESANDBOX_CLUSTER)")

	var out string
	generate := &cobra.Command{
		Use:   "generate",
		Short: "Make a snapshot signing key and print its public key",
		Long: `Write a new ed25519 private key (PEM, mode 0600; an existing file is
never overwritten) and print its public key on stdout, in the form that
snapshots.trusted_keys and --trusted-key take.`,
		Example: `  firesandbox key generate
  firesandbox key generate --out /etc/firesandbox/snapshot-signing.key`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				out = defaultSigningKey(g.dataDir)
			}
			pub, err := snapshot.GenerateKey(out)
			if err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "private key: %s (keep it on the hosts that push)\ntrust it elsewhere with: trusted_keys = [%q]\n", out, snapshot.FormatPublicKey(pub))
			fmt.Println(snapshot.FormatPublicKey(pub))
			return nil
		},
	}
	generate.Flags().StringVar(&out, "out", "", "where to write the private key (default <data-dir>/keys/snapshot-signing.key)")

	public := &cobra.Command{
		Use:   "public [PRIVATE-KEY-FILE]",
		Short: "Print the public key of a signing key",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p := defaultSigningKey(g.dataDir)
			if len(args) == 1 {
				p = args[0]
			}
			k, err := snapshot.LoadPrivateKey(p)
			if err != nil {
				return err
			}
			fmt.Println(snapshot.FormatPublicKey(k.Public().(ed25519.PublicKey)))
			return nil
		},
	}
	cmd.AddCommand(generate, public, newKeyCreateCmd(g), newKeyLsCmd(g), newKeyRmCmd(g), newKeyQuotaCmd(g))
	return cmd
}
