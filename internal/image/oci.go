package image

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// ErrRegistryUnreachable means the registry an OCI entry names could not
// be reached from this host.
var ErrRegistryUnreachable = errors.New("registry cannot be reached")

// MaxOCIBytes bounds what an OCI image may unpack to, and MaxOCIEntries
// the number of files in it: an image comes from outside.
const (
	MaxOCIBytes   = 16 << 30
	MaxOCIEntries = 1 << 20
)

// parseOCIRef parses an image reference; a bare name means Docker Hub,
// as for docker pull.
func parseOCIRef(s string) (name.Reference, error) {
	return name.ParseReference(s, name.WithDefaultRegistry(name.DefaultRegistry))
}

// ociRef is e's image reference, with its registry replaced by registry
// ("host:port", a mirror) when that is not empty.
func ociRef(e *Entry, registry string) (name.Reference, error) {
	ref, err := parseOCIRef(e.OCI)
	if err != nil || registry == "" {
		return ref, err
	}
	s := registry + "/" + ref.Context().RepositoryStr()
	switch r := ref.(type) {
	case name.Digest:
		s += "@" + r.DigestStr()
	case name.Tag:
		s += ":" + r.TagStr()
	}
	return name.ParseReference(s)
}

// ociLayerID is the content address of an OCI entry's image: the
// reference (pin a digest for a reproducible one), the format and the
// setup commands. A tag that moves upstream keeps its id until the entry
// changes.
func (e *Entry) ociLayerID(format string) string {
	b, _ := json.Marshal(struct {
		Builder string   `json:"builder"`
		OCI     string   `json:"oci"`
		Format  string   `json:"format"`
		Setup   []string `json:"setup,omitempty"`
	}{BuilderVersion, e.OCI, format, e.Setup})
	h := sha256.Sum256(b)
	return e.Name + "-" + hex.EncodeToString(h[:8])
}

// ociPlatform is the platform images are pulled for: guests are x86-64.
var ociPlatform = v1.Platform{OS: "linux", Architecture: "amd64"}

// buildOCI builds e's image from its OCI image: the image's layers
// flattened in order (whiteouts and opaque directories honoured), the
// sandbox user added, the setup commands run, packed as one layer with
// no parent.
func (s *Store) buildOCI(ctx context.Context, e *Entry, o BuildOptions) (*Image, error) {
	id := e.ociLayerID(o.Format)
	ref, err := ociRef(e, o.Registry)
	if err != nil {
		return nil, fmt.Errorf("build %s: image %q: %w", e.Name, e.OCI, err)
	}
	start := time.Now()
	step := stepper(o.Progress, e.Name, start)
	step("pull %s (linux/amd64)", ref)
	img, err := remote.Image(ref, remote.WithContext(ctx), remote.WithPlatform(ociPlatform), remote.WithTransport(ociTransport()))
	if err != nil {
		return nil, fmt.Errorf("build %s: %w", e.Name, explainPull(ref, err))
	}
	digest, err := img.Digest()
	if err != nil {
		return nil, fmt.Errorf("build %s: %w", e.Name, explainPull(ref, err))
	}
	tmp, err := os.MkdirTemp(s.Dir, ".build-"+id+"-")
	if err != nil {
		return nil, err
	}
	defer removeTree(tmp)
	tree := filepath.Join(tmp, "tree")
	if err := os.Mkdir(tree, 0o755); err != nil {
		return nil, err
	}
	step("unpack %s", digest)
	rc := mutate.Extract(img)
	err = untar(rc, tree, MaxOCIBytes, MaxOCIEntries)
	rc.Close()
	if err != nil {
		return nil, fmt.Errorf("build %s: unpack %s: %w", e.Name, ref, explainPull(ref, err))
	}
	if err := customize(tree); err != nil {
		return nil, fmt.Errorf("build %s: %w", e.Name, err)
	}
	if len(e.Setup) > 0 {
		var mounts []string
		err := func() error {
			defer func() {
				for i := len(mounts) - 1; i >= 0; i-- {
					_ = syscall.Unmount(mounts[i], syscall.MNT_DETACH)
				}
			}()
			ch, err := enterChroot(ctx, o.Progress, tree, &mounts)
			if err != nil {
				return err
			}
			return ch.setup(step, e)
		}()
		if err != nil {
			return nil, fmt.Errorf("build %s: %w", e.Name, err)
		}
		if err := cleanUpper(tree); err != nil {
			return nil, err
		}
	}
	m, err := s.packLayer(ctx, o, tree, tmp, Manifest{ID: id, Language: e.Name, Version: e.Version,
		OCI: ref.String(), Digest: digest.String()}, step, start)
	if err != nil {
		return nil, err
	}
	if err := os.RemoveAll(tree); err != nil {
		return nil, err
	}
	if err := s.commit(tmp, m); err != nil {
		return nil, err
	}
	return s.Get(id)
}

// ociTransport bounds connecting, so an unreachable registry is reported
// in seconds rather than after the kernel's TCP timeout.
func ociTransport() http.RoundTripper {
	t := remote.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = (&net.Dialer{Timeout: 15 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	t.TLSHandshakeTimeout = 15 * time.Second
	t.ResponseHeaderTimeout = 60 * time.Second
	return t
}

// explainPull turns a network failure into ErrRegistryUnreachable with
// the registry's name and what to do; other errors (no such image, no
// amd64 variant, a refused login) are returned as they are.
func explainPull(ref name.Reference, err error) error {
	var opErr *net.OpError
	var dnsErr *net.DNSError
	var terr *transport.Error
	switch {
	case errors.As(err, &terr):
		return fmt.Errorf("pull %s: %w", ref, err)
	case errors.As(err, &opErr), errors.As(err, &dnsErr), errors.Is(err, syscall.ECONNREFUSED),
		errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("%w: %s (pulling %s: %v); build on a host that reaches it, or name a mirror with --registry",
			ErrRegistryUnreachable, ref.Context().RegistryStr(), ref, err)
	}
	return fmt.Errorf("pull %s: %w", ref, err)
}

// untar unpacks a tar stream into dir, which it never leaves: every path
// is resolved inside dir (os.Root), so neither "../" names nor symlinks in
// the archive can write outside it. Device nodes and FIFOs are skipped;
// owners and modes (setuid included) are kept; at most maxBytes of file
// data and maxEntries entries are accepted.
func untar(r io.Reader, dir string, maxBytes int64, maxEntries int) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	tr := tar.NewReader(r)
	var total int64
	type dirMode struct {
		name string
		mode os.FileMode
	}
	var dirs []dirMode
	var links [][2]string // target, name
	for n := 0; ; n++ {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if n >= maxEntries {
			return fmt.Errorf("more than %d entries", maxEntries)
		}
		rel := strings.TrimPrefix(path.Clean("/"+hdr.Name), "/")
		if rel == "" {
			continue
		}
		mode := hdr.FileInfo().Mode()
		if parent := path.Dir(rel); parent != "." {
			if err := root.MkdirAll(parent, 0o755); err != nil {
				return fmt.Errorf("%s: %w", rel, err)
			}
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := root.MkdirAll(rel, 0o755); err != nil {
				return fmt.Errorf("%s: %w", rel, err)
			}
			dirs = append(dirs, dirMode{rel, mode})
		case tar.TypeReg:
			if hdr.Size > maxBytes-total {
				return fmt.Errorf("more than %d bytes of files", maxBytes)
			}
			total += hdr.Size
			_ = root.Remove(rel) // a file of a lower layer, or a link
			f, err := root.OpenFile(rel, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
			if err != nil {
				return fmt.Errorf("%s: %w", rel, err)
			}
			_, err = io.CopyN(f, tr, hdr.Size)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("%s: %w", rel, err)
			}
		case tar.TypeSymlink:
			_ = root.Remove(rel)
			if err := root.Symlink(hdr.Linkname, rel); err != nil {
				return fmt.Errorf("%s: %w", rel, err)
			}
		case tar.TypeLink: // its target may come later: mutate.Extract goes from the top layer down
			links = append(links, [2]string{strings.TrimPrefix(path.Clean("/"+hdr.Linkname), "/"), rel})
			continue
		default: // devices, FIFOs: not needed in a language image
			continue
		}
		if err := root.Lchown(rel, hdr.Uid, hdr.Gid); err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		if hdr.Typeflag == tar.TypeReg {
			if err := root.Chmod(rel, mode); err != nil {
				return fmt.Errorf("%s: %w", rel, err)
			}
		}
	}
	for _, l := range links {
		_ = root.Remove(l[1])
		if err := root.Link(l[0], l[1]); err != nil {
			return fmt.Errorf("%s: hard link to %s: %w", l[1], l[0], err)
		}
	}
	for i := len(dirs) - 1; i >= 0; i-- { // last: a read-only directory still took its files
		if err := root.Chmod(dirs[i].name, dirs[i].mode); err != nil {
			return fmt.Errorf("%s: %w", dirs[i].name, err)
		}
	}
	return nil
}
