// Package state keeps what must survive a restart of `firesandbox serve`:
// the long-lived sandboxes and the state each one is in, in one SQLite
// file (<data>/state.db).
//
// A sandbox moves through these states; the in-between ones (creating,
// hibernating, resuming) are written before the slow work starts, so a
// crash in the middle leaves a record that Reconcile can settle:
//
//	creating -> running <-> hibernating -> hibernated -> resuming -> running
//	running -> forking -> running;  any -> deleting -> deleted
//	running/creating (no VM after a restart) -> lost
//
// Which moves are legal, and what each operation rolls back to, is the
// sandbox package's transition table; this package stores the result.
//
//	db, _ := state.Open("/var/lib/firesandbox/state.db")
//	_ = db.Create(ctx, state.Sandbox{ID: "sb-1", State: state.Creating, ...})
//	_ = db.Transition(ctx, "sb-1", state.Change{To: state.Running}, state.Creating)
//	changed, _ := db.Reconcile(ctx, snapshotUsable) // at start, before serving
package state

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver (pure Go)
)

// Sentinel errors.
var (
	// ErrNotFound means no sandbox has the id.
	ErrNotFound = errors.New("sandbox not found")
	// ErrConflict means the sandbox is not in a state the change allows.
	ErrConflict = errors.New("sandbox state conflict")
	// ErrSchema means the database was written by a newer firesandbox.
	ErrSchema = errors.New("state database schema")
)

// Extensions are migrations of other tables in the same database (tenants,
// keys, submissions), applied after the sandbox migrations, in order.
// Packages append to it from init; the order of the slice is the order of
// the schema versions, so only ever append.
var Extensions []string

// State is where a sandbox is in its lifecycle.
type State string

// Sandbox states.
const (
	Creating    State = "creating"
	Running     State = "running"
	Hibernating State = "hibernating"
	Hibernated  State = "hibernated"
	Resuming    State = "resuming"
	Forking     State = "forking"
	Deleting    State = "deleting"
	Lost        State = "lost"
	Deleted     State = "deleted"
)

func (s State) String() string { return string(s) }

// Sandbox is the persisted record of one sandbox.
type Sandbox struct {
	ID string
	// Tenant owns the sandbox; only its keys see it.
	Tenant   string
	Language string
	Version  string
	VCPUs    int
	// MemoryMiB and DiskMiB are the requested shape; zero VCPUs or
	// MemoryMiB mean the server's defaults.
	MemoryMiB int
	DiskMiB   int
	// IdleTimeout is how long the sandbox may sit unused before it is
	// hibernated; zero never.
	IdleTimeout time.Duration
	State       State
	// SnapshotDir holds the hibernated VM while State is hibernated or
	// resuming.
	SnapshotDir string
	// Reason says why the sandbox was lost.
	Reason string
	// Metadata is the client's own labels; Env applies to every exec.
	Metadata map[string]string
	Env      map[string]string
	// ExpiresAt is the end of the sandbox's lifetime (zero: none); at it
	// the sandbox is killed, or paused if OnTimeout says "pause".
	ExpiresAt time.Time
	OnTimeout string
	// Network is the sandbox's network policy as JSON ("" for none).
	Network string
	// Parent is the sandbox this one was forked from.
	Parent string
	// Generation counts changes of ownership and of hibernated state, so
	// a stale writer can be told from the current one.
	Generation int64
	CreatedAt  time.Time
	LastUsedAt time.Time
	UpdatedAt  time.Time
}

// DB is the state database.
type DB struct {
	db  *sql.DB
	now func() time.Time
}

// migrations bring a database from user_version i to i+1. Append only:
// a database written by an older firesandbox is upgraded in place.
var migrations = []string{
	// 0 -> 1: the first schema.
	`CREATE TABLE IF NOT EXISTS sandboxes (
		id              TEXT PRIMARY KEY,
		language        TEXT NOT NULL,
		version         TEXT NOT NULL,
		vcpus           INTEGER NOT NULL,
		memory_mib      INTEGER NOT NULL,
		disk_mib        INTEGER NOT NULL,
		idle_timeout_ms INTEGER NOT NULL,
		state           TEXT NOT NULL,
		snapshot_dir    TEXT NOT NULL DEFAULT '',
		reason          TEXT NOT NULL DEFAULT '',
		created_at      INTEGER NOT NULL,
		last_used_at    INTEGER NOT NULL,
		updated_at      INTEGER NOT NULL
	);
	CREATE INDEX IF NOT EXISTS sandboxes_state ON sandboxes(state);`,
	// 1 -> 2: tenants, labels, lifetimes, network policy, forks, generations.
	`ALTER TABLE sandboxes ADD COLUMN tenant TEXT NOT NULL DEFAULT '';
	ALTER TABLE sandboxes ADD COLUMN metadata TEXT NOT NULL DEFAULT '';
	ALTER TABLE sandboxes ADD COLUMN env TEXT NOT NULL DEFAULT '';
	ALTER TABLE sandboxes ADD COLUMN expires_at INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE sandboxes ADD COLUMN on_timeout TEXT NOT NULL DEFAULT '';
	ALTER TABLE sandboxes ADD COLUMN network TEXT NOT NULL DEFAULT '';
	ALTER TABLE sandboxes ADD COLUMN parent TEXT NOT NULL DEFAULT '';
	ALTER TABLE sandboxes ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
	CREATE INDEX IF NOT EXISTS sandboxes_tenant ON sandboxes(tenant, state);`,
}

// migrate applies the migrations the database has not seen, each in its
// own transaction with its version bump.
func migrate(ctx context.Context, db *sql.DB, extra []string) error {
	all := append(append([]string(nil), migrations...), extra...)
	var v int
	if err := db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return err
	}
	if v > len(all) {
		return fmt.Errorf("%w: schema version %d is newer than this firesandbox knows (%d)", ErrSchema, v, len(all))
	}
	for ; v < len(all); v++ {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, all[v]); err != nil {
			tx.Rollback()
			return fmt.Errorf("migration %d: %w", v+1, err)
		}
		if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", v+1)); err != nil {
			tx.Rollback()
			return fmt.Errorf("migration %d: %w", v+1, err)
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("migration %d: %w", v+1, err)
		}
	}
	return nil
}

// tombstoneTTL is how long deleted sandboxes are remembered, so a late
// exec gets "deleted" rather than "not found".
const tombstoneTTL = 7 * 24 * time.Hour

// Open opens (creating if needed) the database at path, in WAL mode with
// a busy timeout, and prunes old tombstones.
func Open(path string) (*DB, error) {
	dsn := "file:" + path + "?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open state %s: %w", path, err)
	}
	// One connection: the load is a few writes per request, and a single
	// writer never meets SQLITE_BUSY from itself.
	db.SetMaxOpenConns(1)
	d := &DB{db: db, now: time.Now}
	ctx := context.Background()
	if err := migrate(ctx, db, Extensions); err != nil {
		db.Close()
		return nil, fmt.Errorf("open state %s: %w", path, err)
	}
	var mode string
	if err := db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil || !strings.EqualFold(mode, "wal") {
		db.Close()
		return nil, fmt.Errorf("open state %s: journal mode %q, want wal: %v", path, mode, err)
	}
	if _, err := db.ExecContext(ctx, "DELETE FROM sandboxes WHERE state = ? AND updated_at < ?",
		Deleted, d.now().Add(-tombstoneTTL).UnixNano()); err != nil {
		db.Close()
		return nil, fmt.Errorf("open state %s: prune: %w", path, err)
	}
	return d, nil
}

// Close closes the database.
func (d *DB) Close() error { return d.db.Close() }

const columns = `id, language, version, vcpus, memory_mib, disk_mib, idle_timeout_ms, state, snapshot_dir, reason, created_at, last_used_at, updated_at, tenant, metadata, env, expires_at, on_timeout, network, parent, generation`

type scanner interface{ Scan(dest ...any) error }

func scan(r scanner) (Sandbox, error) {
	var s Sandbox
	var idle, created, used, updated, expires int64
	var meta, env string
	err := r.Scan(&s.ID, &s.Language, &s.Version, &s.VCPUs, &s.MemoryMiB, &s.DiskMiB, &idle,
		&s.State, &s.SnapshotDir, &s.Reason, &created, &used, &updated,
		&s.Tenant, &meta, &env, &expires, &s.OnTimeout, &s.Network, &s.Parent, &s.Generation)
	if err != nil {
		return s, err
	}
	s.IdleTimeout = time.Duration(idle) * time.Millisecond
	s.CreatedAt, s.LastUsedAt, s.UpdatedAt = time.Unix(0, created), time.Unix(0, used), time.Unix(0, updated)
	if expires != 0 {
		s.ExpiresAt = time.Unix(0, expires)
	}
	if s.Metadata, err = decodeMap(meta); err == nil {
		s.Env, err = decodeMap(env)
	}
	return s, err
}

// Create inserts a new sandbox record.
func (d *DB) Create(ctx context.Context, s Sandbox) error {
	now := d.now()
	if s.CreatedAt.IsZero() {
		s.CreatedAt = now
	}
	if s.LastUsedAt.IsZero() {
		s.LastUsedAt = now
	}
	var expires int64
	if !s.ExpiresAt.IsZero() {
		expires = s.ExpiresAt.UnixNano()
	}
	_, err := d.db.ExecContext(ctx, `INSERT INTO sandboxes (`+columns+`) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`,
		s.ID, s.Language, s.Version, s.VCPUs, s.MemoryMiB, s.DiskMiB, s.IdleTimeout.Milliseconds(),
		s.State, s.SnapshotDir, s.Reason, s.CreatedAt.UnixNano(), s.LastUsedAt.UnixNano(), now.UnixNano(),
		s.Tenant, encodeMap(s.Metadata), encodeMap(s.Env), expires, s.OnTimeout, s.Network, s.Parent, s.Generation)
	if err != nil {
		return fmt.Errorf("create sandbox %s: %w", s.ID, err)
	}
	return nil
}

// Get returns one sandbox.
func (d *DB) Get(ctx context.Context, id string) (Sandbox, error) {
	s, err := scan(d.db.QueryRowContext(ctx, `SELECT `+columns+` FROM sandboxes WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return Sandbox{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return Sandbox{}, fmt.Errorf("get sandbox %s: %w", id, err)
	}
	return s, nil
}

// List returns the sandboxes in any of states (all but deleted ones if
// none are given), oldest first.
func (d *DB) List(ctx context.Context, states ...State) ([]Sandbox, error) {
	q := `SELECT ` + columns + ` FROM sandboxes WHERE state != 'deleted' ORDER BY created_at, id`
	var args []any
	if len(states) > 0 {
		q = `SELECT ` + columns + ` FROM sandboxes WHERE state IN (?` + strings.Repeat(",?", len(states)-1) + `) ORDER BY created_at, id`
		for _, s := range states {
			args = append(args, s)
		}
	}
	rows, err := d.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list sandboxes: %w", err)
	}
	defer rows.Close()
	var out []Sandbox
	for rows.Next() {
		s, err := scan(rows)
		if err != nil {
			return nil, fmt.Errorf("list sandboxes: %w", err)
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list sandboxes: %w", err)
	}
	return out, nil
}

// Count returns how many sandboxes are in each state (deleted ones
// excluded).
func (d *DB) Count(ctx context.Context) (map[State]int, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT state, COUNT(*) FROM sandboxes WHERE state != 'deleted' GROUP BY state`)
	if err != nil {
		return nil, fmt.Errorf("count sandboxes: %w", err)
	}
	defer rows.Close()
	out := map[State]int{}
	for rows.Next() {
		var s State
		var n int
		if err := rows.Scan(&s, &n); err != nil {
			return nil, fmt.Errorf("count sandboxes: %w", err)
		}
		out[s] = n
	}
	return out, rows.Err()
}

// Change is a state transition and what it sets alongside.
type Change struct {
	To State
	// SnapshotDir, if not nil, replaces the snapshot directory.
	SnapshotDir *string
	// Reason is recorded (empty clears it).
	Reason string
	// Bump increments the generation (a new hibernation, a new owner).
	Bump bool
}

// Transition applies c if the sandbox is in one of from (any state but
// deleted when from is empty). It fails with ErrNotFound or, naming the
// current state, ErrConflict.
func (d *DB) Transition(ctx context.Context, id string, c Change, from ...State) error {
	q := `UPDATE sandboxes SET state = ?, reason = ?, updated_at = ?`
	args := []any{c.To, c.Reason, d.now().UnixNano()}
	if c.SnapshotDir != nil {
		q += `, snapshot_dir = ?`
		args = append(args, *c.SnapshotDir)
	}
	if c.Bump {
		q += `, generation = generation + 1`
	}
	q += ` WHERE id = ?`
	args = append(args, id)
	if len(from) == 0 {
		q += ` AND state != 'deleted'`
	} else {
		q += ` AND state IN (?` + strings.Repeat(",?", len(from)-1) + `)`
		for _, s := range from {
			args = append(args, s)
		}
	}
	res, err := d.db.ExecContext(ctx, q, args...)
	if err != nil {
		return fmt.Errorf("sandbox %s -> %s: %w", id, c.To, err)
	}
	if n, _ := res.RowsAffected(); n == 1 {
		return nil
	}
	cur, err := d.Get(ctx, id)
	if err != nil {
		return err
	}
	return fmt.Errorf("%w: sandbox %s is %s, cannot become %s", ErrConflict, id, cur.State, c.To)
}

func encodeMap(m map[string]string) string {
	if len(m) == 0 {
		return ""
	}
	b, _ := json.Marshal(m) // a map of strings always marshals
	return string(b)
}

func decodeMap(s string) (map[string]string, error) {
	if s == "" {
		return nil, nil
	}
	var m map[string]string
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		return nil, fmt.Errorf("decode stored map: %w", err)
	}
	return m, nil
}

// SetExpiry sets the end of a sandbox's lifetime (zero: none).
func (d *DB) SetExpiry(ctx context.Context, id string, at time.Time) error {
	var ns int64
	if !at.IsZero() {
		ns = at.UnixNano()
	}
	res, err := d.db.ExecContext(ctx, `UPDATE sandboxes SET expires_at = ?, updated_at = ? WHERE id = ? AND state != 'deleted'`,
		ns, d.now().UnixNano(), id)
	if err != nil {
		return fmt.Errorf("set expiry of sandbox %s: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return nil
}

// SetNetwork replaces a sandbox's network policy.
func (d *DB) SetNetwork(ctx context.Context, id, policy string) error {
	res, err := d.db.ExecContext(ctx, `UPDATE sandboxes SET network = ?, updated_at = ? WHERE id = ? AND state != 'deleted'`,
		policy, d.now().UnixNano(), id)
	if err != nil {
		return fmt.Errorf("set network of sandbox %s: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return nil
}

// SQL returns the underlying database, for packages that keep their own
// tables in it (see Extensions).
func (d *DB) SQL() *sql.DB { return d.db }

// Touch records that a sandbox was used at t.
func (d *DB) Touch(ctx context.Context, id string, t time.Time) error {
	if _, err := d.db.ExecContext(ctx, `UPDATE sandboxes SET last_used_at = ? WHERE id = ?`, t.UnixNano(), id); err != nil {
		return fmt.Errorf("touch sandbox %s: %w", id, err)
	}
	return nil
}

// Remove forgets a sandbox entirely (used when its creation failed, so
// it never existed for the caller).
func (d *DB) Remove(ctx context.Context, id string) error {
	if _, err := d.db.ExecContext(ctx, `DELETE FROM sandboxes WHERE id = ?`, id); err != nil {
		return fmt.Errorf("remove sandbox %s: %w", id, err)
	}
	return nil
}

// Reconciled is one sandbox whose state Reconcile changed.
type Reconciled struct {
	Sandbox
	From State
}

// Reconcile settles the records of a previous process at start, when no
// VM of this process exists yet: a sandbox that was running or being
// created has lost its VM; one caught hibernating or resuming, or
// hibernated, is resumable if snapshotOK says its snapshot is complete,
// else lost. It returns what it changed, with the new state.
func (d *DB) Reconcile(ctx context.Context, snapshotOK func(Sandbox) bool) ([]Reconciled, error) {
	all, err := d.List(ctx, Creating, Running, Hibernating, Hibernated, Resuming, Forking)
	if err != nil {
		return nil, err
	}
	var out []Reconciled
	for _, s := range all {
		c := Change{To: Lost}
		switch {
		case s.State == Creating:
			c.Reason = "the server stopped while the sandbox was being created"
		case s.State == Running, s.State == Forking:
			c.Reason = "the server stopped while the sandbox was running; its memory is gone"
		case slices.Contains([]State{Hibernating, Hibernated, Resuming}, s.State) && snapshotOK(s):
			c.To = Hibernated
		default:
			c.Reason = fmt.Sprintf("the server stopped while the sandbox was %s and left no complete snapshot", s.State)
		}
		if c.To == s.State {
			continue
		}
		if c.To == Lost {
			empty := ""
			c.SnapshotDir = &empty
		}
		if err := d.Transition(ctx, s.ID, c, s.State); err != nil {
			return out, fmt.Errorf("reconcile: %w", err)
		}
		from := s.State
		s.State, s.Reason = c.To, c.Reason
		if c.SnapshotDir != nil {
			s.SnapshotDir = *c.SnapshotDir
		}
		out = append(out, Reconciled{Sandbox: s, From: from})
	}
	return out, nil
}
