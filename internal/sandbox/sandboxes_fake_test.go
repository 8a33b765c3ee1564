package sandbox

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/state"
	"github.com/firesandbox/firesandbox/internal/testutil"
	"github.com/firesandbox/firesandbox/internal/vmm"
	"github.com/firesandbox/firesandbox/internal/vmm/vmmfake"
)

// fakeSandboxes is a Service over the fake driver: the whole sandbox
// lifecycle, persisted in a real SQLite database, without VMs.
func fakeSandboxes(t *testing.T) (*Service, *vmmfake.Driver) {
	t.Helper()
	d := vmmfake.New()
	m, err := New(Config{DataDir: testutil.FakeDataDir(t, "python"), RunDir: t.TempDir()}, WithDriver(d))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := OpenService(m, ServiceConfig{MaxVMs: 4}, nil)
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

// reopen is a restart of serve: the old Service is dropped without Close
// (as by kill -9: its VMs die with it) and a new one opens the same state.
func reopen(t *testing.T, svc *Service, d *vmmfake.Driver) *Service {
	t.Helper()
	svc.Sandboxes.mu.Lock()
	svc.Sandboxes.closed = true
	svc.Sandboxes.mu.Unlock()
	close(svc.Sandboxes.stop)
	svc.Sandboxes.wg.Wait()
	for _, m := range d.Live() {
		m.Crash()
	}
	svc.DB.Close()
	m, err := New(svc.Manager.cfg, WithDriver(d))
	if err != nil {
		t.Fatal(err)
	}
	svc2, err := OpenService(m, ServiceConfig{MaxVMs: 4}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc2.Close(context.Background()) })
	return svc2
}

func execOut(t *testing.T, s *Sandboxes, tenant, id string, argv ...string) string {
	t.Helper()
	var out bytes.Buffer
	res, err := s.Exec(context.Background(), tenant, id, agentproto.ExecRequest{Argv: argv}, &out, nil)
	if err != nil {
		t.Fatalf("exec %v: %v", argv, err)
	}
	if res.Code != 0 {
		t.Fatalf("exec %v: %+v", argv, res)
	}
	return out.String()
}

func mustState(t *testing.T, s *Sandboxes, id string, want state.State) state.Sandbox {
	t.Helper()
	sb, err := s.db.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if sb.State != want {
		t.Fatalf("sandbox %s is %s (%s), want %s", id, sb.State, sb.Reason, want)
	}
	return sb
}

func TestSandboxLifecycle(t *testing.T) {
	svc, d := fakeSandboxes(t)
	s := svc.Sandboxes
	ctx := context.Background()
	sb, err := s.Create(ctx, CreateRequest{Language: "python", Env: map[string]string{"GREETING": "hi"},
		Metadata: map[string]string{"owner": "test"}})
	if err != nil {
		t.Fatal(err)
	}
	mustState(t, s, sb.ID, state.Running)
	execOut(t, s, "", sb.ID, "write", "notes.txt", "kept across hibernation")
	if got := execOut(t, s, "", sb.ID, "env"); !strings.Contains(got, "GREETING=hi") {
		t.Fatalf("sandbox env not applied: %q", got)
	}

	if _, err := s.Hibernate(ctx, "", sb.ID); err != nil {
		t.Fatal(err)
	}
	hib := mustState(t, s, sb.ID, state.Hibernated)
	if hib.Generation != 1 || !snapshotComplete(hib.SnapshotDir) {
		t.Fatalf("hibernated record %+v", hib)
	}
	if len(d.Live()) != 0 {
		t.Fatal("a hibernated sandbox still has a VM")
	}
	// The next exec resumes it, files intact.
	if got := execOut(t, s, "", sb.ID, "cat", "notes.txt"); got != "kept across hibernation" {
		t.Fatalf("after resume: %q", got)
	}
	run := mustState(t, s, sb.ID, state.Running)
	if run.SnapshotDir != "" {
		t.Fatalf("running record still points at a snapshot: %+v", run)
	}
	if _, err := os.Stat(hib.SnapshotDir); !os.IsNotExist(err) {
		t.Fatal("the used hibernation was not removed after resume")
	}
	// Metadata filters.
	if l, _ := s.List(ctx, "", ListFilter{Metadata: map[string]string{"owner": "test"}}); len(l) != 1 {
		t.Fatalf("metadata filter: %d sandboxes", len(l))
	}
	if l, _ := s.List(ctx, "", ListFilter{Metadata: map[string]string{"owner": "else"}}); len(l) != 0 {
		t.Fatalf("metadata filter matched a different value: %d", len(l))
	}

	if err := s.Delete(ctx, "", sb.ID); err != nil {
		t.Fatal(err)
	}
	mustState(t, s, sb.ID, state.Deleted)
	if _, err := os.Stat(s.dirOf(sb.ID)); !os.IsNotExist(err) {
		t.Fatal("deleted sandbox's directory remains")
	}
	if _, err := s.Exec(ctx, "", sb.ID, agentproto.ExecRequest{Argv: []string{"echo"}}, nil, nil); !errors.Is(err, ErrSandboxDeleted) {
		t.Fatalf("exec after delete: %v", err)
	}
}

func TestSandboxesAreTenants(t *testing.T) {
	svc, _ := fakeSandboxes(t)
	s := svc.Sandboxes
	ctx := context.Background()
	sb, err := s.Create(ctx, CreateRequest{Tenant: "acme", Language: "python"})
	if err != nil {
		t.Fatal(err)
	}
	for name, err := range map[string]error{
		"get": func() error { _, err := s.Get(ctx, "other", sb.ID); return err }(),
		"exec": func() error {
			_, err := s.Exec(ctx, "other", sb.ID, agentproto.ExecRequest{Argv: []string{"echo"}}, nil, nil)
			return err
		}(),
		"pause":  func() error { _, err := s.Hibernate(ctx, "other", sb.ID); return err }(),
		"delete": s.Delete(ctx, "other", sb.ID),
	} {
		if !errors.Is(err, ErrNoSandbox) {
			t.Errorf("%s by another tenant: %v, want ErrNoSandbox", name, err)
		}
	}
	if l, _ := s.List(ctx, "other", ListFilter{}); len(l) != 0 {
		t.Fatalf("another tenant lists %d sandboxes", len(l))
	}
	mustState(t, s, sb.ID, state.Running)
}

func TestHibernateFailureRollsBack(t *testing.T) {
	svc, d := fakeSandboxes(t)
	s := svc.Sandboxes
	ctx := context.Background()
	sb, err := s.Create(ctx, CreateRequest{Language: "python"})
	if err != nil {
		t.Fatal(err)
	}
	execOut(t, s, "", sb.ID, "write", "f", "still here")
	// The snapshot fails, the VM is still up: back to running.
	d.SnapshotHook = func(context.Context, *vmmfake.Machine, string) error { return errors.New("disk full") }
	if _, err := s.Hibernate(ctx, "", sb.ID); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("hibernate: %v", err)
	}
	mustState(t, s, sb.ID, state.Running)
	if got := execOut(t, s, "", sb.ID, "cat", "f"); got != "still here" {
		t.Fatalf("after the rollback: %q", got)
	}
	// The snapshot fails and takes the VM with it: lost, with a reason.
	d.SnapshotHook = func(_ context.Context, m *vmmfake.Machine, _ string) error {
		m.Crash()
		return errors.New("the VMM crashed")
	}
	if _, err := s.Hibernate(ctx, "", sb.ID); err == nil {
		t.Fatal("hibernate of a crashing VM succeeded")
	}
	lostSB := mustState(t, s, sb.ID, state.Lost)
	if !strings.Contains(lostSB.Reason, "VM is gone") {
		t.Fatalf("lost reason %q", lostSB.Reason)
	}
	if _, err := s.Exec(ctx, "", sb.ID, agentproto.ExecRequest{Argv: []string{"echo"}}, nil, nil); !errors.Is(err, ErrSandboxLost) {
		t.Fatalf("exec on a lost sandbox: %v", err)
	}
}

func TestResumeFailureKeepsItHibernated(t *testing.T) {
	svc, d := fakeSandboxes(t)
	s := svc.Sandboxes
	ctx := context.Background()
	sb, err := s.Create(ctx, CreateRequest{Language: "python"})
	if err != nil {
		t.Fatal(err)
	}
	execOut(t, s, "", sb.ID, "write", "f", "data")
	if _, err := s.Hibernate(ctx, "", sb.ID); err != nil {
		t.Fatal(err)
	}
	d.RestoreHook = func(context.Context, string, vmm.Config) error { return errors.New("restore exploded") }
	if _, err := s.Resume(ctx, "", sb.ID, 0); err == nil {
		t.Fatal("resume succeeded")
	}
	hib := mustState(t, s, sb.ID, state.Hibernated)
	if !snapshotComplete(hib.SnapshotDir) {
		t.Fatal("a failed resume lost the snapshot")
	}
	d.RestoreHook = nil
	if got := execOut(t, s, "", sb.ID, "cat", "f"); got != "data" {
		t.Fatalf("after a later resume: %q", got)
	}
}

func TestCreateFailureLeavesNoRecord(t *testing.T) {
	svc, d := fakeSandboxes(t)
	s := svc.Sandboxes
	d.BootHook = func(context.Context, vmm.Config) error { return errors.New("no kernel") }
	if _, err := s.Create(context.Background(), CreateRequest{Language: "python"}); err == nil {
		t.Fatal("create succeeded")
	}
	if l, _ := s.db.List(context.Background()); len(l) != 0 {
		t.Fatalf("a failed create left %d records", len(l))
	}
	if ents, _ := os.ReadDir(s.cfg.Dir); len(ents) != 0 {
		t.Fatalf("a failed create left %d directories", len(ents))
	}
}

func TestVMDeathMarksLost(t *testing.T) {
	svc, d := fakeSandboxes(t)
	s := svc.Sandboxes
	sb, err := s.Create(context.Background(), CreateRequest{Language: "python"})
	if err != nil {
		t.Fatal(err)
	}
	d.Live()[0].Crash()
	_, err = s.Exec(context.Background(), "", sb.ID, agentproto.ExecRequest{Argv: []string{"echo"}}, nil, nil)
	if !errors.Is(err, ErrSandboxLost) {
		t.Fatalf("exec on a dead VM: %v", err)
	}
	mustState(t, s, sb.ID, state.Lost)
}

func TestRestartReconciles(t *testing.T) {
	svc, d := fakeSandboxes(t)
	s := svc.Sandboxes
	ctx := context.Background()
	running, _ := s.Create(ctx, CreateRequest{Language: "python"})
	hib, _ := s.Create(ctx, CreateRequest{Language: "python"})
	execOut(t, s, "", hib.ID, "write", "f", "survives the restart")
	if _, err := s.Hibernate(ctx, "", hib.ID); err != nil {
		t.Fatal(err)
	}
	// A crash in the middle of a hibernation: the record says
	// hibernating, and a half-written snapshot lies there.
	mid, _ := s.Create(ctx, CreateRequest{Language: "python"})
	if err := s.db.Transition(ctx, mid.ID, state.Change{To: state.Hibernating}, state.Running); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(s.dirOf(mid.ID), snapshotDirName+".tmp"), 0o700)

	s2 := reopen(t, svc, d).Sandboxes
	lostRun := mustState(t, s2, running.ID, state.Lost)
	if !strings.Contains(lostRun.Reason, "memory is gone") {
		t.Fatalf("reason %q", lostRun.Reason)
	}
	mustState(t, s2, mid.ID, state.Lost)
	if _, err := os.Stat(s2.dirOf(mid.ID)); err != nil {
		t.Fatal("a lost sandbox's directory was removed: its data must stay until deleted")
	}
	if _, err := os.Stat(filepath.Join(s2.dirOf(mid.ID), snapshotDirName+".tmp")); !os.IsNotExist(err) {
		t.Fatal("half-written snapshot not swept")
	}
	mustState(t, s2, hib.ID, state.Hibernated)
	if got := execOut(t, s2, "", hib.ID, "cat", "f"); got != "survives the restart" {
		t.Fatalf("after restart: %q", got)
	}
}

func TestCloseHibernatesAndIdleAndExpiry(t *testing.T) {
	svc, d := fakeSandboxes(t)
	s := svc.Sandboxes
	ctx := context.Background()
	idle, _ := s.Create(ctx, CreateRequest{Language: "python", IdleTimeout: time.Minute})
	kill, _ := s.Create(ctx, CreateRequest{Language: "python", Timeout: time.Minute})
	pause, _ := s.Create(ctx, CreateRequest{Language: "python", Timeout: time.Minute, OnTimeout: OnTimeoutPause})
	keep, _ := s.Create(ctx, CreateRequest{Language: "python"})

	s.endLifetimes(time.Now()) // nothing is due
	for _, id := range []string{idle.ID, kill.ID, pause.ID, keep.ID} {
		mustState(t, s, id, state.Running)
	}
	s.endLifetimes(time.Now().Add(2 * time.Minute))
	mustState(t, s, idle.ID, state.Hibernated)
	mustState(t, s, kill.ID, state.Deleted)
	p := mustState(t, s, pause.ID, state.Hibernated)
	if !p.ExpiresAt.IsZero() {
		t.Fatal("a paused sandbox keeps its expiry: it would be paused again and again")
	}
	mustState(t, s, keep.ID, state.Running)

	if _, err := s.SetTimeout(ctx, "", keep.ID, time.Second); err != nil {
		t.Fatal(err)
	}
	s.endLifetimes(time.Now().Add(2 * time.Second))
	mustState(t, s, keep.ID, state.Deleted)

	again, _ := s.Create(ctx, CreateRequest{Language: "python"})
	if err := svc.Sandboxes.Close(ctx); err != nil {
		t.Fatal(err)
	}
	mustState(t, s, again.ID, state.Hibernated)
	if len(d.Live()) != 0 {
		t.Fatalf("%d VMs alive after Close", len(d.Live()))
	}
}

// Execs, hibernations and deletes racing on one sandbox never panic, never
// leave a VM behind, and end in a settled state.
func TestConcurrentOperations(t *testing.T) {
	svc, d := fakeSandboxes(t)
	s := svc.Sandboxes
	ctx := context.Background()
	sb, err := s.Create(ctx, CreateRequest{Language: "python"})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := 0; i < 6; i++ {
		wg.Add(3)
		go func() {
			defer wg.Done()
			s.Exec(ctx, "", sb.ID, agentproto.ExecRequest{Argv: []string{"sleep", "5"}}, nil, nil)
		}()
		go func() { defer wg.Done(); s.Hibernate(ctx, "", sb.ID) }()
		go func() { defer wg.Done(); s.Resume(ctx, "", sb.ID, 0) }()
	}
	wg.Wait()
	if err := s.Delete(ctx, "", sb.ID); err != nil {
		t.Fatal(err)
	}
	mustState(t, s, sb.ID, state.Deleted)
	if len(d.Live()) != 0 {
		t.Fatalf("%d VMs alive after delete", len(d.Live()))
	}
}
