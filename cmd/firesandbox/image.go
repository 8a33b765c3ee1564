package main

import (
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/spf13/cobra"
)

func newImageCmd(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Build and list language images",
	}
	var format, mirror, registry string
	build := &cobra.Command{
		Use:   "build LANGUAGE...",
		Short: "Build the root filesystem image of one or more languages",
		Long: `Build a language's image: debootstrap a Debian minbase (of the suite the
entry names) with the language's packages, npm packages and setup
commands, add the unprivileged sandbox user, and pack it read-only
(SquashFS with zstd by default); or, for an entry that names an OCI image,
flatten that image's layers. Needs root and network access to a Debian
mirror (and npm, or the OCI registry, for entries that use them). An image
is identified by a digest of its inputs: building one that exists does
nothing. LANGUAGE@VERSION builds one version of a language.`,
		Example: `  firesandbox image build python
  firesandbox image build python@3.13 nodejs@20
  firesandbox image build --registry mirror.example:5000 julia
  firesandbox image build --format erofs python`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			mgr, err := g.manager()
			if err != nil {
				return err
			}
			base := image.DefaultBase
			if mirror != "" {
				base.Mirror = mirror
			}
			for _, arg := range args {
				name, version, _ := strings.Cut(arg, "@")
				e, err := mgr.Catalog().Lookup(name, version)
				if err != nil {
					return err
				}
				f := format
				if f == "" {
					f = g.format
				}
				if _, err := mgr.Images().Build(cmd.Context(), e, image.BuildOptions{Format: f, Base: base, Registry: registry, Progress: os.Stderr}); err != nil {
					return err
				}
			}
			return nil
		},
	}
	build.Flags().StringVar(&format, "format", "", "image format: squashfs, erofs or ext4 (default: --image-format)")
	build.Flags().StringVar(&registry, "registry", os.Getenv("FIRESANDBOX_REGISTRY"), "host[:port] of an OCI registry mirror to pull OCI entries' images from instead of the registry they name ($FIRESANDBOX_REGISTRY)")
	build.Flags().StringVar(&mirror, "mirror", os.Getenv("FIRESANDBOX_MIRROR"), "Debian mirror ($FIRESANDBOX_MIRROR; default "+image.DefaultBase.Mirror+")")
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List built images",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ims, err := image.NewStore(g.dataDir).List()
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tLANGUAGE\tFORMAT\tPACKED\tUNPACKED\tON LAYER\tBUILD TIME\tCREATED")
			var total int64
			for _, im := range ims {
				parent := im.Parent
				if parent == "" {
					parent = "-"
				}
				total += im.PackedBytes
				fmt.Fprintf(tw, "%s\t%s %s\t%s\t%s\t%s\t%s\t%s\t%s\n", im.ID, im.Language, im.Version, im.Format,
					mib(im.PackedBytes), mib(im.UnpackedBytes), parent, (time.Duration(im.BuildSeconds * 1e9)).Round(100*time.Millisecond),
					im.Created.Format(time.DateTime))
			}
			fmt.Fprintf(tw, "total\t%d layers\t\t%s\t\t\t\t\n", len(ims), mib(total))
			return tw.Flush()
		},
	}
	var dryRun bool
	prune := &cobra.Command{
		Use:   "prune",
		Short: "Remove images and layers that no catalog language uses any more",
		Long: `Remove built images whose id no current catalog entry produces (an entry
or the builder changed since they were built), and base layers no kept
image sits on. Snapshots of removed images are rebuilt when next needed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			mgr, err := g.manager()
			if err != nil {
				return err
			}
			st := mgr.Images()
			removed, err := st.Prune(mgr.Catalog(), dryRun)
			for _, im := range removed {
				fmt.Printf("%s %s (%s %s, %s)\n", map[bool]string{true: "would remove", false: "removed"}[dryRun], im.ID, im.Language, im.Format, mib(im.PackedBytes))
			}
			return err
		},
	}
	prune.Flags().BoolVar(&dryRun, "dry-run", false, "only list what would be removed")
	cmd.AddCommand(build, ls, prune)
	return cmd
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func newLanguagesCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "languages",
		Short: "List the languages of the catalog and whether their images are built",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			mgr, err := g.manager()
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "LANGUAGE\tVERSION\tALIASES\tIMAGE")
			for _, e := range mgr.Catalog().Entries() {
				state := "not built (firesandbox image build " + e.Name + ")"
				if e.Unavailable != "" {
					state = "unavailable: " + e.Unavailable
				} else if im, err := mgr.Images().ForEntry(e, mgr.Config().ImageFormat); err == nil {
					state = im.ID
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", e.Name, e.Version, strings.Join(e.Aliases, ","), state)
			}
			return tw.Flush()
		},
	}
}
