package snapshot

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// Option changes how a Store or Check treats snapshots.
type Option func(*options)

type options struct {
	trust *Trust
}

// WithTrust sets the policy for snapshots that were pulled from a Remote:
// their signature is checked on every use. Without it nothing pulled is
// accepted (unless it was pulled with trust off, which does not carry over).
func WithTrust(t *Trust) Option { return func(o *options) { o.trust = t } }

func makeOptions(opts []Option) options {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// Seal makes dir a snapshot directory: it digests every file in it (the
// driver's memory and device state, a hibernated sandbox's disk image)
// and writes manifest.json for spec, last and atomically. A directory
// sealed before is sealed again; a signature and pull record it had are
// removed, since they vouched for other contents.
//
// Files are digested where they have data only, so a large sparse disk
// costs what it holds, and the digests are remembered for Check.
func Seal(dir string, spec Spec) (*Manifest, error) {
	if err := spec.Validate(); err != nil {
		return nil, fmt.Errorf("seal %s: %w", dir, err)
	}
	for _, name := range []string{manifestFile, signatureFile, originFile, verifiedFile} {
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("seal %s: %w", dir, err)
		}
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("seal %s: %w", dir, err)
	}
	m := &Manifest{Version: ManifestVersion, Key: spec.Key(), Spec: spec, Files: map[string]FileInfo{}, Created: time.Now().UTC()}
	known := map[string]string{}
	for _, e := range ents {
		if e.Name() == usedFile {
			continue
		}
		if !e.Type().IsRegular() || !validFileName(e.Name()) {
			return nil, fmt.Errorf("seal %s: %w: unexpected entry %q (want regular files with plain names)", dir, ErrInvalid, e.Name())
		}
		p := filepath.Join(dir, e.Name())
		if err := syncFile(p); err != nil {
			return nil, fmt.Errorf("seal %s: %w", dir, err)
		}
		fi, digest, err := digestFile(p)
		if err != nil {
			return nil, fmt.Errorf("seal %s: %w", dir, err)
		}
		m.Files[e.Name()] = FileInfo{Size: fi.Size(), Digest: digest}
		known[e.Name()] = fileVersion(fi) + ":" + digest
	}
	b, err := m.marshal() // refuses what readers would refuse, e.g. files too large for spec
	if err != nil {
		return nil, fmt.Errorf("seal %s: %w", dir, err)
	}
	vb, _ := json.Marshal(known)
	_ = writeFileAtomic(filepath.Join(dir, verifiedFile), vb, 0o600)
	if err := writeFileAtomic(filepath.Join(dir, manifestFile), b, 0o644); err != nil {
		return nil, fmt.Errorf("seal %s: %w", dir, err)
	}
	if err := syncDir(dir); err != nil {
		return nil, fmt.Errorf("seal %s: %w", dir, err)
	}
	return m, nil
}

// Check verifies that dir is a snapshot that restores on a host whose
// Spec is want: its manifest is valid and made for want (else a
// *MismatchError that names every field that changed, e.g. "driver
// version 10.0.2 -> 10.1.0"), a pulled one's signature is accepted by
// the trust policy (WithTrust), and every file has its size and digest.
// It never changes or removes the snapshot's files.
func Check(dir string, want Spec, opts ...Option) (*Manifest, error) {
	o := makeOptions(opts)
	m, raw, err := readManifest(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("check snapshot %s: %w: no %s", dir, ErrNotFound, manifestFile)
	} else if err != nil {
		return nil, fmt.Errorf("check snapshot %s: %w", dir, err)
	}
	if m.Spec != want {
		return nil, &MismatchError{What: dir, Changes: m.Spec.Diff(want)}
	}
	if err := checkOrigin(dir, "", raw, o.trust); err != nil {
		return nil, fmt.Errorf("check snapshot %s: %w", dir, err)
	}
	if err := verifyFiles(dir, m); err != nil {
		return nil, fmt.Errorf("check snapshot %s: %w", dir, err)
	}
	return m, nil
}

// verifyFiles checks every file of m in dir: size, then digest. Digests
// are computed once per file version (inode, size, mtime) and remembered
// in .verified, so a snapshot used again costs a stat per file.
func verifyFiles(dir string, m *Manifest) error {
	known := map[string]string{}
	vpath := filepath.Join(dir, verifiedFile)
	if b, err := readFileLimited(vpath, 1<<20); err == nil {
		_ = json.Unmarshal(b, &known)
	}
	changed := false
	for _, name := range m.names() {
		want := m.Files[name]
		p := filepath.Join(dir, name)
		fi, err := os.Lstat(p)
		if err != nil {
			return fmt.Errorf("%w: %s: %v", ErrCorrupt, name, err)
		}
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("%w: %s is not a regular file", ErrCorrupt, name)
		}
		if fi.Size() != want.Size {
			return fmt.Errorf("%w: %s is %d bytes, manifest says %d", ErrCorrupt, name, fi.Size(), want.Size)
		}
		if known[name] == fileVersion(fi)+":"+want.Digest {
			continue
		}
		dfi, digest, err := digestFile(p)
		if err != nil {
			return fmt.Errorf("%w: %s: %v", ErrCorrupt, name, err)
		}
		if dfi.Size() != want.Size || digest != want.Digest {
			return fmt.Errorf("%w: %s has digest %s, manifest says %s", ErrCorrupt, name, digest[:16], want.Digest[:16])
		}
		known[name] = fileVersion(dfi) + ":" + want.Digest
		changed = true
	}
	if changed {
		b, _ := json.Marshal(known)
		_ = writeFileAtomic(vpath, b, 0o600)
	}
	return nil
}
