package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/firesandbox/firesandbox/internal/api"
	"github.com/firesandbox/firesandbox/internal/sandbox"
	"github.com/firesandbox/firesandbox/internal/snapshot"
	"github.com/firesandbox/firesandbox/internal/vmm/drivers"
	"github.com/spf13/cobra"
)

// DefaultConfigFile is read when --config is not given; it may be absent.
const DefaultConfigFile = "/etc/firesandbox/config.toml"

// fileConfig is the config file: what serve, run, doctor and the other
// commands share. Every key is optional; a flag given on the command line
// wins over the environment, which wins over the file.
//
//	data_dir = "/var/lib/firesandbox"
//	driver = "auto"                 # auto | qemu | firecracker
//	accel = "auto"                  # QEMU: auto | kvm | tcg
//	vcpus = 1
//	memory_mib = 512
//	disk_layering = "auto"          # auto | clone | dm (see sandbox.Config)
//
//	[qemu]                          # see internal/vmm/qemu.Config
//	tb_size_mib = 64
//	prestart = 1                    # QEMUs started ahead per hot snapshot (serve's default; serve --prestart)
//
//	[firecracker]                   # see internal/vmm/firecracker.Config
//	no_jailer = false
//
//	[snapshots]
//	trusted_keys = ["ed25519:..."]
//
//	[serve]
//	listen = "127.0.0.1:7070"
//	max_vms = 8
//	queue_wait = "30s"
//	[serve.pools]
//	python = "1..4"
//
//	[cluster]                       # one host of many: see serve --cluster
//	url = "postgres://firesandbox:...@db:5432/firesandbox?sslmode=verify-full"
//	advertise = "http://10.0.0.11:7070"
//	remote = "s3://firesandbox-hibernations/cluster"
type fileConfig struct {
	DataDir     string `toml:"data_dir"`
	RunDir      string `toml:"run_dir"`
	ImageFormat string `toml:"image_format"`
	VCPUs       int    `toml:"vcpus"`
	MemoryMiB   int    `toml:"memory_mib"`
	// drivers.Config brings driver, accel, [qemu] and [firecracker].
	drivers.Config
	Snapshots snapshot.Config `toml:"snapshots"`
	Serve     serveConfig     `toml:"serve"`
	Cluster   clusterConfig   `toml:"cluster"`

	// DiskLayering is sandbox.Config.DiskLayering.
	DiskLayering string `toml:"disk_layering"`
}

// serveConfig is the [serve] table: the HTTP side and the service behind it.
type serveConfig struct {
	api.Config
	sandbox.ServiceConfig
}

// loadConfig reads path (DefaultConfigFile if empty, which may then be
// missing). Unknown keys are errors: a typo must not pass silently.
func loadConfig(path string, explicit bool) (fileConfig, error) {
	var c fileConfig
	if path == "" {
		path = DefaultConfigFile
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && !explicit {
		return c, nil
	}
	if err != nil {
		return c, usageError{fmt.Errorf("config: %w", err)}
	}
	md, err := toml.Decode(string(b), &c)
	if err != nil {
		return c, usageError{fmt.Errorf("config %s: %w", path, err)}
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		sort.Strings(keys)
		return c, usageError{fmt.Errorf("config %s: unknown keys: %s", path, strings.Join(keys, ", "))}
	}
	var errs []error
	if err := c.Config.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.Snapshots.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.Serve.ServiceConfig.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return c, usageError{fmt.Errorf("config %s: %w", path, err)}
	}
	return c, nil
}

// applyConfig fills the global settings a command line did not set (by
// flag or environment) from the config file.
func (g *globalFlags) applyConfig(cmd *cobra.Command) error {
	explicit := cmd.Flags().Changed("config") || os.Getenv("FIRESANDBOX_CONFIG") != ""
	c, err := loadConfig(g.configPath, explicit)
	if err != nil {
		return err
	}
	g.file = c
	unset := func(flag, env string) bool {
		return !cmd.Flags().Changed(flag) && (env == "" || os.Getenv(env) == "")
	}
	setS := func(dst *string, v, flag, env string) {
		if v != "" && unset(flag, env) {
			*dst = v
		}
	}
	setI := func(dst *int, v int, flag string) {
		if v != 0 && unset(flag, "") {
			*dst = v
		}
	}
	setS(&g.dataDir, c.DataDir, "data-dir", "FIRESANDBOX_DATA")
	setS(&g.runDir, c.RunDir, "run-dir", "FIRESANDBOX_RUN")
	setS(&g.driver, c.Driver, "driver", "FIRESANDBOX_DRIVER")
	setS(&g.accel, c.Accel, "accel", "")
	setS(&g.format, c.ImageFormat, "image-format", "")
	setS(&g.layering, c.DiskLayering, "disk-layering", "")
	setI(&g.vcpus, c.VCPUs, "vcpus")
	setI(&g.memoryMiB, c.MemoryMiB, "memory")
	if cmd.Flags().Changed("no-jailer") {
		g.file.Firecracker.NoJailer = g.noJailer
	}
	return nil
}
