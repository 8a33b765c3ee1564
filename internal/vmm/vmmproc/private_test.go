package vmmproc

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/firesandbox/firesandbox/internal/vmm"
)

// The attack: in a world-writable directory such as /dev/shm, another
// local user creates the private directory's name first (a directory of
// their own, or a symlink to one), hoping guest RAM files land where they
// can read them.
func TestPrivateDirRefusesAnotherUsersDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to act as another user")
	}
	shared, err := os.MkdirTemp("", "vmmproc-shm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(shared) })
	if err := os.Chmod(shared, 0o1777); err != nil { // like /dev/shm
		t.Fatal(err)
	}
	dir := filepath.Join(shared, "firesandbox")
	mkdir := exec.Command("mkdir", "-m", "0777", dir)
	mkdir.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if out, err := mkdir.CombinedOutput(); err != nil {
		t.Fatalf("mkdir as nobody: %v: %s", err, out)
	}
	if err := PrivateDir(dir); !errors.Is(err, vmm.ErrUnsafe) {
		t.Fatalf("PrivateDir on nobody's directory: %v, want ErrUnsafe", err)
	}
	bait := filepath.Join(shared, "bait")
	ln := exec.Command("sh", "-c", "mkdir -m 0777 "+bait+" && ln -s "+bait+" "+dir+"2")
	ln.SysProcAttr = mkdir.SysProcAttr
	if out, err := ln.CombinedOutput(); err != nil {
		t.Fatalf("symlink as nobody: %v: %s", err, out)
	}
	if err := PrivateDir(dir + "2"); !errors.Is(err, vmm.ErrUnsafe) {
		t.Fatalf("PrivateDir on a symlink: %v, want ErrUnsafe", err)
	}
}

func TestPrivateDirTightensItsOwn(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "mine")
	if err := os.Mkdir(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o777)
	if err := PrivateDir(dir); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(dir)
	if fi.Mode().Perm() != 0o700 {
		t.Fatalf("mode %v, want 0700", fi.Mode().Perm())
	}
	fresh := filepath.Join(t.TempDir(), "fresh")
	if err := PrivateDir(fresh); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(fresh); fi.Mode().Perm() != 0o700 {
		t.Fatalf("new dir mode %v", fi.Mode().Perm())
	}
}
