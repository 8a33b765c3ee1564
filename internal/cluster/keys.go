package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/firesandbox/firesandbox/internal/tenant"
	"github.com/jackc/pgx/v5"
)

// Keys is a tenant.KeyStore in the shared directory: every host of the
// cluster sees the same API keys (their hashes) and quota overrides. Keys
// are made and hashed as tenant.Store makes them.
//
// What a host looked up is remembered for KeyFresh, so a request costs no
// query most of the time, and a key removed on one host stops working on
// the others within KeyFresh. While the directory does not answer, keys
// and overrides this host has seen keep working (so live sandboxes go on
// being served); keys it has not seen get ErrUnavailable (503), and a
// tenant whose overrides it has not seen gets the server's defaults.
type Keys struct {
	d   *Directory
	now func() time.Time

	mu     sync.Mutex
	used   map[string]time.Time // hash -> when last_used_at was last written
	seen   map[string]seenKey   // hash -> the key, when looked up
	quotas map[string]seenQuota // tenant -> its overrides, when read
}

// KeyFresh is how long a looked-up key or quota is used without asking
// the directory again.
const KeyFresh = 5 * time.Second

type seenKey struct {
	k  tenant.Key
	at time.Time
}

type seenQuota struct {
	o  tenant.Override
	at time.Time
}

var _ tenant.KeyStore = (*Keys)(nil)

// usedEvery is how often a key's last use is written, at most.
const usedEvery = time.Minute

// NewKeys returns the key store of directory d.
func NewKeys(d *Directory) *Keys {
	return &Keys{d: d, now: time.Now, used: map[string]time.Time{}, seen: map[string]seenKey{}, quotas: map[string]seenQuota{}}
}

func scanTenantKey(r pgx.Row) (tenant.Key, error) {
	var k tenant.Key
	var used *time.Time
	err := r.Scan(&k.ID, &k.Tenant, &k.Name, &k.CreatedAt, &used)
	if used != nil {
		k.LastUsedAt = *used
	}
	return k, err
}

const tenantKeyColumns = `id, tenant, name, created_at, last_used_at`

// CreateKey implements tenant.KeyStore.
func (s *Keys) CreateKey(ctx context.Context, t, name string) (string, tenant.Key, error) {
	if err := tenant.CheckKeyName(t, name); err != nil {
		return "", tenant.Key{}, err
	}
	secret := tenant.NewSecret()
	h := tenant.HashOf(secret)
	qctx, cancel := s.d.ctx(ctx)
	defer cancel()
	k, err := scanTenantKey(s.d.pool.QueryRow(qctx, `INSERT INTO api_keys (hash, id, tenant, name) VALUES ($1, $2, $3, $4)
		RETURNING `+tenantKeyColumns, h, tenant.IDOf(h), t, name))
	if err != nil {
		return "", tenant.Key{}, s.d.fail(ctx, "create key", err)
	}
	return secret, k, nil
}

// Keys implements tenant.KeyStore.
func (s *Keys) Keys(ctx context.Context, t string, all bool) ([]tenant.Key, error) {
	qctx, cancel := s.d.ctx(ctx)
	defer cancel()
	rows, err := s.d.pool.Query(qctx, `SELECT `+tenantKeyColumns+` FROM api_keys WHERE $1 OR tenant = $2 ORDER BY created_at, id`, all, t)
	if err != nil {
		return nil, s.d.fail(ctx, "list keys", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (tenant.Key, error) { return scanTenantKey(r) })
	if err != nil {
		return nil, s.d.fail(ctx, "list keys", err)
	}
	return out, nil
}

// RemoveKey implements tenant.KeyStore.
func (s *Keys) RemoveKey(ctx context.Context, ref string) (tenant.Key, error) {
	col, v := "id", ref
	if strings.HasPrefix(ref, tenant.KeyPrefix) {
		col, v = "hash", tenant.HashOf(ref)
	}
	qctx, cancel := s.d.ctx(ctx)
	defer cancel()
	k, err := scanTenantKey(s.d.pool.QueryRow(qctx, `DELETE FROM api_keys WHERE `+col+` = $1 RETURNING `+tenantKeyColumns, v))
	if errors.Is(err, pgx.ErrNoRows) {
		return tenant.Key{}, fmt.Errorf("%w: %s", tenant.ErrNoKey, ref)
	}
	if err != nil {
		return tenant.Key{}, s.d.fail(ctx, "remove key", err)
	}
	s.mu.Lock()
	for h, sk := range s.seen {
		if sk.k.ID == k.ID {
			delete(s.seen, h)
		}
	}
	s.mu.Unlock()
	return k, nil
}

// Lookup implements tenant.KeyStore. While the directory does not
// answer, no key works (ErrUnavailable: 503), rather than every key.
func (s *Keys) Lookup(ctx context.Context, secret string) (tenant.Key, error) {
	if !tenant.WellFormed(secret) {
		return tenant.Key{}, tenant.ErrUnknownKey
	}
	h := tenant.HashOf(secret)
	now := s.now()
	s.mu.Lock()
	sk, ok := s.seen[h]
	s.mu.Unlock()
	if ok && now.Sub(sk.at) < KeyFresh {
		return sk.k, nil
	}
	qctx, cancel := s.d.ctx(ctx)
	defer cancel()
	k, err := scanTenantKey(s.d.pool.QueryRow(qctx, `SELECT `+tenantKeyColumns+` FROM api_keys WHERE hash = $1`, h))
	if errors.Is(err, pgx.ErrNoRows) {
		s.mu.Lock()
		delete(s.seen, h)
		s.mu.Unlock()
		return tenant.Key{}, tenant.ErrUnknownKey
	}
	if err != nil {
		err = s.d.fail(ctx, "look up key", err)
		if ok && errors.Is(err, ErrUnavailable) {
			return sk.k, nil // seen before the outage
		}
		return tenant.Key{}, err
	}
	s.mu.Lock()
	s.seen[h] = seenKey{k: k, at: now}
	s.mu.Unlock()
	s.mu.Lock()
	due := now.Sub(s.used[h]) >= usedEvery
	if due {
		s.used[h] = now
	}
	s.mu.Unlock()
	if due { // best effort: a failed write only loses the timestamp
		uctx, cancel := s.d.ctx(context.WithoutCancel(ctx))
		_, _ = s.d.pool.Exec(uctx, `UPDATE api_keys SET last_used_at = $2 WHERE hash = $1`, h, now)
		cancel()
		k.LastUsedAt = now
	}
	return k, nil
}

// SetQuota implements tenant.KeyStore.
func (s *Keys) SetQuota(ctx context.Context, t string, o tenant.Override) error {
	if t != tenant.Default {
		if err := tenant.ValidName(t); err != nil {
			return err
		}
	}
	if err := o.Validate(); err != nil {
		return err
	}
	qctx, cancel := s.d.ctx(ctx)
	defer cancel()
	var err error
	if o == (tenant.Override{}) {
		_, err = s.d.pool.Exec(qctx, `DELETE FROM tenant_quotas WHERE tenant = $1`, t)
	} else {
		b, _ := json.Marshal(o) // plain numbers always marshal
		_, err = s.d.pool.Exec(qctx, `INSERT INTO tenant_quotas (tenant, quota) VALUES ($1, $2)
			ON CONFLICT (tenant) DO UPDATE SET quota = excluded.quota, updated_at = now()`, t, b)
	}
	if err != nil {
		return s.d.fail(ctx, "set quota of "+tenant.Display(t), err)
	}
	s.mu.Lock()
	delete(s.quotas, t)
	s.mu.Unlock()
	return nil
}

// Quota implements tenant.KeyStore.
func (s *Keys) Quota(ctx context.Context, t string) (tenant.Override, error) {
	now := s.now()
	s.mu.Lock()
	sq, ok := s.quotas[t]
	s.mu.Unlock()
	if ok && now.Sub(sq.at) < KeyFresh {
		return sq.o, nil
	}
	qctx, cancel := s.d.ctx(ctx)
	defer cancel()
	var raw []byte
	var o tenant.Override
	err := s.d.pool.QueryRow(qctx, `SELECT quota FROM tenant_quotas WHERE tenant = $1`, t).Scan(&raw)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		err = s.d.fail(ctx, "quota of "+tenant.Display(t), err)
		if errors.Is(err, ErrUnavailable) {
			return sq.o, nil // what was seen before the outage, else the defaults
		}
		return tenant.Override{}, err
	default:
		if err := json.Unmarshal(raw, &o); err != nil {
			return tenant.Override{}, fmt.Errorf("quota of %s: stored value: %w", tenant.Display(t), err)
		}
	}
	s.mu.Lock()
	s.quotas[t] = seenQuota{o: o, at: now}
	s.mu.Unlock()
	return o, nil
}

// Tenants implements tenant.KeyStore.
func (s *Keys) Tenants(ctx context.Context) ([]string, error) {
	qctx, cancel := s.d.ctx(ctx)
	defer cancel()
	rows, err := s.d.pool.Query(qctx, `SELECT tenant FROM api_keys UNION SELECT tenant FROM tenant_quotas ORDER BY 1`)
	if err != nil {
		return nil, s.d.fail(ctx, "list tenants", err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, s.d.fail(ctx, "list tenants", err)
	}
	return out, nil
}
