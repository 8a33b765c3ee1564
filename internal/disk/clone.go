package disk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// CloneMethod says how Clone made its copy.
type CloneMethod string

// Clone methods, cheapest first.
const (
	// Reflink shares every block with the source until either side
	// writes (FICLONE: XFS, btrfs, bcachefs). Instant, and costs no space.
	Reflink CloneMethod = "reflink"
	// SparseCopy copies only the source's data extents and leaves its
	// holes as holes: its cost is what the source has allocated, which
	// for a pristine or lightly used sandbox disk is a few hundred KiB.
	SparseCopy CloneMethod = "sparse-copy"
)

// Clone makes dst, which must not exist, a copy-on-write copy of src: a
// reflink where the filesystem supports one, else a sparse copy. src must
// not change while it is copied (a pristine disk, or the disk of a paused
// VM). dst is not synced: a disk is only ever used together with the
// memory of its VM, which a host crash loses anyway. On error dst is gone.
func Clone(ctx context.Context, src, dst string) (CloneMethod, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", fmt.Errorf("clone disk: %w", err)
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return "", fmt.Errorf("clone disk: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("clone disk: %s is not a regular file", src)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return "", fmt.Errorf("clone disk: %w", err)
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", fmt.Errorf("clone disk: %w", err)
	}
	method, err := cloneInto(ctx, in, out, fi.Size())
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(dst)
		return "", fmt.Errorf("clone disk %s: %w", src, err)
	}
	return method, nil
}

func cloneInto(ctx context.Context, in, out *os.File, size int64) (CloneMethod, error) {
	if unix.IoctlFileClone(int(out.Fd()), int(in.Fd())) == nil {
		return Reflink, nil
	}
	if err := out.Truncate(size); err != nil {
		return "", err
	}
	return SparseCopy, copyExtents(ctx, in, out, size)
}

// copyExtents copies in's data extents to the same offsets in out, in the
// kernel (copy_file_range) where it can.
func copyExtents(ctx context.Context, in, out *os.File, size int64) error {
	var off int64
	for off < size {
		if err := ctx.Err(); err != nil {
			return err
		}
		data, err := unix.Seek(int(in.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // only holes remain
		} else if err != nil {
			return fmt.Errorf("seek data: %w", err)
		}
		hole, err := unix.Seek(int(in.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("seek hole: %w", err)
		}
		if err := copyRange(in, out, data, hole-data); err != nil {
			return err
		}
		off = hole
	}
	return nil
}

func copyRange(in, out *os.File, off, n int64) error {
	for n > 0 {
		roff, woff := off, off
		c, err := unix.CopyFileRange(int(in.Fd()), &roff, int(out.Fd()), &woff, int(min(n, 1<<30)), 0)
		if err != nil || c == 0 {
			// Not supported between these files (or a short source):
			// copy through user space.
			_, err := io.Copy(io.NewOffsetWriter(out, off), io.NewSectionReader(in, off, n))
			return err
		}
		off += int64(c)
		n -= int64(c)
	}
	return nil
}

// Allocated is how many bytes of the host's disk p takes (its allocated
// blocks, not its apparent size).
func Allocated(p string) (int64, error) {
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		return 0, err
	}
	return st.Blocks * 512, nil
}
