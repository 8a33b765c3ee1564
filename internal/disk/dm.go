package disk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// Device-mapper layering: each VM's writable disk is a stack of kernel
// block devices over files, so a new VM or a fork costs one empty sparse
// file, whatever the base holds.
//
//	fs-<vm>        snapshot <below> <loop on the VM's CoW file> P 8 discard_zeroes_cow   (read-write: the VM's disk)
//	fs-<vm>-l<i>   snapshot <below> <loop on frozen layer i> P 8   (read-only; one per fork in the disk's history)
//	fs-<vm>-base   linear <read-only loop on the shared base> + zero up to the VM's size   (read-only)
//
// The base is never written: every table above it is read-only, and its
// loop device too. A snapshot target copies a chunk into its CoW file the
// first time the VM writes it, so a CoW file holds exactly what its VM
// wrote (plus a header). A discard of whole chunks in the VM punches them
// out of its CoW file again (discard_zeroes_cow becomes write-zeroes on
// the loop device, which the loop driver turns into a hole).
//
// Fork freezes the VM's CoW file into a new read-only layer and gives the
// VM a new empty one on top, all under the same device node, so its VMM
// keeps its open disk; children stack their own CoW files on the frozen
// chain. CoW stores are persistent (P), so a hibernated VM's chain is
// attached again on resume from the files alone (see Chain).
//
// The code drives dmsetup and losetup, as containerd's devmapper
// snapshotter does; the host needs device-mapper (dm-mod, dm-snapshot,
// dm-zero), loop devices and both tools. Attach, Freeze and Detach are
// the whole lifecycle:
//
//	mp := disk.NewMapper()
//	_ = disk.NewCoW(cow, 1<<30)
//	dev, _ := mp.Attach(ctx, "vm-1", disk.Chain{Base: base, SizeBytes: 1 << 30, Layers: []string{cow}})
//	// boot a VM on dev.Path; later, with it paused:
//	frozen, _ := mp.Freeze(ctx, dev, cow2)                // dev.Path now writes to cow2
//	child, _ := mp.Attach(ctx, "vm-2", frozen.With(cow3)) // sees what vm-1 had written
//	_ = mp.Detach(ctx, child)

// ErrNoDeviceMapper means the host cannot build layered disks.
var ErrNoDeviceMapper = errors.New("device-mapper not available")

// Chain is one VM's layered disk as files, enough to attach it again:
// the shared base, the disk's size, and its CoW files, oldest first. The
// last layer takes the VM's writes; the others are frozen by forks.
type Chain struct {
	Base      string   `json:"base"`
	SizeBytes int64    `json:"size_bytes"`
	Layers    []string `json:"layers"`
}

// With returns the chain with top added as a new writable layer: a fork
// child's disk over its parent's frozen chain.
func (c Chain) With(top string) Chain {
	c.Layers = append(append([]string(nil), c.Layers...), top)
	return c
}

func (c Chain) validate() error {
	if c.Base == "" || len(c.Layers) == 0 || c.SizeBytes <= 0 || c.SizeBytes%512 != 0 {
		return fmt.Errorf("%w: layered disk needs a base, a size in sectors and at least one layer", ErrTool)
	}
	return nil
}

// Device is an attached chain: Path is the block device a VMM opens.
type Device struct {
	Name  string
	Path  string
	Chain Chain

	loops []string // loop devices, base first, one per layer after it
	dms   []string // dm devices, the base's first, the top (Name) last
}

// Mapper builds layered disks with dmsetup and losetup.
type Mapper struct {
	// ChunkSectors is the snapshot chunk size in 512-byte sectors; a VM's
	// first write to a chunk copies it whole. Default 8 (4 KiB, the page
	// and file system block size: no write amplification).
	ChunkSectors int
	// Run runs a tool and returns its standard output; default exec.
	Run func(ctx context.Context, name string, args ...string) ([]byte, error)
}

// NewMapper returns a Mapper that runs the host's dmsetup and losetup.
func NewMapper() *Mapper { return &Mapper{ChunkSectors: 8, Run: runTool} }

func runTool(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%w: %s %s: %v: %s", ErrTool, name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// Available says whether this host can build layered disks, and why not.
func (m *Mapper) Available(ctx context.Context) error {
	if _, err := os.Stat("/dev/mapper/control"); err != nil {
		return fmt.Errorf("%w: /dev/mapper/control: %v (load dm-mod)", ErrNoDeviceMapper, err)
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		return fmt.Errorf("%w: no loop devices: /dev/loop-control: %v (load loop)", ErrNoDeviceMapper, err)
	}
	for _, tool := range []string{"dmsetup", "losetup"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%w: %s not installed", ErrNoDeviceMapper, tool)
		}
	}
	return m.targets(ctx)
}

// targetModules are the modules of the targets layering uses; linear is
// part of dm-mod.
var targetModules = map[string]string{"snapshot": "dm-snapshot", "zero": "dm-zero", "linear": ""}

// targets checks that device-mapper has the targets layering uses, or
// can load them: dmsetup lists only loaded targets, and the kernel loads
// a target's module when a table first uses it, so a module the running
// kernel has (modprobe's dry run finds it) counts as there.
func (m *Mapper) targets(ctx context.Context) error {
	out, err := m.Run(ctx, "dmsetup", "targets")
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNoDeviceMapper, err)
	}
	for _, t := range []string{"snapshot", "zero", "linear"} {
		if regexp.MustCompile(`(?m)^` + t + `\s`).Match(out) {
			continue
		}
		if mod := targetModules[t]; mod != "" {
			if _, err := m.Run(ctx, "modprobe", "--dry-run", "--quiet", mod); err == nil {
				continue
			}
		}
		return fmt.Errorf("%w: no %s target, and no module for it (dm-snapshot, dm-zero)", ErrNoDeviceMapper, t)
	}
	return nil
}

// cowOverhead is what a persistent CoW store needs beyond the data it
// holds: a header chunk and 16 bytes of metadata per data chunk.
func cowSize(size int64) int64 { return size + size/64 + 1<<20 }

// NewCoW creates an empty CoW file for a disk of size bytes: sparse, so it
// takes no space until the VM writes.
func NewCoW(p string, size int64) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return fmt.Errorf("create cow file: %w", err)
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create cow file: %w", err)
	}
	err = f.Truncate(cowSize(size))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(p)
		return fmt.Errorf("create cow file: %w", err)
	}
	return nil
}

var dmNameRe = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,40}$`)

// Attach builds chain c as device fs-<name> (and its layers below it).
// Every layer but the last is attached read-only. On error nothing stays.
func (m *Mapper) Attach(ctx context.Context, name string, c Chain) (dev *Device, err error) {
	if !dmNameRe.MatchString(name) {
		return nil, fmt.Errorf("%w: device name %q", ErrTool, name)
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	fi, err := os.Stat(c.Base)
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", name, err)
	}
	base := fi.Size() / 512 * 512
	if base > c.SizeBytes {
		return nil, fmt.Errorf("%w: base %s (%d bytes) is larger than the disk (%d)", ErrTool, c.Base, base, c.SizeBytes)
	}
	d := &Device{Name: "fs-" + name, Chain: c}
	d.Path = "/dev/mapper/" + d.Name
	defer func() {
		if err != nil {
			err = errors.Join(fmt.Errorf("attach %s: %w", name, err), m.Detach(context.WithoutCancel(ctx), d))
			dev = nil
		}
	}()
	loop, err := m.loop(ctx, c.Base, true /* readOnly */)
	if err != nil {
		return nil, err
	}
	d.loops = append(d.loops, loop)
	sectors := c.SizeBytes / 512
	table := fmt.Sprintf("0 %d linear %s 0", base/512, loop)
	if base < c.SizeBytes {
		table += fmt.Sprintf("\n%d %d zero", base/512, sectors-base/512)
	}
	below := d.Name + "-base"
	if err := m.create(ctx, below, table, true /* readOnly */); err != nil {
		return nil, err
	}
	d.dms = append(d.dms, below)
	belowDev, err := m.devNum(ctx, below)
	if err != nil {
		return nil, err
	}
	for i, layer := range c.Layers {
		top := i == len(c.Layers)-1
		loop, err := m.loop(ctx, layer, !top)
		if err != nil {
			return nil, err
		}
		d.loops = append(d.loops, loop)
		dm := d.Name
		if !top {
			dm = fmt.Sprintf("%s-l%d", d.Name, i)
		}
		if err := m.create(ctx, dm, m.snapshotTable(sectors, belowDev, loop), !top); err != nil {
			return nil, err
		}
		d.dms = append(d.dms, dm)
		if belowDev, err = m.devNum(ctx, dm); err != nil {
			return nil, err
		}
	}
	// Without udev (a minimal host, or the guest the tests run in) the
	// node under /dev/mapper is made here.
	if _, err := m.Run(ctx, "dmsetup", "mknodes", d.Name); err != nil {
		return nil, err
	}
	return d, nil
}

// snapshotTable is a persistent snapshot of origin with its CoW store on
// cow. Discards zero (on a loop device: punch) whole chunks in the
// snapshot's own store and never pass down to the origin, which is shared.
// Only the top layer is ever written or discarded, but every layer
// carries the feature: dm offers discards on a device only if everything
// under it does, so a read-only layer without it would take discards
// away from every fork above it.
func (m *Mapper) snapshotTable(sectors int64, origin, cow string) string {
	return fmt.Sprintf("0 %d snapshot %s %s P %d 1 discard_zeroes_cow", sectors, origin, cow, m.chunk())
}

func (m *Mapper) chunk() int {
	if m.ChunkSectors > 0 {
		return m.ChunkSectors
	}
	return 8
}

// Freeze makes d's current top layer read-only and gives d a new, empty
// writable layer, newTop (created here), under the same device node: the
// VM on d keeps its open disk and from now on writes only to newTop. The
// VM must be paused. It returns the frozen chain, for children (With).
func (m *Mapper) Freeze(ctx context.Context, d *Device, newTop string) (Chain, error) {
	if err := NewCoW(newTop, d.Chain.SizeBytes); err != nil {
		return Chain{}, err
	}
	frozen := d.Chain
	k := len(frozen.Layers) - 1
	sectors := frozen.SizeBytes / 512
	below, err := m.devNum(ctx, d.dms[len(d.dms)-2])
	if err != nil {
		os.Remove(newTop)
		return Chain{}, fmt.Errorf("freeze %s: %w", d.Name, err)
	}
	topLoop := d.loops[len(d.loops)-1]
	layer := fmt.Sprintf("%s-l%d", d.Name, k)
	// Suspending flushes the top's committed exceptions; the new
	// read-only layer over the same CoW device takes them over when it
	// resumes (dm-snapshot's exception handover), then d is reloaded on
	// top of it. If anything fails, d gets its old table back.
	if _, err := m.Run(ctx, "dmsetup", "suspend", d.Name); err != nil {
		os.Remove(newTop)
		return Chain{}, fmt.Errorf("freeze %s: %w", d.Name, err)
	}
	undo := func(err error) (Chain, error) {
		uctx := context.WithoutCancel(ctx)
		_, rerr := m.Run(uctx, "dmsetup", "resume", d.Name)
		os.Remove(newTop)
		return Chain{}, errors.Join(fmt.Errorf("freeze %s: %w", d.Name, err), rerr)
	}
	if err := m.create(ctx, layer, m.snapshotTable(sectors, below, topLoop), true /* readOnly */); err != nil {
		return undo(err)
	}
	layerDev, err := m.devNum(ctx, layer)
	if err != nil {
		return undo(errors.Join(err, m.remove(context.WithoutCancel(ctx), layer)))
	}
	newLoop, err := m.loop(ctx, newTop, false /* readOnly */)
	if err != nil {
		return undo(errors.Join(err, m.remove(context.WithoutCancel(ctx), layer)))
	}
	if _, err := m.Run(ctx, "dmsetup", "load", d.Name, "--table", m.snapshotTable(sectors, layerDev, newLoop)); err != nil {
		// The handover already happened: d's old table can no longer
		// be resumed, so the frozen layer stays and d is rebuilt on it.
		return Chain{}, errors.Join(fmt.Errorf("freeze %s: %w", d.Name, err), m.detachLoop(context.WithoutCancel(ctx), newLoop))
	}
	if _, err := m.Run(ctx, "dmsetup", "resume", d.Name); err != nil {
		return Chain{}, fmt.Errorf("freeze %s: %w", d.Name, err)
	}
	d.dms = append(d.dms[:len(d.dms)-1], layer, d.Name)
	d.loops = append(d.loops, newLoop)
	d.Chain = frozen.With(newTop)
	frozen.Layers = frozen.Layers[: k+1 : k+1]
	return frozen, nil
}

// Detach removes d's devices, top first, and its loop devices. The files
// stay. It is safe on a partly attached device and removes what it can.
func (m *Mapper) Detach(ctx context.Context, d *Device) error {
	var errs []error
	for i := len(d.dms) - 1; i >= 0; i-- {
		if err := m.remove(ctx, d.dms[i]); err != nil {
			errs = append(errs, err)
		}
	}
	d.dms = nil
	for i := len(d.loops) - 1; i >= 0; i-- {
		if err := m.detachLoop(ctx, d.loops[i]); err != nil {
			errs = append(errs, err)
		}
	}
	d.loops = nil
	return errors.Join(errs...)
}

func (m *Mapper) create(ctx context.Context, name, table string, readOnly bool) error {
	args := []string{"create", name}
	if readOnly {
		args = append(args, "--readonly")
	}
	_, err := m.Run(ctx, "dmsetup", append(args, "--table", table)...)
	return err
}

// devNum is a dm device's "major:minor", which tables refer to: unlike a
// /dev/mapper path it exists whether or not udev runs.
func (m *Mapper) devNum(ctx context.Context, name string) (string, error) {
	out, err := m.Run(ctx, "dmsetup", "info", "-c", "--noheadings", "-o", "major,minor", "--separator", ":", name)
	if err != nil {
		return "", err
	}
	num := strings.TrimSpace(string(out))
	if !regexp.MustCompile(`^\d+:\d+$`).MatchString(num) {
		return "", fmt.Errorf("%w: dmsetup info %s printed %q", ErrTool, name, num)
	}
	return num, nil
}

func (m *Mapper) remove(ctx context.Context, name string) error {
	_, err := m.Run(ctx, "dmsetup", "remove", "--retry", name)
	return err
}

func (m *Mapper) loop(ctx context.Context, file string, readOnly bool) (string, error) {
	args := []string{"--find", "--show"}
	if readOnly {
		args = append(args, "--read-only")
	}
	out, err := m.Run(ctx, "losetup", append(args, file)...)
	if err != nil {
		return "", err
	}
	dev := strings.TrimSpace(string(out))
	if !strings.HasPrefix(dev, "/dev/loop") {
		return "", fmt.Errorf("%w: losetup printed %q", ErrTool, dev)
	}
	return dev, nil
}

func (m *Mapper) detachLoop(ctx context.Context, dev string) error {
	_, err := m.Run(ctx, "losetup", "--detach", dev)
	return err
}

// Usage is how much of a CoW store is used, as dmsetup status reports it
// for the device name: allocated and total sectors of the store.
func (m *Mapper) Usage(ctx context.Context, name string) (used, total int64, err error) {
	out, err := m.Run(ctx, "dmsetup", "status", name)
	if err != nil {
		return 0, 0, err
	}
	// "0 2097152 snapshot 16/2113536 16"
	f := strings.Fields(string(out))
	if len(f) < 4 || f[2] != "snapshot" {
		return 0, 0, fmt.Errorf("%w: dmsetup status %s: %q", ErrTool, name, out)
	}
	a, b, ok := strings.Cut(f[3], "/")
	if !ok {
		return 0, 0, fmt.Errorf("%w: dmsetup status %s: %q", ErrTool, name, out)
	}
	used, err1 := strconv.ParseInt(a, 10, 64)
	total, err2 := strconv.ParseInt(b, 10, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("%w: dmsetup status %s: %q", ErrTool, name, out)
	}
	return used, total, nil
}
