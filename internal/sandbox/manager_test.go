package sandbox

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// A VM whose owner died leaves a run dir, a disk and packed mounts; the
// next Manager removes them, and leaves a live owner's alone.
func TestSweepRemovesDeadVMsLeftovers(t *testing.T) {
	data, run := t.TempDir(), t.TempDir()
	os.MkdirAll(filepath.Join(run, "owners"), 0o700)
	os.MkdirAll(filepath.Join(data, "disks"), 0o700)
	leave := func(id string, pid int) []string {
		files := []string{
			filepath.Join(run, id, "qmp.sock"),
			filepath.Join(data, "disks", id+".ext4"),
			filepath.Join(data, "disks", id+"-m0.squashfs"),
		}
		for _, f := range files {
			os.MkdirAll(filepath.Dir(f), 0o700)
			os.WriteFile(f, nil, 0o600)
		}
		os.WriteFile(filepath.Join(run, "owners", id), []byte(strconv.Itoa(pid)), 0o600)
		return files
	}
	dead := leave("vm-dead", 1<<22) // above pid_max: no such process
	live := leave("vm-live", os.Getpid())
	if _, err := New(Config{DataDir: data, RunDir: run, Driver: "qemu"}); err != nil {
		t.Fatal(err)
	}
	for _, f := range dead {
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Errorf("dead VM's %s survived the sweep", f)
		}
	}
	for _, f := range live {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("live VM's %s was swept: %v", f, err)
		}
	}
}
