// Package disk makes and removes the per-VM disk files that sit beside a
// VM's image layers: the sparse ext4 writable layer of a sandbox, and the
// read-only SquashFS volumes that carry host directories into a guest.
//
// A restored VM's writable disk starts as its template's pristine one; a
// Layerer (layer.go) makes it: CloneLayers copies it (reflink or sparse
// copy), DMLayers stacks a per-VM copy-on-write file over it in
// device-mapper (dm.go). Choose picks one per host; disktest is the suite
// both pass.
//
// Everything here is a plain function over a directory (<data>/disks), so
// a sweep after a crash can find a dead VM's files by its id:
//
//	p := disk.WritablePath(dir, "vm-1")
//	_ = disk.NewWritable(ctx, p, 1024) // 1 GiB apparent, a few MiB used
//	v := disk.VolumePath(dir, "vm-1", 0)
//	_ = disk.Pack(ctx, "/home/me/project", v)
//	disk.RemoveVM(dir, "vm-1") // both gone
package disk

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// ErrTool means an external tool (mkfs.ext4, mksquashfs) failed.
var ErrTool = errors.New("disk tool failed")

// WritablePath is where VM id's writable disk lives in dir.
func WritablePath(dir, id string) string { return filepath.Join(dir, id+".ext4") }

// VolumePath is where VM id's i-th packed mount lives in dir.
func VolumePath(dir, id string, i int) string {
	return filepath.Join(dir, fmt.Sprintf("%s-m%d.squashfs", id, i))
}

// NewWritable makes a sparse ext4 file system of mib MiB at p, which must
// not exist. Only metadata takes space until the guest writes; the guest
// mounts it with discard, so what it deletes is freed on the host too.
func NewWritable(ctx context.Context, p string, mib int) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return fmt.Errorf("create writable disk: %w", err)
	}
	f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("create writable disk: %w", err)
	}
	err = f.Truncate(int64(mib) << 20)
	f.Close()
	if err == nil {
		var out []byte
		out, err = exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1", "-m", "0", p).CombinedOutput()
		if err != nil {
			err = fmt.Errorf("%w: mkfs.ext4: %v: %s", ErrTool, err, out)
		}
	}
	if err != nil {
		os.Remove(p)
		return fmt.Errorf("create writable disk: %w", err)
	}
	return nil
}

// Pack packs the host directory hostDir into a read-only SquashFS volume
// at p. Files keep their modes but all belong to root in the volume, so
// the guest's unprivileged user reads exactly what "other" may read on the
// host: a root-only file stays unreadable.
func Pack(ctx context.Context, hostDir, p string) error {
	abs, err := filepath.Abs(hostDir) // never starts with "-": not an option to mksquashfs
	if err != nil {
		return fmt.Errorf("pack %s: %w", hostDir, err)
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return fmt.Errorf("pack %s: %w", hostDir, err)
	}
	out, err := exec.CommandContext(ctx, "mksquashfs", abs, p, "-comp", "zstd", "-noappend", "-quiet", "-no-progress",
		"-all-root").CombinedOutput()
	if err != nil {
		os.Remove(p)
		return fmt.Errorf("%w: pack %s: mksquashfs: %v: %s", ErrTool, hostDir, err, out)
	}
	return nil
}

// RemoveVM removes every disk file of VM id in dir: its writable disk,
// stored as an image or layered (see Layerer), and its packed mounts.
func RemoveVM(dir, id string) {
	remove(WritablePath(dir, id))
	vols, _ := filepath.Glob(filepath.Join(dir, id+"-m*.squashfs"))
	for _, v := range vols {
		os.Remove(v)
	}
}
