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

	"golang.org/x/sys/unix"
)

// Diagnosis says whether the driver can run VMs on this host, and why not.
// It is plain data for `firesandbox doctor` to print.
type Diagnosis struct {
	Driver  string
	Usable  bool
	Version string
	// Problems are reasons the driver cannot work here; each one says
	// what to fix.
	Problems []string
	// Notes are facts worth knowing that do not stop it.
	Notes []string
}

// kvmGetAPIVersion is KVM_GET_API_VERSION, _IO(KVMIO, 0x00); KVM has
// answered 12 since Linux 2.6.22.
const (
	kvmGetAPIVersion = 0xAE00
	kvmAPIVersion    = 12
)

// Diagnose checks everything Boot needs that can be checked without
// booting: the binaries and their versions, /dev/kvm and its API, and for
// the jailer, root, cgroups and the chroot base. It reports every problem
// it finds, not just the first. A usable diagnosis does not prove a guest
// boots (a nested or paravirtualised KVM may still refuse a kernel).
func Diagnose(ctx context.Context, cfg Config) Diagnosis {
	cfg = cfg.withDefaults()
	dg := Diagnosis{Driver: "firecracker"}
	problem := func(format string, args ...any) { dg.Problems = append(dg.Problems, fmt.Sprintf(format, args...)) }
	note := func(format string, args ...any) { dg.Notes = append(dg.Notes, fmt.Sprintf(format, args...)) }

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

	diagnoseKVM(problem)

	if cfg.UseJailer {
		if path, err := exec.LookPath(cfg.JailerBinary); err != nil {
			problem("jailer binary %q not found (it ships in the same release archive as firecracker): %v", cfg.JailerBinary, err)
		} else if v, err := binaryVersion(ctx, path); err == nil && dg.Version != "" && v != dg.Version {
			problem("jailer %s and firecracker %s differ: the jailer must come from the same release", v, dg.Version)
		}
		if os.Geteuid() != 0 {
			problem("the jailer must run as root (chroot, mknod, cgroups); this process runs as uid %d", os.Geteuid())
		}
		if cfg.UID == 0 {
			note("firecracker runs as uid 0 inside the jail; set uid/gid to an unprivileged user")
		}
		diagnoseChrootBase(cfg, problem)
		diagnoseCgroups(cfg, problem, note)
		if cfg.NetNS != "" {
			if _, err := os.Stat(cfg.NetNS); err != nil {
				problem("network namespace %s: %v", cfg.NetNS, err)
			}
		}
	} else {
		note("running without the jailer: firecracker runs as uid %d, unconfined; use the jailer in production", os.Geteuid())
	}
	dg.Usable = len(dg.Problems) == 0
	return dg
}

// diagnoseKVM opens /dev/kvm as this process. (A jailed VMM gets its own
// node from the jailer, but the jailer runs as this process's user too.)
func diagnoseKVM(problem func(string, ...any)) {
	fi, err := os.Stat("/dev/kvm")
	if err != nil {
		problem("/dev/kvm: %v (load kvm_intel or kvm_amd, or enable nested virtualisation)", err)
		return
	}
	if fi.Mode()&os.ModeCharDevice == 0 {
		problem("/dev/kvm is not a character device")
		return
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		problem("open /dev/kvm read-write: %v (add this user to the kvm group, or grant access with setfacl -m u:$USER:rw /dev/kvm)", err)
		return
	}
	defer f.Close()
	if _, err := os.Stat("/sys/module/kvm_pvm"); err == nil {
		// The host is itself a PVM guest: its KVM runs only kernels built
		// for PVM, and ordinary guest kernels fail (MEASURED.md).
		problem("/dev/kvm is served by kvm_pvm (this host is a PVM guest): only PVM-enabled guest kernels boot under it")
	}
	v, err := unix.IoctlRetInt(int(f.Fd()), kvmGetAPIVersion)
	if err != nil {
		problem("KVM_GET_API_VERSION on /dev/kvm: %v", err)
	} else if v != kvmAPIVersion {
		problem("KVM API version %d, want %d", v, kvmAPIVersion)
	}
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
