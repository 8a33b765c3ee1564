package guestkernel

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ErrNotPrepared means the data directory has no guest kernel yet.
var ErrNotPrepared = errors.New("no guest kernel prepared")

// ModuleGroups are the modules the agent may load, by group. "default" is
// loaded at every boot; the others on request (fs.modules=NAME).
var ModuleGroups = map[string][]string{
	"default": {"virtio_mmio", "virtio_blk", "squashfs", "overlay"},
	"erofs":   {"erofs"},
	"vsock":   {"vmw_vsock_virtio_transport"},
	// net is the virtio-net driver, for VMs with a network device
	// (fs.modules=net); virtio_net needs net_failover, which needs failover.
	"net": {"failover", "net_failover", "virtio_net"},
}

// Kernel is a prepared guest kernel and initramfs.
type Kernel struct {
	Dir       string `json:"-"`
	Release   string `json:"release"`
	Vmlinux   string `json:"-"`
	Initramfs string `json:"-"`

	VmlinuxSHA256   string              `json:"vmlinux_sha256"`
	InitramfsSHA256 string              `json:"initramfs_sha256"`
	AgentSHA256     string              `json:"agent_sha256"`
	Groups          map[string][]string `json:"module_groups"`
	Created         time.Time           `json:"created"`
}

// PrepareOptions says where a kernel comes from and where it goes.
type PrepareOptions struct {
	// PackageRoot is an unpacked kernel package: it holds boot/vmlinuz-*
	// and lib/modules/<release>/.
	PackageRoot string
	// Agent is the static guest agent binary, installed as /init.
	Agent string
	// DataDir is firesandbox's data directory.
	DataDir string
	// Log receives progress lines; may be nil.
	Log io.Writer
}

// Prepare extracts the kernel, builds the initramfs and makes the result
// the current kernel. It writes into a temporary directory and renames it
// into place, so an interrupted run leaves the previous kernel intact.
func Prepare(o PrepareOptions) (*Kernel, error) {
	logf := func(format string, args ...any) {
		if o.Log != nil {
			fmt.Fprintf(o.Log, format+"\n", args...)
		}
	}
	vmlinuzes, _ := filepath.Glob(filepath.Join(o.PackageRoot, "boot", "vmlinuz-*"))
	if len(vmlinuzes) != 1 {
		return nil, fmt.Errorf("prepare kernel: want one boot/vmlinuz-* in %s, found %d", o.PackageRoot, len(vmlinuzes))
	}
	release := strings.TrimPrefix(filepath.Base(vmlinuzes[0]), "vmlinuz-")
	if release == "" || release == "." || release == ".." || strings.ContainsAny(release, "/ ") {
		return nil, fmt.Errorf("prepare kernel: bad release name %q", release)
	}
	agent, err := os.ReadFile(o.Agent)
	if err != nil {
		return nil, fmt.Errorf("prepare kernel: read agent: %w (build it with `make build`)", err)
	}
	if err := checkStatic(agent); err != nil {
		return nil, fmt.Errorf("prepare kernel: agent %s: %w", o.Agent, err)
	}

	logf("kernel %s: extracting vmlinux from %s", release, filepath.Base(vmlinuzes[0]))
	bz, err := os.ReadFile(vmlinuzes[0])
	if err != nil {
		return nil, err
	}
	vmlinux, err := ExtractVmlinux(bz)
	if err != nil {
		return nil, fmt.Errorf("prepare kernel: %w", err)
	}
	if err := checkELF(vmlinux); err != nil {
		return nil, fmt.Errorf("prepare kernel: %w", err)
	}

	tree, err := loadModuleTree(filepath.Join(o.PackageRoot, "lib", "modules", release))
	if err != nil {
		return nil, fmt.Errorf("prepare kernel: %w", err)
	}
	groups := map[string][]string{}
	names := make([]string, 0, len(ModuleGroups))
	for g := range ModuleGroups {
		names = append(names, g)
	}
	sort.Strings(names)
	var initrd bytes.Buffer
	cw := &cpioWriter{w: &initrd}
	for _, d := range []string{"dev", "proc", "sys", "run", "tmp", "newroot", "etc", "etc/firesandbox", "lib", "lib/modules"} {
		cw.Dir(d, 0o755)
	}
	cw.File("init", 0o755, agent)
	added := map[string]bool{}
	for _, g := range names {
		mods, err := tree.resolve(ModuleGroups[g])
		if err != nil {
			return nil, fmt.Errorf("prepare kernel: module group %s: %w", g, err)
		}
		var list []string
		for _, rel := range mods {
			dst := path.Join("/lib/modules", normName(rel)+".ko")
			if ext := filepath.Ext(rel); ext != ".ko" {
				dst += ext // keep the compression suffix: the kernel inflates it
			}
			if !added[dst] {
				b, err := os.ReadFile(filepath.Join(tree.dir, rel))
				if err != nil {
					return nil, err
				}
				cw.File(dst, 0o644, b)
				added[dst] = true
			}
			list = append(list, dst)
		}
		groups[g] = list
		file := "etc/firesandbox/modules"
		if g != "default" {
			file += "." + g
		}
		cw.File(file, 0o644, []byte(strings.Join(list, "\n")+"\n"))
		logf("kernel %s: module group %s: %s", release, g, strings.Join(list, " "))
	}
	if err := cw.Close(); err != nil {
		return nil, err
	}

	kdir := filepath.Join(o.DataDir, "kernels")
	if err := os.MkdirAll(kdir, 0o755); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(kdir, ".prepare-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o755); err != nil {
		return nil, err
	}
	k := &Kernel{
		Release:         release,
		VmlinuxSHA256:   digest(vmlinux),
		InitramfsSHA256: digest(initrd.Bytes()),
		AgentSHA256:     digest(agent),
		Groups:          groups,
		Created:         time.Now().UTC(),
	}
	if err := os.WriteFile(filepath.Join(tmp, "vmlinux"), vmlinux, 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(tmp, "initramfs.cpio"), initrd.Bytes(), 0o644); err != nil {
		return nil, err
	}
	mb, _ := json.MarshalIndent(k, "", "  ")
	if err := os.WriteFile(filepath.Join(tmp, "manifest.json"), mb, 0o644); err != nil {
		return nil, err
	}
	final := filepath.Join(kdir, release)
	old, swapped := "", false
	if _, err := os.Stat(final); err == nil {
		// Swap the directories in one step, so the kernel is never
		// missing, neither to a concurrent Load nor after a crash; tmp
		// then holds the old kernel and the deferred RemoveAll deletes it.
		swapped = unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, final, unix.RENAME_EXCHANGE) == nil
		if !swapped { // the filesystem cannot exchange: two renames
			old = tmp + ".old"
			if err := os.Rename(final, old); err != nil {
				return nil, err
			}
		}
	}
	if !swapped {
		if err := os.Rename(tmp, final); err != nil {
			if old != "" {
				_ = os.Rename(old, final)
			}
			return nil, err
		}
	}
	if old != "" {
		os.RemoveAll(old)
	}
	if err := writeAtomic(filepath.Join(kdir, "current"), []byte(release+"\n")); err != nil {
		return nil, err
	}
	logf("kernel %s: vmlinux %d MiB, initramfs %d KiB -> %s", release, len(vmlinux)>>20, initrd.Len()>>10, final)
	return Load(o.DataDir)
}

// Load returns the current kernel of a data directory.
func Load(dataDir string) (*Kernel, error) {
	kdir := filepath.Join(dataDir, "kernels")
	b, err := os.ReadFile(filepath.Join(kdir, "current"))
	if err != nil {
		return nil, fmt.Errorf("%w in %s: run `firesandbox kernel prepare` (or `make setup`)", ErrNotPrepared, dataDir)
	}
	release := strings.TrimSpace(string(b))
	dir := filepath.Join(kdir, release)
	mb, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		return nil, fmt.Errorf("%w: kernel %s is incomplete (%v): run `firesandbox kernel prepare` again", ErrNotPrepared, release, err)
	}
	var k Kernel
	if err := json.Unmarshal(mb, &k); err != nil {
		return nil, fmt.Errorf("kernel %s: bad manifest: %w", release, err)
	}
	k.Dir = dir
	k.Vmlinux = filepath.Join(dir, "vmlinux")
	k.Initramfs = filepath.Join(dir, "initramfs.cpio")
	return &k, nil
}

// ID identifies this kernel + initramfs pair, for snapshot compatibility.
func (k *Kernel) ID() string {
	h := sha256.Sum256([]byte(k.VmlinuxSHA256 + k.InitramfsSHA256))
	return hex.EncodeToString(h[:8])
}

func digest(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// checkStatic refuses a dynamically linked agent: the initramfs has no
// libc for it.
func checkStatic(b []byte) error {
	if err := checkELF(b); err != nil {
		return err
	}
	if bytes.Contains(b[:min(len(b), 4096)], []byte("/lib64/ld-linux")) {
		return errors.New("is dynamically linked; build it with CGO_ENABLED=0")
	}
	return nil
}

func writeAtomic(p string, b []byte) error {
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}
