package snapshot

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Snapshot is a verified snapshot in the local store.
type Snapshot struct {
	Manifest
	Dir string
}

// Size is the total size of the snapshot's files (apparent size).
func (s *Snapshot) Size() int64 {
	var n int64
	for _, f := range s.Files {
		n += f.Size
	}
	return n
}

// Store is the local snapshot cache: <dir>/<key>/. Its disk use is kept
// under a limit by evicting the least recently used snapshots.
type Store struct {
	dir      string
	maxBytes int64

	mu sync.Mutex // serialises creates and evictions in this process
}

// NewStore returns the store in dir. maxBytes <= 0 means no limit.
func NewStore(dir string, maxBytes int64) *Store { return &Store{dir: dir, maxBytes: maxBytes} }

// Dir is the store's directory.
func (s *Store) Dir() string { return s.dir }

const (
	manifestFile = "manifest.json"
	verifiedFile = ".verified" // digests already checked, per file version
	usedFile     = ".used"     // its mtime is the last use, for LRU
)

// Get returns the snapshot for spec after checking it: the manifest must
// match spec exactly and every file its size and digest. Digests are
// computed once per file version (inode, size, mtime) and remembered.
func (s *Store) Get(spec Spec) (*Snapshot, error) {
	key := spec.Key()
	snap, err := s.load(key)
	if err != nil {
		return nil, err
	}
	if snap.Spec != spec {
		return nil, fmt.Errorf("%w: snapshot %s was made for %s", ErrIncompatible, key, snap.Spec.diff(spec))
	}
	if err := s.verify(snap); err != nil {
		return nil, err
	}
	now := time.Now()
	_ = os.Chtimes(filepath.Join(snap.Dir, usedFile), now, now)
	return snap, nil
}

func (s *Store) load(key string) (*Snapshot, error) {
	if !ValidKey(key) {
		return nil, fmt.Errorf("%w: key %q", ErrInvalid, key)
	}
	dir := filepath.Join(s.dir, key)
	b, err := os.ReadFile(filepath.Join(dir, manifestFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, key)
	} else if err != nil {
		return nil, err
	}
	m, err := ParseManifest(b)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", key, err)
	}
	if m.Key != key {
		return nil, fmt.Errorf("%w: directory %s holds snapshot %s", ErrInvalid, key, m.Key)
	}
	return &Snapshot{Manifest: *m, Dir: dir}, nil
}

// fileVersion identifies one version of a file's content cheaply.
func fileVersion(fi os.FileInfo) string {
	st, _ := fi.Sys().(*syscall.Stat_t)
	var ino uint64
	if st != nil {
		ino = st.Ino
	}
	return fmt.Sprintf("%d:%d:%d", ino, fi.Size(), fi.ModTime().UnixNano())
}

func (s *Store) verify(snap *Snapshot) error {
	known := map[string]string{}
	vpath := filepath.Join(snap.Dir, verifiedFile)
	if b, err := os.ReadFile(vpath); err == nil {
		_ = json.Unmarshal(b, &known)
	}
	changed := false
	names := make([]string, 0, len(snap.Files))
	for n := range snap.Files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		want := snap.Files[name]
		p := filepath.Join(snap.Dir, name)
		fi, err := os.Lstat(p)
		if err != nil {
			return fmt.Errorf("%w: %s: %v", ErrCorrupt, name, err)
		}
		if !fi.Mode().IsRegular() || fi.Size() != want.Size {
			return fmt.Errorf("%w: %s is %d bytes, manifest says %d", ErrCorrupt, name, fi.Size(), want.Size)
		}
		v := fileVersion(fi)
		if known[name] == v+":"+want.SHA256 {
			continue
		}
		sum, err := fileSHA256(p)
		if err != nil {
			return fmt.Errorf("%w: %s: %v", ErrCorrupt, name, err)
		}
		if sum != want.SHA256 {
			return fmt.Errorf("%w: %s has sha256 %s, manifest says %s", ErrCorrupt, name, sum[:16], want.SHA256[:16])
		}
		known[name] = v + ":" + want.SHA256
		changed = true
	}
	if changed {
		b, _ := json.Marshal(known)
		_ = writeFileAtomic(vpath, b)
	}
	return nil
}

// Create makes a snapshot for spec. fill writes the snapshot's files into
// an empty temporary directory; Create then digests them, writes the
// manifest last and renames the directory into place, so a crash at any
// point leaves no snapshot that looks valid. A snapshot already there for
// the same key is replaced.
func (s *Store) Create(spec Spec, fill func(dir string) error) (*Snapshot, error) {
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return nil, err
	}
	s.sweep()
	tmp, err := os.MkdirTemp(s.dir, ".create-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	if err := fill(tmp); err != nil {
		return nil, err
	}
	key := spec.Key()
	m := Manifest{Key: key, Spec: spec, Files: map[string]FileInfo{}, Created: time.Now().UTC()}
	ents, err := os.ReadDir(tmp)
	if err != nil {
		return nil, err
	}
	known := map[string]string{}
	for _, e := range ents {
		if !e.Type().IsRegular() || !fileRe.MatchString(e.Name()) {
			return nil, fmt.Errorf("create snapshot: unexpected entry %q written by the driver", e.Name())
		}
		p := filepath.Join(tmp, e.Name())
		if err := syncFile(p); err != nil {
			return nil, err
		}
		fi, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		sum, err := fileSHA256(p)
		if err != nil {
			return nil, err
		}
		m.Files[e.Name()] = FileInfo{Size: fi.Size(), SHA256: sum}
		known[e.Name()] = fileVersion(fi) + ":" + sum
	}
	if len(m.Files) == 0 {
		return nil, fmt.Errorf("create snapshot: the driver wrote no files")
	}
	mb, _ := json.MarshalIndent(m, "", "  ")
	if err := writeFileAtomic(filepath.Join(tmp, manifestFile), mb); err != nil {
		return nil, err
	}
	vb, _ := json.Marshal(known)
	_ = os.WriteFile(filepath.Join(tmp, verifiedFile), vb, 0o644)
	_ = os.WriteFile(filepath.Join(tmp, usedFile), nil, 0o644)
	if err := os.Chmod(tmp, 0o755); err != nil {
		return nil, err
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	final := filepath.Join(s.dir, key)
	if _, err := os.Stat(final); err == nil {
		old := tmp + ".old"
		if err := os.Rename(final, old); err != nil {
			return nil, err
		}
		defer os.RemoveAll(old)
	}
	if err := os.Rename(tmp, final); err != nil {
		return nil, fmt.Errorf("create snapshot %s: %w", key, err)
	}
	syncDir(s.dir)
	s.evictLocked(key)
	return &Snapshot{Manifest: m, Dir: final}, nil
}

// Remove deletes a snapshot; removing a missing one is not an error.
func (s *Store) Remove(key string) error {
	if !ValidKey(key) {
		return fmt.Errorf("%w: key %q", ErrInvalid, key)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return removeDir(filepath.Join(s.dir, key))
}

// removeDir renames a snapshot away before deleting it, so a reader never
// sees a half-deleted snapshot under its key.
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

// Entry is a snapshot in a listing.
type Entry struct {
	Snapshot
	LastUsed  time.Time
	DiskBytes int64 // blocks actually allocated (memory files are sparse)
}

// List returns every snapshot in the store, most recently used first.
// Unreadable ones are skipped.
func (s *Store) List() ([]Entry, error) {
	ents, err := os.ReadDir(s.dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	var out []Entry
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		snap, err := s.load(e.Name())
		if err != nil {
			continue
		}
		en := Entry{Snapshot: *snap, DiskBytes: diskUsage(snap.Dir)}
		if fi, err := os.Stat(filepath.Join(snap.Dir, usedFile)); err == nil {
			en.LastUsed = fi.ModTime()
		}
		out = append(out, en)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].LastUsed.After(out[j].LastUsed) })
	return out, nil
}

// evictLocked removes least recently used snapshots until the store fits
// its limit, never the one just created.
func (s *Store) evictLocked(keep string) {
	if s.maxBytes <= 0 {
		return
	}
	list, err := s.List()
	if err != nil {
		return
	}
	var total int64
	for _, e := range list {
		total += e.DiskBytes
	}
	for i := len(list) - 1; i >= 0 && total > s.maxBytes; i-- {
		if list[i].Key == keep {
			continue
		}
		if removeDir(list[i].Dir) == nil {
			total -= list[i].DiskBytes
		}
	}
}

// sweep removes what interrupted creates and removals left behind.
func (s *Store) sweep() {
	for _, pat := range []string{".create-*", ".remove-*"} {
		ms, _ := filepath.Glob(filepath.Join(s.dir, pat))
		for _, m := range ms {
			if fi, err := os.Stat(m); err == nil && time.Since(fi.ModTime()) > time.Hour {
				os.RemoveAll(m) // an hour old: no live create is that slow
			}
		}
	}
}

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

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func writeFileAtomic(p string, b []byte) error {
	tmp := p + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

func syncFile(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

func syncDir(d string) {
	if f, err := os.Open(d); err == nil {
		_ = unix.Fsync(int(f.Fd()))
		f.Close()
	}
}

// Adopt moves a complete snapshot directory (for example one just pulled
// from a Remote into TempDir) into the store, after checking its manifest
// and every file's digest. The directory is consumed either way.
func (s *Store) Adopt(dir string) (*Snapshot, error) {
	defer os.RemoveAll(dir)
	b, err := os.ReadFile(filepath.Join(dir, manifestFile))
	if err != nil {
		return nil, fmt.Errorf("adopt snapshot: %w", err)
	}
	m, err := ParseManifest(b)
	if err != nil {
		return nil, fmt.Errorf("adopt snapshot: %w", err)
	}
	if err := s.verify(&Snapshot{Manifest: *m, Dir: dir}); err != nil {
		return nil, fmt.Errorf("adopt snapshot %s: %w", m.Key, err)
	}
	_ = os.WriteFile(filepath.Join(dir, usedFile), nil, 0o644)
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	final := filepath.Join(s.dir, m.Key)
	if err := removeDir(final); err != nil {
		return nil, err
	}
	if err := os.Rename(dir, final); err != nil {
		return nil, fmt.Errorf("adopt snapshot %s: %w", m.Key, err)
	}
	syncDir(s.dir)
	s.evictLocked(m.Key)
	return &Snapshot{Manifest: *m, Dir: final}, nil
}

// TempDir makes an empty directory inside the store (same filesystem, so
// Adopt can rename it into place).
func (s *Store) TempDir() (string, error) {
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return "", err
	}
	return os.MkdirTemp(s.dir, ".create-")
}

// Prune removes the snapshots keep rejects (for example those made for a
// kernel or image this host no longer has: nothing can restore them).
func (s *Store) Prune(keep func(Spec) bool, dryRun bool) ([]Entry, error) {
	list, err := s.List()
	if err != nil {
		return nil, err
	}
	var removed []Entry
	var errs []error
	for _, e := range list {
		if keep(e.Spec) {
			continue
		}
		removed = append(removed, e)
		if !dryRun {
			if err := s.Remove(e.Key); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return removed, errors.Join(errs...)
}
