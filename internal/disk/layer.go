package disk

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
)

// Layering names how a VM's writable disk is made from its template's
// pristine disk.
type Layering string

// Layerings. Auto picks DM where the host can build it, else Clone.
const (
	LayeringAuto  Layering = "auto"
	LayeringClone Layering = "clone"
	LayeringDM    Layering = "dm"
)

// ParseLayering checks a configured layering ("" means auto).
func ParseLayering(s string) (Layering, error) {
	switch l := Layering(s); l {
	case "", LayeringAuto:
		return LayeringAuto, nil
	case LayeringClone, LayeringDM:
		return l, nil
	}
	return "", fmt.Errorf("disk layering %q: want auto, clone or dm", s)
}

// Base is a pristine disk that layers share and nobody writes: a
// template snapshot's disk. Digest names its content (the snapshot
// manifest's digest of the file); a layered disk records it, so what it
// stands on can be told (and checked) without reading the base.
type Base struct {
	Path   string
	Digest string
}

// Layerer makes VMs' writable disks and attaches them to VMs. A disk is
// stored under a path p that the Layerer owns: for Clone, p is the whole
// disk image; for DM, p+".cow" holds what the VM wrote and p+".json" says
// which base is under it (see DMLayers). A disk outlives the VM it is
// attached to: it is how a sandbox keeps its data across hibernations.
//
//	_ = l.Create(ctx, disk.Base{Path: pristine, Digest: d}, 1<<30, p)
//	a, _ := l.Attach(ctx, "vm-1", p) // a.Path() is what the VMM opens
//	// pause the VM, then:
//	_ = a.Save(ctx, forkDir+"/disk") // a copy of the disk as it is now
//	_ = a.Close(ctx)                 // devices gone, p stays
//	_ = l.Copy(ctx, forkDir+"/disk", p2)
//	_ = l.Remove(p)
//
// Every Layerer also takes a plain image at p (a cold-booted VM's disk),
// so a sandbox made under one layering resumes under another where the
// host allows it.
type Layerer interface {
	// Kind is the layering this one makes new disks with.
	Kind() Layering
	// Create makes p, which must not exist, a new writable disk over
	// base, sizeBytes large (at least base's size: the rest reads as
	// zeros). On error nothing of p stays.
	Create(ctx context.Context, base Base, sizeBytes int64, p string) error
	// Copy makes dst, which must not exist, an independent copy of the
	// disk at src, which no VM writes meanwhile (detached, or saved).
	Copy(ctx context.Context, src, dst string) error
	// Attach makes the disk at p usable by VM vm (a short lowercase
	// name, unique among the host's live VMs). On error nothing of the
	// attachment stays.
	Attach(ctx context.Context, vm, p string) (Attached, error)
	// Flatten writes the disk stored at p, which no VM writes meanwhile,
	// to dst as one sparse image that needs no base (to move it to
	// another host). A layered disk is attached as VM vm to be read.
	Flatten(ctx context.Context, vm, p, dst string) error
	// Exists says whether a disk is stored at p.
	Exists(p string) bool
	// Remove removes the disk stored at p. It must not be attached.
	Remove(p string) error
	// Sweep removes what killed processes left attached: the devices of
	// every VM whose owner is dead.
	Sweep(ctx context.Context, s SweepScope) error
}

// SweepScope says what a Sweep may take for a dead process's.
type SweepScope struct {
	// Alive says whether VM vm's owner lives: its devices stay.
	Alive func(vm string) bool
	// Alone says that no other live process attaches disks under this
	// data directory, so loop devices that no device holds are leftovers
	// too (of a process killed between its losetup and its dmsetup).
	// With another one running they might be its attach in progress.
	Alone bool
}

// Attached is a disk in use by one VM.
type Attached interface {
	// Path is what the VMM opens: a file or a block device.
	Path() string
	// Save writes a copy of the disk as it is now to dst, which must not
	// exist, as a disk of its own (for Copy or Attach). The VM must be
	// paused.
	Save(ctx context.Context, dst string) error
	// Close detaches the disk. Its files stay. It is idempotent.
	Close(ctx context.Context) error
}

// ErrLayeredDisk means a disk needs device-mapper to be attached and this
// Layerer has none.
var ErrLayeredDisk = errors.New("disk is layered with device-mapper")

// Choose returns the Layerer for want on this host: DM where
// device-mapper, its targets and loop devices are usable (always, for
// "dm": else an error saying why), Clone otherwise. root is the data
// directory: DM names its devices after it, so two data directories on
// one host never sweep each other's devices.
func Choose(ctx context.Context, want Layering, root string) (Layerer, error) {
	if want == LayeringClone {
		return CloneLayers{}, nil
	}
	dm, err := NewDMLayers(root)
	if err != nil {
		return nil, err
	}
	if err := dm.Mapper.Available(ctx); err != nil {
		if want == LayeringDM {
			return nil, fmt.Errorf("disk layering dm: %w", err)
		}
		return CloneLayers{}, nil
	}
	return dm, nil
}

// CloneLayers gives each VM a whole copy of the base: a reflink where the
// file system has them, else a sparse copy (see Clone). It works on any
// host; a new disk costs what the base has allocated.
type CloneLayers struct{}

// Kind is LayeringClone.
func (CloneLayers) Kind() Layering { return LayeringClone }

// Create clones base to p and extends it to sizeBytes.
func (CloneLayers) Create(ctx context.Context, base Base, sizeBytes int64, p string) error {
	if _, err := Clone(ctx, base.Path, p); err != nil {
		return err
	}
	return extend(p, sizeBytes)
}

func extend(p string, size int64) error {
	fi, err := os.Stat(p)
	if err == nil && fi.Size() < size {
		err = os.Truncate(p, size)
	}
	if err != nil {
		os.Remove(p)
		return fmt.Errorf("create disk: %w", err)
	}
	return nil
}

// Copy clones the image at src; a layered disk is refused.
func (CloneLayers) Copy(ctx context.Context, src, dst string) error {
	if layered(src) {
		return fmt.Errorf("copy disk %s: %w; this host has no device-mapper", src, ErrLayeredDisk)
	}
	_, err := Clone(ctx, src, dst)
	return err
}

// Attach hands the image at p to the VM as it is; a layered disk is
// refused.
func (CloneLayers) Attach(ctx context.Context, vm, p string) (Attached, error) {
	if layered(p) {
		return nil, fmt.Errorf("attach disk %s: %w; this host has no device-mapper", p, ErrLayeredDisk)
	}
	return attachFile(p)
}

// Flatten clones the image at p; a layered disk is refused.
func (l CloneLayers) Flatten(ctx context.Context, vm, p, dst string) error {
	return l.Copy(ctx, p, dst)
}

// Exists says whether p holds a disk.
func (CloneLayers) Exists(p string) bool { return exists(p) }

// Remove removes the disk at p.
func (CloneLayers) Remove(p string) error { return remove(p) }

// Sweep has nothing to do: a cloned disk is only a file.
func (CloneLayers) Sweep(context.Context, SweepScope) error { return nil }

// fileAttached is an image file used as it is.
type fileAttached struct{ p string }

func attachFile(p string) (Attached, error) {
	fi, err := os.Stat(p)
	if err != nil {
		return nil, fmt.Errorf("attach disk: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("attach disk: %s is not a regular file", p)
	}
	return fileAttached{p}, nil
}

func (a fileAttached) Path() string { return a.p }

func (a fileAttached) Save(ctx context.Context, dst string) error {
	_, err := Clone(ctx, a.p, dst)
	return err
}

func (fileAttached) Close(context.Context) error { return nil }

// The files of a layered disk stored at p.
func cowOf(p string) string  { return p + ".cow" }
func metaOf(p string) string { return p + ".json" }
func baseOf(p string) string { return p + ".base" }

// layerMeta is a layered disk's p+".json": which base is under its CoW
// file, and the disk's size. It is written last, so a disk without it
// was never finished.
type layerMeta struct {
	Base      string `json:"base"` // the base's digest
	SizeBytes int64  `json:"size_bytes"`
}

var digestRe = regexp.MustCompile(`^[0-9a-f]{16,128}$`)

// Layered says whether the disk stored at p is layered (needs its base
// and device-mapper), rather than an image.
func Layered(p string) bool { return layered(p) }

func layered(p string) bool {
	_, err := os.Stat(metaOf(p))
	return err == nil
}

func exists(p string) bool {
	if layered(p) {
		return true
	}
	_, err := os.Stat(p)
	return err == nil
}

func remove(p string) error {
	var errs []error
	for _, f := range []string{metaOf(p), cowOf(p), baseOf(p), p} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// DMLayers stacks each VM's disk in device-mapper (see Mapper): a linear
// target over a read-only loop device on the shared base, a zero target
// up to the disk's size, and a snapshot target whose CoW store is the
// VM's own sparse file. A new disk costs an empty file; a copy costs what
// the VM wrote. Each disk keeps its base as a hard link, p+".base", to
// the snapshot's pristine disk: the same blocks for all of them, which
// stay while any disk needs them, whatever the snapshot store evicts, and
// go with the last disk without any reference count of ours.
//
// A fork copies the parent's CoW file (Save) rather than freezing it into
// a shared layer (Mapper.Freeze): every disk then stands on the base
// alone and belongs to one sandbox, so deleting a parent never pulls a
// layer from under its children, and no layer needs a reference count.
// The copy costs what the parent wrote, as a clone's sparse copy does.
type DMLayers struct {
	Mapper *Mapper
	// Prefix starts every device's name (after Mapper's "fs-"): it
	// carries the data directory, so Sweep only touches its own.
	Prefix string
	// Root is the directory under which every file DM attaches lives:
	// Sweep detaches only loop devices backed by files below it.
	Root string
}

// NewDMLayers returns the DM layering for the data directory root.
func NewDMLayers(root string) (*DMLayers, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256([]byte(abs))
	return &DMLayers{Mapper: NewMapper(), Prefix: hex.EncodeToString(sum[:4]), Root: abs}, nil
}

// Kind is LayeringDM.
func (*DMLayers) Kind() Layering { return LayeringDM }

// Create links base beside p and makes p an empty CoW file over it.
func (l *DMLayers) Create(ctx context.Context, base Base, sizeBytes int64, p string) error {
	if !digestRe.MatchString(base.Digest) {
		return fmt.Errorf("create layered disk: base digest %q", base.Digest)
	}
	fi, err := os.Stat(base.Path)
	if err != nil {
		return fmt.Errorf("create layered disk: %w", err)
	}
	if sizeBytes < fi.Size() {
		sizeBytes = fi.Size()
	}
	sizeBytes = (sizeBytes + 511) / 512 * 512
	if exists(p) {
		return fmt.Errorf("create layered disk: %s exists", p)
	}
	if err := linkBase(ctx, base.Path, baseOf(p)); err != nil {
		return err
	}
	err = NewCoW(cowOf(p), sizeBytes)
	if err == nil {
		err = writeMeta(p, layerMeta{Base: base.Digest, SizeBytes: sizeBytes})
	}
	if err != nil {
		remove(p)
		return err
	}
	return nil
}

// linkBase makes dst another name of the base src: a hard link, or a
// copy where they are on different file systems.
func linkBase(ctx context.Context, src, dst string) error {
	if err := os.Link(src, dst); err != nil {
		if _, cerr := Clone(ctx, src, dst); cerr != nil {
			return fmt.Errorf("keep disk base: %w", errors.Join(err, cerr))
		}
	}
	return nil
}

func writeMeta(p string, m layerMeta) error {
	b, _ := json.Marshal(m)
	tmp := metaOf(p) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write layered disk: %w", err)
	}
	if err := os.Rename(tmp, metaOf(p)); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write layered disk: %w", err)
	}
	return nil
}

func readMeta(p string) (layerMeta, error) {
	var m layerMeta
	b, err := os.ReadFile(metaOf(p))
	if err == nil && len(b) > 4096 {
		err = errors.New("too large")
	}
	if err == nil {
		err = json.Unmarshal(b, &m)
	}
	if err == nil && (!digestRe.MatchString(m.Base) || m.SizeBytes <= 0 || m.SizeBytes%512 != 0) {
		err = fmt.Errorf("base %q, size %d", m.Base, m.SizeBytes)
	}
	if err != nil {
		return m, fmt.Errorf("read layered disk %s: %w", p, err)
	}
	return m, nil
}

// Copy copies a layered disk's CoW file (sparse: what its VM wrote) and
// its description; an image is cloned.
func (l *DMLayers) Copy(ctx context.Context, src, dst string) error {
	if !layered(src) {
		_, err := Clone(ctx, src, dst)
		return err
	}
	return copyLayered(ctx, src, dst)
}

func copyLayered(ctx context.Context, src, dst string) error {
	m, err := readMeta(src)
	if err != nil {
		return err
	}
	if exists(dst) {
		return fmt.Errorf("copy layered disk: %s exists", dst)
	}
	if err := linkBase(ctx, baseOf(src), baseOf(dst)); err != nil {
		return err
	}
	_, err = Clone(ctx, cowOf(src), cowOf(dst))
	if err == nil {
		err = writeMeta(dst, m)
	}
	if err != nil {
		remove(dst)
		return err
	}
	return nil
}

// Attach builds p's device stack for vm; an image is used as it is.
func (l *DMLayers) Attach(ctx context.Context, vm, p string) (Attached, error) {
	if !layered(p) {
		return attachFile(p)
	}
	m, err := readMeta(p)
	if err != nil {
		return nil, err
	}
	base := baseOf(p)
	if _, err := os.Stat(base); err != nil {
		return nil, fmt.Errorf("attach disk %s: its base is gone: %w", p, err)
	}
	dev, err := l.Mapper.Attach(ctx, l.Prefix+"-"+vm, Chain{Base: base, SizeBytes: m.SizeBytes, Layers: []string{cowOf(p)}})
	if err != nil {
		return nil, err
	}
	return &dmAttached{l: l, dev: dev, p: p, meta: m}, nil
}

// Flatten reads a layered disk through its device stack into a sparse
// image; an image is cloned.
func (l *DMLayers) Flatten(ctx context.Context, vm, p, dst string) error {
	if !layered(p) {
		_, err := Clone(ctx, p, dst)
		return err
	}
	a, err := l.Attach(ctx, vm, p)
	if err != nil {
		return err
	}
	err = copySparse(ctx, a.Path(), dst)
	if cerr := a.Close(ctx); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(dst)
		return fmt.Errorf("flatten disk %s: %w", p, err)
	}
	return nil
}

// copySparse copies src (a block device: no SEEK_DATA) to dst, leaving
// blocks of zeros as holes.
func copySparse(ctx context.Context, src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	size, err := in.Seek(0, io.SeekEnd)
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer out.Close()
	if err := out.Truncate(size); err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(buf)) {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := in.ReadAt(buf[:min(int64(len(buf)), size-off)], off)
		if err != nil && !(errors.Is(err, io.EOF) && n > 0) {
			return err
		}
		for b := 0; b < n; b += 4096 {
			blk := buf[b:min(b+4096, n)]
			if !allZero(blk) {
				if _, err := out.WriteAt(blk, off+int64(b)); err != nil {
					return err
				}
			}
		}
	}
	return out.Close()
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// Exists says whether p holds a disk, layered or an image.
func (*DMLayers) Exists(p string) bool { return exists(p) }

// Remove removes the disk at p.
func (*DMLayers) Remove(p string) error { return remove(p) }

type dmAttached struct {
	l    *DMLayers
	dev  *Device
	p    string
	meta layerMeta
}

func (a *dmAttached) Path() string { return a.dev.Path }

// Save flushes what the VMM wrote through the device's page cache,
// suspends the device (dm-snapshot commits its exceptions) and copies the
// CoW file while nothing can change it.
func (a *dmAttached) Save(ctx context.Context, dst string) error {
	if err := syncDevice(a.dev.Path); err != nil {
		return fmt.Errorf("save disk: %w", err)
	}
	if _, err := a.l.Mapper.Run(ctx, "dmsetup", "suspend", a.dev.Name); err != nil {
		return fmt.Errorf("save disk: %w", err)
	}
	err := copyLayered(ctx, a.p, dst)
	if _, rerr := a.l.Mapper.Run(context.WithoutCancel(ctx), "dmsetup", "resume", a.dev.Name); rerr != nil {
		err = errors.Join(err, rerr)
	}
	if err != nil {
		remove(dst)
		return fmt.Errorf("save disk: %w", err)
	}
	return nil
}

func syncDevice(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

func (a *dmAttached) Close(ctx context.Context) error {
	if a.dev == nil || (len(a.dev.dms) == 0 && len(a.dev.loops) == 0) {
		return nil
	}
	return a.l.Mapper.Detach(context.WithoutCancel(ctx), a.dev)
}

var (
	dmSuffixRe = regexp.MustCompile(`-(base|l\d+)$`)
	lineRe     = regexp.MustCompile(`\r?\n`)
	fieldRe    = regexp.MustCompile(`\s+`)
	deletedRe  = regexp.MustCompile(` \(deleted\)$`)
)

// Sweep removes the device stacks of dead VMs (named with Prefix), top
// first, then, if s.Alone, every loop device that is backed by a file
// under Root and that no device holds any more: what a killed process
// left between its losetup and its dmsetup, or under the stacks just
// removed.
func (l *DMLayers) Sweep(ctx context.Context, s SweepScope) error {
	out, err := l.Mapper.Run(ctx, "dmsetup", "ls")
	if err != nil {
		return fmt.Errorf("sweep layered disks: %w", err)
	}
	prefix := "fs-" + l.Prefix + "-"
	dead := map[string][]string{}
	for _, line := range lineRe.Split(string(out), -1) {
		f := fieldRe.Split(line, 2)
		name := f[0]
		if len(name) <= len(prefix) || name[:len(prefix)] != prefix {
			continue
		}
		vm := dmSuffixRe.ReplaceAllString(name[len(prefix):], "")
		if !s.Alive(vm) {
			dead[vm] = append(dead[vm], name)
		}
	}
	var errs []error
	for vm, names := range dead {
		for _, name := range removalOrder(prefix+vm, names) {
			if err := l.Mapper.remove(ctx, name); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if !s.Alone {
		return errors.Join(errs...)
	}
	for _, dev := range l.idleLoops() {
		if err := l.Mapper.detachLoop(ctx, dev); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// removalOrder sorts one VM's devices as Detach removes them: the top,
// then its frozen layers, newest first, then the base.
func removalOrder(top string, names []string) []string {
	rank := func(n string) int {
		switch {
		case n == top:
			return -1 << 30
		case n == top+"-base":
			return 1 << 30
		}
		var i int
		fmt.Sscanf(n[len(top):], "-l%d", &i)
		return -i
	}
	out := append([]string(nil), names...)
	for i := range out { // a handful of names: insertion sort
		for j := i; j > 0 && rank(out[j]) < rank(out[j-1]); j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

// sysBlock is where the kernel lists block devices.
var sysBlock = "/sys/block"

// idleLoops lists the loop devices backed by a file under Root that no
// device-mapper table holds.
func (l *DMLayers) idleLoops() []string {
	loops, _ := filepath.Glob(filepath.Join(sysBlock, "loop*"))
	var idle []string
	for _, sys := range loops {
		b, err := os.ReadFile(filepath.Join(sys, "loop", "backing_file"))
		if err != nil {
			continue // not attached
		}
		back := deletedRe.ReplaceAllString(string(trimNL(b)), "")
		if rel, err := filepath.Rel(l.Root, back); err != nil || rel == ".." || len(rel) > 2 && rel[:3] == "../" || filepath.IsAbs(rel) {
			continue
		}
		if holders, _ := os.ReadDir(filepath.Join(sys, "holders")); len(holders) > 0 {
			continue
		}
		idle = append(idle, "/dev/"+filepath.Base(sys))
	}
	return idle
}

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

// StoredAllocated is how many bytes of the host's disk the disk stored at
// p takes, whichever way it is layered (its shared base not counted).
func StoredAllocated(p string) (int64, error) {
	var n int64
	found := false
	for _, f := range []string{p, cowOf(p), metaOf(p)} {
		a, err := Allocated(f)
		if errors.Is(err, os.ErrNotExist) {
			continue
		} else if err != nil {
			return 0, err
		}
		n, found = n+a, true
	}
	if !found {
		return 0, fmt.Errorf("no disk at %s: %w", p, os.ErrNotExist)
	}
	return n, nil
}
