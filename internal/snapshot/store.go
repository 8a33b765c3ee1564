package snapshot

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// Snapshot is a verified snapshot in the local store.
type Snapshot struct {
	Manifest
	Dir string
}

// Store is the local snapshot cache: <dir>/<key>/. Its disk use is kept
// under a limit by evicting the least recently used snapshots.
type Store struct {
	dir      string
	maxBytes int64
	opts     options

	mu sync.Mutex // serialises creates and evictions in this process
}

// NewStore returns the store in dir. maxBytes <= 0 means no limit. Give
// WithTrust where snapshots are pulled (Adopt): without it the store
// refuses every pulled snapshot, and uses only those it made itself.
func NewStore(dir string, maxBytes int64, opts ...Option) *Store {
	return &Store{dir: dir, maxBytes: maxBytes, opts: makeOptions(opts)}
}

// Dir is the store's directory.
func (s *Store) Dir() string { return s.dir }

// Get returns the snapshot for spec after checking it: the manifest must
// match spec exactly, a pulled snapshot's signature must be accepted by
// the store's trust policy, and every file must have its size and digest.
// Digests are computed once per file version (inode, size, mtime) and
// remembered.
func (s *Store) Get(spec Spec) (*Snapshot, error) {
	key := spec.Key()
	snap, raw, err := s.load(key)
	if err != nil {
		return nil, err
	}
	if snap.Spec != spec {
		return nil, &MismatchError{What: "snapshot " + key, Changes: snap.Spec.Diff(spec)}
	}
	if err := checkOrigin(snap.Dir, key, raw, s.opts.trust); err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", key, err)
	}
	if err := verifyFiles(snap.Dir, &snap.Manifest); err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", key, err)
	}
	now := time.Now()
	_ = os.Chtimes(filepath.Join(snap.Dir, usedFile), now, now)
	return snap, nil
}

func (s *Store) load(key string) (*Snapshot, []byte, error) {
	if !ValidKey(key) {
		return nil, nil, fmt.Errorf("%w: key %q", ErrInvalid, key)
	}
	dir := filepath.Join(s.dir, key)
	m, raw, err := readManifest(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("%w: %s", ErrNotFound, key)
	} else if err != nil {
		return nil, nil, fmt.Errorf("snapshot %s: %w", key, err)
	}
	if m.Key != key {
		return nil, nil, fmt.Errorf("%w: directory %s holds snapshot %s", ErrInvalid, key, m.Key)
	}
	return &Snapshot{Manifest: *m, Dir: dir}, raw, nil
}

// Create makes a snapshot for spec. fill writes the snapshot's files into
// an empty temporary directory; Create then seals it (digests, manifest
// last) and renames the directory into place, so a crash at any point
// leaves no snapshot that looks valid. A snapshot already there for the
// same key is replaced.
func (s *Store) Create(spec Spec, fill func(dir string) error) (*Snapshot, error) {
	if err := spec.Validate(); err != nil {
		return nil, fmt.Errorf("create snapshot: %w", err)
	}
	tmp, err := s.TempDir()
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	if err := fill(tmp); err != nil {
		return nil, err
	}
	if ents, err := os.ReadDir(tmp); err == nil && len(ents) == 0 {
		return nil, fmt.Errorf("create snapshot: the driver wrote no files")
	}
	m, err := Seal(tmp, spec)
	if err != nil {
		return nil, fmt.Errorf("create snapshot: %w", err)
	}
	_ = os.WriteFile(filepath.Join(tmp, usedFile), nil, 0o644)
	if err := os.Chmod(tmp, 0o755); err != nil {
		return nil, err
	}
	return s.install(tmp, m)
}

// install renames a complete snapshot directory into place, replacing
// what was there under its key, and evicts what no longer fits.
func (s *Store) install(tmp string, m *Manifest) (*Snapshot, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	final := filepath.Join(s.dir, m.Key)
	if err := removeDir(final); err != nil {
		return nil, fmt.Errorf("replace snapshot %s: %w", m.Key, err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return nil, fmt.Errorf("install snapshot %s: %w", m.Key, err)
	}
	if err := syncDir(s.dir); err != nil {
		return nil, err
	}
	s.evictLocked(m.Key)
	return &Snapshot{Manifest: *m, Dir: final}, nil
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
		snap, _, err := s.load(e.Name())
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

// Adopt moves a complete snapshot directory pulled from a Remote (into
// TempDir) into the store, after checking its manifest, its signature
// against the store's trust policy and every file's digest. The directory
// is consumed either way. Adopted snapshots are marked as pulled, so
// every Get checks their signature again.
func (s *Store) Adopt(dir string) (*Snapshot, error) {
	defer os.RemoveAll(dir)
	m, raw, err := readManifest(dir)
	if err != nil {
		return nil, fmt.Errorf("adopt snapshot: %w", err)
	}
	if _, err := os.Stat(filepath.Join(dir, originFile)); errors.Is(err, fs.ErrNotExist) {
		// Not from Pull: treat it as pulled from somewhere unknown.
		if err := writeOrigin(dir, origin{Name: m.Key}); err != nil {
			return nil, fmt.Errorf("adopt snapshot %s: %w", m.Key, err)
		}
	}
	if err := checkOrigin(dir, m.Key, raw, s.opts.trust); err != nil {
		return nil, fmt.Errorf("adopt snapshot %s: %w", m.Key, err)
	}
	if err := verifyFiles(dir, m); err != nil {
		return nil, fmt.Errorf("adopt snapshot %s: %w", m.Key, err)
	}
	_ = os.WriteFile(filepath.Join(dir, usedFile), nil, 0o644)
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	return s.install(dir, m)
}

// TempDir makes an empty directory inside the store (same filesystem, so
// Adopt can rename it into place).
func (s *Store) TempDir() (string, error) {
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return "", err
	}
	s.sweep()
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
