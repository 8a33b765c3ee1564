package cluster

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/cluster/clustertest"
	"github.com/firesandbox/firesandbox/internal/state"
	"github.com/firesandbox/firesandbox/internal/tenant"
	"github.com/jackc/pgx/v5"
)

// The directory's logic against a real PostgreSQL: admission under
// concurrency, fencing, takeover races, migrations. No VMs.

const testTTL = 3 * time.Second

func openTestDirectory(t *testing.T, url string) *Directory {
	t.Helper()
	d, err := OpenDirectory(context.Background(), DirectoryConfig{URL: url, TTL: testTTL, QueryTimeout: 5 * time.Second, MaxConns: 32})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return d
}

func register(t *testing.T, d *Directory, id string, capacity int) Lease {
	t.Helper()
	l, err := d.Register(context.Background(), HostInfo{ID: id, Address: "http://" + id + ".test:7070", Capacity: capacity})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// kill makes a host's heartbeat older than the TTL, as if it had stopped
// beating that long ago.
func kill(t *testing.T, d *Directory, id string) {
	t.Helper()
	if _, err := d.pool.Exec(context.Background(), `UPDATE hosts SET heartbeat_at = now() - interval '1 hour' WHERE id = $1`, id); err != nil {
		t.Fatal(err)
	}
}

func record(id, tenant string) state.Sandbox {
	return state.Sandbox{ID: id, Tenant: tenant, Language: "python", Version: "3", VCPUs: 1, MemoryMiB: 512,
		State: state.Creating, Metadata: map[string]string{"k": "v"}, CreatedAt: time.Now()}
}

// admitRunning admits a sandbox and records it running.
func admitRunning(t *testing.T, d *Directory, l Lease, id string) state.Sandbox {
	t.Helper()
	sb := record(id, "t1")
	if err := d.Admit(context.Background(), l, sb); err != nil {
		t.Fatal(err)
	}
	sb.State = state.Running
	if _, err := d.Update(context.Background(), l, sb); err != nil {
		t.Fatal(err)
	}
	return sb
}

// hibernate records a hibernation (generation up), stored in S3 or not.
func hibernate(t *testing.T, d *Directory, l Lease, sb state.Sandbox, stored bool) state.Sandbox {
	t.Helper()
	sb.State = state.Hibernated
	sb.Generation++
	if _, err := d.Update(context.Background(), l, sb); err != nil {
		t.Fatal(err)
	}
	if stored {
		if err := d.SetRemote(context.Background(), l, sb.ID, sb.Generation, fmt.Sprintf("sandboxes/%s/%d", sb.ID, sb.Generation)); err != nil {
			t.Fatal(err)
		}
	}
	return sb
}

func get(t *testing.T, d *Directory, id string) Entry {
	t.Helper()
	e, err := d.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestDirectory(t *testing.T) {
	pg := clustertest.StartPostgres(t)
	ctx := context.Background()

	t.Run("hosts migrating at once migrate once; a newer schema is refused", func(t *testing.T) {
		url := pg.NewDatabase(t)
		var wg sync.WaitGroup
		errs := make([]error, 6)
		for i := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				d, err := OpenDirectory(ctx, DirectoryConfig{URL: url, TTL: testTTL})
				if err == nil {
					d.Close()
				}
				errs[i] = err
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		d := openTestDirectory(t, url)
		var n int
		if err := d.pool.QueryRow(ctx, `SELECT count(*) FROM firesandbox_schema`).Scan(&n); err != nil || n != len(migrations) {
			t.Fatalf("schema versions recorded: %d (%v), want %d", n, err, len(migrations))
		}
		if _, err := d.pool.Exec(ctx, `INSERT INTO firesandbox_schema (version) VALUES (99)`); err != nil {
			t.Fatal(err)
		}
		_, err := OpenDirectory(ctx, DirectoryConfig{URL: url, TTL: testTTL})
		if !errors.Is(err, ErrSchema) || !strings.Contains(err.Error(), "upgrade this host") {
			t.Fatalf("open a newer directory: %v, want ErrSchema", err)
		}
	})

	t.Run("24 concurrent creates never push a host past its capacity", func(t *testing.T) {
		d := openTestDirectory(t, pg.NewDatabase(t))
		leases := []Lease{register(t, d, "h1", 3), register(t, d, "h2", 3), register(t, d, "h3", 2)}
		var admitted, full atomic.Int64
		var wg sync.WaitGroup
		for i := range 24 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := d.Admit(ctx, leases[i%3], record(fmt.Sprintf("sb-%02d", i), "t1"))
				switch {
				case err == nil:
					admitted.Add(1)
				case errors.Is(err, ErrFull):
					full.Add(1)
				default:
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		hosts, err := d.Hosts(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range hosts {
			if h.Used != h.Capacity {
				t.Errorf("host %s holds %d sandboxes, capacity %d: want it exactly full", h.ID, h.Used, h.Capacity)
			}
		}
		if admitted.Load() != 8 || full.Load() != 16 {
			t.Fatalf("admitted %d, refused %d; want 8 and 16", admitted.Load(), full.Load())
		}
		// Hibernated sandboxes free their room.
		owned, err := d.Owned(ctx, "h1")
		if err != nil || len(owned) != 3 {
			t.Fatalf("h1 owns %d (%v)", len(owned), err)
		}
		sb := owned[0].Record
		sb.State, sb.Generation = state.Hibernated, 1
		if _, err := d.Update(ctx, leases[0], sb); err != nil {
			t.Fatal(err)
		}
		if err := d.Admit(ctx, leases[0], record("sb-extra", "t1")); err != nil {
			t.Fatalf("admit after a hibernation freed room: %v", err)
		}
	})

	t.Run("placement: this host first if it has room, then the emptiest; never dead, full or draining hosts", func(t *testing.T) {
		d := openTestDirectory(t, pg.NewDatabase(t))
		l1, l2 := register(t, d, "h1", 1), register(t, d, "h2", 4)
		register(t, d, "h3", 9)
		register(t, d, "h4", 9)
		kill(t, d, "h3")
		if err := d.SetDraining(ctx, "h4", true); err != nil {
			t.Fatal(err)
		}
		ids := func(hs []Host) string {
			var s []string
			for _, h := range hs {
				s = append(s, h.ID)
			}
			return strings.Join(s, ",")
		}
		hs, err := d.Place(ctx, "h1")
		if err != nil || ids(hs) != "h1,h2" {
			t.Fatalf("place from h1: %s %v; want h1,h2", ids(hs), err)
		}
		admitRunning(t, d, l1, "sb-a")
		if hs, _ = d.Place(ctx, "h1"); ids(hs) != "h2" {
			t.Fatalf("place from a full h1: %s; want h2", ids(hs))
		}
		for i := range 4 {
			admitRunning(t, d, l2, fmt.Sprintf("sb-b%d", i))
		}
		if _, err := d.Place(ctx, "h1"); !errors.Is(err, ErrFull) {
			t.Fatalf("place with every live host full: %v, want ErrFull", err)
		}
		if err := d.Admit(ctx, register(t, d, "h4", 9), record("sb-c", "t1")); err != nil {
			t.Fatalf("a host that registers again is no longer draining: %v", err)
		}
	})

	t.Run("fencing: a stale owner's late writes change nothing", func(t *testing.T) {
		d := openTestDirectory(t, pg.NewDatabase(t))
		old := register(t, d, "h1", 4)
		sb := admitRunning(t, d, old, "sb-1")
		// A restart of h1 (new epoch) fences the old process.
		cur := register(t, d, "h1", 4)
		sb.State = state.Lost
		if _, err := d.Update(ctx, old, sb); !errors.Is(err, ErrFenced) {
			t.Fatalf("write with the old epoch: %v, want ErrFenced", err)
		}
		if _, err := d.Heartbeat(ctx, old, 0, 4); !errors.Is(err, ErrFenced) {
			t.Fatalf("heartbeat with the old epoch: %v, want ErrFenced", err)
		}
		if e := get(t, d, "sb-1"); e.State != state.Running {
			t.Fatalf("state %s after a fenced write, want running", e.State)
		}
		// A lease the directory no longer counts as live fences too.
		kill(t, d, "h1")
		sb.State = state.Hibernated
		sb.Generation = 1
		if _, err := d.Update(ctx, cur, sb); !errors.Is(err, ErrFenced) {
			t.Fatalf("write with an expired lease: %v, want ErrFenced", err)
		}
		if err := d.Admit(ctx, cur, record("sb-2", "t1")); !errors.Is(err, ErrFenced) {
			t.Fatalf("admit with an expired lease: %v, want ErrFenced", err)
		}
		if _, err := d.Heartbeat(ctx, cur, 0, 4); err != nil {
			t.Fatal(err)
		}
		// Another host took the sandbox over: h1's writes are refused,
		// however new its lease.
		l2 := register(t, d, "h2", 4)
		kill(t, d, "h1")
		if c, err := d.ClaimLost(ctx, l2, 10); err != nil || len(c) != 1 {
			t.Fatalf("claim: %v %v", c, err)
		}
		if _, err := d.Heartbeat(ctx, cur, 0, 4); err != nil {
			t.Fatal(err)
		}
		sb.Generation = 99
		_, err := d.Update(ctx, cur, sb)
		if !errors.Is(err, ErrFenced) || !strings.Contains(err.Error(), `belongs to host "h2"`) {
			t.Fatalf("write by the previous owner: %v, want ErrFenced naming h2", err)
		}
		if err := d.SetRemote(ctx, cur, "sb-1", 99, "sandboxes/sb-1/99"); !errors.Is(err, ErrFenced) {
			t.Fatalf("set remote by the previous owner: %v", err)
		}
		if e := get(t, d, "sb-1"); e.Owner != "h2" || e.State != state.Lost || e.Remote != "" {
			t.Fatalf("after the previous owner's writes: %+v", e)
		}
		// The owner's own stale generation is refused as well.
		mine := get(t, d, "sb-1").Record
		mine.Generation--
		if _, err := d.Update(ctx, l2, mine); !errors.Is(err, ErrFenced) {
			t.Fatalf("write of an older generation: %v", err)
		}
	})

	t.Run("a dead host's sandboxes are claimed exactly once each", func(t *testing.T) {
		d := openTestDirectory(t, pg.NewDatabase(t))
		la := register(t, d, "a", 50)
		for i := range 10 {
			sb := admitRunning(t, d, la, fmt.Sprintf("run-%d", i))
			_ = sb
		}
		for i := range 10 {
			hibernate(t, d, la, admitRunning(t, d, la, fmt.Sprintf("hib-%d", i)), true)
		}
		hibernate(t, d, la, admitRunning(t, d, la, "unstored"), false)
		del := admitRunning(t, d, la, "del")
		del.State = state.Deleting
		if _, err := d.Update(ctx, la, del); err != nil {
			t.Fatal(err)
		}
		claimers := []Lease{register(t, d, "b", 50), register(t, d, "c", 50), register(t, d, "e", 50)}
		kill(t, d, "a")
		var mu sync.Mutex
		got := map[string][]string{}
		var wg sync.WaitGroup
		for _, l := range claimers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 20 {
					lost, err := d.ClaimLost(ctx, l, 2)
					if err != nil {
						t.Error(err)
						return
					}
					hib, err := d.ClaimHibernated(ctx, l, 1)
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					for _, c := range append(lost, hib...) {
						if c.From != "a" || c.Owner != l.Host {
							t.Errorf("claim %+v by %s", c.Entry, l.Host)
						}
						got[c.ID] = append(got[c.ID], l.Host)
					}
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if len(got) != 22 {
			t.Fatalf("%d sandboxes claimed, want 22: %v", len(got), got)
		}
		for id, by := range got {
			if len(by) != 1 {
				t.Errorf("%s claimed %d times: %v", id, len(by), by)
			}
			e := get(t, d, id)
			switch {
			case strings.HasPrefix(id, "run-"):
				if e.State != state.Lost || !strings.Contains(e.Reason, "host a stopped heartbeating while the sandbox was running") {
					t.Errorf("%s: %s %q", id, e.State, e.Reason)
				}
			case strings.HasPrefix(id, "hib-"):
				if e.State != state.Hibernated || e.Generation != 2 || e.Remote != "sandboxes/"+id+"/1" {
					t.Errorf("%s: %s generation %d remote %q; want hibernated, 2, its stored copy", id, e.State, e.Generation, e.Remote)
				}
			case id == "unstored":
				if e.State != state.Lost || !strings.Contains(e.Reason, "before its hibernation was stored in S3") {
					t.Errorf("%s: %s %q", id, e.State, e.Reason)
				}
			case id == "del":
				if e.State != state.Deleted {
					t.Errorf("%s: %s", id, e.State)
				}
			}
		}
		if owned, _ := d.Owned(ctx, "a"); len(owned) != 0 {
			t.Fatalf("the dead host still owns %d sandboxes", len(owned))
		}
		// A live host's sandboxes are never claimed.
		lb := claimers[0]
		admitRunning(t, d, lb, "live")
		if c, _ := d.ClaimLost(ctx, claimers[1], 10); len(c) != 0 {
			t.Fatalf("claimed a live host's sandboxes: %+v", c)
		}
	})

	t.Run("leave releases stored hibernations at once and expires the lease", func(t *testing.T) {
		d := openTestDirectory(t, pg.NewDatabase(t))
		la, lb := register(t, d, "a", 5), register(t, d, "b", 5)
		hibernate(t, d, la, admitRunning(t, d, la, "hib"), true)
		admitRunning(t, d, la, "run")
		n, err := d.Leave(ctx, la)
		if err != nil || n != 1 {
			t.Fatalf("leave: released %d, %v; want 1", n, err)
		}
		if e := get(t, d, "hib"); e.Owner != "" || e.Generation != 2 {
			t.Fatalf("released sandbox: owner %q generation %d", e.Owner, e.Generation)
		}
		hib, err := d.ClaimHibernated(ctx, lb, 5)
		if err != nil || len(hib) != 1 || hib[0].From != "" {
			t.Fatalf("claim released: %+v %v", hib, err)
		}
		lost, err := d.ClaimLost(ctx, lb, 5)
		if err != nil || len(lost) != 1 || lost[0].ID != "run" {
			t.Fatalf("claim a departed host's running sandbox without waiting: %+v %v", lost, err)
		}
		if _, err := d.Update(ctx, la, get(t, d, "run").Record); !errors.Is(err, ErrFenced) {
			t.Fatalf("write after leaving: %v", err)
		}
	})

	t.Run("a new hibernation or a resume clears the stored copy", func(t *testing.T) {
		d := openTestDirectory(t, pg.NewDatabase(t))
		l := register(t, d, "a", 5)
		sb := hibernate(t, d, l, admitRunning(t, d, l, "x"), true)
		sb.State = state.Resuming
		old, err := d.Update(ctx, l, sb)
		if err != nil || old != "sandboxes/x/1" {
			t.Fatalf("resume: old remote %q %v", old, err)
		}
		if e := get(t, d, "x"); e.Remote != "" {
			t.Fatalf("a resuming sandbox still names its stored copy %q", e.Remote)
		}
		sb.State = state.Running
		d.Update(ctx, l, sb)
		sb = hibernate(t, d, l, sb, false)
		if e := get(t, d, "x"); e.Remote != "" || e.Generation != 2 {
			t.Fatalf("new hibernation: %+v", e)
		}
		// Writing the same hibernated state again keeps the stored copy.
		if err := d.SetRemote(ctx, l, "x", 2, "sandboxes/x/2"); err != nil {
			t.Fatal(err)
		}
		sb.Metadata = map[string]string{"k": "w"}
		if _, err := d.Update(ctx, l, sb); err != nil {
			t.Fatal(err)
		}
		if e := get(t, d, "x"); e.Remote != "sandboxes/x/2" || e.Record.Metadata["k"] != "w" {
			t.Fatalf("same generation rewritten: %+v", e)
		}
	})

	t.Run("keys and quota overrides are shared, and behave as the state database's", func(t *testing.T) {
		url := pg.NewDatabase(t)
		d1, d2 := openTestDirectory(t, url), openTestDirectory(t, url)
		db, err := state.Open(filepath.Join(t.TempDir(), "state.db"))
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		local, err := tenant.OpenStore(db.SQL())
		if err != nil {
			t.Fatal(err)
		}
		t.Run("state database (one host)", func(t *testing.T) { keyStoreContract(t, local, local, func() {}) })
		k1, k2 := NewKeys(d1), NewKeys(d2)
		t.Run("cluster directory (two hosts)", func(t *testing.T) {
			// The other host sees a removal once what it remembers is stale.
			keyStoreContract(t, k1, k2, func() { k2.now = func() time.Time { return time.Now().Add(KeyFresh) } })
		})
	})

	t.Run("a secret is made once and the same for every host", func(t *testing.T) {
		url := pg.NewDatabase(t)
		var wg sync.WaitGroup
		got := make([][]byte, 6)
		for i := range got {
			wg.Add(1)
			go func() {
				defer wg.Done()
				d := openTestDirectory(t, url)
				b, err := d.Secret(ctx, "e2b-access-tokens", 32)
				if err != nil {
					t.Error(err)
				}
				got[i] = b
			}()
		}
		wg.Wait()
		for _, b := range got {
			if len(b) != 32 || string(b) != string(got[0]) {
				t.Fatalf("secrets %x: want one 32-byte secret", got)
			}
		}
	})

	t.Run("an unreachable directory fails fast with ErrUnavailable", func(t *testing.T) {
		url := pg.NewDatabase(t)
		d, err := OpenDirectory(ctx, DirectoryConfig{URL: url, TTL: testTTL, QueryTimeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		l := register(t, d, "h", 2)
		keys := NewKeys(d)
		known, _, err := keys.CreateKey(ctx, "acme", "")
		if err != nil {
			t.Fatal(err)
		}
		if err := keys.SetQuota(ctx, "acme", tenant.Override{Sandboxes: ptr(2)}); err != nil {
			t.Fatal(err)
		}
		keys.Lookup(ctx, known)
		keys.Quota(ctx, "acme")
		keys.now = func() time.Time { return time.Now().Add(time.Hour) } // all of it stale
		pg.Stop()
		defer pg.Start()
		start := time.Now()
		err = d.Admit(ctx, l, record("sb", "t"))
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("admit with the server down: %v, want ErrUnavailable", err)
		}
		if strings.Contains(err.Error(), "password") {
			t.Fatal(err)
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Fatalf("admit took %s with the server down", took)
		}
		// Keys and quotas seen before the outage keep working; others wait.
		if k, err := keys.Lookup(ctx, known); err != nil || k.Tenant != "acme" {
			t.Fatalf("a known key during the outage: %+v %v", k, err)
		}
		if _, err := keys.Lookup(ctx, tenant.NewSecret()); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("an unseen key during the outage: %v, want ErrUnavailable", err)
		}
		if o, err := keys.Quota(ctx, "acme"); err != nil || o.Sandboxes == nil || *o.Sandboxes != 2 {
			t.Fatalf("a known quota during the outage: %+v %v", o, err)
		}
		if o, err := keys.Quota(ctx, "globex"); err != nil || o != (tenant.Override{}) {
			t.Fatalf("an unseen tenant's quota during the outage: %+v %v, want the defaults", o, err)
		}
		if err := pg.Start(); err != nil {
			t.Fatal(err)
		}
		// The pool reconnects by itself.
		deadline := time.Now().Add(10 * time.Second)
		for {
			if _, err = d.Heartbeat(ctx, l, 0, 2); err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("after the server came back: %v", err)
		}
	})
}

func TestConfigValidate(t *testing.T) {
	ok := Config{URL: "postgres://u:p@db:5432/fs", HostID: "h1", Address: "http://10.0.0.5:7070", Capacity: 4}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(*Config){
		"mysql URL":        func(c *Config) { c.URL = "mysql://x" },
		"bad host id":      func(c *Config) { c.HostID = "Host One" },
		"no host id":       func(c *Config) { c.HostID = "" },
		"wildcard address": func(c *Config) { c.Address = "http://0.0.0.0:7070" },
		"address path":     func(c *Config) { c.Address = "http://h:1/api" },
		"no capacity":      func(c *Config) { c.Capacity = 0 },
		"ttl too short":    func(c *Config) { c.Heartbeat, c.TTL = time.Second, time.Second },
	} {
		c := ok
		mut(&c)
		if err := c.Validate(); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: %v, want ErrInvalidConfig", name, err)
		}
	}
	dir := t.TempDir()
	c := ok
	c.HostID, c.HostIDFile = "", dir+"/host-id"
	a, err := c.hostID()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := c.hostID()
	if a != b || !hostIDRe.MatchString(a) {
		t.Fatalf("generated host ids %q then %q: want one stable id", a, b)
	}
	if _, err := OpenDirectory(context.Background(), DirectoryConfig{URL: "postgres://u:secret@[bad", TTL: time.Second}); err == nil || strings.Contains(err.Error(), "secret") {
		t.Fatalf("bad URL: %v (must fail without showing the password)", err)
	}
}

var _ = pgx.ErrNoRows

// keyStoreContract checks what the API relies on of a tenant.KeyStore;
// a and b are two hosts' views of one store.
func keyStoreContract(t *testing.T, a, b tenant.KeyStore, later func()) {
	ctx := context.Background()
	secret, k, err := a.CreateKey(ctx, "acme", "ci")
	if err != nil || !tenant.WellFormed(secret) || k.Tenant != "acme" || k.Name != "ci" || k.ID == "" {
		t.Fatalf("create: %q %+v %v", secret, k, err)
	}
	if _, _, err := a.CreateKey(ctx, "Not A Name", ""); !errors.Is(err, tenant.ErrBadName) {
		t.Fatalf("create for a bad tenant name: %v", err)
	}
	got, err := b.Lookup(ctx, secret)
	if err != nil || got.Tenant != "acme" || got.ID != k.ID {
		t.Fatalf("lookup on the other host: %+v %v", got, err)
	}
	if _, err := b.Lookup(ctx, tenant.NewSecret()); !errors.Is(err, tenant.ErrUnknownKey) {
		t.Fatalf("lookup of a key never made: %v", err)
	}
	if _, err := b.Lookup(ctx, "not-a-key"); !errors.Is(err, tenant.ErrUnknownKey) {
		t.Fatalf("lookup of garbage: %v", err)
	}
	secret2, _, err := a.CreateKey(ctx, "globex", "")
	if err != nil {
		t.Fatal(err)
	}
	if keys, err := b.Keys(ctx, "acme", false); err != nil || len(keys) != 1 || keys[0].ID != k.ID {
		t.Fatalf("acme's keys: %+v %v", keys, err)
	}
	if keys, _ := b.Keys(ctx, "", true); len(keys) != 2 {
		t.Fatalf("all keys: %+v", keys)
	}
	o := tenant.Override{Sandboxes: ptr(3)}
	if err := a.SetQuota(ctx, "acme", o); err != nil {
		t.Fatal(err)
	}
	if got, err := b.Quota(ctx, "acme"); err != nil || got.Sandboxes == nil || *got.Sandboxes != 3 {
		t.Fatalf("quota on the other host: %+v %v", got, err)
	}
	if err := a.SetQuota(ctx, "initech", tenant.Override{VMs: ptr(1)}); err != nil {
		t.Fatal(err)
	}
	if ts, err := b.Tenants(ctx); err != nil || strings.Join(ts, ",") != "acme,globex,initech" {
		t.Fatalf("tenants: %v %v", ts, err)
	}
	if err := a.SetQuota(ctx, "initech", tenant.Override{}); err != nil {
		t.Fatal(err)
	}
	if got, _ := b.Quota(ctx, "initech"); got != (tenant.Override{}) {
		t.Fatalf("cleared quota: %+v", got)
	}
	if _, err := a.RemoveKey(ctx, k.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Lookup(ctx, secret); !errors.Is(err, tenant.ErrUnknownKey) {
		t.Fatalf("a removed key where it was removed: %v", err)
	}
	later()
	if _, err := b.Lookup(ctx, secret); !errors.Is(err, tenant.ErrUnknownKey) {
		t.Fatalf("a removed key on the other host: %v", err)
	}
	if rk, err := b.RemoveKey(ctx, secret2); err != nil || rk.Tenant != "globex" {
		t.Fatalf("remove by the key itself: %+v %v", rk, err)
	}
	if _, err := a.RemoveKey(ctx, k.ID); !errors.Is(err, tenant.ErrNoKey) {
		t.Fatalf("remove twice: %v", err)
	}
}

func ptr[T any](v T) *T { return &v }
