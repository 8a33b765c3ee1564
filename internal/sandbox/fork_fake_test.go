package sandbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/state"
	"github.com/firesandbox/firesandbox/internal/testutil"
	"github.com/firesandbox/firesandbox/internal/vmm"
	"github.com/firesandbox/firesandbox/internal/vmm/vmmfake"
)

// diskExec gives the fake guest commands on its writable disk, the host
// file the VM was given as "upper" (the fake keeps files in memory, so
// these are what shows whose disk a VM has):
//
//	dwrite TEXT   write TEXT at the start of the disk
//	dread         print what dwrite left there
//	identity      print the identity the last Resync set
//	echo ARGS...  print ARGS
func diskExec(ctx context.Context, g *vmmfake.Guest, req agentproto.ExecRequest, stdout, stderr io.Writer) agentproto.ExitResult {
	upper := ""
	for _, d := range g.Machine().Config().Disks {
		if d.ID == "upper" {
			upper = d.Path
		}
	}
	fail := func(msg string) agentproto.ExitResult {
		fmt.Fprintln(stderr, msg)
		return agentproto.ExitResult{Code: 1, Status: agentproto.StatusRuntimeError}
	}
	switch req.Argv[0] {
	case "dwrite", "dread":
		if upper == "" {
			return fail("no disk")
		}
		f, err := os.OpenFile(upper, os.O_RDWR, 0)
		if err != nil {
			return fail(err.Error())
		}
		defer f.Close()
		if req.Argv[0] == "dwrite" {
			if _, err := f.WriteAt(append([]byte(strings.Join(req.Argv[1:], " ")), 0), 0); err != nil {
				return fail(err.Error())
			}
			return agentproto.ExitResult{}
		}
		b := make([]byte, 256)
		f.ReadAt(b, 0)
		b, _, _ = bytes.Cut(b, []byte{0})
		stdout.Write(b)
	case "dpath":
		fmt.Fprint(stdout, upper)
	case "identity":
		fmt.Fprint(stdout, g.Identity())
	case "echo":
		fmt.Fprint(stdout, strings.Join(req.Argv[1:], " "))
	default:
		return fail(req.Argv[0] + ": not found")
	}
	return agentproto.ExitResult{}
}

// diskSandboxes is fakeSandboxes with diskExec and the given config.
func diskSandboxes(t *testing.T, cfg ServiceConfig) (*Service, *vmmfake.Driver) {
	t.Helper()
	d := vmmfake.New()
	d.Exec = diskExec
	m, err := New(Config{DataDir: testutil.FakeDataDir(t, "python"), RunDir: t.TempDir()}, WithDriver(d))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := OpenService(m, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		svc.Close(context.Background())
		if live := d.Live(); len(live) != 0 {
			t.Errorf("%d machines still running after the test", len(live))
		}
	})
	return svc, d
}

func writeFile(t *testing.T, s *Sandboxes, id, name, content string) {
	t.Helper()
	if err := s.WriteFiles(context.Background(), "", id, []agentproto.File{{Path: name, Content: []byte(content)}}); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, s *Sandboxes, id, name string) string {
	t.Helper()
	b, err := s.ReadFile(context.Background(), "", id, name, 1<<20)
	if err != nil {
		t.Fatalf("read %s in %s: %v", name, id, err)
	}
	return string(b)
}

// Disk-backed sandboxes restore from their shape's snapshot (one boot for
// all of them), each with its own copy of the pristine disk.
func TestDiskSandboxesRestoreWithOwnDisks(t *testing.T) {
	svc, d := diskSandboxes(t, ServiceConfig{})
	s := svc.Sandboxes
	ctx := context.Background()
	var ids []string
	for range 3 {
		sb, err := s.Create(ctx, CreateRequest{Language: "python", DiskMiB: 64})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, sb.ID)
	}
	if d.Boots.Load() != 1 || d.Restores.Load() != 3 {
		t.Fatalf("%d boots and %d restores for 3 disk sandboxes; want 1 boot (the snapshot) and 3 restores", d.Boots.Load(), d.Restores.Load())
	}
	// Another disk size is another shape: its own snapshot.
	if _, err := s.Create(ctx, CreateRequest{Language: "python", DiskMiB: 128}); err != nil {
		t.Fatal(err)
	}
	if d.Boots.Load() != 2 {
		t.Fatalf("a second disk size did not get its own snapshot (%d boots)", d.Boots.Load())
	}
	snaps, _ := svc.Manager.Snapshots().List()
	withDisk := 0
	for _, sn := range snaps {
		if _, ok := sn.Files[snapshotDisk]; ok {
			withDisk++
		}
	}
	if withDisk != 2 {
		t.Fatalf("%d of %d snapshots hold a pristine disk, want 2", withDisk, len(snaps))
	}
	for i, id := range ids {
		if !svc.Manager.layers.Exists(s.diskOf(id)) {
			t.Fatalf("sandbox %d has no disk of its own", i)
		}
		execOut(t, s, "", id, "dwrite", "written by "+id)
	}
	for _, id := range ids {
		if got := execOut(t, s, "", id, "dread"); got != "written by "+id {
			t.Fatalf("sandbox %s reads %q from its disk: sandboxes share a disk", id, got)
		}
	}
	// The disk goes with the sandbox, and nothing else stays behind.
	for _, id := range ids {
		if err := s.Delete(ctx, "", id); err != nil {
			t.Fatal(err)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(svc.Manager.disksDir(), "*")); len(left) != 0 {
		t.Fatalf("disks left: %v", left)
	}
}

func TestForkCopiesARunningSandbox(t *testing.T) {
	svc, d := diskSandboxes(t, ServiceConfig{})
	s := svc.Sandboxes
	ctx := context.Background()
	parent, err := s.Create(ctx, CreateRequest{Language: "python", DiskMiB: 64,
		Metadata: map[string]string{"team": "a"}, Env: map[string]string{"K": "v"}})
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, s, parent.ID, "held.txt", "in memory") // what a process would hold
	execOut(t, s, "", parent.ID, "dwrite", "parent's disk")
	parentIdentity := execOut(t, s, "", parent.ID, "identity")

	kids, err := s.Fork(ctx, "", parent.ID, ForkRequest{Count: 3})
	if err != nil {
		t.Fatal(err)
	}
	if len(kids) != 3 {
		t.Fatalf("%d children, want 3", len(kids))
	}
	mustState(t, s, parent.ID, state.Running)
	seen := map[string]bool{parentIdentity: true}
	for _, k := range kids {
		if k.State != state.Running || k.Parent != parent.ID || k.Metadata["team"] != "a" || k.Env["K"] != "v" || k.ID == parent.ID {
			t.Fatalf("child %+v", k)
		}
		if got := readFile(t, s, k.ID, "held.txt"); got != "in memory" {
			t.Fatalf("child's memory: %q", got)
		}
		if got := execOut(t, s, "", k.ID, "dread"); got != "parent's disk" {
			t.Fatalf("child's disk: %q", got)
		}
		id := execOut(t, s, "", k.ID, "identity")
		if seen[id] {
			t.Fatalf("identity %q shared by two sandboxes after a fork", id)
		}
		seen[id] = true
	}
	if got := execOut(t, s, "", parent.ID, "identity"); got != parentIdentity {
		t.Fatalf("the fork changed the parent's identity: %q -> %q", parentIdentity, got)
	}
	// After the fork they are separate sandboxes.
	execOut(t, s, "", parent.ID, "dwrite", "parent after")
	execOut(t, s, "", kids[0].ID, "dwrite", "child after")
	writeFile(t, s, kids[1].ID, "held.txt", "child's own")
	if got := execOut(t, s, "", kids[1].ID, "dread"); got != "parent's disk" {
		t.Fatalf("a child sees another's or the parent's later write: %q", got)
	}
	if got := execOut(t, s, "", parent.ID, "dread"); got != "parent after" {
		t.Fatalf("parent reads %q", got)
	}
	if got := readFile(t, s, parent.ID, "held.txt"); got != "in memory" {
		t.Fatalf("a child's write reached the parent: %q", got)
	}
	// The saved parent is gone once the children run.
	if left, _ := filepath.Glob(filepath.Join(s.cfg.Dir, "."+forkDirPrefix+"*")); len(left) != 0 {
		t.Fatalf("fork leftovers: %v", left)
	}
	if d.Snapshots.Load() != 2 { // the template's and the fork's
		t.Fatalf("%d snapshots taken, want 2", d.Snapshots.Load())
	}
	// A child is a sandbox like any other: pause, resume, delete.
	if _, err := s.Pause(ctx, "", kids[2].ID); err != nil {
		t.Fatal(err)
	}
	if got := execOut(t, s, "", kids[2].ID, "dread"); got != "parent's disk" {
		t.Fatalf("child after pause and resume: %q", got)
	}
	if err := s.Delete(ctx, "", kids[2].ID); err != nil {
		t.Fatal(err)
	}
	mustState(t, s, parent.ID, state.Running)
}

func TestForkBoundsAndAllOrNothing(t *testing.T) {
	svc, d := diskSandboxes(t, ServiceConfig{MaxForks: 4})
	s := svc.Sandboxes
	ctx := context.Background()
	parent, err := s.Create(ctx, CreateRequest{Language: "python"})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{0, -1, 5} {
		if _, err := s.Fork(ctx, "", parent.ID, ForkRequest{Count: n}); !errors.Is(err, ErrBadRequest) {
			t.Fatalf("fork into %d: %v, want ErrBadRequest", n, err)
		}
	}
	if _, err := s.Fork(ctx, "other", parent.ID, ForkRequest{Count: 1}); !errors.Is(err, ErrNoSandbox) {
		t.Fatalf("fork by another tenant: %v", err)
	}
	// The third child fails to restore: none is kept.
	var restores atomic.Int64
	d.RestoreHook = func(context.Context, string, vmm.Config) error {
		if restores.Add(1) == 3 {
			return errors.New("restore exploded")
		}
		return nil
	}
	before := svc.Memory.Stats()
	if _, err := s.Fork(ctx, "", parent.ID, ForkRequest{Count: 4}); err == nil || !strings.Contains(err.Error(), "restore exploded") {
		t.Fatalf("fork with a failing child: %v", err)
	}
	d.RestoreHook = nil
	if l, _ := s.List(ctx, "", ListFilter{}); len(l) != 1 {
		t.Fatalf("%d sandboxes after a failed fork, want only the parent", len(l))
	}
	if after := svc.Memory.Stats(); after.UsedMiB != before.UsedMiB || after.Live != 1 {
		t.Fatalf("a failed fork kept memory: %+v -> %+v", before, after)
	}
	mustState(t, s, parent.ID, state.Running)
	if len(d.Live()) != 1 {
		t.Fatalf("%d VMs after a failed fork, want the parent's", len(d.Live()))
	}

	// Saving the parent fails, its VM still up: it runs on.
	d.SnapshotHook = func(context.Context, *vmmfake.Machine, string) error { return errors.New("disk full") }
	if _, err := s.Fork(ctx, "", parent.ID, ForkRequest{Count: 1}); err == nil {
		t.Fatal("fork with a failing snapshot succeeded")
	}
	d.SnapshotHook = nil
	mustState(t, s, parent.ID, state.Running)
	execOut(t, s, "", parent.ID, "echo", "alive")

	// A paused parent is resumed, then forked.
	if _, err := s.Pause(ctx, "", parent.ID); err != nil {
		t.Fatal(err)
	}
	kids, err := s.Fork(ctx, "", parent.ID, ForkRequest{Count: 1})
	if err != nil {
		t.Fatal(err)
	}
	mustState(t, s, parent.ID, state.Running)
	mustState(t, s, kids[0].ID, state.Running)
}

// A fork refused because the host changed since the parent started
// leaves the parent running, untouched; so does a resume, which leaves the
// paused sandbox paused with its data.
func TestForkAndResumeRefusedForAChangedKernel(t *testing.T) {
	svc, d := diskSandboxes(t, ServiceConfig{})
	s := svc.Sandboxes
	ctx := context.Background()
	running, err := s.Create(ctx, CreateRequest{Language: "python", DiskMiB: 64})
	if err != nil {
		t.Fatal(err)
	}
	paused, err := s.Create(ctx, CreateRequest{Language: "python", DiskMiB: 64})
	if err != nil {
		t.Fatal(err)
	}
	execOut(t, s, "", paused.ID, "dwrite", "kept")
	writeFile(t, s, paused.ID, "mem.txt", "kept too")
	if _, err := s.Pause(ctx, "", paused.ID); err != nil {
		t.Fatal(err)
	}
	// `kernel prepare` installs another kernel.
	k := filepath.Join(svc.Manager.Config().DataDir, "kernels", "fake-1", "manifest.json")
	orig, _ := os.ReadFile(k)
	time.Sleep(10 * time.Millisecond)
	os.WriteFile(k, bytes.Replace(orig, []byte(`"aa"`), []byte(`"cc"`), 1), 0o644)
	snaps := d.Snapshots.Load()

	_, err = s.Fork(ctx, "", running.ID, ForkRequest{Count: 2})
	if !errors.Is(err, vmm.ErrIncompatible) || !strings.Contains(err.Error(), "kernel") {
		t.Fatalf("fork after a kernel change: %v", err)
	}
	if d.Snapshots.Load() != snaps {
		t.Fatal("a refused fork paused and saved the parent")
	}
	mustState(t, s, running.ID, state.Running)
	execOut(t, s, "", running.ID, "echo", "still here")

	_, err = s.Resume(ctx, "", paused.ID, 0)
	if !errors.Is(err, vmm.ErrIncompatible) || !strings.Contains(err.Error(), "kernel") {
		t.Fatalf("resume after a kernel change: %v", err)
	}
	_, err = s.Exec(ctx, "", paused.ID, agentproto.ExecRequest{Argv: []string{"dread"}}, nil, nil)
	if !errors.Is(err, vmm.ErrIncompatible) {
		t.Fatalf("exec (auto-resume) after a kernel change: %v", err)
	}
	hib := mustState(t, s, paused.ID, state.Hibernated)
	if !snapshotComplete(hib.SnapshotDir) {
		t.Fatal("a refused resume lost the hibernation")
	}
	// The old kernel comes back: everything is there.
	time.Sleep(10 * time.Millisecond)
	os.WriteFile(k, orig, 0o644)
	if got := execOut(t, s, "", paused.ID, "dread"); got != "kept" {
		t.Fatalf("disk after the refused resume: %q", got)
	}
	if got := readFile(t, s, paused.ID, "mem.txt"); got != "kept too" {
		t.Fatalf("memory after the refused resume: %q", got)
	}
	if _, err := s.Fork(ctx, "", running.ID, ForkRequest{Count: 1}); err != nil {
		t.Fatalf("fork once the kernel is back: %v", err)
	}
}

// Twenty pauses and resumes with writes between them, some resumes
// explicit and some by the next call, and a restart of serve in the
// middle (as by kill -9): nothing is lost.
func TestManyPauseResumeCyclesLoseNothing(t *testing.T) {
	svc, d := diskSandboxes(t, ServiceConfig{})
	s := svc.Sandboxes
	ctx := context.Background()
	sb, err := s.Create(ctx, CreateRequest{Language: "python", DiskMiB: 64})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		writeFile(t, s, sb.ID, fmt.Sprintf("f%d.txt", i), fmt.Sprintf("cycle %d", i))
		execOut(t, s, "", sb.ID, "dwrite", fmt.Sprintf("disk %d", i))
		if _, err := s.Pause(ctx, "", sb.ID); err != nil {
			t.Fatalf("pause %d: %v", i, err)
		}
		if i == 10 {
			svc = reopen(t, svc, d)
			s = svc.Sandboxes
		}
		if i%2 == 0 {
			if _, err := s.Resume(ctx, "", sb.ID, 0); err != nil {
				t.Fatalf("resume %d: %v", i, err)
			}
		}
		for j := 0; j <= i; j++ {
			if got := readFile(t, s, sb.ID, fmt.Sprintf("f%d.txt", j)); got != fmt.Sprintf("cycle %d", j) {
				t.Fatalf("after %d cycles, file %d reads %q", i+1, j, got)
			}
		}
		if got := execOut(t, s, "", sb.ID, "dread"); got != fmt.Sprintf("disk %d", i) {
			t.Fatalf("after %d cycles the disk reads %q", i+1, got)
		}
	}
}

func TestLifetimes(t *testing.T) {
	svc, _ := diskSandboxes(t, ServiceConfig{MaxSandboxTimeout: time.Hour})
	s := svc.Sandboxes
	ctx := context.Background()
	start := time.Now()
	sb, err := s.Create(ctx, CreateRequest{Language: "python"})
	if err != nil {
		t.Fatal(err)
	}
	if d := sb.ExpiresAt.Sub(start); d < DefaultTimeout-time.Second || d > DefaultTimeout+time.Minute {
		t.Fatalf("default lifetime %s, want %s", d, DefaultTimeout)
	}
	if _, err := s.Create(ctx, CreateRequest{Language: "python", Timeout: 2 * time.Hour}); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("a lifetime over the maximum: %v", err)
	}
	if _, err := s.SetTimeout(ctx, "", sb.ID, 2*time.Hour); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("a timeout over the maximum: %v", err)
	}
	got, err := s.SetTimeout(ctx, "", sb.ID, 30*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if d := got.ExpiresAt.Sub(start); d < 29*time.Minute || d > 31*time.Minute {
		t.Fatalf("new end %s from now", d)
	}
	// A pause stops the clock; a resume starts a new one.
	p, err := s.Pause(ctx, "", sb.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !p.ExpiresAt.IsZero() {
		t.Fatal("a paused sandbox keeps running out of time")
	}
	s.endLifetimes(time.Now().Add(48 * time.Hour))
	mustState(t, s, sb.ID, state.Hibernated)
	r, err := s.Resume(ctx, "", sb.ID, 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Until(r.ExpiresAt); d < 9*time.Minute || d > 11*time.Minute {
		t.Fatalf("lifetime after resume: %s", d)
	}
	// At its end: killed, or paused (and then resumed by the next call).
	pause, _ := s.Create(ctx, CreateRequest{Language: "python", OnTimeout: OnTimeoutPause, Timeout: time.Minute})
	s.endLifetimes(time.Now().Add(20 * time.Minute))
	mustState(t, s, sb.ID, state.Deleted)
	mustState(t, s, pause.ID, state.Hibernated)
	execOut(t, s, "", pause.ID, "echo", "back")
	back := mustState(t, s, pause.ID, state.Running)
	if back.ExpiresAt.IsZero() {
		t.Fatal("a sandbox resumed by a call has no lifetime")
	}
}

// Live sandboxes are admitted by memory, not by work slots: with 2 slots,
// 16 sandboxes live at once and each runs commands; past the budget the
// error says so; a paused sandbox gives its memory back.
func TestMemoryAdmission(t *testing.T) {
	const n = 16
	svc, _ := diskSandboxes(t, ServiceConfig{MaxVMs: 2, MemoryBudgetMiB: n * vmCost(512)})
	s := svc.Sandboxes
	ctx := context.Background()
	var ids []string
	for i := range n {
		sb, err := s.Create(ctx, CreateRequest{Language: "python"})
		if err != nil {
			t.Fatalf("sandbox %d: %v", i, err)
		}
		ids = append(ids, sb.ID)
	}
	for _, id := range ids {
		execOut(t, s, "", id, "echo", "hi")
	}
	_, err := s.Create(ctx, CreateRequest{Language: "python"})
	if !errors.Is(err, ErrMemoryBudget) || !strings.Contains(err.Error(), "16 live sandboxes") {
		t.Fatalf("create past the budget: %v", err)
	}
	if _, err := s.Fork(ctx, "", ids[0], ForkRequest{Count: 1}); !errors.Is(err, ErrMemoryBudget) {
		t.Fatalf("fork past the budget: %v", err)
	}
	mustState(t, s, ids[0], state.Running)
	if _, err := s.Pause(ctx, "", ids[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(ctx, CreateRequest{Language: "python"}); err != nil {
		t.Fatalf("create after a pause freed memory: %v", err)
	}
	// Now the paused one cannot come back until something goes.
	if _, err := s.Resume(ctx, "", ids[0], 0); !errors.Is(err, ErrMemoryBudget) {
		t.Fatalf("resume past the budget: %v", err)
	}
	mustState(t, s, ids[0], state.Hibernated)
	if err := s.Delete(ctx, "", ids[1]); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Resume(ctx, "", ids[0], 0); err != nil {
		t.Fatalf("resume after a delete freed memory: %v", err)
	}
	if st := svc.Memory.Stats(); st.Live != n {
		t.Fatalf("%d live sandboxes counted, want %d", st.Live, n)
	}
}

// On this kind of host (24 GiB, 2 CPUs) the default budget holds the
// issue's 16 sandboxes of 512 MiB besides a run per work slot.
func TestDefaultMemoryBudget(t *testing.T) {
	b := defaultMemoryBudget(24*1024, 2, 0, 512)
	if fit := b / vmCost(512); fit < 16 {
		t.Fatalf("default budget %d MiB holds %d sandboxes, want at least 16", b, fit)
	}
	if b := defaultMemoryBudget(2048, 2, 0, 512); b < 0 || b > 1024 {
		t.Fatalf("a small host's budget %d MiB", b)
	}
}
