package guestkernel

import (
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ulikunitz/xz"
)

// debianKernelRoot is where an unpacked Debian kernel package may be found
// on development machines (boot/vmlinuz-*, lib/modules/<release>/).
const debianKernelRoot = "/tmp/kdeb/root"

// fakeModule returns a minimal ELF relocatable object whose .modinfo
// section holds the given NUL-separated key=value entries, as a real .ko.
func fakeModule(t *testing.T, modinfo ...string) []byte {
	t.Helper()
	info := []byte(strings.Join(modinfo, "\x00") + "\x00")
	shstr := []byte("\x00.modinfo\x00.shstrtab\x00")
	infoOff := uint64(64)
	shstrOff := infoOff + uint64(len(info))
	shOff := (shstrOff + uint64(len(shstr)) + 7) &^ 7

	var b bytes.Buffer
	h := elf.Header64{
		Type: uint16(elf.ET_REL), Machine: uint16(elf.EM_X86_64), Version: uint32(elf.EV_CURRENT),
		Shoff: shOff, Ehsize: 64, Shentsize: 64, Shnum: 3, Shstrndx: 2,
	}
	copy(h.Ident[:], elf.ELFMAG)
	h.Ident[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	h.Ident[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	h.Ident[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	binary.Write(&b, binary.LittleEndian, h)
	b.Write(info)
	b.Write(shstr)
	b.Write(make([]byte, int(shOff)-b.Len()))
	for _, s := range []elf.Section64{
		{},
		{Name: 1, Type: uint32(elf.SHT_PROGBITS), Flags: uint64(elf.SHF_ALLOC), Off: infoOff, Size: uint64(len(info)), Addralign: 1},
		{Name: 10, Type: uint32(elf.SHT_STRTAB), Off: shstrOff, Size: uint64(len(shstr)), Addralign: 1},
	} {
		binary.Write(&b, binary.LittleEndian, s)
	}
	return b.Bytes()
}

func xzCompress(t *testing.T, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := xz.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// modSpec is one module of a synthetic lib/modules/<release> tree.
type modSpec struct {
	path    string // below kernel/, with its .ko or .ko.xz suffix
	depends string
}

// writeModuleTree writes a synthetic module directory and returns it.
func writeModuleTree(t *testing.T, dir string, mods []modSpec, builtin ...string) string {
	t.Helper()
	for _, m := range mods {
		p := filepath.Join(dir, "kernel", m.path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		ko := fakeModule(t, "license=GPL", "depends="+m.depends, "intree=Y", "name="+normName(m.path))
		if strings.HasSuffix(m.path, ".xz") {
			ko = xzCompress(t, ko)
		}
		if err := os.WriteFile(p, ko, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var bl strings.Builder
	for _, b := range builtin {
		bl.WriteString("kernel/" + b + ".ko\n")
	}
	if err := os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte(bl.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// syntheticMods is a small tree with shared and compressed dependencies.
var syntheticMods = []modSpec{
	{"net/vsock.ko.xz", ""},
	{"net/vsock_common.ko.xz", "vsock"},
	{"net/vsock_transport.ko.xz", "vsock_common,vsock,virtio_ring"},
	{"lib/lib-crc.ko", ""}, // a dash in the file name, an underscore in depends=
	{"fs/erofs.ko", "lib_crc"},
	{"fs/loop_a.ko", "loop_b"},
	{"fs/loop_b.ko", "loop_a"},
	{"fs/orphan.ko", "missing_dep"},
}

func TestModuleDepends(t *testing.T) {
	dir := writeModuleTree(t, t.TempDir(), syntheticMods)
	tests := map[string]struct {
		path string
		want []string
	}{
		"xz, several":      {"net/vsock_transport.ko.xz", []string{"vsock_common", "vsock", "virtio_ring"}},
		"xz, one":          {"net/vsock_common.ko.xz", []string{"vsock"}},
		"plain, none":      {"lib/lib-crc.ko", nil},
		"plain, one":       {"fs/erofs.ko", []string{"lib_crc"}},
		"xz, empty depend": {"net/vsock.ko.xz", nil},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := moduleDepends(filepath.Join(dir, "kernel", tc.path))
			if err != nil {
				t.Fatalf("moduleDepends: %v", err)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("moduleDepends = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestModuleDependsRejects(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	noInfo := fakeModule(t) // then rename its section so there is no .modinfo
	noInfo = bytes.Replace(noInfo, []byte(".modinfo"), []byte(".notinfo"), 1)
	tests := map[string]string{
		"zstd module":     write("a.ko.zst", fakeModule(t, "depends=")),
		"not ELF":         write("b.ko", []byte("not an object file")),
		"bad xz":          write("c.ko.xz", []byte("not xz")),
		"missing":         filepath.Join(dir, "nope.ko"),
		"without modinfo": write("d.ko", noInfo),
	}
	for name, p := range tests {
		t.Run(name, func(t *testing.T) {
			if deps, err := moduleDepends(p); err == nil {
				t.Fatalf("moduleDepends(%s) = %q, want an error", filepath.Base(p), deps)
			}
		})
	}
}

func TestResolve(t *testing.T) {
	tree, err := loadModuleTree(writeModuleTree(t, t.TempDir(), syntheticMods, "drivers/virtio/virtio_ring", "fs/squashfs/squashfs"))
	if err != nil {
		t.Fatal(err)
	}
	tests := map[string]struct {
		names []string
		want  []string
	}{
		"dependencies first, builtin skipped": {
			[]string{"vsock_transport"},
			[]string{"kernel/net/vsock.ko.xz", "kernel/net/vsock_common.ko.xz", "kernel/net/vsock_transport.ko.xz"},
		},
		"each module once": {
			[]string{"vsock_common", "vsock_transport", "vsock"},
			[]string{"kernel/net/vsock.ko.xz", "kernel/net/vsock_common.ko.xz", "kernel/net/vsock_transport.ko.xz"},
		},
		"dash and underscore are the same": {
			[]string{"erofs"},
			[]string{"kernel/lib/lib-crc.ko", "kernel/fs/erofs.ko"},
		},
		"name given with dashes": {
			[]string{"lib-crc"},
			[]string{"kernel/lib/lib-crc.ko"},
		},
		"builtin only": {[]string{"squashfs", "virtio-ring"}, nil},
		"nothing":      {nil, nil},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := tree.resolve(tc.names)
			if err != nil {
				t.Fatalf("resolve(%q): %v", tc.names, err)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("resolve(%q) =\n %q\nwant\n %q", tc.names, got, tc.want)
			}
		})
	}
}

func TestResolveErrors(t *testing.T) {
	tree, err := loadModuleTree(writeModuleTree(t, t.TempDir(), syntheticMods))
	if err != nil {
		t.Fatal(err)
	}
	tests := map[string]struct {
		names []string
		want  []string
	}{
		"unknown module":     {[]string{"vsock", "no_such_mod"}, []string{"no_such_mod", "neither built in"}},
		"unknown dependency": {[]string{"orphan"}, []string{"missing_dep", "needed by orphan"}},
		"cycle":              {[]string{"loop_a"}, []string{"cycle"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := tree.resolve(tc.names)
			if err == nil {
				t.Fatalf("resolve(%q) = %q, want an error", tc.names, got)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestLoadModuleTreeMissing(t *testing.T) {
	if _, err := loadModuleTree(filepath.Join(t.TempDir(), "6.1.0-none")); err == nil {
		t.Fatal("loadModuleTree of a missing directory succeeded")
	}
}

// debianModules returns the lib/modules/<release> directory of the unpacked
// Debian kernel, or skips.
func debianModules(t *testing.T) string {
	t.Helper()
	dirs, _ := filepath.Glob(filepath.Join(debianKernelRoot, "lib", "modules", "*", "kernel"))
	if len(dirs) != 1 {
		t.Skipf("no unpacked Debian kernel modules at %s/lib/modules/*/kernel; unpack a linux-image-*-cloud-amd64 .deb there to run this test", debianKernelRoot)
	}
	return filepath.Dir(dirs[0])
}

func TestResolveDebian(t *testing.T) {
	tree, err := loadModuleTree(debianModules(t))
	if err != nil {
		t.Fatal(err)
	}
	names := func(rels []string) []string {
		var n []string
		for _, r := range rels {
			n = append(n, normName(r))
		}
		return n
	}

	got, err := tree.resolve([]string{"vmw_vsock_virtio_transport"})
	if err != nil {
		t.Fatalf("resolve vsock: %v", err)
	}
	want := []string{"vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport"}
	if !slices.Equal(names(got), want) {
		t.Errorf("resolve(vmw_vsock_virtio_transport) = %q, want %q", names(got), want)
	}

	got, err = tree.resolve([]string{"erofs"})
	if err != nil {
		t.Fatalf("resolve erofs: %v", err)
	}
	n := names(got)
	crc, ero := slices.Index(n, "libcrc32c"), slices.Index(n, "erofs")
	if crc < 0 || ero != len(n)-1 || crc > ero {
		t.Errorf("resolve(erofs) = %q, want libcrc32c before erofs, erofs last", n)
	}

	for g, mods := range ModuleGroups {
		if _, err := tree.resolve(mods); err != nil {
			t.Errorf("module group %s: %v", g, err)
		}
	}
}

// --- Prepare ---

// fakePackage writes a Debian-like kernel package with a fake vmlinuz and a
// synthetic module tree that satisfies ModuleGroups.
func fakePackage(t *testing.T, release string, vmlinux []byte) string {
	t.Helper()
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "boot"), 0o755); err != nil {
		t.Fatal(err)
	}
	bz := bzImage(junk(20, 20000), zstdMagic, junk(21, 500), zstdCompress(t, vmlinux), junk(22, 64))
	if err := os.WriteFile(filepath.Join(root, "boot", "vmlinuz-"+release), bz, 0o644); err != nil {
		t.Fatal(err)
	}
	writeModuleTree(t, filepath.Join(root, "lib", "modules", release), []modSpec{
		{"drivers/virtio/virtio_mmio.ko.xz", ""},
		{"drivers/block/virtio_blk.ko.xz", ""},
		{"fs/overlayfs/overlay.ko.xz", ""},
		{"lib/libcrc32c.ko.xz", ""},
		{"fs/erofs/erofs.ko.xz", "libcrc32c"},
		{"net/vmw_vsock/vsock.ko.xz", ""},
		{"net/vmw_vsock/vmw_vsock_virtio_transport_common.ko.xz", "vsock"},
		{"net/vmw_vsock/vmw_vsock_virtio_transport.ko.xz", "vmw_vsock_virtio_transport_common,vsock"},
		{"net/core/failover.ko.xz", ""},
		{"drivers/net/net_failover.ko.xz", "failover"},
		{"drivers/net/virtio_net.ko.xz", "net_failover"},
	}, "fs/squashfs/squashfs")
	return root
}

func writeFile(t *testing.T, p string, b []byte) string {
	t.Helper()
	if err := os.WriteFile(p, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func sha(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// checkPrepared checks a prepared kernel against its inputs and returns
// the initramfs entries by name.
func checkPrepared(t *testing.T, dataDir string, k *Kernel, release string, vmlinux, agent []byte) map[string]cpioEntry {
	t.Helper()
	loaded, err := Load(dataDir)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if loaded.Release != release || k.Release != release {
		t.Errorf("release: Prepare %q, Load %q, want %q", k.Release, loaded.Release, release)
	}
	if loaded.ID() != k.ID() || loaded.AgentSHA256 != sha(agent) || loaded.VmlinuxSHA256 != k.VmlinuxSHA256 {
		t.Errorf("Load() = %+v, Prepare returned %+v", loaded, k)
	}
	gotVmlinux, err := os.ReadFile(loaded.Vmlinux)
	if err != nil {
		t.Fatal(err)
	}
	if vmlinux != nil && !bytes.Equal(gotVmlinux, vmlinux) {
		t.Errorf("vmlinux on disk differs from the package's kernel")
	}
	if err := checkELF(gotVmlinux); err != nil {
		t.Error(err)
	}
	if sha(gotVmlinux) != loaded.VmlinuxSHA256 {
		t.Errorf("vmlinux digest does not match the manifest")
	}
	initrd, err := os.ReadFile(loaded.Initramfs)
	if err != nil {
		t.Fatal(err)
	}
	if sha(initrd) != loaded.InitramfsSHA256 {
		t.Errorf("initramfs digest does not match the manifest")
	}
	entries := map[string]cpioEntry{}
	for _, e := range readNewc(t, initrd) {
		if _, dup := entries[e.Name]; dup {
			t.Errorf("initramfs has %s twice", e.Name)
		}
		entries[e.Name] = e
	}
	init, ok := entries["init"]
	if !ok || init.Mode != modeFile|0o755 || !bytes.Equal(init.Data, agent) {
		t.Errorf("initramfs /init: present %v, mode %o, %d bytes; want the %d-byte agent, mode 100755", ok, init.Mode, len(init.Data), len(agent))
	}
	for g, mods := range loaded.Groups {
		file := "etc/firesandbox/modules"
		if g != "default" {
			file += "." + g
		}
		e, ok := entries[file]
		if !ok {
			t.Errorf("initramfs has no %s for group %s", file, g)
			continue
		}
		if want := strings.Join(mods, "\n") + "\n"; string(e.Data) != want {
			t.Errorf("%s = %q, want %q", file, e.Data, want)
		}
		for _, m := range mods {
			if mod, ok := entries[strings.TrimPrefix(m, "/")]; !ok || len(mod.Data) == 0 {
				t.Errorf("group %s lists %s, which the initramfs lacks", g, m)
			}
		}
	}
	for g := range ModuleGroups {
		if _, ok := loaded.Groups[g]; !ok {
			t.Errorf("manifest has no module group %s", g)
		}
	}
	return entries
}

// checkNoLeftovers makes sure only the current kernel remains.
func checkNoLeftovers(t *testing.T, dataDir, release string) {
	t.Helper()
	des, err := os.ReadDir(filepath.Join(dataDir, "kernels"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, de := range des {
		names = append(names, de.Name())
	}
	want := []string{"current", release}
	slices.Sort(want)
	if !slices.Equal(names, want) {
		t.Errorf("kernels/ holds %q, want %q", names, want)
	}
}

func TestPrepareSynthetic(t *testing.T) {
	const release = "6.1.0-test-amd64"
	vmlinux := fakeELF(2 << 20)
	pkg := fakePackage(t, release, vmlinux)
	agent := fakeELF(100 << 10) // a static x86-64 ELF as far as Prepare can tell
	agentPath := writeFile(t, filepath.Join(t.TempDir(), "agent"), agent)
	data := t.TempDir()

	var log bytes.Buffer
	k, err := Prepare(PrepareOptions{PackageRoot: pkg, Agent: agentPath, DataDir: data, Log: &log})
	if err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	entries := checkPrepared(t, data, k, release, vmlinux, agent)
	checkNoLeftovers(t, data, release)
	if !strings.Contains(log.String(), release) {
		t.Errorf("progress log does not name the release: %q", log.String())
	}
	want := map[string][]string{
		"default": {"/lib/modules/virtio_mmio.ko.xz", "/lib/modules/virtio_blk.ko.xz", "/lib/modules/overlay.ko.xz"},
		"erofs":   {"/lib/modules/libcrc32c.ko.xz", "/lib/modules/erofs.ko.xz"},
		"vsock":   {"/lib/modules/vsock.ko.xz", "/lib/modules/vmw_vsock_virtio_transport_common.ko.xz", "/lib/modules/vmw_vsock_virtio_transport.ko.xz"},
		"net":     {"/lib/modules/failover.ko.xz", "/lib/modules/net_failover.ko.xz", "/lib/modules/virtio_net.ko.xz"},
	}
	for g, w := range want {
		if !slices.Equal(k.Groups[g], w) {
			t.Errorf("group %s = %q, want %q (squashfs is built in)", g, k.Groups[g], w)
		}
	}
	for _, d := range []string{"dev", "proc", "sys", "tmp", "newroot", "etc/firesandbox", "lib/modules"} {
		if e, ok := entries[d]; !ok || e.Mode&0o170000 != modeDir {
			t.Errorf("initramfs lacks directory /%s", d)
		}
	}

	// A second Prepare with a new agent replaces the kernel in place.
	agent2 := append(slices.Clone(agent), "v2"...)
	writeFile(t, agentPath, agent2)
	k2, err := Prepare(PrepareOptions{PackageRoot: pkg, Agent: agentPath, DataDir: data})
	if err != nil {
		t.Fatalf("second Prepare: %v", err)
	}
	checkPrepared(t, data, k2, release, vmlinux, agent2)
	checkNoLeftovers(t, data, release)
	if k2.InitramfsSHA256 == k.InitramfsSHA256 || k2.ID() == k.ID() {
		t.Errorf("a new agent did not change the initramfs digest or kernel ID")
	}
	if k2.VmlinuxSHA256 != k.VmlinuxSHA256 {
		t.Errorf("the same vmlinuz gave a different vmlinux")
	}
}

func TestPrepareRejectsDynamicAgent(t *testing.T) {
	const dynamic = "/bin/true"
	if b, err := os.ReadFile(dynamic); err != nil || !bytes.Contains(b[:min(len(b), 4096)], []byte("/lib64/ld-linux")) {
		t.Skipf("%s is not a dynamically linked x86-64 program here", dynamic)
	}
	pkg := fakePackage(t, "6.1.0-test-amd64", fakeELF(2<<20))
	data := t.TempDir()
	_, err := Prepare(PrepareOptions{PackageRoot: pkg, Agent: dynamic, DataDir: data})
	if err == nil || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
		t.Fatalf("Prepare with %s = %v, want an error telling to build with CGO_ENABLED=0", dynamic, err)
	}
	if _, err := Load(data); !errors.Is(err, ErrNotPrepared) {
		t.Errorf("Load after a failed Prepare = %v, want ErrNotPrepared", err)
	}
}

func TestPrepareErrors(t *testing.T) {
	agentPath := writeFile(t, filepath.Join(t.TempDir(), "agent"), fakeELF(4096))
	noBoot := t.TempDir()
	good := fakePackage(t, "6.1.0-a", fakeELF(2<<20))
	twoKernels := fakePackage(t, "6.1.0-a", fakeELF(2<<20))
	writeFile(t, filepath.Join(twoKernels, "boot", "vmlinuz-6.1.0-b"), []byte("x"))
	noPayload := fakePackage(t, "6.1.0-a", fakeELF(2<<20))
	writeFile(t, filepath.Join(noPayload, "boot", "vmlinuz-6.1.0-a"), junk(30, 4096))
	missingModule := fakePackage(t, "6.1.0-a", fakeELF(2<<20))
	if err := os.Remove(filepath.Join(missingModule, "lib/modules/6.1.0-a/kernel/fs/erofs/erofs.ko.xz")); err != nil {
		t.Fatal(err)
	}
	dotDot := t.TempDir()
	os.MkdirAll(filepath.Join(dotDot, "boot"), 0o755)
	writeFile(t, filepath.Join(dotDot, "boot", "vmlinuz-.."), []byte("x"))
	tests := map[string]struct {
		root, agent string
		want        string
	}{
		"release ..":     {dotDot, agentPath, "bad release name"},
		"no vmlinuz":     {noBoot, agentPath, "found 0"},
		"two vmlinuz":    {twoKernels, agentPath, "found 2"},
		"missing agent":  {good, filepath.Join(noBoot, "agent"), "make build"},
		"not a kernel":   {noPayload, agentPath, "no zstd-compressed ELF kernel"},
		"missing module": {missingModule, agentPath, "erofs"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			data := t.TempDir()
			_, err := Prepare(PrepareOptions{PackageRoot: tc.root, Agent: tc.agent, DataDir: data})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Prepare = %v, want an error mentioning %q", err, tc.want)
			}
			if _, err := Load(data); !errors.Is(err, ErrNotPrepared) {
				t.Errorf("Load after a failed Prepare = %v, want ErrNotPrepared", err)
			}
		})
	}
}

func TestLoadNotPrepared(t *testing.T) {
	if _, err := Load(t.TempDir()); !errors.Is(err, ErrNotPrepared) {
		t.Fatalf("Load of an empty data dir = %v, want ErrNotPrepared", err)
	}
}

// buildAgent builds the real guest agent as a static binary.
func buildAgent(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root not found at %s: %v", root, err)
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("the go command is not in PATH: cannot build the agent")
	}
	out := filepath.Join(t.TempDir(), "firesandbox-agent")
	cmd := exec.Command(goBin, "build", "-o", out, "./cmd/firesandbox-agent")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the agent: %v\n%s", err, b)
	}
	return out
}

func TestPrepareDebian(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the agent and unpacks a real kernel")
	}
	modules := debianModules(t)
	release := filepath.Base(modules)
	agentPath := buildAgent(t)
	agent, err := os.ReadFile(agentPath)
	if err != nil {
		t.Fatal(err)
	}
	data := t.TempDir()
	k, err := Prepare(PrepareOptions{PackageRoot: debianKernelRoot, Agent: agentPath, DataDir: data})
	if err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	entries := checkPrepared(t, data, k, release, nil, agent)
	checkNoLeftovers(t, data, release)
	if vs := k.Groups["vsock"]; len(vs) == 0 || !strings.HasSuffix(vs[len(vs)-1], "/vmw_vsock_virtio_transport.ko.xz") {
		t.Errorf("vsock group = %q, want it to end with vmw_vsock_virtio_transport.ko.xz", vs)
	}
	for name, e := range entries {
		if strings.HasPrefix(name, "lib/modules/") && strings.HasSuffix(name, ".xz") && !bytes.HasPrefix(e.Data, []byte("\xfd7zXZ")) {
			t.Errorf("%s is not xz data", name)
		}
	}

	// Prepare again with a different agent: the kernel is replaced, and no
	// temporary or old directory is left behind.
	agent2 := append(slices.Clone(agent), "trailing bytes"...)
	agent2Path := writeFile(t, filepath.Join(t.TempDir(), "agent2"), agent2)
	k2, err := Prepare(PrepareOptions{PackageRoot: debianKernelRoot, Agent: agent2Path, DataDir: data})
	if err != nil {
		t.Fatalf("second Prepare: %v", err)
	}
	checkPrepared(t, data, k2, release, nil, agent2)
	checkNoLeftovers(t, data, release)
	if k2.ID() == k.ID() {
		t.Errorf("a new agent kept the kernel ID %s", k.ID())
	}
}

// TestPrepareNeverHidesTheCurrentKernel loads the kernel over and over
// while Prepare replaces it: a reader must always find a complete kernel.
func TestPrepareNeverHidesTheCurrentKernel(t *testing.T) {
	const release = "6.1.0-test-amd64"
	pkg := fakePackage(t, release, fakeELF(2<<20))
	agentPath := writeFile(t, filepath.Join(t.TempDir(), "agent"), fakeELF(64<<10))
	data := t.TempDir()
	if _, err := Prepare(PrepareOptions{PackageRoot: pkg, Agent: agentPath, DataDir: data}); err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	stop := make(chan struct{})
	failed := make(chan error, 1)
	go func() {
		defer close(failed)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := Load(data); err != nil {
				failed <- err
				return
			}
		}
	}()
	for range 3 {
		if _, err := Prepare(PrepareOptions{PackageRoot: pkg, Agent: agentPath, DataDir: data}); err != nil {
			t.Fatalf("Prepare again: %v", err)
		}
	}
	close(stop)
	if err := <-failed; err != nil {
		t.Fatalf("Load while Prepare replaced the kernel: %v", err)
	}
	checkNoLeftovers(t, data, release)
}
