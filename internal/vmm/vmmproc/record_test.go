package vmmproc

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/vmm"
)

// orphan starts a helper the way a VMM outlives a SIGKILLed daemon: no
// parent-death signal, its own process group, and nobody stopping it but
// the sweep. The test reaps it.
func orphan(t *testing.T) (*exec.Cmd, <-chan struct{}) {
	t.Helper()
	cmd := helper(t, "sleep")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-done })
	return cmd, done
}

func TestSweepKillsTheRecordedProcess(t *testing.T) {
	run := t.TempDir()
	cmd, done := orphan(t)
	st, err := startTime(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	ram := filepath.Join(t.TempDir(), "vm.ram")
	if err := os.WriteFile(ram, []byte("guest memory"), 0o600); err != nil {
		t.Fatal(err)
	}
	rec := Record{PID: cmd.Process.Pid, StartTime: st, BootID: bootID(), Paths: []string{ram}}
	if err := WriteRecord(run, rec); err != nil {
		t.Fatal(err)
	}
	killed, err := Sweep(run)
	if err != nil || !killed {
		t.Fatalf("Sweep = %v, %v; want the orphan killed", killed, err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the orphan still runs after the sweep")
	}
	for _, p := range []string{run, ram} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s survived the sweep", p)
		}
	}
}

// A pid that was reused by an unrelated process must not be killed: the
// record's start time no longer matches.
func TestSweepSparesAReusedPID(t *testing.T) {
	run := t.TempDir()
	cmd, _ := orphan(t)
	st, _ := startTime(cmd.Process.Pid)
	rec := Record{PID: cmd.Process.Pid, StartTime: st + 1, BootID: bootID()}
	if err := WriteRecord(run, rec); err != nil {
		t.Fatal(err)
	}
	if killed, err := Sweep(run); err != nil || killed {
		t.Fatalf("Sweep = %v, %v; want nothing killed", killed, err)
	}
	time.Sleep(50 * time.Millisecond)
	if !alive(cmd.Process.Pid) {
		t.Fatal("the sweep killed a process that only shares the recorded pid")
	}
	rec.StartTime, rec.BootID = st, "another-boot"
	if rec.Alive() {
		t.Fatal("a record from another boot counts as alive")
	}
}

func TestReadRecordRefusesBadPaths(t *testing.T) {
	run := t.TempDir()
	for _, p := range []string{"relative/x", "/", "/a/../../etc"} {
		if err := WriteRecord(run, Record{PID: 1, Paths: []string{p}}); err != nil {
			t.Fatal(err)
		}
		if _, err := ReadRecord(run); !errors.Is(err, ErrNoRecord) {
			t.Errorf("record with path %q: %v, want ErrNoRecord", p, err)
		}
	}
}

func TestClaimRunDir(t *testing.T) {
	run := filepath.Join(t.TempDir(), "vm1")
	c, err := ClaimRunDir(run)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ClaimRunDir(run); !errors.Is(err, vmm.ErrInUse) {
		t.Fatalf("second claim: %v, want ErrInUse", err)
	}
	// A leftover of a dead machine is taken over and emptied.
	os.WriteFile(filepath.Join(run, "stale.sock"), nil, 0o600)
	WriteRecord(run, Record{PID: 999999999, StartTime: 1, BootID: bootID()})
	c.Release()
	c2, err := ClaimRunDir(run)
	if err != nil {
		t.Fatalf("claim after release: %v", err)
	}
	if ents, _ := os.ReadDir(run); len(ents) != 1 {
		t.Fatalf("stale entries kept: %v", ents)
	}
	c2.Release()

	// A live VMM recorded there keeps it, even with no lock held.
	cmd, _ := orphan(t)
	st, _ := startTime(cmd.Process.Pid)
	WriteRecord(run, Record{PID: cmd.Process.Pid, StartTime: st, BootID: bootID()})
	if _, err := ClaimRunDir(run); !errors.Is(err, vmm.ErrInUse) {
		t.Fatalf("claim of a live VMM's dir: %v, want ErrInUse", err)
	}

	link := filepath.Join(t.TempDir(), "link")
	os.Symlink(t.TempDir(), link)
	if _, err := ClaimRunDir(link); !errors.Is(err, vmm.ErrUnsafe) {
		t.Fatalf("claim of a symlink: %v, want ErrUnsafe", err)
	}
}

func TestIDsAreLeasedOnce(t *testing.T) {
	ids := IDs{Dir: t.TempDir(), Base: 5000, Count: 3}
	seen := map[int]bool{}
	var files []*os.File
	for range 3 {
		id, f, err := ids.Lease()
		if err != nil {
			t.Fatal(err)
		}
		if seen[id] || id < 5000 || id >= 5003 {
			t.Fatalf("lease %d (seen %v)", id, seen)
		}
		seen[id] = true
		files = append(files, f)
	}
	if _, _, err := ids.Lease(); !errors.Is(err, ErrNoID) {
		t.Fatalf("lease from a full pool: %v", err)
	}
	// A child that inherited a lease keeps it after we let go.
	cmd := helper(t, "sleep")
	cmd.ExtraFiles = []*os.File{files[0]}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		f.Close()
	}
	id, f, err := ids.Lease()
	if err != nil || id == 5000 {
		t.Fatalf("lease while a child holds 5000: %d, %v", id, err)
	}
	f.Close()
	cmd.Process.Kill()
	cmd.Wait()
	if id, f, err := ids.Lease(); err != nil || id != 5000 {
		t.Fatalf("lease after the child died: %d, %v; want 5000", id, err)
	} else {
		f.Close()
	}
}
