package qemu_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/testutil"
	"github.com/firesandbox/firesandbox/internal/vmm"
	"github.com/firesandbox/firesandbox/internal/vmm/qemu"
	"github.com/firesandbox/firesandbox/internal/vmm/vmmtest"
)

// actAsEnv makes the test binary impersonate a compromised QEMU: it takes
// the QEMU's root directory, uid, gid and groups (read from /proc), then
// attempts what an attacker who took over that QEMU would, and prints the
// results as JSON.
const actAsEnv = "QEMU_TEST_ACT_AS"

func TestMain(m *testing.M) {
	if pid := os.Getenv(actAsEnv); pid != "" {
		os.Exit(actAs(pid, os.Args[1:]))
	}
	os.Exit(m.Run())
}

// attempts is what the impersonator tried; "" means it worked.
type attempts struct {
	ReadShadow, ListRoot, SignalVictim, PtraceVictim, OpenVictimRAM string
	UID                                                             int
}

func actAs(pidStr string, args []string) int {
	pid, _ := strconv.Atoi(pidStr)
	victim, _ := strconv.Atoi(args[0])
	victimRAM := args[1]
	uid, gid, err := procIDs(pid)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	// Enter QEMU's root as it sees it, then drop to its ids.
	if err := syscall.Chroot(fmt.Sprintf("/proc/%d/root", pid)); err != nil {
		fmt.Fprintln(os.Stderr, "chroot:", err)
		return 2
	}
	syscall.Chdir("/")
	if err := syscall.Setgroups(nil); err != nil {
		return 2
	}
	if err := syscall.Setgid(gid); err != nil {
		return 2
	}
	if err := syscall.Setuid(uid); err != nil {
		return 2
	}
	res := attempts{UID: os.Getuid()}
	errStr := func(err error) string {
		if err == nil {
			return ""
		}
		return err.Error()
	}
	_, err = os.ReadFile("/etc/shadow")
	res.ReadShadow = errStr(err)
	ents, err := os.ReadDir("/")
	if err == nil && len(ents) > 0 {
		res.ListRoot = ""
	} else {
		res.ListRoot = fmt.Sprintf("%d entries, %v", len(ents), err)
	}
	res.SignalVictim = errStr(syscall.Kill(victim, 0))
	res.PtraceVictim = errStr(syscall.PtraceAttach(victim))
	if res.PtraceVictim == "" {
		syscall.PtraceDetach(victim)
	}
	_, err = os.ReadFile(victimRAM)
	res.OpenVictimRAM = errStr(err)
	json.NewEncoder(os.Stdout).Encode(res)
	return 0
}

// procIDs reads a process's uid and gid from /proc.
func procIDs(pid int) (uid, gid int, err error) {
	st, err := procStatus(pid)
	if err != nil {
		return 0, 0, err
	}
	fmt.Sscanf(st["Uid"], "%d", &uid)
	fmt.Sscanf(st["Gid"], "%d", &gid)
	return uid, gid, nil
}

func procStatus(pid int) (map[string]string, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok {
			st[k] = strings.TrimSpace(v)
		}
	}
	return st, sc.Err()
}

// ramFileOf returns the file QEMU maps guest RAM from, per /proc/pid/maps.
func ramFileOf(t *testing.T, pid int, sizeMiB int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 || !strings.HasSuffix(f[5], ".ram") && !strings.Contains(f[5], "memory") {
			continue
		}
		var lo, hi uint64
		fmt.Sscanf(f[0], "%x-%x", &lo, &hi)
		if hi-lo == uint64(sizeMiB)<<20 {
			return f[5]
		}
	}
	t.Fatalf("no %d MiB file mapping in /proc/%d/maps:\n%s", sizeMiB, pid, b)
	return ""
}

func runAs(t *testing.T, uid int, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %v as uid %d: %v: %s", name, args, uid, err, out)
	}
}

// TestConfinedQEMU boots two VMs and plays an attacker who has taken over
// the first one's QEMU: with its root directory and ids it must not read
// host files, see anything in its root, or touch the other VM's QEMU or
// its guest memory. It also checks the confinement as /proc shows it.
func TestConfinedQEMU(t *testing.T) {
	fx := vmmtest.FixturesFromEnv(t)
	testutil.RequireRoot(t)
	d := newDriver(t, qemu.Config{Accel: testutil.RequireVMs(t).Accel})
	base, err := os.MkdirTemp("/tmp", "vmt-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	ctx := context.Background()
	boot := func(id string) vmm.Machine {
		m, err := d.Boot(ctx, vmmtest.Config(d, fx, base, id))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Stop(ctx) })
		return m
	}
	attacker, victim := boot("attacker"), boot("victim")
	pid := attacker.PID()

	st, err := procStatus(pid)
	if err != nil {
		t.Fatal(err)
	}
	uid, _, _ := procIDs(pid)
	vuid, _, _ := procIDs(victim.PID())
	if uid < qemu.DefaultUIDBase || vuid < qemu.DefaultUIDBase || uid == vuid {
		t.Errorf("QEMU uids %d and %d: want two distinct uids from %d", uid, vuid, qemu.DefaultUIDBase)
	}
	if st["CapEff"] != "0000000000040000" || st["CapPrm"] != "0000000000040000" {
		t.Errorf("QEMU capabilities: effective %s permitted %s, want CAP_SYS_CHROOT alone", st["CapEff"], st["CapPrm"])
	}
	if st["NoNewPrivs"] != "1" || st["Seccomp"] != "2" {
		t.Errorf("QEMU NoNewPrivs %s Seccomp %s, want 1 and 2 (filter)", st["NoNewPrivs"], st["Seccomp"])
	}
	for _, ns := range []string{"pid", "net", "ipc", "uts"} {
		ours, _ := os.Readlink("/proc/self/ns/" + ns)
		its, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, ns))
		if ours == its {
			t.Errorf("QEMU shares our %s namespace (%s)", ns, its)
		}
	}
	root, _ := os.Readlink(fmt.Sprintf("/proc/%d/root", pid))
	if root == "/" {
		t.Errorf("QEMU's root is the host's /")
	}

	// Every directory QEMU holds open is inside its jail: an open
	// directory outside it would be a way out (fchdir).
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		p := fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())
		if fi, err := os.Stat(p); err == nil && fi.IsDir() {
			target, _ := os.Readlink(p)
			if target != root {
				t.Errorf("QEMU holds directory %s open, outside its root %s", target, root)
			}
		}
	}

	victimRAM := ramFileOf(t, victim.PID(), 256)
	exe, _ := os.Executable()
	cmd := exec.Command(exe, strconv.Itoa(victim.PID()), victimRAM)
	cmd.Env = append(os.Environ(), actAsEnv+"="+strconv.Itoa(pid))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("impersonating QEMU: %v: %s", err, out)
	}
	var res attempts
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("impersonator output %q: %v", out, err)
	}
	t.Logf("as QEMU (uid %d): %+v", res.UID, res)
	for what, errText := range map[string]string{
		"read /etc/shadow":              res.ReadShadow,
		"see files in its root":         res.ListRoot,
		"signal the other VM's QEMU":    res.SignalVictim,
		"ptrace the other VM's QEMU":    res.PtraceVictim,
		"read the other VM's guest RAM": res.OpenVictimRAM,
	} {
		if errText == "" {
			t.Errorf("a compromised QEMU could %s", what)
		}
	}
}

// TestRAMFileAttack performs the attack on guest memory files: before the
// VM boots, another local user creates the file name the RAM would have
// had (/dev/shm/firesandbox-<id>.ram), writable by them, and a symlink
// under the next VM's name pointing at a file of theirs. Neither may end
// up holding guest memory, and they cannot open the file that does.
func TestRAMFileAttack(t *testing.T) {
	fx := vmmtest.FixturesFromEnv(t)
	testutil.RequireRoot(t)
	const nobody = 65534
	id := fmt.Sprintf("ramattack-%d", os.Getpid())
	bait := "/dev/shm/firesandbox-" + id + ".ram"
	theirs := filepath.Join("/dev/shm", "attacker-"+id)
	runAs(t, nobody, "sh", "-c", fmt.Sprintf("umask 0; : > %s; : > %s; ln -s %s /dev/shm/firesandbox-%s2.ram", bait, theirs, theirs, id))
	t.Cleanup(func() {
		os.Remove(bait)
		os.Remove(theirs)
		os.Remove("/dev/shm/firesandbox-" + id + "2.ram")
	})

	d := newDriver(t, qemu.Config{Accel: testutil.RequireVMs(t).Accel, MemoryDir: qemu.DefaultMemoryDir})
	base, err := os.MkdirTemp("/tmp", "vmt-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, vmID := range []string{id, id + "2"} {
		m, err := d.Boot(ctx, vmmtest.Config(d, fx, base, vmID))
		if err != nil {
			t.Fatal(err)
		}
		defer m.Stop(ctx)
		c := vmmtest.Connect(t, m) // the guest has run and written its memory
		c.Close()
		ram := ramFileOf(t, m.PID(), 256)
		if ram == bait || ram == theirs {
			t.Fatalf("guest RAM of %s is in the attacker's file %s", vmID, ram)
		}
		for _, f := range []string{bait, theirs} {
			if fi, err := os.Stat(f); err != nil || fi.Size() != 0 {
				t.Fatalf("attacker's file %s changed: %v, %v", f, fi.Size(), err)
			}
		}
		read := exec.Command("cat", ram)
		read.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
		if out, err := read.CombinedOutput(); err == nil {
			t.Fatalf("another user read guest RAM from %s (%d bytes)", ram, len(out))
		}
	}
}

// TestConsoleFloodIsBounded boots a guest whose kernel prints everything
// it can to the serial console (every initcall, every log level): what
// the driver keeps of it is bounded, no file grows with it, and the tail
// is the newest output.
func TestConsoleFloodIsBounded(t *testing.T) {
	fx := vmmtest.FixturesFromEnv(t)
	d := newDriver(t, qemu.Config{Accel: testutil.RequireVMs(t).Accel})
	base, err := os.MkdirTemp("/tmp", "vmt-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	cfg := vmmtest.Config(d, fx, base, "flood")
	cfg.Cmdline = append(cfg.Cmdline, "loglevel=8", "ignore_loglevel", "initcall_debug")
	ctx := context.Background()
	m, err := d.Boot(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Stop(ctx)
	c := vmmtest.Connect(t, m) // boot is over: the kernel has said its piece
	c.Close()
	con := m.Console(1 << 30)
	if len(con) != 64<<10 {
		t.Fatalf("console keeps %d bytes; want exactly its 64 KiB bound after a flood", len(con))
	}
	if strings.Contains(con, "Linux version") {
		t.Fatalf("the first boot line is still there: the flood did not exceed the bound, the test proves nothing")
	}
	filepath.WalkDir(cfg.RunDir, func(p string, e os.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			if fi, err := e.Info(); err == nil && fi.Size() > 64<<10 {
				t.Errorf("%s grew to %d bytes with the console", p, fi.Size())
			}
		}
		return nil
	})
}
