package image

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"log"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// tarEntry is one member of a test layer.
type tarEntry struct {
	name, body, link string
	typ              byte
	mode             int64
}

func layerOf(t *testing.T, entries ...tarEntry) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Linkname: e.link, Size: int64(len(e.body))}
		if hdr.Typeflag == 0 {
			hdr.Typeflag = tar.TypeReg
		}
		if hdr.Mode == 0 {
			hdr.Mode = 0o644
			if hdr.Typeflag == tar.TypeDir {
				hdr.Mode = 0o755
			}
		}
		if hdr.Typeflag != tar.TypeReg {
			hdr.Size = 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if hdr.Size > 0 {
			tw.Write([]byte(e.body))
		}
	}
	tw.Close()
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// The test assembles a three-layer image, pushes it to a real registry
// server on loopback (go-containerregistry's), and builds a catalog entry
// that names it with the registry replaced, as a mirror would be: the
// image's files arrive, a whiteout removes a lower layer's file, an
// opaque directory hides the lower directory's contents, and the sandbox
// user is added.
func TestBuildFromOCIImage(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: images are built as root (owners, chroot)")
	}
	if _, err := exec.LookPath("unsquashfs"); err != nil {
		t.Skip("skipped: unsquashfs not installed (squashfs-tools)")
	}
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")

	img, err := mutate.AppendLayers(empty.Image,
		layerOf(t,
			tarEntry{name: "etc/", typ: tar.TypeDir},
			tarEntry{name: "etc/passwd", body: "root:x:0:0:root:/root:/bin/sh\n"},
			tarEntry{name: "etc/group", body: "root:x:0:\n"},
			tarEntry{name: "etc/shadow", body: "root:*:0:0:99999:7:::\n"},
			tarEntry{name: "opt/lang/bin/", typ: tar.TypeDir},
			tarEntry{name: "opt/lang/bin/lang", body: "#!/bin/sh\necho lang\n", mode: 0o755},
			tarEntry{name: "opt/lang/old.txt", body: "removed by a whiteout"},
			tarEntry{name: "opt/cache/", typ: tar.TypeDir},
			tarEntry{name: "opt/cache/stale", body: "hidden by an opaque dir"},
		),
		layerOf(t,
			tarEntry{name: "opt/lang/.wh.old.txt"},
			tarEntry{name: "opt/cache/", typ: tar.TypeDir},
			tarEntry{name: "opt/cache/.wh..wh..opq"},
			tarEntry{name: "opt/cache/fresh", body: "new"},
		),
		layerOf(t,
			tarEntry{name: "usr/local/bin/", typ: tar.TypeDir},
			tarEntry{name: "usr/local/bin/lang", typ: tar.TypeSymlink, link: "/opt/lang/bin/lang"},
			tarEntry{name: "opt/lang/bin/lang2", typ: tar.TypeLink, link: "opt/lang/bin/lang"},
		),
	)
	if err != nil {
		t.Fatal(err)
	}
	upstream := "docker.io/library/testlang:1.0"
	mirror, err := name.ParseReference(host + "/library/testlang:1.0")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(mirror, img); err != nil {
		t.Fatalf("push to the loopback registry: %v", err)
	}

	e := &Entry{Name: "testlang", Version: "1.0", OCI: upstream, File: "main.x", Run: []string{"lang"},
		Test: Test{Code: "x", Stdout: "lang\n"}}
	if err := e.Validate(); err != nil {
		t.Fatal(err)
	}
	st := &Store{Dir: t.TempDir()}
	var log bytes.Buffer
	im, err := st.Build(context.Background(), e, BuildOptions{Registry: host, Progress: &log})
	if err != nil {
		t.Fatalf("build: %v\n%s", err, log.String())
	}
	if im.ID != e.ID(DefaultBase, FormatSquashFS) {
		t.Errorf("built %s, but the entry's id is %s: ForEntry would not find it", im.ID, e.ID(DefaultBase, FormatSquashFS))
	}
	if im.Parent != "" || im.OCI == "" || !strings.HasPrefix(im.Digest, "sha256:") {
		t.Errorf("manifest: parent %q, oci %q, digest %q; want a bottom layer with its source", im.Parent, im.OCI, im.Digest)
	}
	out := filepath.Join(t.TempDir(), "x")
	if b, err := exec.Command("unsquashfs", "-no-progress", "-d", out, im.Path()).CombinedOutput(); err != nil {
		t.Fatalf("unsquashfs: %v: %s", err, b)
	}
	read := func(p string) string { b, _ := os.ReadFile(filepath.Join(out, p)); return string(b) }
	if got := read("opt/lang/bin/lang"); got != "#!/bin/sh\necho lang\n" {
		t.Errorf("opt/lang/bin/lang = %q", got)
	}
	if fi, err := os.Stat(filepath.Join(out, "opt/lang/bin/lang")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("executable lost its mode: %v %v", fi, err)
	}
	if _, err := os.Lstat(filepath.Join(out, "opt/lang/old.txt")); !os.IsNotExist(err) {
		t.Errorf("opt/lang/old.txt survived its whiteout (%v)", err)
	}
	if _, err := os.Lstat(filepath.Join(out, "opt/cache/stale")); !os.IsNotExist(err) {
		t.Errorf("opt/cache/stale survived the opaque directory above it (%v)", err)
	}
	if got := read("opt/cache/fresh"); got != "new" {
		t.Errorf("opt/cache/fresh = %q", got)
	}
	if l, err := os.Readlink(filepath.Join(out, "usr/local/bin/lang")); err != nil || l != "/opt/lang/bin/lang" {
		t.Errorf("symlink: %q, %v", l, err)
	}
	if got := read("opt/lang/bin/lang2"); got != "#!/bin/sh\necho lang\n" {
		t.Errorf("hard link: %q", got)
	}
	for _, w := range []string{".wh.old.txt", ".wh..wh..opq"} {
		if b, _ := exec.Command("find", out, "-name", w).Output(); len(b) > 0 {
			t.Errorf("whiteout marker %s is in the image: %s", w, b)
		}
	}
	if !strings.Contains(read("etc/passwd"), "sandbox:x:1000:1000:") || !strings.HasPrefix(read("etc/passwd"), "root:") {
		t.Errorf("etc/passwd = %q; want the image's root and the sandbox user", read("etc/passwd"))
	}

	again, err := st.Build(context.Background(), e, BuildOptions{Registry: host, Progress: io.Discard})
	if err != nil || again.ID != im.ID {
		t.Errorf("second build: %v, %v; want the same image without pulling", again, err)
	}
}

// A registry that cannot be reached is named in the error, which says
// what to do, and wraps ErrRegistryUnreachable; the build leaves nothing
// behind. The registry is a closed port on loopback: nothing else is
// dialled.
func TestBuildFromOCIRegistryUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	host := l.Addr().String()
	l.Close() // now nothing listens there

	e := &Entry{Name: "julia", Version: "1.11", OCI: "docker.io/library/julia:1.11", File: "main.jl", Run: []string{"julia", "main.jl"},
		Test: Test{Code: "x", Stdout: "x"}}
	st := &Store{Dir: t.TempDir()}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = st.Build(ctx, e, BuildOptions{Registry: host, Progress: io.Discard})
	if !errors.Is(err, ErrRegistryUnreachable) {
		t.Fatalf("build = %v; want ErrRegistryUnreachable", err)
	}
	for _, want := range []string{host, "--registry", "julia"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	left, _ := filepath.Glob(filepath.Join(st.Dir, ".build-*"))
	if len(left) > 0 {
		t.Errorf("failed build left %v", left)
	}
}

// An archive that names paths outside the tree, directly or through a
// symlink it planted, must not write there.
func TestUntarStaysInside(t *testing.T) {
	outside := t.TempDir()
	cases := map[string][]tarEntry{
		"dotdot":            {{name: "../../" + filepath.Base(outside) + "/evil", body: "x"}},
		"symlink then file": {{name: "link", typ: tar.TypeSymlink, link: outside}, {name: "link/evil", body: "x"}},
		"absolute symlink":  {{name: "abs", typ: tar.TypeSymlink, link: "/"}, {name: "abs" + outside + "/evil", body: "x"}},
		"hard link out":     {{name: "h", typ: tar.TypeLink, link: "../../etc/passwd"}},
	}
	for name, entries := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			rc, err := layerOf(t, entries...).Uncompressed()
			if err != nil {
				t.Fatal(err)
			}
			_ = untar(rc, dir, 1<<20, 100) // refusing is fine; escaping is not
			if _, err := os.Lstat(filepath.Join(outside, "evil")); err == nil {
				t.Fatalf("archive wrote %s outside the tree", filepath.Join(outside, "evil"))
			}
		})
	}
}

func TestUntarBounds(t *testing.T) {
	rc, _ := layerOf(t, tarEntry{name: "big", body: strings.Repeat("x", 2048)}).Uncompressed()
	if err := untar(rc, t.TempDir(), 1024, 100); err == nil || !strings.Contains(err.Error(), "bytes") {
		t.Errorf("2 KiB file under a 1 KiB bound: %v", err)
	}
	rc, _ = layerOf(t, tarEntry{name: "a"}, tarEntry{name: "b"}, tarEntry{name: "c"}).Uncompressed()
	if err := untar(rc, t.TempDir(), 1024, 2); err == nil || !strings.Contains(err.Error(), "entries") {
		t.Errorf("3 entries under a bound of 2: %v", err)
	}
}

func TestOCIRef(t *testing.T) {
	for _, tc := range []struct{ oci, registry, want string }{
		{"docker.io/library/julia:1.11", "", "index.docker.io/library/julia:1.11"},
		{"julia:1.11", "127.0.0.1:5000", "127.0.0.1:5000/library/julia:1.11"},
		{"mcr.microsoft.com/dotnet/sdk:8.0", "mirror.local:5000", "mirror.local:5000/dotnet/sdk:8.0"},
		{"docker.io/library/dart@sha256:" + strings.Repeat("a", 64), "127.0.0.1:1", "127.0.0.1:1/library/dart@sha256:" + strings.Repeat("a", 64)},
	} {
		ref, err := ociRef(&Entry{OCI: tc.oci}, tc.registry)
		if err != nil || ref.Name() != tc.want {
			t.Errorf("ociRef(%q, %q) = %v, %v; want %s", tc.oci, tc.registry, ref, err, tc.want)
		}
	}
	if _, err := parseOCIRef("Not A Ref!"); err == nil {
		t.Error("a malformed reference parsed")
	}
}
