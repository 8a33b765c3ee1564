package snapshot

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"regexp"
	"sort"
	"time"
)

// ManifestVersion is the manifest format this package writes and reads.
// Version 2 has block digests (see FileInfo); version 1 manifests (plain
// sha256, no version field) are refused as invalid, so their snapshots
// are rebuilt or pulled again.
const ManifestVersion = 2

// FileInfo is one file of a snapshot.
type FileInfo struct {
	// Size is the file's length in bytes (its apparent size: memory files
	// and disk images are sparse).
	Size int64 `json:"size"`
	// Digest is the sha256 of the sha256s of the file's 1 MiB blocks, in
	// order, as 64 hex digits. Holes need not be read to compute it.
	Digest string `json:"digest"`
}

// Manifest describes a snapshot (manifest.json in its directory).
type Manifest struct {
	Version int                 `json:"version"`
	Key     string              `json:"key"`
	Spec    Spec                `json:"spec"`
	Files   map[string]FileInfo `json:"files"`
	Created time.Time           `json:"created"`
}

// Limits on a manifest, which may come from an untrusted bucket: a few
// hundred bytes and two or three files are normal.
const (
	maxManifestBytes = 1 << 20
	maxFiles         = 256
)

var (
	keyRe    = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,127}$`)
	fileRe   = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$`)
	digestRe = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// ValidKey reports whether k can name a snapshot.
func ValidKey(k string) bool { return keyRe.MatchString(k) }

// validFileName reports whether a manifest may list a file called name:
// a plain name, not one of the files a snapshot directory has besides.
func validFileName(name string) bool {
	return fileRe.MatchString(name) && name != manifestFile && name != signatureFile
}

// ParseManifest decodes and checks a manifest. It is the one rule for
// every manifest, whether it comes from the local store, a hibernated
// sandbox's directory or a bucket: a known format version, no unknown
// fields, a key that is the digest of its Spec, plain file names, and
// files no larger in total than the Spec allows (Spec.MaxBytes).
func ParseManifest(b []byte) (*Manifest, error) {
	if len(b) > maxManifestBytes {
		return nil, fmt.Errorf("%w: manifest is larger than %d bytes", ErrInvalid, maxManifestBytes)
	}
	var v struct {
		Version int `json:"version"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, fmt.Errorf("%w: manifest: %v", ErrInvalid, err)
	}
	if v.Version != ManifestVersion {
		return nil, fmt.Errorf("%w: manifest format %d, this build reads %d", ErrInvalid, v.Version, ManifestVersion)
	}
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("%w: manifest: %v", ErrInvalid, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: manifest: data after the JSON object", ErrInvalid)
	}
	if err := m.validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

func (m *Manifest) validate() error {
	if !ValidKey(m.Key) {
		return fmt.Errorf("%w: manifest key %q", ErrInvalid, m.Key)
	}
	if err := m.Spec.Validate(); err != nil {
		return fmt.Errorf("manifest %s: %w", m.Key, err)
	}
	if m.Key != m.Spec.Key() {
		return fmt.Errorf("%w: manifest key %s does not match its spec (%s)", ErrInvalid, m.Key, m.Spec.Key())
	}
	if len(m.Files) == 0 || len(m.Files) > maxFiles {
		return fmt.Errorf("%w: manifest %s lists %d files, want 1 to %d", ErrInvalid, m.Key, len(m.Files), maxFiles)
	}
	var total int64
	for name, f := range m.Files {
		if !validFileName(name) {
			return fmt.Errorf("%w: manifest %s: file name %q is not a plain name", ErrInvalid, m.Key, name)
		}
		if f.Size < 0 || !digestRe.MatchString(f.Digest) {
			return fmt.Errorf("%w: manifest %s: entry for %s: size %d digest %q", ErrInvalid, m.Key, name, f.Size, f.Digest)
		}
		total += min(f.Size, 1<<62) // no overflow: each is bounded below too
		if limit := m.Spec.MaxBytes(); total > limit {
			return fmt.Errorf("%w: manifest %s declares %d bytes of files (at %s), more than its spec allows (%d MiB memory, %d MiB disk: at most %d bytes)",
				ErrInvalid, m.Key, total, name, m.Spec.MemoryMiB, m.Spec.DiskMiB, limit)
		}
	}
	return nil
}

// Size is the total size of the manifest's files (apparent size).
func (m *Manifest) Size() int64 {
	var n int64
	for _, f := range m.Files {
		n += f.Size
	}
	return n
}

// names returns the file names in a stable order.
func (m *Manifest) names() []string {
	names := make([]string, 0, len(m.Files))
	for name := range m.Files {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// marshal encodes a manifest after checking it with the rule every
// reader applies, so no writer makes a manifest that readers refuse.
func (m *Manifest) marshal() ([]byte, error) {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	if _, err := ParseManifest(b); err != nil {
		return nil, fmt.Errorf("make manifest: %w", err)
	}
	return b, nil
}

// readManifest reads and parses dir/manifest.json; raw is its bytes, which
// a signature covers.
func readManifest(dir string) (m *Manifest, raw []byte, err error) {
	raw, err = readFileLimited(filepath.Join(dir, manifestFile), maxManifestBytes)
	if err != nil {
		return nil, nil, err
	}
	m, err = ParseManifest(raw)
	if err != nil {
		return nil, nil, err
	}
	return m, raw, nil
}
