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
	"sync"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/testutil"
	"github.com/firesandbox/firesandbox/internal/vmm"
	"github.com/firesandbox/firesandbox/internal/vmm/vmmfake"
)

// fakeManager is a Manager over a fake driver and a fake data directory:
// the lifecycle logic, without VMs.
func fakeManager(t *testing.T) (*Manager, *vmmfake.Driver) {
	t.Helper()
	d := vmmfake.New()
	// Programs "run" by printing their argv and files, so a test sees
	// what the Manager asked for.
	d.Exec = func(ctx context.Context, g *vmmfake.Guest, req agentproto.ExecRequest, stdout, stderr io.Writer) agentproto.ExitResult {
		fmt.Fprintf(stdout, "argv=%s dir=%s identity=%s\n", strings.Join(req.Argv, " "), req.Dir, g.Identity())
		return agentproto.ExitResult{}
	}
	m, err := New(Config{DataDir: testutil.FakeDataDir(t, "python", "bash"), RunDir: t.TempDir()}, WithDriver(d))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		m.Close()
		if live := d.Live(); len(live) != 0 {
			t.Errorf("%d machines still running after the test", len(live))
		}
	})
	return m, d
}

func entry(t *testing.T, m *Manager, lang string) *image.Entry {
	t.Helper()
	e, err := m.catalog.Lookup(lang, "")
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestManagerRestoresAfterOneSnapshot(t *testing.T) {
	m, d := fakeManager(t)
	ctx := context.Background()
	e := entry(t, m, "python")

	for i := 0; i < 3; i++ {
		vm, err := m.Acquire(ctx, e, false)
		if err != nil {
			t.Fatal(err)
		}
		if !vm.Restored || vm.Agent == nil {
			t.Fatalf("acquire %d: restored=%v", i, vm.Restored)
		}
		vm.Close()
	}
	if d.Boots.Load() != 1 || d.Snapshots.Load() != 1 || d.Restores.Load() != 3 {
		t.Fatalf("boots %d snapshots %d restores %d; want 1, 1, 3", d.Boots.Load(), d.Snapshots.Load(), d.Restores.Load())
	}
	if m.tmpl.resolves != 1 {
		t.Fatalf("template resolved %d times for 3 runs; want once", m.tmpl.resolves)
	}

	vm, err := m.Acquire(ctx, e, true /* cold */)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	if vm.Restored || d.Boots.Load() != 2 {
		t.Fatalf("cold acquire restored=%v boots=%d", vm.Restored, d.Boots.Load())
	}
}

func TestConcurrentFirstRunsMakeOneSnapshot(t *testing.T) {
	m, d := fakeManager(t)
	e := entry(t, m, "python")
	const n = 8
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out bytes.Buffer
			res, err := m.Run(context.Background(), RunRequest{Language: "python",
				Files: []agentproto.File{{Content: []byte("print(1)")}}}, Streams{Stdout: &out})
			if err == nil && (res.Run == nil || res.Run.Code != 0 || !strings.Contains(out.String(), "python3")) {
				err = fmt.Errorf("run: %+v %q", res.Run, out.String())
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := m.snapshotsMade.Load(); got != 1 {
		t.Fatalf("%d concurrent first runs made %d snapshots; want 1", n, got)
	}
	if d.Restores.Load() != n {
		t.Fatalf("restores %d, want %d", d.Restores.Load(), n)
	}
	_ = e
}

func TestCorruptSnapshotIsRebuilt(t *testing.T) {
	m, d := fakeManager(t)
	ctx := context.Background()
	e := entry(t, m, "python")
	vm, err := m.Acquire(ctx, e, false)
	if err != nil {
		t.Fatal(err)
	}
	vm.Close()
	list, err := m.snapshots.List()
	if err != nil || len(list) != 1 {
		t.Fatalf("snapshots: %v %v", list, err)
	}
	mem := filepath.Join(list[0].Dir, vmm.SnapshotMemoryFile)
	if err := os.WriteFile(mem, []byte(`{"/evil":"AA=="}`), 0o600); err != nil {
		t.Fatal(err)
	}
	vm, err = m.Acquire(ctx, e, false)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	if _, evil := vm.Machine.(*vmmfake.Machine).Files()["/evil"]; evil {
		t.Fatal("a corrupt snapshot was restored")
	}
	if m.snapshotsMade.Load() != 2 || d.Snapshots.Load() != 2 {
		t.Fatalf("snapshots made %d; want the corrupt one rebuilt", m.snapshotsMade.Load())
	}
}

func TestRestoreFailureFallsBackToColdBoot(t *testing.T) {
	m, d := fakeManager(t)
	d.RestoreHook = func(context.Context, string, vmm.Config) error { return errors.New("restore exploded") }
	vm, err := m.Acquire(context.Background(), entry(t, m, "python"), false)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	if vm.Restored || d.Boots.Load() != 2 { // one for the snapshot, one for the fallback
		t.Fatalf("restored=%v boots=%d", vm.Restored, d.Boots.Load())
	}
}

func TestBootFailureLeavesNothing(t *testing.T) {
	m, d := fakeManager(t)
	d.BootHook = func(context.Context, vmm.Config) error { return errors.New("no memory") }
	if _, err := m.Acquire(context.Background(), entry(t, m, "python"), true); err == nil || !strings.Contains(err.Error(), "no memory") {
		t.Fatalf("boot failure: %v", err)
	}
	owners, _ := filepath.Glob(filepath.Join(m.cfg.RunDir, "owners", "*"))
	if len(owners) != 0 {
		t.Fatalf("owner files left: %v", owners)
	}
}

func TestTemplateFollowsItsInputs(t *testing.T) {
	m, _ := fakeManager(t)
	ctx := context.Background()
	e := entry(t, m, "python")
	t1, err := m.Template(ctx, e, Shape{})
	if err != nil {
		t.Fatal(err)
	}
	if t2, _ := m.Template(ctx, e, Shape{}); t2 != t1 {
		t.Fatal("an unchanged template was resolved again")
	}
	if t3, _ := m.Template(ctx, e, Shape{MemoryMiB: 1024}); t3 == t1 || t3.Spec.Key() == t1.Spec.Key() {
		t.Fatal("another shape shares a template or snapshot key")
	}
	// A new kernel (kernel prepare rewrites its manifest) invalidates it.
	k := filepath.Join(t1.Kernel.Dir, "manifest.json")
	b, _ := os.ReadFile(k)
	b = bytes.Replace(b, []byte(`"aa"`), []byte(`"cc"`), 1)
	time.Sleep(10 * time.Millisecond) // a different mtime on coarse clocks
	if err := os.WriteFile(k, b, 0o644); err != nil {
		t.Fatal(err)
	}
	t4, err := m.Template(ctx, e, Shape{})
	if err != nil {
		t.Fatal(err)
	}
	if t4 == t1 || t4.Spec.KernelID == t1.Spec.KernelID {
		t.Fatalf("template not resolved again after a kernel change (kernel %s)", t4.Spec.KernelID)
	}
}

func TestHibernateResumeRefusesAChangedHost(t *testing.T) {
	m, d := fakeManager(t)
	ctx := context.Background()
	e := entry(t, m, "python")
	vm, err := m.Acquire(ctx, e, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.Agent.WriteFiles(ctx, WorkDir, []agentproto.File{{Path: "keep.txt", Content: []byte("kept")}}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := m.Hibernate(ctx, vm, dir); err != nil {
		t.Fatal(err)
	}
	// The VMM is upgraded: the next Manager sees another version.
	d.VersionValue = "2.0"
	m2, err := New(m.cfg, WithDriver(d))
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	t2, err := m2.Template(ctx, e, Shape{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = m2.Resume(ctx, t2, dir, "")
	if !errors.Is(err, vmm.ErrIncompatible) || !strings.Contains(err.Error(), "driver version 1.0 -> 2.0") {
		t.Fatalf("resume after an upgrade: %v", err)
	}
	// Nothing was lost: the old version resumes it, files and all.
	d.VersionValue = "1.0"
	t1, err := m.Template(ctx, e, Shape{})
	if err != nil {
		t.Fatal(err)
	}
	back, err := m.Resume(ctx, t1, dir, "")
	if err != nil {
		t.Fatal(err)
	}
	defer back.Close()
	got, err := back.Agent.ReadFile(ctx, WorkDir+"/keep.txt", 100)
	if err != nil || string(got) != "kept" {
		t.Fatalf("after resume: %q %v", got, err)
	}
}
