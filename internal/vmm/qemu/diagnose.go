package qemu

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/firesandbox/firesandbox/internal/vmm"
	"github.com/firesandbox/firesandbox/internal/vmm/kvm"
	"github.com/firesandbox/firesandbox/internal/vmm/vmmproc"
)

// minConfined is the oldest QEMU the confined driver runs: -run-with
// chroot= came in 9.1 (memory-backend-file's rom=off, which restores need,
// in 8.2).
var minConfined = [2]int{9, 1}

// Diagnose checks everything New and Boot need that can be checked
// without booting, and reports every problem at once: the binary and its
// version, the firmware, root for the confinement, the memory directory,
// and /dev/kvm when cfg asks for KVM.
func Diagnose(cfg Config) vmm.Diagnosis {
	dg := vmm.Diagnosis{Driver: "qemu"}
	problem := func(format string, a ...any) { dg.Problem(fmt.Sprintf(format, a...)) }
	if err := cfg.Validate(); err != nil {
		problem("configuration: %v", err)
	}
	cfg = cfg.withDefaults()
	if path, err := exec.LookPath(cfg.Binary); err != nil {
		problem("%s not found: run `make deps` (Debian: qemu-system-x86 from bookworm-backports)", cfg.Binary)
	} else if v, err := binaryVersion(path); err != nil {
		problem("%v", err)
	} else {
		dg.Version = v
		dg.Note(fmt.Sprintf("QEMU %s at %s", v, path))
		var ma, mi int
		if _, err := fmt.Sscanf(v, "%d.%d", &ma, &mi); err == nil && !cfg.Unconfined && (ma < minConfined[0] || ma == minConfined[0] && mi < minConfined[1]) {
			problem("QEMU %s is older than %d.%d, which the confinement needs (-run-with chroot=): install QEMU from bookworm-backports, or set qemu.unconfined", v, minConfined[0], minConfined[1])
		}
	}
	if cfg.BIOS == "" {
		dg.Note("no qboot firmware (" + DefaultBIOS + "): boots use SeaBIOS, slower (install qemu-system-data)")
	}
	if err := vmmproc.CheckPrivateDir(cfg.MemoryDir); err != nil {
		problem("memory dir: %v", err)
	} else if _, err := os.Stat(filepath.Dir(cfg.MemoryDir)); err != nil {
		problem("memory dir %s: its parent: %v", cfg.MemoryDir, err)
	}
	if cfg.Unconfined {
		dg.Warn(fmt.Sprintf("QEMU runs unconfined (qemu.unconfined): as uid %d, with the host's file system and namespaces in view; only its seccomp sandbox is on", os.Geteuid()))
	} else {
		if os.Geteuid() != 0 {
			problem("the QEMU confinement (own uid, chroot, namespaces) needs root; this process runs as uid %d (or set qemu.unconfined)", os.Geteuid())
		}
		dg.Note(fmt.Sprintf("confinement: seccomp sandbox, uid %d+ per VM in gid %d, chroot into an empty dir, own pid/net/ipc/uts namespaces", cfg.UIDBase, cfg.GID))
	}
	if cfg.Accel == AccelKVM {
		if err := kvm.Open(); err != nil {
			problem("accel kvm: %v", err)
		}
		if _, ok := kvm.Group(); !ok && !cfg.Unconfined {
			problem("accel kvm: %s grants no group read-write access, so a QEMU running as its own uid cannot open it: make it 0660 root:kvm (the udev default)", kvm.Device)
		}
	}
	dg.Usable = len(dg.Problems) == 0
	return dg
}
