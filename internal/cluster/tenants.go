package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Tenant is a tenant as the directory keeps it, so every host sees the
// same ones. Quotas are the tenant package's to define: the directory
// stores them as JSON and never reads them.
type Tenant struct {
	Name      string
	Quotas    json.RawMessage
	CreatedAt time.Time
}

// Key is an API key as the directory keeps it: its hash only (the tenant
// package hashes; the directory compares bytes).
type Key struct {
	ID        string
	Tenant    string
	Name      string
	Hash      []byte
	CreatedAt time.Time
	// RevokedAt is when the key was revoked; zero while it is valid.
	RevokedAt time.Time
}

// PutTenant adds a tenant or replaces its quotas.
func (d *Directory) PutTenant(ctx context.Context, t Tenant) error {
	if t.Name == "" {
		return fmt.Errorf("put tenant: empty name")
	}
	q := t.Quotas
	if len(q) == 0 {
		q = json.RawMessage("{}")
	}
	if !json.Valid(q) {
		return fmt.Errorf("put tenant %s: quotas are not JSON", t.Name)
	}
	qctx, cancel := d.ctx(ctx)
	defer cancel()
	if _, err := d.pool.Exec(qctx, `INSERT INTO tenants (name, quotas) VALUES ($1, $2)
		ON CONFLICT (name) DO UPDATE SET quotas = excluded.quotas`, t.Name, []byte(q)); err != nil {
		return d.fail(ctx, "put tenant "+t.Name, err)
	}
	return nil
}

// Tenant returns one tenant.
func (d *Directory) Tenant(ctx context.Context, name string) (Tenant, error) {
	qctx, cancel := d.ctx(ctx)
	defer cancel()
	var t Tenant
	var q []byte
	err := d.pool.QueryRow(qctx, `SELECT name, quotas, created_at FROM tenants WHERE name = $1`, name).Scan(&t.Name, &q, &t.CreatedAt)
	if err != nil {
		return Tenant{}, d.fail(ctx, "get tenant "+name, err)
	}
	t.Quotas = q
	return t, nil
}

// Tenants returns every tenant, by name.
func (d *Directory) Tenants(ctx context.Context) ([]Tenant, error) {
	qctx, cancel := d.ctx(ctx)
	defer cancel()
	rows, err := d.pool.Query(qctx, `SELECT name, quotas, created_at FROM tenants ORDER BY name`)
	if err != nil {
		return nil, d.fail(ctx, "list tenants", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Tenant, error) {
		var t Tenant
		var q []byte
		err := r.Scan(&t.Name, &q, &t.CreatedAt)
		t.Quotas = q
		return t, err
	})
	if err != nil {
		return nil, d.fail(ctx, "list tenants", err)
	}
	return out, nil
}

// DeleteTenant removes a tenant and its keys. Its sandboxes stay until
// deleted.
func (d *Directory) DeleteTenant(ctx context.Context, name string) error {
	qctx, cancel := d.ctx(ctx)
	defer cancel()
	tag, err := d.pool.Exec(qctx, `DELETE FROM tenants WHERE name = $1`, name)
	if err != nil {
		return d.fail(ctx, "delete tenant "+name, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("tenant %s: %w", name, ErrNotFound)
	}
	return nil
}

// PutKey adds an API key; its tenant must exist and its hash be new.
func (d *Directory) PutKey(ctx context.Context, k Key) error {
	if k.ID == "" || k.Tenant == "" || len(k.Hash) == 0 {
		return fmt.Errorf("put key: id, tenant and hash are required")
	}
	qctx, cancel := d.ctx(ctx)
	defer cancel()
	if _, err := d.pool.Exec(qctx, `INSERT INTO api_keys (id, tenant, name, hash) VALUES ($1, $2, $3, $4)`,
		k.ID, k.Tenant, k.Name, k.Hash); err != nil {
		return d.fail(ctx, "put key "+k.ID, err)
	}
	return nil
}

func scanKey(r pgx.Row) (Key, error) {
	var k Key
	var revoked *time.Time
	err := r.Scan(&k.ID, &k.Tenant, &k.Name, &k.Hash, &k.CreatedAt, &revoked)
	if revoked != nil {
		k.RevokedAt = *revoked
	}
	return k, err
}

// KeyByHash returns the key with this hash, revoked or not (the caller
// refuses revoked ones); ErrNotFound if there is none.
func (d *Directory) KeyByHash(ctx context.Context, hash []byte) (Key, error) {
	qctx, cancel := d.ctx(ctx)
	defer cancel()
	k, err := scanKey(d.pool.QueryRow(qctx, `SELECT id, tenant, name, hash, created_at, revoked_at FROM api_keys WHERE hash = $1`, hash))
	if err != nil {
		return Key{}, d.fail(ctx, "look up key", err)
	}
	return k, nil
}

// Keys returns a tenant's keys ("" for every tenant's), oldest first.
func (d *Directory) Keys(ctx context.Context, tenant string) ([]Key, error) {
	qctx, cancel := d.ctx(ctx)
	defer cancel()
	rows, err := d.pool.Query(qctx, `SELECT id, tenant, name, hash, created_at, revoked_at FROM api_keys
		WHERE $1 = '' OR tenant = $1 ORDER BY created_at, id`, tenant)
	if err != nil {
		return nil, d.fail(ctx, "list keys", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Key, error) { return scanKey(r) })
	if err != nil {
		return nil, d.fail(ctx, "list keys", err)
	}
	return out, nil
}

// RevokeKey revokes a key at once on every host.
func (d *Directory) RevokeKey(ctx context.Context, id string) error {
	qctx, cancel := d.ctx(ctx)
	defer cancel()
	tag, err := d.pool.Exec(qctx, `UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1`, id)
	if err != nil {
		return d.fail(ctx, "revoke key "+id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("key %s: %w", id, ErrNotFound)
	}
	return nil
}

// Usage is what a tenant holds across the cluster, for quotas.
type Usage struct {
	// Live counts sandboxes holding a VM; Hibernated those that do not.
	Live, Hibernated int
	// MemoryMiB and DiskMiB add up the live sandboxes' memory and every
	// sandbox's disk.
	MemoryMiB, DiskMiB int64
}

// TenantUsage adds up a tenant's sandboxes on every host.
func (d *Directory) TenantUsage(ctx context.Context, tenant string) (Usage, error) {
	qctx, cancel := d.ctx(ctx)
	defer cancel()
	var u Usage
	err := d.pool.QueryRow(qctx, `SELECT
			count(*) FILTER (WHERE state = ANY($2)),
			count(*) FILTER (WHERE state = 'hibernated'),
			coalesce(sum((record->>'MemoryMiB')::bigint) FILTER (WHERE state = ANY($2)), 0),
			coalesce(sum((record->>'DiskMiB')::bigint) FILTER (WHERE state NOT IN ('lost', 'deleting')), 0)
		FROM sandboxes WHERE tenant = $1 AND state <> 'deleted'`, tenant, vmStates).Scan(&u.Live, &u.Hibernated, &u.MemoryMiB, &u.DiskMiB)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return Usage{}, d.fail(ctx, "tenant usage", err)
	}
	return u, nil
}
