package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/firesandbox/firesandbox/internal/disk"
	"github.com/firesandbox/firesandbox/internal/guestkernel"
	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/snapshot"
	"github.com/firesandbox/firesandbox/internal/vmm"
	"github.com/firesandbox/firesandbox/internal/vmm/drivers"
	"github.com/firesandbox/firesandbox/internal/vmm/vmmproc"
	"github.com/firesandbox/firesandbox/languages"
)

// Config configures a Manager.
type Config struct {
	// DataDir holds kernels, images, snapshots and state.
	DataDir string `json:"data_dir"`
	// RunDir holds per-VM sockets and logs; default /run/firesandbox.
	RunDir string `json:"run_dir"`
	// Driver is "auto" (default: firecracker where usable, else qemu),
	// "qemu" or "firecracker".
	Driver string `json:"driver"`
	// Accel is "auto" (default: probe by booting), "kvm" or "tcg"; QEMU only.
	Accel string `json:"accel"`
	// VCPUs and MemoryMiB shape every VM; defaults 1 and 512.
	VCPUs     int `json:"vcpus"`
	MemoryMiB int `json:"memory_mib"`
	// BootTimeout bounds a cold boot up to the agent's Hello; default 60s
	// (TCG boots take 3-4 s, loaded hosts much longer).
	BootTimeout time.Duration `json:"boot_timeout"`
	// ImageFormat is the root filesystem format; default squashfs.
	ImageFormat string `json:"image_format"`
	// SnapshotCacheBytes bounds the local snapshot cache; default 8 GiB.
	SnapshotCacheBytes int64 `json:"snapshot_cache_bytes"`
	// DiskLayering is how a sandbox's writable disk is made from its
	// template's pristine one: "auto" (default: device-mapper where the
	// host has it, else a clone), "clone" (a reflink or sparse copy) or
	// "dm" (a snapshot target over the shared base; an error on a host
	// without device-mapper). See disk.Layerer.
	DiskLayering string `json:"disk_layering"`
	// NoPrewarm leaves languages' prewarmed runtimes out of snapshots, so
	// every run starts its interpreter (for comparison; slower).
	NoPrewarm bool `json:"no_prewarm"`
	// Snapshots says which pulled snapshots to trust (signing keys).
	Snapshots snapshot.Config `json:"snapshots"`
	// VMM configures the drivers (the config file's [qemu] and
	// [firecracker] sections); Driver and Accel above override its own.
	VMM drivers.Config `json:"vmm"`
}

// DefaultDataDir is where firesandbox keeps its data unless told otherwise.
const DefaultDataDir = "/var/lib/firesandbox"

// DefaultRunDir holds per-VM sockets and logs unless told otherwise.
const DefaultRunDir = "/run/firesandbox"

func (c *Config) setDefaults() {
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	if c.RunDir == "" {
		c.RunDir = DefaultRunDir
	}
	if c.Driver == "" {
		c.Driver = "auto"
	}
	if c.Accel == "" {
		c.Accel = "auto"
	}
	if c.VCPUs == 0 {
		c.VCPUs = 1
	}
	if c.MemoryMiB == 0 {
		c.MemoryMiB = 512
	}
	if c.BootTimeout == 0 {
		c.BootTimeout = 60 * time.Second
	}
	if c.ImageFormat == "" {
		c.ImageFormat = image.FormatSquashFS
	}
	if c.SnapshotCacheBytes == 0 {
		c.SnapshotCacheBytes = 8 << 30
	}
	if c.DiskLayering == "" {
		c.DiskLayering = string(disk.LayeringAuto)
	}
}

// Validate checks a Config.
func (c *Config) Validate() error {
	switch c.Driver {
	case "", "auto", "qemu", "firecracker":
	default:
		return fmt.Errorf("%w: driver %q: want auto, qemu or firecracker", ErrBadRequest, c.Driver)
	}
	switch c.Accel {
	case "", "auto", "kvm", "tcg":
	default:
		return fmt.Errorf("%w: accel %q: want auto, kvm or tcg", ErrBadRequest, c.Accel)
	}
	switch c.ImageFormat {
	case "", image.FormatSquashFS, image.FormatEROFS, image.FormatExt4:
	default:
		return fmt.Errorf("%w: image format %q: want squashfs, erofs or ext4", ErrBadRequest, c.ImageFormat)
	}
	if _, err := disk.ParseLayering(c.DiskLayering); err != nil {
		return fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	if c.VCPUs < 0 || c.VCPUs > 32 || c.MemoryMiB < 0 || c.MemoryMiB > 64<<10 {
		return fmt.Errorf("%w: vcpus %d / memory %d MiB out of range", ErrBadRequest, c.VCPUs, c.MemoryMiB)
	}
	if err := c.Snapshots.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	return nil
}

// Manager runs code in VMs.
type Manager struct {
	cfg       Config
	log       *slog.Logger
	catalog   *image.Catalog
	images    *image.Store
	snapshots *snapshot.Store

	driver  vmm.Driver       // injected by WithDriver, else chosen by drivers
	layers  disk.Layerer     // injected by WithLayerer, else chosen from DiskLayering
	drivers *drivers.Chooser // chooses once, safely for concurrent callers

	tmpl templates
	pools
	networking // VMs' networks, if the Service gave it one (network.go)

	snapshotsMade atomic.Int64 // snapshots created by this Manager
}

// Option configures a Manager.
type Option func(*Manager)

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(m *Manager) { m.log = l } }

// WithLayerer injects how VMs' writable disks are made, instead of
// choosing it from Config.DiskLayering.
func WithLayerer(l disk.Layerer) Option { return func(m *Manager) { m.layers = l } }

// WithDriver injects a VMM driver instead of choosing one from Config.
func WithDriver(d vmm.Driver) Option { return func(m *Manager) { m.driver = d } }

// New returns a Manager and sweeps what killed processes left behind.
func New(cfg Config, opts ...Option) (*Manager, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	cat, err := image.LoadCatalog(languages.FS)
	if err != nil {
		return nil, err
	}
	trust, err := cfg.Snapshots.Trust()
	if err != nil {
		return nil, err
	}
	m := &Manager{
		cfg: cfg, log: slog.New(slog.DiscardHandler), catalog: cat,
		images:    image.NewStore(cfg.DataDir),
		snapshots: snapshot.NewStore(filepath.Join(cfg.DataDir, "snapshots"), cfg.SnapshotCacheBytes, snapshot.WithTrust(trust)),
	}
	for _, o := range opts {
		o(m)
	}
	dopts := []drivers.Option{drivers.WithLogger(m.log), drivers.WithAccelCache(cfg.DataDir)}
	if m.driver != nil {
		dopts = append(dopts, drivers.WithDriver(m.driver))
	}
	if m.drivers, err = drivers.New(cfg.vmmConfig(), dopts...); err != nil {
		return nil, err
	}
	if m.layers == nil {
		want, _ := disk.ParseLayering(cfg.DiskLayering)
		if m.layers, err = disk.Choose(context.Background(), want, cfg.DataDir); err != nil {
			return nil, err
		}
		m.log.Debug("disk layering", "want", want, "layering", m.layers.Kind())
	}
	m.sweep()
	return m, nil
}

// Catalog returns the language catalog.
func (m *Manager) Catalog() *image.Catalog { return m.catalog }

// Images returns the image store.
func (m *Manager) Images() *image.Store { return m.images }

// DiskLayering is how this Manager makes VMs' writable disks.
func (m *Manager) DiskLayering() disk.Layering { return m.layers.Kind() }

// Config returns the effective configuration.
func (m *Manager) Config() Config { return m.cfg }

// vmmDriver returns the VMM driver, choosing it once: concurrent first
// callers wait for one choice (and at most one KVM probe).
func (m *Manager) vmmDriver(ctx context.Context, k *guestkernel.Kernel, img *image.Image) (vmm.Driver, error) {
	return m.Driver(ctx, k, img)
}

func newID(prefix string) string {
	b := make([]byte, 5)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// claim records that this process owns VM id, so a later Manager can tell
// a live VM's run directory from one a killed process left.
func (m *Manager) claim(id string) (string, error) {
	dir := filepath.Join(m.cfg.RunDir, "owners")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	p := filepath.Join(dir, id)
	return p, os.WriteFile(p, []byte(strconv.Itoa(os.Getpid())), 0o600)
}

// sweep removes run directories and RAM files of VMs whose owner died,
// and kills their VMMs where those outlived it.
func (m *Manager) sweep() {
	for o, pid := range m.owners() {
		if pid > 0 && syscall.Kill(pid, 0) == nil {
			continue // owner alive
		}
		id := filepath.Base(o)
		m.log.Info("sweeping leftovers of dead VM", "vm", id)
		// Kills its VMM if that very process still runs (Firecracker has
		// no parent-death signal), and removes its RAM file, jail and
		// run dir.
		if killed, err := vmmproc.Sweep(filepath.Join(m.cfg.RunDir, id)); err != nil {
			m.log.Warn("sweep", "vm", id, "err", err)
		} else if killed {
			m.log.Info("killed the VMM of a dead VM", "vm", id)
		}
		// Its writable disk and packed mounts: without the VM's memory a
		// disk cannot be resumed (serve marks such a sandbox lost).
		disk.RemoveVM(m.disksDir(), id)
		os.Remove(o)
	}
	// Layered disks' devices (and loop devices) of VMs whose owner is
	// gone, the ones just swept included.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := m.layers.Sweep(ctx, disk.SweepScope{Alive: m.ownerAlive, Alone: !m.othersOwnVMs()}); err != nil {
		m.log.Warn("sweep layered disks", "err", err)
	}
}

// owners maps each VM's owner file to the pid it names (0 if it names
// none).
func (m *Manager) owners() map[string]int {
	files, _ := filepath.Glob(filepath.Join(m.cfg.RunDir, "owners", "*"))
	out := make(map[string]int, len(files))
	for _, o := range files {
		b, err := os.ReadFile(o)
		if err != nil {
			continue
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		out[o] = pid
	}
	return out
}

// othersOwnVMs says whether another live process owns VMs here (a
// second serve, or a command run beside it).
func (m *Manager) othersOwnVMs() bool {
	for _, pid := range m.owners() {
		if pid > 0 && pid != os.Getpid() && syscall.Kill(pid, 0) == nil {
			return true
		}
	}
	return false
}

// ownerAlive says whether VM id's owner (this process or another) lives.
func (m *Manager) ownerAlive(id string) bool {
	if !strings.HasPrefix(id, "vm-") || strings.ContainsAny(id, "/.") {
		return false
	}
	b, err := os.ReadFile(filepath.Join(m.cfg.RunDir, "owners", id))
	if err != nil {
		return false
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid > 0 && syscall.Kill(pid, 0) == nil
}
