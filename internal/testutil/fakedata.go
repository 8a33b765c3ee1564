package testutil

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/languages"
)

// FakeDataDir makes a data directory that looks prepared to a Manager (a
// kernel and, for each language, its image layers) without real contents:
// for tests that run on a fake VMM driver, which never reads them.
func FakeDataDir(t testing.TB, langs ...string) string {
	t.Helper()
	dir := t.TempDir()
	write := func(p string, v any) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		var b []byte
		switch v := v.(type) {
		case string:
			b = []byte(v)
		default:
			var err error
			if b, err = json.Marshal(v); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	kdir := filepath.Join(dir, "kernels", "fake-1")
	write(filepath.Join(dir, "kernels", "current"), "fake-1\n")
	write(filepath.Join(kdir, "manifest.json"), map[string]any{
		"release": "fake-1", "vmlinux_sha256": "aa", "initramfs_sha256": "bb", "created": time.Now()})
	write(filepath.Join(kdir, "vmlinux"), "not a kernel")
	write(filepath.Join(kdir, "initramfs.cpio"), "not an initramfs")

	cat, err := image.LoadCatalog(languages.FS)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range langs {
		e, err := cat.Lookup(l, "")
		if err != nil {
			t.Fatal(err)
		}
		top := e.ID(image.DefaultBase, image.FormatSquashFS)
		const base = "base-fake"
		layer := func(id, parent, lang string) {
			write(filepath.Join(dir, "images", id, "manifest.json"), image.Manifest{
				ID: id, Language: lang, Version: e.Version, Format: image.FormatSquashFS, File: "rootfs.squashfs",
				Parent: parent, Created: time.Now()})
			write(filepath.Join(dir, "images", id, "rootfs.squashfs"), "not a file system")
		}
		layer(base, "", "")
		layer(top, base, e.Name)
	}
	return dir
}
