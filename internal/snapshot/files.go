package snapshot

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// The files of a snapshot directory that are not listed in its manifest.
const (
	manifestFile  = "manifest.json"
	signatureFile = "manifest.sig" // pushed snapshots: see Signature
	originFile    = ".origin"      // pulled snapshots: where from (see origin)
	verifiedFile  = ".verified"    // digests already checked, per file version
	usedFile      = ".used"        // its mtime is the last use, for LRU
)

// readFileLimited reads a file of at most limit bytes.
func readFileLimited(p string, limit int64) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrInvalid, p, limit)
	}
	return data, nil
}

// writeFileAtomic replaces p with data: a reader sees the old content or
// the new, never a part. The temporary name is unique, so concurrent
// writers of one file cannot mix their bytes.
func writeFileAtomic(p string, data []byte, perm os.FileMode) error {
	dir, name := filepath.Split(p)
	f, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, p)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write %s: %w", p, err)
	}
	return nil
}

func syncFile(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// syncDir makes the renames and creations in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// removeDir renames a directory away before deleting it, so a reader
// never sees a half-deleted snapshot under its name.
func removeDir(dir string) error {
	gone := filepath.Join(filepath.Dir(dir), ".remove-"+filepath.Base(dir)+fmt.Sprint(time.Now().UnixNano()))
	if err := os.Rename(dir, gone); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	return os.RemoveAll(gone)
}

// fileVersion identifies one version of a file's content cheaply.
func fileVersion(fi os.FileInfo) string {
	var ino uint64
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = st.Ino
	}
	return fmt.Sprintf("%d:%d:%d", ino, fi.Size(), fi.ModTime().UnixNano())
}

// diskUsage is the space dir's files take on disk (memory files and disk
// images are sparse: far less than their size).
func diskUsage(dir string) int64 {
	var n int64
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if fi, err := e.Info(); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				n += st.Blocks * 512
			}
		}
	}
	return n
}
