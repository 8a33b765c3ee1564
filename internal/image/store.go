package image

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"
)

// ErrNotBuilt means an image has not been built yet.
var ErrNotBuilt = errors.New("image not built")

// Manifest describes a built image (<data>/images/<id>/manifest.json).
type Manifest struct {
	ID       string   `json:"id"`
	Language string   `json:"language"`
	Version  string   `json:"version"`
	Format   string   `json:"format"`
	File     string   `json:"file"`
	Base     Base     `json:"base"`
	Packages []string `json:"packages"`
	NPM      []string `json:"npm,omitempty"`
	// OCI is the image reference an OCI layer was built from, and
	// Digest the manifest digest it resolved to.
	OCI           string    `json:"oci,omitempty"`
	Digest        string    `json:"digest,omitempty"`
	PackedBytes   int64     `json:"packed_bytes"`
	UnpackedBytes int64     `json:"unpacked_bytes"`
	BuildSeconds  float64   `json:"build_seconds"`
	Created       time.Time `json:"created"`
	SHA256        string    `json:"sha256"`
	// Parent is the layer this one sits on ("" for a bottom layer).
	Parent string `json:"parent,omitempty"`
}

// Image is a built image on disk.
type Image struct {
	Manifest
	Dir string `json:"-"`
}

// Path is the packed root filesystem.
func (im *Image) Path() string { return filepath.Join(im.Dir, im.File) }

// Store is the image directory of a data directory.
type Store struct{ Dir string }

// NewStore returns the store under dataDir.
func NewStore(dataDir string) *Store { return &Store{Dir: filepath.Join(dataDir, "images")} }

// Get returns the image with the given id.
func (s *Store) Get(id string) (*Image, error) {
	dir := filepath.Join(s.Dir, id)
	b, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrNotBuilt, id)
	} else if err != nil {
		return nil, err
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("image %s: bad manifest: %w", id, err)
	}
	if m.ID != id {
		return nil, fmt.Errorf("image %s: manifest says %s", id, m.ID)
	}
	return &Image{Manifest: m, Dir: dir}, nil
}

// ForEntry returns the image built from e, or an error saying which
// command builds it.
func (s *Store) ForEntry(e *Entry, format string) (*Image, error) {
	im, err := s.Get(e.ID(DefaultBase, format))
	if errors.Is(err, ErrNotBuilt) {
		return nil, fmt.Errorf("%w for %s: run `firesandbox image build %s`", ErrNotBuilt, e.Name, e.Name)
	}
	return im, err
}

// List returns every built image, newest first.
func (s *Store) List() ([]*Image, error) {
	ents, err := os.ReadDir(s.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	var out []*Image
	for _, e := range ents {
		if !e.IsDir() || e.Name()[0] == '.' {
			continue
		}
		if im, err := s.Get(e.Name()); err == nil {
			out = append(out, im)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.After(out[j].Created) })
	return out, nil
}
