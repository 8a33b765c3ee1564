package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/cluster/clustertest"
	"github.com/firesandbox/firesandbox/internal/testutil"
	"github.com/firesandbox/firesandbox/internal/vmm/vmmproc"
)

// Several serves on one machine, each with its own data directory, run
// directory and port: none touches another's VMs, disks or sockets.

// plantVM leaves what a VM of owner pid leaves in a run directory: its
// owner record, its run directory with the VMM's record, and its RAM
// file (elsewhere, named by the record).
func plantVM(t *testing.T, runDir, id string, pid int) (dir, ram string) {
	t.Helper()
	os.MkdirAll(filepath.Join(runDir, "owners"), 0o700)
	if err := os.WriteFile(filepath.Join(runDir, "owners", id), []byte(strconv.Itoa(pid)), 0o600); err != nil {
		t.Fatal(err)
	}
	dir = filepath.Join(runDir, id)
	os.MkdirAll(dir, 0o700)
	ram = filepath.Join(t.TempDir(), id+".ram")
	os.WriteFile(ram, []byte("x"), 0o600)
	if err := vmmproc.WriteRecord(dir, vmmproc.Record{PID: pid, Paths: []string{ram}}); err != nil {
		t.Fatal(err)
	}
	return dir, ram
}

// deadPID returns the pid of a process that has exited.
func deadPID(t *testing.T) int {
	t.Helper()
	c := exec.Command("true")
	if err := c.Run(); err != nil {
		t.Fatal(err)
	}
	return c.Process.Pid
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

func TestServesShareAMachine(t *testing.T) {
	bin := buildCLI(t)
	start := func(name, data, run string) *serveProc {
		s := &serveProc{t: t, bin: bin, name: name, data: data, run: run, addr: clustertest.FreeAddr(t), args: []string{"--pool", ""}}
		s.start()
		t.Cleanup(func() {
			if s.alive() {
				s.proc.Kill()
			}
		})
		return s
	}
	a := start("a", testutil.FakeDataDir(t, "python"), t.TempDir())
	b := start("b", testutil.FakeDataDir(t, "python"), t.TempDir())
	// A third serve of another data directory may share a's run
	// directory: its socket has its own name, its VMs their own ids.
	c := start("c", testutil.FakeDataDir(t, "python"), a.run)
	socks, _ := filepath.Glob(filepath.Join(a.run, "api*.sock"))
	if len(socks) != 2 {
		t.Fatalf("sockets in the shared run directory: %v; want one per serve", socks)
	}
	// Two serves of one data directory would each believe they own its VMs.
	cmd := exec.Command(bin, "--data-dir", a.data, "--run-dir", t.TempDir(), "serve", "--listen", clustertest.FreeAddr(t), "--pool", "")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "is in use by another firesandbox") {
		t.Fatalf("a second serve of a's data directory: %v %s; want it refused", err, out)
	}
	for _, s := range []*serveProc{a, b, c} {
		if code := call(t, "GET", s.url()+"/healthz", nil, nil); code != 200 {
			t.Fatalf("%s: %d", s.name, code)
		}
	}

	// What a killed a left behind is swept by the next a; live VMs of
	// the serves beside it, in its run directory or their own, stay.
	aDead, aRAM := plantVM(t, a.run, "vm-aaaaaaaaaa", deadPID(t))
	cLive, cRAM := plantVM(t, c.run, "vm-cccccccccc", c.proc.Cmd.Process.Pid)
	bLive, bRAM := plantVM(t, b.run, "vm-bbbbbbbbbb", b.proc.Cmd.Process.Pid)
	bDead, _ := plantVM(t, b.run, "vm-dddddddddd", deadPID(t))
	a.kill()
	a.start()
	if exists(aDead) || exists(aRAM) {
		t.Fatalf("a's restart left its dead VM's run directory (%v) or RAM file (%v)", exists(aDead), exists(aRAM))
	}
	if !exists(cLive) || !exists(cRAM) {
		t.Fatalf("a's sweep removed c's live VM from the run directory they share")
	}
	if !exists(bLive) || !exists(bRAM) || !exists(bDead) {
		t.Fatalf("a's sweep touched b's run directory: live %v ram %v dead %v", exists(bLive), exists(bRAM), exists(bDead))
	}
}

// The same with real VMs: a kill -9 of one serve takes its VMs with it
// and leaves the other's running.
func TestServesShareAMachineVMs(t *testing.T) {
	fx := testutil.RequireVMs(t)
	testutil.RequireQEMU(t)
	bin := buildCLI(t)
	var s []*serveProc
	for _, name := range []string{"a", "b"} {
		p := &serveProc{t: t, bin: bin, name: name, data: sharedDataDir(t, fx), run: t.TempDir(), addr: clustertest.FreeAddr(t),
			args: []string{"--pool", ""}, env: []string{"FIRESANDBOX_ACCEL=" + fx.Accel}}
		p.start()
		t.Cleanup(func() {
			if p.alive() {
				p.stop()
			}
		})
		s = append(s, p)
	}
	ids := make([]string, 2)
	for i, p := range s {
		var a apiAnswer
		if code := call(t, "POST", p.url()+"/v1/sandboxes", map[string]any{"language": "python"}, &a); code != 201 {
			t.Fatalf("create on %s: %d %+v", p.name, code, a)
		}
		ids[i] = a.ID
		mustExec(t, p.url(), a.ID, "echo "+p.name+" > who; cat who", p.name+"\n")
		if n := p.vms(); n != 1 {
			t.Fatalf("%s runs %d QEMUs, want 1", p.name, n)
		}
	}
	s[0].kill()
	waitFor(t, 10*time.Second, "a's QEMU gone with it", func() bool { return s[0].vms() == 0 })
	if n := s[1].vms(); n != 1 {
		t.Fatalf("b runs %d QEMUs after a was killed", n)
	}
	mustExec(t, s[1].url(), ids[1], "cat who", "b\n")
	s[0].start()
	a, code := execIn(t, s[0].url(), ids[0], "true")
	if code != 409 || a.Code != "sandbox_lost" {
		t.Fatalf("a's sandbox after its kill -9: %d %+v", code, a)
	}
	mustExec(t, s[1].url(), ids[1], "cat who", "b\n")
	if leftovers, _ := filepath.Glob(filepath.Join(s[0].run, "vm-*")); len(leftovers) != 0 {
		t.Fatalf("a's restart left VM run directories: %v", leftovers)
	}
}
