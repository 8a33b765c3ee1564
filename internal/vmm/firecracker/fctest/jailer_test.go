package fctest

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// fakeExec is an executable named like Firecracker: /bin/true, copied.
func fakeExec(t *testing.T) string {
	t.Helper()
	src, err := exec.LookPath("true")
	if err != nil {
		t.Skip("no true(1)")
	}
	dst := filepath.Join(t.TempDir(), "firecracker-v1.10")
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return dst
}

// The fake jailer refuses what the real one refuses, and what would hide
// a driver bug (an --id passed twice), and creates nothing when it does.
func TestJailerRefusesBadArguments(t *testing.T) {
	exe := fakeExec(t)
	base := t.TempDir()
	notNS := filepath.Join(t.TempDir(), "netns")
	os.WriteFile(notNS, nil, 0o644)
	ok := []string{"--id", "vm1", "--exec-file", exe, "--uid", "123", "--gid", "100", "--chroot-base-dir", base, "--cgroup-version", "2"}
	with := func(extra ...string) []string { return append(append([]string{}, ok...), extra...) }
	replace := func(flag, val string) []string {
		a := append([]string{}, ok...)
		for i := range a {
			if a[i] == flag {
				a[i+1] = val
			}
		}
		return a
	}
	drop := func(flag string) []string {
		var a []string
		for i := 0; i < len(ok); i++ {
			if ok[i] == flag {
				i++
				continue
			}
			a = append(a, ok[i])
		}
		return a
	}
	for name, args := range map[string][]string{
		"missing uid":          drop("--uid"),
		"uid not a number":     replace("--uid", "nobody"),
		"id with underscore":   replace("--id", "vm_1"),
		"id too long":          replace("--id", strings.Repeat("a", 65)),
		"relative exec file":   replace("--exec-file", "firecracker"),
		"exec file misnamed":   replace("--exec-file", "/bin/true"),
		"exec file missing":    replace("--exec-file", "/nonexistent/firecracker"),
		"relative chroot base": replace("--chroot-base-dir", "srv/jailer"),
		"cgroup version 3":     replace("--cgroup-version", "3"),
		"unknown flag":         with("--seccomp-level", "2"),
		"id twice":             with("--id", "vm2"),
		"cgroup without value": with("--cgroup", "cpu.max"),
		"cgroup bad key":       with("--cgroup", "cpu max=1"),
		"absolute parent":      with("--parent-cgroup", "/firecracker"),
		"parent escapes":       with("--parent-cgroup", "../x"),
		"netns not a netns":    with("--netns", notNS),
		"bad resource limit":   with("--resource-limit", "no-file=lots"),
		"id after --":          with("--", "--id", "vm1"),
		"id= after --":         with("--", "--id=vm1"),
		"flag without value":   with("--netns"),
	} {
		t.Run(name, func(t *testing.T) {
			if code := JailerMain(args); code == 0 {
				t.Fatalf("JailerMain(%q) = 0, want a refusal", args)
			}
			if ents, _ := os.ReadDir(base); len(ents) > 0 {
				t.Fatalf("a refused jailer created %v", ents)
			}
		})
	}
}

// With good arguments the jail is laid out as the real jailer does it:
// <base>/<exec name>/<id>/root holding a copy of the exec file, owned by
// --uid:--gid when the jailer can chown, and the exec file runs there.
func TestJailerLayout(t *testing.T) {
	exe := fakeExec(t)
	base := t.TempDir()
	uid, gid := os.Getuid(), os.Getgid()
	if uid == 0 {
		uid, gid = 1_900_000_123, 1_900_000_124
	}
	args := []string{"--id", "vm-1", "--exec-file", exe, "--uid", itoa(uid), "--gid", itoa(gid), "--chroot-base-dir", base, "--cgroup-version", "2", "--", "--api-sock", "/api.sock"}
	if code := JailerMain(args); code != 0 {
		t.Fatalf("JailerMain = %d", code)
	}
	jail := filepath.Join(base, "firecracker-v1.10", "vm-1")
	fi, err := os.Stat(filepath.Join(jail, "root"))
	if err != nil {
		t.Fatal(err)
	}
	if os.Getuid() == 0 {
		if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != uid || int(st.Gid) != gid {
			t.Errorf("jail root owned by %d:%d, want %d:%d", st.Uid, st.Gid, uid, gid)
		}
	}
	if _, err := os.Stat(filepath.Join(jail, "root", "firecracker-v1.10")); err != nil {
		t.Errorf("exec file not copied into the jail: %v", err)
	}
	var rec JailRecord
	b, err := os.ReadFile(filepath.Join(jail, JailRecordName))
	if err != nil || json.Unmarshal(b, &rec) != nil || rec.UID != uid || rec.GID != gid || rec.NewPIDNS {
		t.Fatalf("jail record %s (%v): %+v", b, err, rec)
	}
	// A second jailer for the same id finds the exec file there: refused.
	if code := JailerMain(args); code == 0 {
		t.Fatal("a second jail for one id was built over the first")
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
