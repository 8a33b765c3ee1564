package sandbox

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/snapshot"
)

// snapshotManager is a test Manager with its own snapshot store, so these
// tests neither depend on nor disturb the shared data directory's.
func snapshotManager(t *testing.T) *Manager {
	m, _ := newTestManager(t)
	m.snapshots = snapshot.NewStore(t.TempDir(), 0)
	return m
}

func runRestored(t *testing.T, m *Manager, code string) captured {
	t.Helper()
	c := runCode(t, m, code, agentproto.Limits{})
	if !c.res.Restored {
		t.Fatalf("run was not restored from a snapshot")
	}
	return c
}

func TestSnapshotRestoredRuns(t *testing.T) {
	m := snapshotManager(t)
	defer noLeftovers(t, m)
	e, _ := m.catalog.Lookup("python", "")

	// First use creates the snapshot, then restores from it.
	c := runRestored(t, m, "print(6*7)")
	if c.stdout != "42\n" {
		t.Fatalf("stdout %q stderr %q", c.stdout, c.stderr)
	}
	list, _ := m.snapshots.List()
	if len(list) != 1 {
		t.Fatalf("%d snapshots after first use, want 1", len(list))
	}
	created := list[0].Created

	t.Run("clones diverge and keep time", func(t *testing.T) {
		// Two VMs from one snapshot at once: each must work, with its own
		// randomness and the host's time, not the snapshot's.
		code := "import os, time\nprint(os.urandom(16).hex(), time.time())"
		var wg sync.WaitGroup
		outs := make([]captured, 2)
		for i := range outs {
			wg.Add(1)
			go func() { defer wg.Done(); outs[i] = runRestored(t, m, code) }()
		}
		wg.Wait()
		var rnd []string
		for _, o := range outs {
			f := strings.Fields(o.stdout)
			if len(f) != 2 {
				t.Fatalf("stdout %q stderr %q", o.stdout, o.stderr)
			}
			rnd = append(rnd, f[0])
			ts, _ := strconv.ParseFloat(f[1], 64)
			if skew := time.Since(time.Unix(0, int64(ts*1e9))); skew < -5*time.Second || skew > 60*time.Second {
				t.Errorf("guest clock off by %s: not resynced after restore", skew)
			}
		}
		if rnd[0] == rnd[1] {
			t.Fatalf("two clones produced the same random bytes %s", rnd[0])
		}
	})

	t.Run("corrupt memory is refused and rebuilt", func(t *testing.T) {
		f, err := os.OpenFile(filepath.Join(list[0].Dir, "memory"), os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteAt([]byte("corrupted!"), 1<<20)
		f.Close()
		c := runRestored(t, m, "print('still right')")
		if c.stdout != "still right\n" {
			t.Fatalf("stdout %q stderr %q", c.stdout, c.stderr)
		}
		list, _ := m.snapshots.List()
		if len(list) != 1 || !list[0].Created.After(created) {
			t.Fatalf("corrupt snapshot was not rebuilt: %+v", list)
		}
		created = list[0].Created
	})

	t.Run("manifest from another kernel is refused and rebuilt", func(t *testing.T) {
		list, _ := m.snapshots.List()
		mf := filepath.Join(list[0].Dir, "manifest.json")
		var raw map[string]any
		b, _ := os.ReadFile(mf)
		json.Unmarshal(b, &raw)
		raw["spec"].(map[string]any)["kernel_id"] = "some-other-kernel"
		b, _ = json.Marshal(raw)
		os.WriteFile(mf, b, 0o644)

		e, _ := m.catalog.Lookup("python", "")
		tmpl, err := m.Template(context.Background(), e, Shape{})
		if err != nil {
			t.Fatal(err)
		}
		spec := tmpl.Spec
		if _, err := m.snapshots.Get(spec); err == nil {
			t.Fatal("a manifest for another kernel was accepted")
		}
		c := runRestored(t, m, "print('rebuilt')")
		if c.stdout != "rebuilt\n" {
			t.Fatalf("stdout %q", c.stdout)
		}
		got, err := m.snapshots.Get(spec)
		if err != nil || got.Spec.KernelID != spec.KernelID || !got.Created.After(created) {
			t.Fatalf("snapshot not rebuilt for this kernel: %v %+v", err, got)
		}
	})

	t.Run("cold still boots", func(t *testing.T) {
		var out bytes.Buffer
		res, err := m.Run(context.Background(), RunRequest{Language: e.Name, Cold: true,
			Files: []agentproto.File{{Content: []byte("print('cold')")}}}, Streams{Stdout: &out})
		if err != nil || res.Restored || out.String() != "cold\n" {
			t.Fatalf("cold run: %v restored=%v stdout %q", err, res != nil && res.Restored, out.String())
		}
	})
}

func TestPoolHandsOutFreshVMs(t *testing.T) {
	m := snapshotManager(t)
	ctx := context.Background()
	if err := m.StartPool(ctx, "python", PoolRange{Min: 2, Max: 2}, true /* warm */); err != nil {
		t.Fatal(err)
	}
	defer func() { m.Close(); noLeftovers(t, m) }()
	p := m.Pool("python")
	wait := func() {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
		defer cancel()
		if err := p.WaitFull(wctx); err != nil {
			t.Fatalf("pool did not fill: %v %+v", err, p.Stats())
		}
	}
	wait()
	// Each run leaves a mark; the next run must not see it: a used VM is
	// never handed out again.
	code := "import os\nprint(os.path.exists('/tmp/mark'))\nopen('/tmp/mark', 'w').write('x')"
	for i := range 3 {
		c := runCode(t, m, code, agentproto.Limits{})
		if !c.res.Pooled || c.stdout != "False\n" {
			t.Fatalf("run %d: pooled=%v stdout %q stderr %q", i, c.res.Pooled, c.stdout, c.stderr)
		}
		wait() // refilled in the background
	}
	if st := p.Stats(); st.Hits != 3 || st.Misses != 0 || st.Ready != 2 {
		t.Fatalf("stats %+v, want 3 hits, 0 misses, 2 ready", st)
	}
}

func TestHibernateResumeKeepsFiles(t *testing.T) {
	m := snapshotManager(t)
	defer noLeftovers(t, m)
	ctx := context.Background()
	e, _ := m.catalog.Lookup("python", "")
	tmpl, err := m.Template(ctx, e, Shape{MemoryMiB: 384})
	if err != nil {
		t.Fatal(err)
	}
	vm, err := m.Start(ctx, tmpl, StartOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.Agent.WriteFiles(ctx, "/home/sandbox/work", []agentproto.File{{Path: "notes.txt", Content: []byte("kept")}}); err != nil {
		vm.Close()
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := m.Hibernate(ctx, vm, dir); err != nil {
		vm.Close()
		t.Fatal(err)
	}
	if vm.Machine.State().String() != "stopped" {
		t.Fatalf("hibernated VM is %s", vm.Machine.State())
	}
	back, err := m.Resume(ctx, tmpl, dir, "")
	if err != nil {
		t.Fatal(err)
	}
	defer back.Close()
	got, err := back.Agent.ReadFile(ctx, "/home/sandbox/work/notes.txt", 1024)
	if err != nil || string(got) != "kept" {
		t.Fatalf("after resume: %q %v", got, err)
	}
	var out bytes.Buffer
	res, err := back.Agent.Exec(ctx, agentproto.ExecRequest{Argv: []string{"python3", "-c", "print(open('notes.txt').read())"}, Dir: "/home/sandbox/work"}, &out, nil)
	if err != nil || res.Code != 0 || out.String() != "kept\n" {
		t.Fatalf("exec after resume: %v %+v %q", err, res, out.String())
	}
}

// A prewarmed run must look like a fresh `python3 main.py`: its own
// process, a fresh __main__, nothing left by an earlier run in the same VM.
func TestPrewarmedRunsAreFresh(t *testing.T) {
	m := snapshotManager(t)
	defer noLeftovers(t, m)
	ctx := context.Background()
	e, _ := m.catalog.Lookup("python", "")
	vm, err := m.Acquire(ctx, e, false)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	run := func(code string, args ...string) (string, *agentproto.ExitResult) {
		var out, errb bytes.Buffer
		res, err := m.execProgram(ctx, vm, e, "/tmp/box", []agentproto.File{{Path: e.File, Content: []byte(code)}},
			args, []byte("line\n"), agentproto.Limits{}, agentproto.Limits{}, Streams{Stdout: &out, Stderr: &errb})
		if err != nil {
			t.Fatal(err)
		}
		if !res.Run.Prewarmed {
			t.Fatalf("run did not use the prewarmed runtime: %+v\nconsole: %s", res.Run, vm.Machine.Console(4096))
		}
		return out.String() + errb.String(), res.Run
	}
	out, _ := run("import json, os, sys\nleak = 1\njson.leak = 1\nprint(os.getpid() != os.getppid(), sys.argv, input(), __name__)", "x")
	if out != "True ['main.py', 'x'] line __main__\n" {
		t.Fatalf("first run: %q", out)
	}
	out, _ = run("import json\nprint('leak' in globals(), hasattr(json, 'leak'))")
	if out != "False False\n" {
		t.Fatalf("second run saw the first run's state: %q", out)
	}
	out, res := run("raise ValueError('boom')")
	if res.Code != 1 || !strings.Contains(out, "ValueError: boom") || strings.Contains(out, "forkserver") {
		t.Fatalf("exception: code %d output %q", res.Code, out)
	}
}
