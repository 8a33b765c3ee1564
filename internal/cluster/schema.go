package cluster

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// migrations bring the directory from version i to i+1. Append only: a
// directory written by an older firesandbox is upgraded in place, by the
// first host of the new version to start; hosts of the old version keep
// working on it as long as a migration only adds.
var migrations = []string{
	// 1: hosts, sandboxes, API keys, tenants' quota overrides, and the
	// secrets every host must share.
	`CREATE TABLE hosts (
		id           text PRIMARY KEY,
		address      text NOT NULL,
		capacity     integer NOT NULL,
		load         integer NOT NULL DEFAULT 0,
		draining     boolean NOT NULL DEFAULT false,
		epoch        bigint NOT NULL DEFAULT 1,
		version      text NOT NULL DEFAULT '',
		heartbeat_at timestamptz NOT NULL,
		started_at   timestamptz NOT NULL
	);
	CREATE TABLE sandboxes (
		id         text PRIMARY KEY,
		tenant     text NOT NULL,
		owner      text REFERENCES hosts(id),
		state      text NOT NULL,
		generation bigint NOT NULL DEFAULT 0,
		remote     text NOT NULL DEFAULT '',
		reason     text NOT NULL DEFAULT '',
		record     jsonb NOT NULL,
		created_at timestamptz NOT NULL DEFAULT now(),
		updated_at timestamptz NOT NULL DEFAULT now()
	);
	CREATE INDEX sandboxes_owner_state ON sandboxes (owner, state);
	CREATE INDEX sandboxes_tenant_state ON sandboxes (tenant, state);
	CREATE TABLE api_keys (
		hash         text PRIMARY KEY,
		id           text NOT NULL UNIQUE,
		tenant       text NOT NULL,
		name         text NOT NULL DEFAULT '',
		created_at   timestamptz NOT NULL DEFAULT now(),
		last_used_at timestamptz
	);
	CREATE TABLE secrets (
		name       text PRIMARY KEY,
		value      bytea NOT NULL,
		created_at timestamptz NOT NULL DEFAULT now()
	);
	CREATE TABLE tenant_quotas (
		tenant     text PRIMARY KEY,
		quota      jsonb NOT NULL,
		updated_at timestamptz NOT NULL DEFAULT now()
	);
	CREATE INDEX api_keys_tenant ON api_keys (tenant);`,
}

// schemaLock is the advisory lock migrations hold, so hosts starting
// together migrate once.
const schemaLock = 0x66697265 // "fire"

// migrate applies the migrations the directory has not seen, in one
// transaction under the advisory lock.
func migrate(ctx context.Context, conn interface {
	Begin(context.Context) (pgx.Tx, error)
}) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, schemaLock); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS firesandbox_schema (
		version    integer PRIMARY KEY,
		applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return err
	}
	var v int
	if err := tx.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM firesandbox_schema`).Scan(&v); err != nil {
		return err
	}
	if v > len(migrations) {
		return fmt.Errorf("%w: version %d is newer than this firesandbox knows (%d); upgrade this host", ErrSchema, v, len(migrations))
	}
	for ; v < len(migrations); v++ {
		if _, err := tx.Exec(ctx, migrations[v]); err != nil {
			return fmt.Errorf("migration %d: %w", v+1, err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO firesandbox_schema (version) VALUES ($1)`, v+1); err != nil {
			return fmt.Errorf("migration %d: %w", v+1, err)
		}
	}
	return tx.Commit(ctx)
}
