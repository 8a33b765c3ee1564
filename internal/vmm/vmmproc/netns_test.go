package vmmproc

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/firesandbox/firesandbox/internal/netns"
)

// newNetns makes a network namespace bound at a file in a temp dir, as
// `ip netns add` does under /run/netns.
func newNetns(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root")
	}
	path := filepath.Join(t.TempDir(), "ns")
	if err := netns.Create(path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netns.Delete(path) })
	return path
}

func nsID(t *testing.T, path string) string {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return "net:[" + strconv.FormatUint(st.Ino, 10) + "]"
}

// TestInNetns: fn runs in the namespace, and so does a process it starts;
// the caller's namespace is untouched.
func TestInNetns(t *testing.T) {
	path := newNetns(t)
	want := nsID(t, path)
	own, _ := os.Readlink("/proc/self/ns/net")
	var inside, child string
	err := InNetns(path, func() error {
		var err error
		if inside, err = os.Readlink("/proc/thread-self/ns/net"); err != nil {
			return err
		}
		out, err := helper(t, "netns").Output()
		child = strings.TrimSpace(string(out))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if inside != want || child != want {
		t.Fatalf("fn ran in %s, its child in %s; want both in %s", inside, child, want)
	}
	if now, _ := os.Readlink("/proc/self/ns/net"); now != own {
		t.Fatalf("the process's namespace changed: %s, was %s", now, own)
	}
	if err := InNetns(filepath.Join(t.TempDir(), "none"), func() error { return nil }); err == nil {
		t.Fatal("InNetns of a missing namespace succeeded")
	}
}
