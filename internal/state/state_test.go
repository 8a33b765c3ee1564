package state

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"testing"
	"time"
)

func open(t *testing.T) (*DB, string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "state.db")
	d, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, p
}

func TestLifecycleAndErrors(t *testing.T) {
	ctx := context.Background()
	d, _ := open(t)
	sb := Sandbox{ID: "sb-1", Language: "python", Version: "3.11.2", VCPUs: 1, MemoryMiB: 512, DiskMiB: 256,
		IdleTimeout: 90 * time.Second, State: Creating}
	if err := d.Create(ctx, sb); err != nil {
		t.Fatal(err)
	}
	if err := d.Create(ctx, sb); err == nil {
		t.Fatal("duplicate id accepted")
	}
	if err := d.Transition(ctx, "sb-1", Change{To: Running}, Creating); err != nil {
		t.Fatal(err)
	}
	err := d.Transition(ctx, "sb-1", Change{To: Resuming}, Hibernated)
	if !errors.Is(err, ErrConflict) {
		t.Fatalf("running -> resuming from hibernated: got %v, want ErrConflict", err)
	}
	if _, err := d.Get(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get unknown: %v", err)
	}
	if err := d.Transition(ctx, "nope", Change{To: Running}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("transition unknown: %v", err)
	}
	dir := "/x/snap"
	if err := d.Transition(ctx, "sb-1", Change{To: Hibernated, SnapshotDir: &dir}, Running); err != nil {
		t.Fatal(err)
	}
	got, err := d.Get(ctx, "sb-1")
	if err != nil {
		t.Fatal(err)
	}
	if got.State != Hibernated || got.SnapshotDir != dir || got.IdleTimeout != 90*time.Second || got.DiskMiB != 256 {
		t.Fatalf("got %+v", got)
	}
	if err := d.Transition(ctx, "sb-1", Change{To: Deleted}); err != nil {
		t.Fatal(err)
	}
	if err := d.Transition(ctx, "sb-1", Change{To: Running}); !errors.Is(err, ErrConflict) {
		t.Fatalf("transition of deleted: %v", err)
	}
	list, err := d.List(ctx)
	if err != nil || len(list) != 0 {
		t.Fatalf("list without deleted: %v %v", list, err)
	}
	list, err = d.List(ctx, Deleted)
	if err != nil || len(list) != 1 {
		t.Fatalf("list deleted: %v %v", list, err)
	}
}

func TestReconcileSurvivesReopen(t *testing.T) {
	ctx := context.Background()
	d, p := open(t)
	for id, st := range map[string]State{
		"running": Running, "creating": Creating, "hib": Hibernated, "hibbing-ok": Hibernating,
		"hibbing-bad": Hibernating, "resuming": Resuming, "hib-missing": Hibernated, "gone": Deleted,
	} {
		if err := d.Create(ctx, Sandbox{ID: id, Language: "python", Version: "3", State: st, SnapshotDir: "/s/" + id}); err != nil {
			t.Fatal(err)
		}
	}
	d.Close()

	d, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	bad := map[string]bool{"hibbing-bad": true, "hib-missing": true}
	changed, err := d.Reconcile(ctx, func(s Sandbox) bool { return !bad[s.ID] })
	if err != nil {
		t.Fatal(err)
	}
	if len(changed) != 6 {
		t.Errorf("changed %d sandboxes, want 6: %+v", len(changed), changed)
	}
	want := map[string]State{
		"running": Lost, "creating": Lost, "hib": Hibernated, "hibbing-ok": Hibernated,
		"hibbing-bad": Lost, "resuming": Hibernated, "hib-missing": Lost, "gone": Deleted,
	}
	for id, st := range want {
		s, err := d.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if s.State != st {
			t.Errorf("%s: %s, want %s", id, s.State, st)
		}
		if st == Lost && (s.Reason == "" || s.SnapshotDir != "") {
			t.Errorf("%s: lost without reason or with snapshot: %+v", id, s)
		}
	}
	counts, err := d.Count(ctx)
	if err != nil || counts[Lost] != 4 || counts[Hibernated] != 3 {
		t.Fatalf("counts %v %v", counts, err)
	}
}

func TestMigratesVersion1Database(t *testing.T) {
	ctx := context.Background()
	p := filepath.Join(t.TempDir(), "state.db")
	// A database as the first release wrote it: schema 1 and one row.
	raw, err := sql.Open("sqlite", "file:"+p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.ExecContext(ctx, migrations[0]+"; PRAGMA user_version = 1;"); err != nil {
		t.Fatal(err)
	}
	if _, err := raw.ExecContext(ctx, `INSERT INTO sandboxes (id, language, version, vcpus, memory_mib, disk_mib, idle_timeout_ms, state, snapshot_dir, reason, created_at, last_used_at, updated_at)
		VALUES ('sb-old', 'python', '3.11', 1, 512, 0, 0, 'hibernated', '/x/snapshot', '', 1, 2, 3)`); err != nil {
		t.Fatal(err)
	}
	raw.Close()

	d, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	got, err := d.Get(ctx, "sb-old")
	if err != nil {
		t.Fatal(err)
	}
	if got.State != Hibernated || got.SnapshotDir != "/x/snapshot" || got.Tenant != "" || got.Metadata != nil {
		t.Fatalf("after migration: %+v", got)
	}
	var v int
	if err := d.SQL().QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil || v != len(migrations)+len(Extensions) {
		t.Fatalf("user_version %d (%v), want %d", v, err, len(migrations)+len(Extensions))
	}
	// New fields round-trip.
	sb := Sandbox{ID: "sb-new", Tenant: "acme", Language: "python", Version: "3.11", State: Creating,
		Metadata: map[string]string{"k": "v"}, Env: map[string]string{"A": "1"}, ExpiresAt: time.Unix(100, 0), OnTimeout: "pause"}
	if err := d.Create(ctx, sb); err != nil {
		t.Fatal(err)
	}
	if err := d.Transition(ctx, "sb-new", Change{To: Running, Bump: true}, Creating); err != nil {
		t.Fatal(err)
	}
	got, err = d.Get(ctx, "sb-new")
	if err != nil {
		t.Fatal(err)
	}
	if got.Tenant != "acme" || got.Metadata["k"] != "v" || got.Env["A"] != "1" || !got.ExpiresAt.Equal(time.Unix(100, 0)) ||
		got.OnTimeout != "pause" || got.Generation != 1 {
		t.Fatalf("round trip: %+v", got)
	}
}

func TestRefusesNewerSchema(t *testing.T) {
	p := filepath.Join(t.TempDir(), "state.db")
	raw, err := sql.Open("sqlite", "file:"+p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Exec("PRAGMA user_version = 999"); err != nil {
		t.Fatal(err)
	}
	raw.Close()
	if _, err := Open(p); !errors.Is(err, ErrSchema) {
		t.Fatalf("newer schema: %v, want ErrSchema", err)
	}
}
