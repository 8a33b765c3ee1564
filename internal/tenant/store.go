package tenant

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
)

// schema is the store's tables in the state database. They are created
// here (IF NOT EXISTS) rather than through state.Extensions: a migration
// there gets its schema version from the order packages register in, and
// a firesandbox binary that does not link this package would then take a
// database with these tables for one written by a newer version.
const schema = `
CREATE TABLE IF NOT EXISTS tenant_keys (
	hash         TEXT PRIMARY KEY,
	id           TEXT NOT NULL UNIQUE,
	tenant       TEXT NOT NULL,
	name         TEXT NOT NULL DEFAULT '',
	created_at   INTEGER NOT NULL,
	last_used_at INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tenant_keys_tenant ON tenant_keys(tenant);
CREATE TABLE IF NOT EXISTS tenant_quotas (
	tenant     TEXT PRIMARY KEY,
	quota      TEXT NOT NULL,
	updated_at INTEGER NOT NULL
);
`

// MaxKeyName bounds a key's label.
const MaxKeyName = 200

// usedEvery is how often a key's last use is written: at most once per
// key in this long, so authentication is not a write per request.
const usedEvery = time.Minute

// Store keeps keys and quota overrides in the state database.
type Store struct {
	db  *sql.DB
	now func() time.Time

	mu   sync.Mutex
	used map[string]time.Time // hash -> when last_used_at was last written
}

// OpenStore returns the store of db (the state database), creating its
// tables if needed.
func OpenStore(db *sql.DB) (*Store, error) {
	if _, err := db.ExecContext(context.Background(), schema); err != nil {
		return nil, fmt.Errorf("open tenant store: create schema: %w", err)
	}
	return &Store{db: db, now: time.Now, used: map[string]time.Time{}}, nil
}

// CreateKey makes a key for tenant t, labelled name, and returns the key
// itself: this is the only time it is seen.
func (s *Store) CreateKey(ctx context.Context, t, name string) (string, Key, error) {
	if t != Default {
		if err := ValidName(t); err != nil {
			return "", Key{}, err
		}
	}
	if len(name) > MaxKeyName || strings.ContainsFunc(name, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return "", Key{}, fmt.Errorf("%w: key name: at most %d printable characters", ErrBadName, MaxKeyName)
	}
	secret := newSecret()
	h := hashOf(secret)
	k := Key{ID: h[:idLen], Tenant: t, Name: name, CreatedAt: s.now()}
	if _, err := s.db.ExecContext(ctx, `INSERT INTO tenant_keys (hash, id, tenant, name, created_at) VALUES (?,?,?,?,?)`,
		h, k.ID, t, name, k.CreatedAt.UnixNano()); err != nil {
		return "", Key{}, fmt.Errorf("create key: %w", err)
	}
	return secret, k, nil
}

const keyColumns = `id, tenant, name, created_at, last_used_at`

func scanKey(r interface{ Scan(...any) error }) (Key, error) {
	var k Key
	var created, used int64
	if err := r.Scan(&k.ID, &k.Tenant, &k.Name, &created, &used); err != nil {
		return k, err
	}
	k.CreatedAt = time.Unix(0, created)
	if used != 0 {
		k.LastUsedAt = time.Unix(0, used)
	}
	return k, nil
}

// Keys lists the keys, oldest first: every tenant's if all, else t's.
func (s *Store) Keys(ctx context.Context, t string, all bool) ([]Key, error) {
	q, args := `SELECT `+keyColumns+` FROM tenant_keys ORDER BY created_at, id`, []any(nil)
	if !all {
		q, args = `SELECT `+keyColumns+` FROM tenant_keys WHERE tenant = ? ORDER BY created_at, id`, []any{t}
	}
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list keys: %w", err)
	}
	defer rows.Close()
	var out []Key
	for rows.Next() {
		k, err := scanKey(rows)
		if err != nil {
			return nil, fmt.Errorf("list keys: %w", err)
		}
		out = append(out, k)
	}
	return out, rows.Err()
}

// RemoveKey deletes the key with ID ref (or whose secret is ref); requests
// with it fail from then on.
func (s *Store) RemoveKey(ctx context.Context, ref string) (Key, error) {
	col, v := "id", ref
	if strings.HasPrefix(ref, KeyPrefix) {
		col, v = "hash", hashOf(ref)
	}
	k, err := scanKey(s.db.QueryRowContext(ctx, `SELECT `+keyColumns+` FROM tenant_keys WHERE `+col+` = ?`, v))
	if errors.Is(err, sql.ErrNoRows) {
		return Key{}, fmt.Errorf("%w: %s", ErrNoKey, ref)
	}
	if err != nil {
		return Key{}, fmt.Errorf("remove key: %w", err)
	}
	if _, err := s.db.ExecContext(ctx, `DELETE FROM tenant_keys WHERE id = ?`, k.ID); err != nil {
		return Key{}, fmt.Errorf("remove key %s: %w", k.ID, err)
	}
	return k, nil
}

// Lookup finds the key secret, and records its use.
func (s *Store) Lookup(ctx context.Context, secret string) (Key, error) {
	if !WellFormed(secret) {
		return Key{}, ErrUnknownKey // not one of ours: no query needed
	}
	h := hashOf(secret)
	k, err := scanKey(s.db.QueryRowContext(ctx, `SELECT `+keyColumns+` FROM tenant_keys WHERE hash = ?`, h))
	if errors.Is(err, sql.ErrNoRows) {
		return Key{}, ErrUnknownKey
	}
	if err != nil {
		return Key{}, fmt.Errorf("look up key: %w", err)
	}
	now := s.now()
	s.mu.Lock()
	due := now.Sub(s.used[h]) >= usedEvery
	if due {
		s.used[h] = now
	}
	s.mu.Unlock()
	if due { // best effort: a failed write only loses the timestamp
		_, _ = s.db.ExecContext(context.WithoutCancel(ctx), `UPDATE tenant_keys SET last_used_at = ? WHERE hash = ?`, now.UnixNano(), h)
		k.LastUsedAt = now
	}
	return k, nil
}

// SetQuota replaces tenant t's overrides of the server's default quota.
// An empty Override removes them.
func (s *Store) SetQuota(ctx context.Context, t string, o Override) error {
	if t != Default {
		if err := ValidName(t); err != nil {
			return err
		}
	}
	if err := o.Validate(); err != nil {
		return err
	}
	if o == (Override{}) {
		if _, err := s.db.ExecContext(ctx, `DELETE FROM tenant_quotas WHERE tenant = ?`, t); err != nil {
			return fmt.Errorf("set quota of %s: %w", Display(t), err)
		}
		return nil
	}
	b, _ := json.Marshal(o) // plain numbers always marshal
	if _, err := s.db.ExecContext(ctx, `INSERT INTO tenant_quotas (tenant, quota, updated_at) VALUES (?,?,?)
		ON CONFLICT(tenant) DO UPDATE SET quota = excluded.quota, updated_at = excluded.updated_at`,
		t, string(b), s.now().UnixNano()); err != nil {
		return fmt.Errorf("set quota of %s: %w", Display(t), err)
	}
	return nil
}

// Quota returns tenant t's overrides (empty if none).
func (s *Store) Quota(ctx context.Context, t string) (Override, error) {
	var raw string
	err := s.db.QueryRowContext(ctx, `SELECT quota FROM tenant_quotas WHERE tenant = ?`, t).Scan(&raw)
	if errors.Is(err, sql.ErrNoRows) {
		return Override{}, nil
	}
	if err != nil {
		return Override{}, fmt.Errorf("quota of %s: %w", Display(t), err)
	}
	var o Override
	if err := json.Unmarshal([]byte(raw), &o); err != nil {
		return Override{}, fmt.Errorf("quota of %s: stored value: %w", Display(t), err)
	}
	return o, nil
}

// Tenants lists the tenants that have keys or quota overrides, sorted.
func (s *Store) Tenants(ctx context.Context) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT tenant FROM tenant_keys UNION SELECT tenant FROM tenant_quotas ORDER BY 1`)
	if err != nil {
		return nil, fmt.Errorf("list tenants: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var t string
		if err := rows.Scan(&t); err != nil {
			return nil, fmt.Errorf("list tenants: %w", err)
		}
		out = append(out, t)
	}
	return out, rows.Err()
}
