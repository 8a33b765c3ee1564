package firecracker

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/firesandbox/firesandbox/internal/vmm"
	"github.com/firesandbox/firesandbox/internal/vmm/kvm"
	"golang.org/x/sys/unix"
)

// Diagnose checks everything Boot needs that can be checked without
// booting: the binaries and their versions, /dev/kvm and its API, and for
// the jailer, root, cgroups, the chroot base and the network namespace. It
// reports every problem it finds, not just the first. A usable diagnosis
// does not prove a guest boots (a nested or paravirtualised KVM may still
// refuse a kernel).
func Diagnose(ctx context.Context, cfg Config) vmm.Diagnosis {
	cfg = cfg.withDefaults()
	dg := vmm.Diagnosis{Driver: "firecracker"}
	problem := func(format string, args ...any) { dg.Problem(fmt.Sprintf(format, args...)) }
	note := func(format string, args ...any) { dg.Note(fmt.Sprintf(format, args...)) }

	if err := cfg.Validate(); err != nil {
		problem("configuration: %v", err)
	}
	if path, err := exec.LookPath(cfg.Binary); err != nil {
		problem("firecracker binary %q not found (install a v1.8+ release from github.com/firecracker-microvm/firecracker/releases into PATH): %v", cfg.Binary, err)
	} else if v, err := binaryVersion(ctx, path); err != nil {
		problem("firecracker binary %s does not report a version: %v", path, err)
	} else {
		dg.Version = v
		note("firecracker %s at %s", v, path)
		if older(v, 1, 8) {
			problem("firecracker %s is older than 1.8: it cannot describe devices through ACPI, which Debian's kernel needs (no virtio_mmio.device= support)", v)
		}
	}

	if err := kvm.Open(); err != nil {
		problem("%v", err)
	} else if kvm.PVM() {
		problem("/dev/kvm is served by kvm_pvm (this host is a PVM guest): only PVM-enabled guest kernels boot under it")
	}

	if cfg.jailed() {
		if path, err := exec.LookPath(cfg.JailerBinary); err != nil {
			problem("jailer binary %q not found (it ships in the same release archive as firecracker): %v", cfg.JailerBinary, err)
		} else if v, err := binaryVersion(ctx, path); err == nil && dg.Version != "" && v != dg.Version {
			problem("jailer %s and firecracker %s differ: the jailer must come from the same release", v, dg.Version)
		}
		if os.Geteuid() != 0 {
			problem("the jailer must run as root (chroot, mknod, cgroups, namespaces); this process runs as uid %d (or set firecracker.no_jailer, unconfined)", os.Geteuid())
		}
		diagnoseChrootBase(cfg, problem)
		diagnoseCgroups(cfg, problem, note)
		if cfg.NetNS != "" && cfg.NetNS != NetNSHost {
			if _, err := os.Stat(cfg.NetNS); err != nil {
				problem("network namespace %s: %v", cfg.NetNS, err)
			}
		}
		if cfg.NetNS == NetNSHost {
			dg.Warn("firecracker stays in the host's network namespace (firecracker.netns = \"host\")")
		}
		if cfg.HostPIDNS {
			dg.Warn("firecracker stays in the host's PID namespace (firecracker.host_pid_ns)")
		}
		note("confinement: jailer, uid %d gid %d, chroot under %s", cfg.UID, cfg.GID, cfg.ChrootBase)
	} else {
		dg.Warn(fmt.Sprintf("firecracker runs without its jailer (--no-jailer / firecracker.no_jailer), as uid %d, with no chroot or namespaces: for development only", os.Geteuid()))
	}
	dg.Usable = len(dg.Problems) == 0
	return dg
}

func diagnoseChrootBase(cfg Config, problem func(string, ...any)) {
	dir := cfg.ChrootBase
	for {
		fi, err := os.Stat(dir)
		if err == nil {
			if !fi.IsDir() {
				problem("chroot base %s: %s is not a directory", cfg.ChrootBase, dir)
			} else if unix.Access(dir, unix.W_OK) != nil {
				problem("chroot base %s: %s is not writable", cfg.ChrootBase, dir)
			}
			return
		}
		if !errors.Is(err, os.ErrNotExist) {
			problem("chroot base %s: %v", cfg.ChrootBase, err)
			return
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return
		}
		dir = parent
	}
}

func diagnoseCgroups(cfg Config, problem, note func(string, ...any)) {
	if cfg.CgroupVersion != "2" {
		note("cgroup v1 requested: the driver does not remove the jailer's per-controller cgroups")
		return
	}
	mnt := cgroup2Mount()
	if mnt == "" {
		problem("cgroup version 2 requested but no cgroup2 filesystem is mounted (see /proc/mounts)")
		return
	}
	if mnt != "/sys/fs/cgroup" {
		note("cgroup2 is mounted at %s, not /sys/fs/cgroup: the host uses a hybrid hierarchy", mnt)
	}
	b, err := os.ReadFile(filepath.Join(mnt, "cgroup.controllers"))
	if err != nil {
		problem("read %s/cgroup.controllers: %v", mnt, err)
		return
	}
	have := map[string]bool{}
	for _, c := range strings.Fields(string(b)) {
		have[c] = true
	}
	for k := range cfg.Cgroups {
		ctl, _, _ := strings.Cut(k, ".")
		if ctl != "cgroup" && !have[ctl] {
			problem("cgroup setting %s needs the %s controller, which cgroup v2 at %s does not offer (controllers: %q)", k, ctl, mnt, strings.TrimSpace(string(b)))
		}
	}
}

// cgroup2Mount returns where the cgroup v2 hierarchy is mounted, or "".
func cgroup2Mount() string {
	f, err := os.Open("/proc/mounts")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 3 && fields[2] == "cgroup2" {
			return fields[1]
		}
	}
	return ""
}

// older reports whether version v (like "1.7.0" or "1.10.1-dev") is older
// than major.minor.
func older(v string, major, minor int) bool {
	var ma, mi int
	if _, err := fmt.Sscanf(v, "%d.%d", &ma, &mi); err != nil {
		return false
	}
	return ma < major || (ma == major && mi < minor)
}
