// Command firesandbox runs untrusted code in microVMs.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/buildinfo"
	"github.com/firesandbox/firesandbox/internal/sandbox"
	"github.com/firesandbox/firesandbox/internal/vmm/drivers"
	"github.com/spf13/cobra"
)

// exitError carries a specific exit code out of a command.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit %d", e.code) }

// Exit codes of firesandbox itself, chosen like docker run's so that they
// do not collide with common program exit codes.
const (
	exitInternal = 125 // firesandbox failed; the program did not run
	exitUsage    = 2
)

type globalFlags struct {
	configPath string
	file       fileConfig // the config file, read before every command
	noJailer   bool
	dataDir    string
	runDir     string
	driver     string
	accel      string
	memoryMiB  int
	vcpus      int
	verbose    bool
	format     string
	layering   string // disk layering: auto, clone or dm
	cluster    string // key commands: the cluster's directory, if any
}

func (g *globalFlags) config() sandbox.Config {
	snaps := g.file.Snapshots
	// Pulled snapshots are restored only if signed by a trusted key.
	snaps.TrustedKeys = append(append([]string(nil), snaps.TrustedKeys...), splitKeys(os.Getenv("FIRESANDBOX_TRUSTED_KEYS"))...)
	return sandbox.Config{DataDir: g.dataDir, RunDir: g.runDir, Driver: g.driver, Accel: g.accel, MemoryMiB: g.memoryMiB, VCPUs: g.vcpus, ImageFormat: g.format,
		DiskLayering: g.layering, Snapshots: snaps, VMM: g.vmmConfig()}
}

// vmmConfig is the drivers configuration every command uses: the config
// file's, with the driver and accelerator the command line chose.
func (g *globalFlags) vmmConfig() drivers.Config {
	c := g.file.Config
	c.Driver, c.Accel = g.driver, g.accel
	return c
}

func (g *globalFlags) logger() *slog.Logger {
	lvl := slog.LevelWarn
	if g.verbose {
		lvl = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
}

func (g *globalFlags) manager() (*sandbox.Manager, error) {
	return sandbox.New(g.config(), sandbox.WithLogger(g.logger()))
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func newRoot() *cobra.Command { return newRootWith(&globalFlags{}) }

// newRootWith is newRoot with the global settings in g, for tests.
func newRootWith(g *globalFlags) *cobra.Command {
	root := &cobra.Command{
		Use:   "firesandbox",
		Short: "Run untrusted code in microVMs, in many languages, fast",
		Long: `firesandbox runs code (often written by an LLM agent) inside microVMs.

Each run gets its own VM: a real kernel, a read-only language image with a
private writable layer, and a guest agent that runs the program as an
unprivileged user with time, output, memory and process limits.

First time on a host:
  make setup                                  # packages, kernel, python image
  firesandbox run python -c 'print(6*7)'

Everything lives under the data directory (--data-dir, $FIRESANDBOX_DATA,
default /var/lib/firesandbox).`,
		Version:           buildinfo.String(),
		SilenceUsage:      true,
		SilenceErrors:     true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error { return g.applyConfig(cmd) },
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.dataDir, "data-dir", envOr("FIRESANDBOX_DATA", sandbox.DefaultDataDir), "data directory: kernels, images, snapshots, state ($FIRESANDBOX_DATA)")
	pf.StringVar(&g.configPath, "config", envOr("FIRESANDBOX_CONFIG", ""), "config file (TOML; unknown keys are errors); default "+DefaultConfigFile+" if it exists ($FIRESANDBOX_CONFIG)")
	pf.BoolVar(&g.noJailer, "no-jailer", false, "run Firecracker without its jailer (no chroot, uid drop, cgroup or namespaces): for debugging only")
	pf.StringVar(&g.runDir, "run-dir", envOr("FIRESANDBOX_RUN", sandbox.DefaultRunDir), "directory for VM sockets and logs and serve's unix socket; one per serve ($FIRESANDBOX_RUN)")
	pf.StringVar(&g.driver, "driver", envOr("FIRESANDBOX_DRIVER", "auto"), "VMM driver: auto (firecracker where usable, else qemu), qemu or firecracker ($FIRESANDBOX_DRIVER)")
	pf.StringVar(&g.accel, "accel", "auto", "QEMU accelerator: auto (probe KVM by booting, else TCG), kvm or tcg; $FIRESANDBOX_ACCEL overrides")
	pf.IntVar(&g.memoryMiB, "memory", 512, "guest memory in MiB")
	pf.IntVar(&g.vcpus, "vcpus", 1, "guest vCPUs")
	pf.StringVar(&g.layering, "disk-layering", "auto", "how a sandbox's disk is made from its template's: auto (device-mapper where the host has it, else clone), clone or dm")
	pf.StringVar(&g.format, "image-format", "squashfs", "image format to run from: squashfs, erofs or ext4 (build it first with image build --format)")
	pf.BoolVarP(&g.verbose, "verbose", "v", false, "log what happens, with timings, to stderr")

	root.AddCommand(newRunCmd(g), newKernelCmd(g), newImageCmd(g), newLanguagesCmd(g), newDoctorCmd(g), newSnapshotCmd(g), newKeyCmd(g), newServeCmd(g), newSandboxCmd(g))
	return root
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	root := newRoot()
	err := root.ExecuteContext(ctx)
	stop()
	var ee exitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		os.Exit(ee.code)
	default:
		// Errors can carry guest text (a console tail, an agent message).
		fmt.Fprintf(os.Stderr, "firesandbox: %s\n", agentproto.TerminalSafe(err.Error()))
		if isUsage(err) {
			os.Exit(exitUsage)
		}
		os.Exit(exitInternal)
	}
}

// usageError marks errors in how the command was called.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

func isUsage(err error) bool {
	var u usageError
	return errors.As(err, &u)
}

func usagef(f string, a ...any) error { return usageError{fmt.Errorf(f, a...)} }
