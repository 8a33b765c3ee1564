package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/guestkernel"
	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/snapshot"
	"github.com/firesandbox/firesandbox/internal/vmm"
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
	// NoPrewarm leaves languages' prewarmed runtimes out of snapshots, so
	// every run starts its interpreter (for comparison; slower).
	NoPrewarm bool `json:"no_prewarm"`
}

// DefaultDataDir is where firesandbox keeps its data unless told otherwise.
const DefaultDataDir = "/var/lib/firesandbox"

func (c *Config) setDefaults() {
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	if c.RunDir == "" {
		c.RunDir = "/run/firesandbox"
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
	if c.VCPUs < 0 || c.VCPUs > 32 || c.MemoryMiB < 0 || c.MemoryMiB > 64<<10 {
		return fmt.Errorf("%w: vcpus %d / memory %d MiB out of range", ErrBadRequest, c.VCPUs, c.MemoryMiB)
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
	driver    vmm.Driver // created on first use: choosing may boot a probe VM
	pools
}

// Option configures a Manager.
type Option func(*Manager)

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(m *Manager) { m.log = l } }

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
	m := &Manager{
		cfg: cfg, log: slog.New(slog.DiscardHandler), catalog: cat,
		images:    image.NewStore(cfg.DataDir),
		snapshots: snapshot.NewStore(filepath.Join(cfg.DataDir, "snapshots"), cfg.SnapshotCacheBytes),
	}
	for _, o := range opts {
		o(m)
	}
	m.sweep()
	return m, nil
}

// Catalog returns the language catalog.
func (m *Manager) Catalog() *image.Catalog { return m.catalog }

// Images returns the image store.
func (m *Manager) Images() *image.Store { return m.images }

// Config returns the effective configuration.
func (m *Manager) Config() Config { return m.cfg }

// VM is a booted machine with a connected agent.
type VM struct {
	Machine vmm.Machine
	Agent   *agentproto.Client
	// Ready is the time from asking for the VM to the agent's Hello
	// (after a restore: and its resync).
	Ready time.Duration
	// Restored says the VM came from a snapshot rather than a cold boot.
	Restored bool
	Shape    Shape
	owner    string
	disk     string   // writable layer disk, removed with the VM
	volumes  []string // packed mounts, removed with the VM
}

// Close stops the VM and frees everything it held.
func (v *VM) Close() error {
	if v.Agent != nil {
		v.Agent.Close()
	}
	var err error
	if v.Machine != nil {
		err = v.Machine.Stop(context.Background())
	}
	if v.owner != "" {
		os.Remove(v.owner)
	}
	if v.disk != "" {
		os.Remove(v.disk)
	}
	for _, vol := range v.volumes {
		os.Remove(vol)
	}
	return err
}

// prepare finds what a VM of e needs: the current kernel, e's image and
// the driver (chosen on first use).
func (m *Manager) prepare(ctx context.Context, e *image.Entry) (*guestkernel.Kernel, *image.Image, vmm.Driver, error) {
	k, err := guestkernel.Load(m.cfg.DataDir)
	if err != nil {
		return nil, nil, nil, err
	}
	img, err := m.images.ForEntry(e, m.cfg.ImageFormat)
	if err != nil {
		return nil, nil, nil, err
	}
	d, err := m.Driver(ctx, k, img)
	if err != nil {
		return nil, nil, nil, err
	}
	return k, img, d, nil
}

func newID(prefix string) string {
	b := make([]byte, 5)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// vmConfig describes a VM of img: one read-only disk per image layer,
// bottom first, which the agent stacks with overlayfs.
func (m *Manager) vmConfig(d vmm.Driver, k *guestkernel.Kernel, img *image.Image, shape Shape, id, disk string, mounts []Mount, volumes []string) (vmm.Config, error) {
	layers, err := m.images.Layers(img)
	if err != nil {
		return vmm.Config{}, err
	}
	var disks []vmm.Disk
	var refs []string
	for i, l := range layers {
		did := fmt.Sprintf("layer%d", i)
		disks = append(disks, vmm.Disk{ID: did, Path: l.Path(), ReadOnly: true})
		refs = append(refs, vmm.GuestDiskRef(d.Capabilities(), i, did))
	}
	boot := agentproto.Boot{Root: refs, RootFS: img.Format}
	if disk != "" {
		disks = append(disks, vmm.Disk{ID: "upper", Path: disk})
		boot.Upper = vmm.GuestDiskRef(d.Capabilities(), len(disks)-1, "upper")
	}
	for i, v := range volumes {
		did := fmt.Sprintf("mount%d", i)
		disks = append(disks, vmm.Disk{ID: did, Path: v, ReadOnly: true})
		boot.Mounts = append(boot.Mounts, agentproto.Mount{Disk: vmm.GuestDiskRef(d.Capabilities(), len(disks)-1, did), Dir: mounts[i].GuestDir})
	}
	cmdline, err := boot.Args()
	if err != nil {
		return vmm.Config{}, err
	}
	return vmm.Config{
		ID:        id,
		Kernel:    k.Vmlinux,
		Initrd:    k.Initramfs,
		VCPUs:     shape.VCPUs,
		MemoryMiB: shape.MemoryMiB,
		Disks:     disks,
		Cmdline:   cmdline,
		RunDir:    filepath.Join(m.cfg.RunDir, id),
	}, nil
}

// diskPath is where VM id's writable disk lives: in the data directory,
// so hibernation moves it with a rename.
func (m *Manager) diskPath(id string) string {
	return filepath.Join(m.cfg.DataDir, "disks", id+".ext4")
}

// newDisk makes a sparse ext4 file system of mib MiB for a writable layer.
// Only metadata takes space until the guest writes.
func (m *Manager) newDisk(ctx context.Context, id string, mib int) (string, error) {
	p := m.diskPath(id)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return "", err
	}
	f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return "", err
	}
	err = f.Truncate(int64(mib) << 20)
	f.Close()
	if err == nil {
		var out []byte
		out, err = exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1", "-m", "0", p).CombinedOutput()
		if err != nil {
			err = fmt.Errorf("mkfs.ext4: %v: %s", err, out)
		}
	}
	if err != nil {
		os.Remove(p)
		return "", fmt.Errorf("create writable disk: %w", err)
	}
	return p, nil
}

func (m *Manager) boot(ctx context.Context, d vmm.Driver, k *guestkernel.Kernel, img *image.Image, shape Shape, timeout time.Duration, mounts ...Mount) (*VM, error) {
	start := time.Now()
	id := newID("vm-")
	owner, err := m.claim(id)
	if err != nil {
		return nil, err
	}
	vm := &VM{owner: owner, Shape: shape}
	fail := func(err error) (*VM, error) {
		vm.Close() // releases whatever it holds so far
		return nil, err
	}
	if shape.DiskMiB > 0 {
		if vm.disk, err = m.newDisk(ctx, id, shape.DiskMiB); err != nil {
			return fail(err)
		}
	}
	if vm.volumes, err = m.packMounts(ctx, id, mounts); err != nil {
		return fail(err)
	}
	cfg, err := m.vmConfig(d, k, img, shape, id, vm.disk, mounts, vm.volumes)
	if err != nil {
		return fail(err)
	}
	mach, err := d.Boot(ctx, cfg)
	if err != nil {
		return fail(fmt.Errorf("boot %s: %w", img.Language, err))
	}
	vm.Machine = mach
	if err := m.connect(ctx, vm, timeout); err != nil {
		return fail(err)
	}
	vm.Ready = time.Since(start)
	m.log.Debug("vm ready", "vm", id, "image", img.ID, "ready", vm.Ready)
	return vm, nil
}

// connect dials the agent and waits for its Hello, giving up early if the
// VMM exits; on failure the error carries the guest console's tail.
func (m *Manager) connect(ctx context.Context, vm *VM, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	go func() {
		if vm.Machine.Wait(ctx) == nil {
			cancel() // the VMM exited: stop waiting for a Hello
		}
	}()
	conn, err := vm.Machine.DialAgent(ctx)
	if err == nil {
		vm.Agent = agentproto.NewClient(conn)
		_, err = vm.Agent.WaitHello(ctx)
	}
	if err == nil {
		return nil
	}
	why := err.Error()
	if vm.Machine.State() == vmm.StateStopped {
		why = "the VM exited"
	} else if errors.Is(err, context.DeadlineExceeded) {
		why = fmt.Sprintf("no answer within %s", timeout)
	}
	return fmt.Errorf("%w (%s); guest console:\n%s", ErrNotReady, why, indent(vm.Machine.Console(2048)))
}

func indent(s string) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return "  (empty)"
	}
	return "  " + strings.ReplaceAll(s, "\n", "\n  ")
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

// sweep removes run directories and RAM files of VMs whose owner died.
// Their QEMU processes died with the owner (parent-death signal).
func (m *Manager) sweep() {
	owners, _ := filepath.Glob(filepath.Join(m.cfg.RunDir, "owners", "*"))
	for _, o := range owners {
		b, err := os.ReadFile(o)
		if err != nil {
			continue
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		if pid > 0 && syscall.Kill(pid, 0) == nil {
			continue // owner alive
		}
		id := filepath.Base(o)
		m.log.Info("sweeping leftovers of dead VM", "vm", id)
		os.RemoveAll(filepath.Join(m.cfg.RunDir, id))
		os.Remove(filepath.Join("/dev/shm", "firesandbox-"+id+".ram"))
		// Its writable disk and packed mounts: without the VM's memory a
		// disk cannot be resumed (serve marks such a sandbox lost).
		os.Remove(m.diskPath(id))
		vols, _ := filepath.Glob(filepath.Join(m.cfg.DataDir, "disks", id+"-m*.squashfs"))
		for _, v := range vols {
			os.Remove(v)
		}
		os.Remove(o)
	}
}

// Streams receive a run's output as it is produced. Nil writers discard.
type Streams struct {
	Stdout, Stderr               io.Writer
	CompileStdout, CompileStderr io.Writer
}
