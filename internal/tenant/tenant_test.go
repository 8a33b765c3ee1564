package tenant

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/state"
)

func openStore(t *testing.T) (*Store, *sql.DB) {
	t.Helper()
	db, err := state.Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	s, err := OpenStore(db.SQL())
	if err != nil {
		t.Fatal(err)
	}
	return s, db.SQL()
}

func TestParseNames(t *testing.T) {
	for name, ok := range map[string]bool{
		"acme": true, "a": true, "team-1.prod_x": true, "default": true,
		"": false, "-x": false, "Acme": false, "a b": false, "a/b": false, "a\rb": false, "é": false,
		strings.Repeat("a", 63): true, strings.Repeat("a", 64): false,
	} {
		got, err := Parse(name)
		if (err == nil) != ok {
			t.Errorf("Parse(%q) = %q, %v; want ok=%v", name, got, err, ok)
		}
		if err != nil && !errors.Is(err, ErrBadName) {
			t.Errorf("Parse(%q): %v is not ErrBadName", name, err)
		}
	}
	if got, _ := Parse("default"); got != Default {
		t.Errorf("Parse(default) = %q, want Default", got)
	}
	if ValidName("default") == nil {
		t.Error(`ValidName("default") accepted the default tenant's name for a named tenant`)
	}
}

func TestKeysLifecycle(t *testing.T) {
	s, db := openStore(t)
	ctx := context.Background()
	secret, k, err := s.CreateKey(ctx, "acme", "ci")
	if err != nil {
		t.Fatal(err)
	}
	if !WellFormed(secret) || len(secret) != len(KeyPrefix)+40 {
		t.Fatalf("key %q is not e2b_ followed by 40 hex digits", secret)
	}
	if strings.Contains(secret, k.ID) {
		t.Errorf("the key's ID %s is part of the key %s", k.ID, secret)
	}
	// Only the hash is stored.
	var n int
	if err := db.QueryRow(`SELECT COUNT(*) FROM tenant_keys WHERE hash = ? OR id = ? OR name = ?`, secret, secret, secret).Scan(&n); err != nil || n != 0 {
		t.Fatalf("the key itself is in the database (%d rows, %v)", n, err)
	}
	a := NewAuthenticator(s, "legacy-key")
	for key, want := range map[string]string{secret: "acme", "legacy-key": Default} {
		got, err := a.Authenticate(ctx, key)
		if err != nil || got != want {
			t.Errorf("Authenticate(%q) = %q, %v; want %q", key, got, err, want)
		}
	}
	for _, bad := range []string{"", "legacy-ke", secret[:len(secret)-1], secret + "0", strings.ToUpper(secret), "e2b_" + strings.Repeat("0", 40)} {
		if got, err := a.Authenticate(ctx, bad); !errors.Is(err, ErrUnknownKey) {
			t.Errorf("Authenticate(%q) = %q, %v; want ErrUnknownKey", bad, got, err)
		}
	}
	other, _, err := s.CreateKey(ctx, Default, "")
	if err != nil {
		t.Fatal(err)
	}
	all, err := s.Keys(ctx, "", true)
	if err != nil || len(all) != 2 {
		t.Fatalf("Keys(all) = %v, %v", all, err)
	}
	mine, _ := s.Keys(ctx, "acme", false)
	if len(mine) != 1 || mine[0].ID != k.ID || mine[0].LastUsedAt.IsZero() {
		t.Fatalf("Keys(acme) = %+v: want its one key, used", mine)
	}
	if _, err := s.RemoveKey(ctx, k.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Authenticate(ctx, secret); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("a removed key still authenticates: %v", err)
	}
	if _, err := s.RemoveKey(ctx, other); err != nil { // by the key itself
		t.Fatal(err)
	}
	if _, err := s.RemoveKey(ctx, k.ID); !errors.Is(err, ErrNoKey) {
		t.Fatalf("removing twice: %v", err)
	}
	if _, _, err := s.CreateKey(ctx, "Bad Name", ""); !errors.Is(err, ErrBadName) {
		t.Fatalf("CreateKey with a bad tenant name: %v", err)
	}
}

func intp(v int) *int { return &v }

func TestQuotaOverrides(t *testing.T) {
	s, _ := openStore(t)
	ctx := context.Background()
	if err := s.SetQuota(ctx, "acme", Override{VMs: intp(1), Sandboxes: intp(0)}); err != nil {
		t.Fatal(err)
	}
	q := NewQuotas(Quota{VMs: 4, Sandboxes: 10, Hibernated: 2}, s, nil)
	eff, err := q.Of(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	if eff.VMs != 1 || eff.Sandboxes != 0 || eff.Hibernated != 2 {
		t.Fatalf("effective quota %+v: want the override's VMs and sandboxes, the default's hibernated", eff)
	}
	if err := s.SetQuota(ctx, "acme", Override{VMs: intp(-1)}); err == nil {
		t.Fatal("a negative quota was stored")
	}
	if err := s.SetQuota(ctx, "acme", Override{}); err != nil {
		t.Fatal(err)
	}
	if o, _ := s.Quota(ctx, "acme"); o != (Override{}) {
		t.Fatalf("cleared override is %+v", o)
	}
}

type countGate struct {
	mu  sync.Mutex
	n   int
	max int
}

var errFull = errors.New("global full")

func (g *countGate) Acquire(context.Context) (func(), error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.n >= g.max {
		return nil, errFull
	}
	g.n++
	return func() { g.mu.Lock(); g.n--; g.mu.Unlock() }, nil
}

func TestVMGatePerTenant(t *testing.T) {
	q := NewQuotas(Quota{VMs: 2}, nil, nil)
	global := &countGate{max: 3}
	g := q.Gate(global)
	a := WithTenant(context.Background(), "a")
	b := WithTenant(context.Background(), "b")
	r1, err1 := g.Acquire(a)
	r2, err2 := g.Acquire(a)
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	if _, err := g.Acquire(a); !errors.Is(err, ErrQuota) || !strings.Contains(err.Error(), "at most 2") {
		t.Fatalf("third VM of tenant a: %v, want ErrQuota naming the limit", err)
	}
	rb, err := g.Acquire(b) // another tenant is not held back by a
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.Acquire(b); !errors.Is(err, errFull) {
		t.Fatalf("global gate full: %v", err)
	}
	r1()
	r1() // twice is harmless
	if _, err := g.Acquire(a); err != nil {
		t.Fatalf("after a release: %v", err)
	}
	r2()
	rb()
	// A refusal by the global gate gave the tenant's count back.
	q2 := NewQuotas(Quota{VMs: 1}, nil, nil)
	g2 := q2.Gate(&countGate{max: 0})
	for range 3 {
		if _, err := g2.Acquire(a); !errors.Is(err, errFull) {
			t.Fatalf("want the global refusal each time, got %v", err)
		}
	}
	// No tenant in the context: only the global gate counts.
	if _, err := NewQuotas(Quota{VMs: 1}, nil, nil).Gate(&countGate{max: 5}).Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestAdmit(t *testing.T) {
	var mu sync.Mutex
	items := map[string][]Item{}
	usage := func(_ context.Context, t string) ([]Item, error) {
		mu.Lock()
		defer mu.Unlock()
		return append([]Item(nil), items[t]...), nil
	}
	q := NewQuotas(Quota{Sandboxes: 2, Hibernated: 1, DiskMiB: 1000, MemoryMiB: 1024}, nil, usage)
	ctx := context.Background()
	rel, err := q.Admit(ctx, "a", Request{Op: OpCreate, ID: "s1", MemoryMiB: 512, DiskMiB: 600})
	if err != nil {
		t.Fatal(err)
	}
	// While s1 is being created (its record already exists), it counts once.
	mu.Lock()
	items["a"] = []Item{{ID: "s1", Live: true, MemoryMiB: 512, DiskMiB: 600}}
	mu.Unlock()
	if _, err := q.Admit(ctx, "a", Request{Op: OpCreate, ID: "s2", MemoryMiB: 512, DiskMiB: 600}); !errors.Is(err, ErrQuota) || !strings.Contains(err.Error(), "disk") {
		t.Fatalf("disk over quota: %v", err)
	}
	rel()
	if _, err := q.Admit(ctx, "a", Request{Op: OpCreate, ID: "s2", MemoryMiB: 1024}); !errors.Is(err, ErrQuota) || !strings.Contains(err.Error(), "memory") {
		t.Fatalf("memory over quota: %v", err)
	}
	rel2, err := q.Admit(ctx, "a", Request{Op: OpCreate, ID: "s2", MemoryMiB: 512})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.Admit(ctx, "a", Request{Op: OpCreate, ID: "s3"}); !errors.Is(err, ErrQuota) || !strings.Contains(err.Error(), "2 sandboxes") {
		t.Fatalf("third sandbox: %v", err)
	}
	rel2()
	mu.Lock()
	items["a"] = append(items["a"], Item{ID: "s2", Hibernated: true})
	mu.Unlock()
	if _, err := q.Admit(ctx, "a", Request{Op: OpHibernate, ID: "s1"}); !errors.Is(err, ErrQuota) || !strings.Contains(err.Error(), "hibernated") {
		t.Fatalf("second hibernation: %v", err)
	}
	// Another tenant has its own counts.
	if _, err := q.Admit(ctx, "b", Request{Op: OpCreate, ID: "t1", MemoryMiB: 1024, DiskMiB: 1000}); err != nil {
		t.Fatal(err)
	}
}

func TestAdmitRacesStayWithinQuota(t *testing.T) {
	var mu sync.Mutex
	var made []Item
	usage := func(context.Context, string) ([]Item, error) {
		mu.Lock()
		defer mu.Unlock()
		return append([]Item(nil), made...), nil
	}
	q := NewQuotas(Quota{Sandboxes: 5}, nil, usage)
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := string(rune('A' + i))
			rel, err := q.Admit(context.Background(), "a", Request{Op: OpCreate, ID: id})
			if err != nil {
				return
			}
			mu.Lock()
			made = append(made, Item{ID: id, Live: true})
			mu.Unlock()
			rel()
		}()
	}
	wg.Wait()
	if len(made) != 5 {
		t.Fatalf("%d sandboxes made concurrently under a quota of 5", len(made))
	}
}

func TestRate(t *testing.T) {
	q := NewQuotas(Quota{Rate: 1, Burst: 3}, nil, nil)
	now := time.Unix(1000, 0)
	q.now = func() time.Time { return now }
	ctx := context.Background()
	for i := range 3 {
		if err := q.Allow(ctx, "a"); err != nil {
			t.Fatalf("request %d within the burst: %v", i, err)
		}
	}
	if err := q.Allow(ctx, "a"); !errors.Is(err, ErrQuota) || !strings.Contains(err.Error(), "per second") {
		t.Fatalf("past the burst: %v", err)
	}
	if err := q.Allow(ctx, "b"); err != nil {
		t.Fatalf("another tenant: %v", err)
	}
	now = now.Add(time.Second)
	if err := q.Allow(ctx, "a"); err != nil {
		t.Fatalf("a second later: %v", err)
	}
}
