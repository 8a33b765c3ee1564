package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// BuilderVersion changes whenever the builder's output would change for
// the same inputs, so old images get new ids.
const BuilderVersion = "2"

// baseID is the content address of the shared base layer.
func baseID(base Base, format string) string {
	b, _ := json.Marshal(struct {
		Builder string `json:"builder"`
		Base    Base   `json:"base"`
		Format  string `json:"format"`
	}{BuilderVersion, base, format})
	h := sha256.Sum256(b)
	return "base-" + hex.EncodeToString(h[:8])
}

// LayerID is the content address of a language's layer on a base layer.
// Fields an entry leaves empty are left out, so adding a kind of source
// does not change the ids of layers that do not use it.
func (e *Entry) LayerID(parent, format string) string {
	b, _ := json.Marshal(struct {
		Builder   string   `json:"builder"`
		Parent    string   `json:"parent"`
		Format    string   `json:"format"`
		Packages  []string `json:"packages"`
		Backports string   `json:"backports,omitempty"`
		NPM       []string `json:"npm,omitempty"`
		Setup     []string `json:"setup,omitempty"`
	}{BuilderVersion, parent, format, e.Packages, e.backports(), e.NPM, e.Setup})
	h := sha256.Sum256(b)
	return e.Name + "-" + hex.EncodeToString(h[:8])
}

// treeDir is where a base layer keeps its unpacked tree, the lower
// directory language layers are built on.
func treeDir(im *Image) string { return filepath.Join(im.Dir, "tree") }

// buildBase builds (once) the shared base layer: Debian minbase plus the
// sandbox user, packed, with its unpacked tree kept for building on.
func (s *Store) buildBase(ctx context.Context, o BuildOptions) (*Image, error) {
	id := baseID(o.Base, o.Format)
	if im, err := s.Get(id); err == nil {
		if _, err := os.Stat(treeDir(im)); err == nil {
			return im, nil
		}
		return nil, fmt.Errorf("base layer %s has no unpacked tree: remove %s and build again", id, im.Dir)
	}
	start := time.Now()
	tmp, err := os.MkdirTemp(s.Dir, ".build-"+id+"-")
	if err != nil {
		return nil, err
	}
	defer removeTree(tmp)
	tree := filepath.Join(tmp, "tree")
	step := stepper(o.Progress, "base", start)
	step("debootstrap %s %s", o.Base.Suite, o.Base.Variant)
	args := []string{"--variant=" + o.Base.Variant}
	if len(o.Base.Extra) > 0 {
		args = append(args, "--include="+strings.Join(o.Base.Extra, ","))
	}
	args = append(args, o.Base.Suite, tree, o.Base.Mirror)
	if err := runTool(ctx, o.Progress, "debootstrap", args...); err != nil {
		return nil, fmt.Errorf("build base layer: %w", err)
	}
	if err := customize(tree); err != nil {
		return nil, fmt.Errorf("build base layer: %w", err)
	}
	m, err := s.packLayer(ctx, o, tree, tmp, Manifest{ID: id, Language: "base", Version: o.Base.Suite, Base: o.Base}, step, start)
	if err != nil {
		return nil, err
	}
	if err := s.commit(tmp, m); err != nil {
		return nil, err
	}
	return s.Get(id)
}

// buildLayered builds a language's layer on the base layer: the base tree
// is the lower directory of an overlay, the language's packages are
// installed into it with apt, and only the overlay's upper directory
// (what the install added, changed or deleted, as whiteouts) is packed.
func (s *Store) buildLayered(ctx context.Context, e *Entry, o BuildOptions) (*Image, error) {
	bo := o
	bo.Base = e.BaseFor(o.Base)
	base, err := s.buildBase(ctx, bo)
	if err != nil {
		return nil, err
	}
	id := e.LayerID(base.ID, o.Format)
	if im, err := s.Get(id); err == nil {
		fmt.Fprintf(o.Progress, "image %s: already built\n", id)
		return im, nil
	}
	start := time.Now()
	step := stepper(o.Progress, e.Name, start)
	tmp, err := os.MkdirTemp(s.Dir, ".build-"+id+"-")
	if err != nil {
		return nil, err
	}
	defer removeTree(tmp)
	upper, work, merged := filepath.Join(tmp, "upper"), filepath.Join(tmp, "work"), filepath.Join(tmp, "merged")
	for _, d := range []string{upper, work, merged} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	err = inOverlay(treeDir(base), upper, work, merged, func(mounts *[]string) error {
		return install(ctx, o.Progress, step, merged, mounts, e, base.ID)
	})
	if err != nil {
		return nil, fmt.Errorf("build %s: %w", e.Name, err)
	}
	if err := cleanUpper(upper); err != nil {
		return nil, fmt.Errorf("build %s: %w", e.Name, err)
	}
	m, err := s.packLayer(ctx, o, upper, tmp, Manifest{ID: id, Language: e.Name, Version: e.Version, Base: bo.Base,
		Packages: e.Packages, NPM: e.NPM, Parent: base.ID}, step, start)
	if err != nil {
		return nil, err
	}
	os.RemoveAll(upper)
	os.RemoveAll(work)
	if err := s.commit(tmp, m); err != nil {
		return nil, err
	}
	return s.Get(id)
}

func stepper(w io.Writer, name string, start time.Time) func(string, ...any) {
	return func(f string, a ...any) {
		fmt.Fprintf(w, "[%5.1fs] %s: %s\n", time.Since(start).Seconds(), name, fmt.Sprintf(f, a...))
	}
}

// inOverlay mounts lower+upper at merged, runs fn on the merged tree and
// unmounts, also on failure. What fn adds, changes or deletes lands in
// upper: new files, copied-up files, whiteouts (0/0 character devices)
// and opaque directories (trusted.overlay.opaque).
func inOverlay(lower, upper, work, merged string, fn func(mounts *[]string) error) error {
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", lower, upper, work)
	if err := unix.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		return fmt.Errorf("mount overlay: %w", err)
	}
	mounts := []string{merged}
	defer func() {
		for i := len(mounts) - 1; i >= 0; i-- {
			if uerr := unix.Unmount(mounts[i], 0); uerr != nil {
				_ = unix.Unmount(mounts[i], unix.MNT_DETACH)
			}
		}
	}()
	return fn(&mounts)
}

// chrootEnv is the environment of commands run in a build's chroot.
var chrootEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C", "HOME=/root"}

// install puts what e names into the tree mounted at merged: apt packages
// (from the entry's backports suite if it has one), npm packages (with the
// host's npm, into /usr/local), then the setup commands.
func install(ctx context.Context, progress io.Writer, step func(string, ...any), merged string, mounts *[]string, e *Entry, on string) error {
	ch, err := enterChroot(ctx, progress, merged, mounts)
	if err != nil {
		return err
	}
	if len(e.Packages) > 0 {
		from := ""
		if bp := e.backports(); bp != "" {
			from = " from " + bp
		}
		step("install %s%s on %s", strings.Join(e.Packages, " "), from, on)
		if err := ch.apt(e.Packages, e.backports()); err != nil {
			return err
		}
	}
	if len(e.NPM) > 0 {
		step("npm install %s", strings.Join(e.NPM, " "))
		if err := npmInstall(ctx, progress, merged, e.NPM); err != nil {
			return err
		}
	}
	return ch.setup(step, e)
}

// setup runs e's setup commands, with e's environment.
func (c *chroot) setup(step func(string, ...any), e *Entry) error {
	for _, cmd := range e.Setup {
		step("setup: %s", cmd)
		if err := c.run(append(slices.Clone(chrootEnv), e.Env...), "/bin/sh", "-ec", cmd); err != nil {
			return fmt.Errorf("setup %q: %w", cmd, err)
		}
	}
	return nil
}

// chroot runs build commands inside a tree with /proc and /dev mounted.
type chroot struct {
	ctx      context.Context
	progress io.Writer
	root     string
}

// enterChroot mounts /proc and /dev in root (recorded in mounts, which
// the caller unmounts) and makes sure no service starts inside the build.
func enterChroot(ctx context.Context, progress io.Writer, root string, mountsp *[]string) (*chroot, error) {
	for _, d := range []string{"proc", "dev", "usr/sbin", "etc"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return nil, err
		}
	}
	if err := unix.Mount("proc", filepath.Join(root, "proc"), "proc", 0, ""); err != nil {
		return nil, fmt.Errorf("mount proc: %w", err)
	}
	*mountsp = append(*mountsp, filepath.Join(root, "proc"))
	if err := unix.Mount("/dev", filepath.Join(root, "dev"), "", unix.MS_BIND, ""); err != nil {
		return nil, fmt.Errorf("bind /dev: %w", err)
	}
	*mountsp = append(*mountsp, filepath.Join(root, "dev"))
	// Network for apt, and no service may start inside the build.
	if b, err := os.ReadFile("/etc/resolv.conf"); err == nil {
		_ = os.WriteFile(filepath.Join(root, "etc/resolv.conf"), b, 0o644)
	}
	if err := os.WriteFile(filepath.Join(root, "usr/sbin/policy-rc.d"), []byte("#!/bin/sh\nexit 101\n"), 0o755); err != nil {
		return nil, err
	}
	return &chroot{ctx: ctx, progress: progress, root: root}, nil
}

func (c *chroot) run(env []string, args ...string) error {
	cmd := exec.CommandContext(c.ctx, args[0], args[1:]...)
	cmd.Env = env
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: c.root, Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	return runCmd(c.ctx, c.progress, cmd)
}

// backportsList is where the build puts the backports source; it is
// removed from the layer afterwards (guests have no network for apt).
const backportsList = "etc/apt/sources.list.d/firesandbox-backports.list"

// apt installs pkgs, from the backports suite when it is not "".
func (c *chroot) apt(pkgs []string, backports string) error {
	if backports != "" {
		line := fmt.Sprintf("deb %s %s main\n", aptMirror(c.root), backports)
		if err := os.WriteFile(filepath.Join(c.root, backportsList), []byte(line), 0o644); err != nil {
			return err
		}
	}
	if err := c.run(chrootEnv, "/usr/bin/apt-get", "-q", "update"); err != nil {
		return err
	}
	args := []string{"/usr/bin/apt-get", "-q", "-y", "--no-install-recommends"}
	if backports != "" {
		args = append(args, "-t", backports)
	}
	return c.run(chrootEnv, append(append(args, "install"), pkgs...)...)
}

// aptMirror returns the mirror of the tree's own sources.list (the one
// debootstrap wrote), so backports come from the same place.
func aptMirror(root string) string {
	b, _ := os.ReadFile(filepath.Join(root, "etc/apt/sources.list"))
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "deb" {
			return f[1]
		}
	}
	return DefaultBase.Mirror
}

// npmInstall installs npm packages into root's /usr/local with the
// host's npm (the image needs no Node.js for packages that carry their
// own binaries). Install scripts do not run.
func npmInstall(ctx context.Context, progress io.Writer, root string, pkgs []string) error {
	npm, err := exec.LookPath("npm")
	if err != nil {
		return fmt.Errorf("npm packages %s need npm on the build host: %w", strings.Join(pkgs, " "), err)
	}
	args := append([]string{"install", "--global", "--prefix", filepath.Join(root, "usr/local"),
		"--ignore-scripts", "--no-audit", "--no-fund", "--no-update-notifier", "--omit=dev"}, pkgs...)
	cmd := exec.CommandContext(ctx, npm, args...)
	cmd.Env = append(os.Environ(), "npm_config_loglevel=warn")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	return runCmd(ctx, progress, cmd)
}

// cleanUpper drops what the install left that no image should carry:
// apt's lists and caches, logs, the build's resolv.conf and policy-rc.d.
// Removing them from the upper directory reverts each to the base's
// version (or absence).
func cleanUpper(upper string) error {
	for _, g := range []string{"var/lib/apt/lists", "var/cache/apt/*.bin", "var/cache/apt/archives", "var/log/*",
		"var/cache/ldconfig/aux-cache", "var/cache/debconf/*-old", "var/lib/dpkg/*-old", "usr/sbin/policy-rc.d",
		"etc/resolv.conf", "tmp/*", "root/.cache", "root/.npm", backportsList} {
		ms, _ := filepath.Glob(filepath.Join(upper, g))
		for _, m := range ms {
			if err := os.RemoveAll(m); err != nil {
				return err
			}
		}
	}
	return nil
}

// packLayer packs dir into tmp/rootfs.<format> and fills m's sizes.
func (s *Store) packLayer(ctx context.Context, o BuildOptions, dir, tmp string, m Manifest, step func(string, ...any), start time.Time) (Manifest, error) {
	unpacked, err := treeSize(dir)
	if err != nil {
		return m, err
	}
	step("pack %s (%d MiB unpacked)", o.Format, unpacked>>20)
	m.Format, m.File = o.Format, "rootfs."+o.Format
	out := filepath.Join(tmp, m.File)
	if err := Pack(ctx, o.Format, dir, out, o.Progress); err != nil {
		return m, fmt.Errorf("build %s: %w", m.ID, err)
	}
	fi, err := os.Stat(out)
	if err != nil {
		return m, err
	}
	if m.SHA256, err = fileSHA256(out); err != nil {
		return m, err
	}
	m.PackedBytes, m.UnpackedBytes = fi.Size(), unpacked
	m.BuildSeconds, m.Created = time.Since(start).Seconds(), time.Now().UTC()
	step("done: %s, %.1f MiB packed (%.1f MiB unpacked)", m.ID, float64(fi.Size())/(1<<20), float64(unpacked)/(1<<20))
	return m, nil
}

// commit writes the manifest and renames the build directory into place.
func (s *Store) commit(tmp string, m Manifest) error {
	if err := s.commitManifestOnly(tmp, m); err != nil {
		return err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(s.Dir, m.ID))
}

// Layers returns an image's layers, bottom (base) first.
func (s *Store) Layers(im *Image) ([]*Image, error) {
	chain := []*Image{im}
	for cur := im; cur.Parent != ""; {
		p, err := s.Get(cur.Parent)
		if err != nil {
			return nil, fmt.Errorf("image %s: parent layer: %w", cur.ID, err)
		}
		if len(chain) > 16 {
			return nil, fmt.Errorf("image %s: more than 16 layers", im.ID)
		}
		chain = append([]*Image{p}, chain...)
		cur = p
	}
	return chain, nil
}

// Prune removes images that no catalog entry produces any more (in any
// format) and base layers that no kept image sits on. With dryRun it only
// reports them.
func (s *Store) Prune(cat *Catalog, dryRun bool) ([]*Image, error) {
	unlock, err := lockDir(s.Dir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	all, err := s.List()
	if err != nil {
		return nil, err
	}
	wanted := map[string]bool{}
	for _, e := range cat.Entries() {
		for _, f := range []string{FormatSquashFS, FormatEROFS, FormatExt4} {
			wanted[e.ID(DefaultBase, f)] = true
		}
	}
	keep := map[string]bool{}
	for _, im := range all {
		if wanted[im.ID] {
			layers, err := s.Layers(im)
			if err != nil {
				continue // a broken chain: its image is pruned below
			}
			for _, l := range layers {
				keep[l.ID] = true
			}
		}
	}
	var removed []*Image
	var errs []error
	for _, im := range all {
		if keep[im.ID] {
			continue
		}
		removed = append(removed, im)
		if !dryRun {
			if err := removeTree(im.Dir); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return removed, errors.Join(errs...)
}

func (s *Store) commitManifestOnly(dir string, m Manifest) error {
	mb, _ := json.MarshalIndent(m, "", "  ")
	return os.WriteFile(filepath.Join(dir, "manifest.json"), mb, 0o644)
}
