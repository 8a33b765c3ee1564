package cluster

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/firesandbox/firesandbox/internal/state"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// DirectoryConfig configures a Directory.
type DirectoryConfig struct {
	// URL is the PostgreSQL connection string.
	URL string
	// TTL is how old a heartbeat may be before its host counts as dead.
	TTL time.Duration
	// QueryTimeout bounds each query (and each connection attempt).
	QueryTimeout time.Duration
	// MaxConns bounds the pool; default 8.
	MaxConns int32
}

// Directory is the shared directory in PostgreSQL: hosts and their
// leases, sandboxes and who owns them, tenants and their API keys. Every
// write that depends on ownership is fenced: it names the writer's lease
// (host and epoch) and changes nothing unless that lease is current and
// the writer still owns the sandbox at a generation no newer than the
// writer's. Time is the database's (now()), so hosts' clocks do not matter.
type Directory struct {
	pool    *pgxpool.Pool
	ttl     time.Duration
	timeout time.Duration
}

// Lease is a host's right to change shared state: its id and the epoch
// its latest registration got. A host that registers again (a restart)
// gets a new epoch, which fences whatever the old process still sends.
type Lease struct {
	Host  string
	Epoch int64
}

// vmStates hold a VM: they count against a host's capacity.
var vmStates = []string{string(state.Creating), string(state.Running), string(state.Resuming), string(state.Hibernating), string(state.Forking)}

// OpenDirectory connects to PostgreSQL and brings the schema up to date.
func OpenDirectory(ctx context.Context, cfg DirectoryConfig) (*Directory, error) {
	if cfg.QueryTimeout <= 0 {
		cfg.QueryTimeout = 3 * time.Second
	}
	if cfg.TTL <= 0 {
		return nil, fmt.Errorf("%w: directory TTL not set", ErrInvalidConfig)
	}
	pc, err := pgxpool.ParseConfig(cfg.URL)
	if err != nil {
		// pgx's message may quote the URL, password and all.
		return nil, fmt.Errorf("%w: cluster URL %s does not parse as a PostgreSQL connection string", ErrInvalidConfig, redact(cfg.URL))
	}
	pc.ConnConfig.ConnectTimeout = cfg.QueryTimeout
	pc.MaxConns = 8
	if cfg.MaxConns > 0 {
		pc.MaxConns = cfg.MaxConns
	}
	pc.HealthCheckPeriod = 5 * time.Second
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrUnavailable, redact(cfg.URL), err)
	}
	d := &Directory{pool: pool, ttl: cfg.TTL, timeout: cfg.QueryTimeout}
	mctx, cancel := context.WithTimeout(ctx, 4*cfg.QueryTimeout)
	defer cancel()
	if err := migrate(mctx, pool); err != nil {
		pool.Close()
		if errors.Is(err, ErrSchema) {
			return nil, err
		}
		return nil, d.fail(ctx, "migrate "+redact(cfg.URL), err)
	}
	return d, nil
}

// redact hides the password of a connection URL.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

// Close closes the connection pool.
func (d *Directory) Close() { d.pool.Close() }

// TTL returns the heartbeat age after which a host counts as dead.
func (d *Directory) TTL() time.Duration { return d.ttl }

func (d *Directory) ttlSecs() float64 { return d.ttl.Seconds() }

// ctx bounds one query by the query timeout.
func (d *Directory) ctx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, d.timeout)
}

// fail classifies err: the database answered (a constraint, a bug: the
// error as is), or it did not (ErrUnavailable), or the caller went away.
func (d *Directory) fail(ctx context.Context, op string, err error) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("%s: %w", op, ErrNotFound)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w", op, ctx.Err())
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		// Connection exceptions, shutdowns, too many connections: the
		// server is there but cannot serve.
		if strings.HasPrefix(pe.Code, "08") || strings.HasPrefix(pe.Code, "57P") || pe.Code == "53300" {
			return fmt.Errorf("%w: %s: %v", ErrUnavailable, op, err)
		}
		return fmt.Errorf("%s: %w", op, err)
	}
	return fmt.Errorf("%w: %s: %v", ErrUnavailable, op, err)
}

// leaseOK is the fence every ownership write carries: $1 host, $2 epoch,
// $3 TTL in seconds.
const leaseOK = `EXISTS (SELECT 1 FROM hosts WHERE id = $1 AND epoch = $2 AND heartbeat_at > now() - make_interval(secs => $3))`

// Host is one host as the directory has it.
type Host struct {
	ID       string
	Address  string
	Capacity int
	// Load is what the host reported with its last heartbeat (VMs in use).
	Load int
	// Used is how many of its sandboxes hold a VM, by the directory.
	Used      int
	Draining  bool
	Epoch     int64
	Version   string
	Heartbeat time.Time
	StartedAt time.Time
	// Live says the heartbeat is younger than the TTL.
	Live bool
}

// Free is how many more sandboxes the host may take.
func (h Host) Free() int { return max(h.Capacity-h.Used, 0) }

// HostInfo is what a host registers with.
type HostInfo struct {
	ID, Address, Version string
	Capacity             int
}

// Register adds or renews a host and gives it a new epoch: whatever an
// earlier process with the same id still sends is fenced from now on.
// It clears the draining flag: a host that starts again takes work.
func (d *Directory) Register(ctx context.Context, h HostInfo) (Lease, error) {
	qctx, cancel := d.ctx(ctx)
	defer cancel()
	var epoch int64
	err := d.pool.QueryRow(qctx, `INSERT INTO hosts (id, address, capacity, version, heartbeat_at, started_at)
		VALUES ($1, $2, $3, $4, now(), now())
		ON CONFLICT (id) DO UPDATE SET address = excluded.address, capacity = excluded.capacity,
			version = excluded.version, epoch = hosts.epoch + 1, draining = false,
			heartbeat_at = now(), started_at = now()
		RETURNING epoch`, h.ID, h.Address, h.Capacity, h.Version).Scan(&epoch)
	if err != nil {
		return Lease{}, d.fail(ctx, "register host "+h.ID, err)
	}
	return Lease{Host: h.ID, Epoch: epoch}, nil
}

// Heartbeat renews l and reports the host's load. It fails with
// ErrFenced if another process registered the same host id since.
func (d *Directory) Heartbeat(ctx context.Context, l Lease, load, capacity int) (draining bool, err error) {
	qctx, cancel := d.ctx(ctx)
	defer cancel()
	err = d.pool.QueryRow(qctx, `UPDATE hosts SET heartbeat_at = now(), load = $3, capacity = $4
		WHERE id = $1 AND epoch = $2 RETURNING draining`, l.Host, l.Epoch, load, capacity).Scan(&draining)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, fmt.Errorf("%w: host %s epoch %d was registered again by another process", ErrFenced, l.Host, l.Epoch)
	}
	if err != nil {
		return false, d.fail(ctx, "heartbeat", err)
	}
	return draining, nil
}

// SetDraining marks a host as taking no new sandboxes (or taking them
// again); its sandboxes stay where they are.
func (d *Directory) SetDraining(ctx context.Context, id string, draining bool) error {
	qctx, cancel := d.ctx(ctx)
	defer cancel()
	tag, err := d.pool.Exec(qctx, `UPDATE hosts SET draining = $2 WHERE id = $1`, id, draining)
	if err != nil {
		return d.fail(ctx, "set draining", err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("host %s: %w", id, ErrNotFound)
	}
	return nil
}

// Leave ends l: its hibernated sandboxes whose hibernation is in S3 are
// released (any live host adopts them at once) and its heartbeat is
// expired, so whatever else it owned is taken over without waiting for
// the TTL. It returns how many sandboxes it released.
func (d *Directory) Leave(ctx context.Context, l Lease) (released int, err error) {
	qctx, cancel := d.ctx(ctx)
	defer cancel()
	err = pgx.BeginFunc(qctx, d.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(qctx, `UPDATE sandboxes SET owner = NULL, generation = generation + 1, updated_at = now()
			WHERE owner = $1 AND state = 'hibernated' AND remote <> '' AND `+leaseOK, l.Host, l.Epoch, d.ttlSecs())
		if err != nil {
			return err
		}
		released = int(tag.RowsAffected())
		_, err = tx.Exec(qctx, `UPDATE hosts SET draining = true,
			heartbeat_at = now() - make_interval(secs => $3) - interval '1 second'
			WHERE id = $1 AND epoch = $2`, l.Host, l.Epoch, d.ttlSecs())
		return err
	})
	if err != nil {
		return 0, d.fail(ctx, "leave", err)
	}
	return released, nil
}

const hostColumns = `h.id, h.address, h.capacity, h.load, h.draining, h.epoch, h.version, h.heartbeat_at, h.started_at,
	h.heartbeat_at > now() - make_interval(secs => $1),
	(SELECT count(*) FROM sandboxes s WHERE s.owner = h.id AND s.state = ANY($2))`

func scanHost(r pgx.Row) (Host, error) {
	var h Host
	err := r.Scan(&h.ID, &h.Address, &h.Capacity, &h.Load, &h.Draining, &h.Epoch, &h.Version, &h.Heartbeat, &h.StartedAt, &h.Live, &h.Used)
	return h, err
}

// Hosts returns every host the directory knows, by id.
func (d *Directory) Hosts(ctx context.Context) ([]Host, error) {
	qctx, cancel := d.ctx(ctx)
	defer cancel()
	rows, err := d.pool.Query(qctx, `SELECT `+hostColumns+` FROM hosts h ORDER BY h.id`, d.ttlSecs(), vmStates)
	if err != nil {
		return nil, d.fail(ctx, "list hosts", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Host, error) { return scanHost(r) })
	if err != nil {
		return nil, d.fail(ctx, "list hosts", err)
	}
	return out, nil
}

// Place returns the hosts a new sandbox may go to: live, not draining,
// with room; self first if it qualifies, then the one with the most room.
// The answer is advice: Admit on the chosen host decides.
func (d *Directory) Place(ctx context.Context, self string) ([]Host, error) {
	all, err := d.Hosts(ctx)
	if err != nil {
		return nil, err
	}
	var out []Host
	for _, h := range all {
		if h.Live && !h.Draining && h.Free() > 0 {
			out = append(out, h)
		}
	}
	rank := func(h Host) int {
		if h.ID == self {
			return 1 << 30
		}
		return h.Free()
	}
	for i := 1; i < len(out); i++ { // insertion sort: a handful of hosts
		for j := i; j > 0 && rank(out[j]) > rank(out[j-1]); j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: every live host is full or draining", ErrFull)
	}
	return out, nil
}

// Entry is one sandbox as the directory has it.
type Entry struct {
	ID     string
	Tenant string
	// Owner is the host that runs or keeps the sandbox; "" when released
	// (a live host adopts it).
	Owner      string
	State      state.State
	Generation int64
	// Remote names the sandbox's hibernation in S3 (see
	// snapshot.HibernationName) when the current one is stored there.
	Remote string
	Reason string
	// Record is the sandbox's record as its owner last wrote it, with
	// State, Reason and Generation the directory's.
	Record    state.Sandbox
	UpdatedAt time.Time
	// OwnerAddress and OwnerLive describe the owner, for Lookup.
	OwnerAddress string
	OwnerLive    bool
}

const entryColumns = `s.id, s.tenant, s.owner, s.state, s.generation, s.remote, s.reason, s.record, s.updated_at`

func scanEntry(r pgx.Row, extra ...any) (Entry, error) {
	var e Entry
	var owner *string
	var rec []byte
	if err := r.Scan(append([]any{&e.ID, &e.Tenant, &owner, &e.State, &e.Generation, &e.Remote, &e.Reason, &rec, &e.UpdatedAt}, extra...)...); err != nil {
		return e, err
	}
	if owner != nil {
		e.Owner = *owner
	}
	if err := json.Unmarshal(rec, &e.Record); err != nil {
		return e, fmt.Errorf("sandbox %s: stored record: %w", e.ID, err)
	}
	e.Record.ID, e.Record.Tenant = e.ID, e.Tenant
	e.Record.State, e.Record.Reason, e.Record.Generation = e.State, e.Reason, e.Generation
	e.Record.SnapshotDir = ""
	return e, nil
}

func collectEntries(rows pgx.Rows) ([]Entry, error) {
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Entry, error) { return scanEntry(r) })
}

// encodeRecord is what the directory keeps of a local record: everything
// but where its files are on its host.
func encodeRecord(sb state.Sandbox) []byte {
	sb.SnapshotDir = ""
	b, _ := json.Marshal(sb) // a record of strings, numbers and times always marshals
	return b
}

// Admit records a new sandbox as owned by l's host, in state creating,
// unless that would put the host past its capacity (ErrFull) or l is not
// current (ErrFenced). Admissions to one host are serialised by a lock
// on its row, so concurrent creates never overshoot.
func (d *Directory) Admit(ctx context.Context, l Lease, sb state.Sandbox) error {
	qctx, cancel := d.ctx(ctx)
	defer cancel()
	err := pgx.BeginFunc(qctx, d.pool, func(tx pgx.Tx) error {
		var capacity int
		var draining, current bool
		err := tx.QueryRow(qctx, `SELECT capacity, draining,
				epoch = $2 AND heartbeat_at > now() - make_interval(secs => $3)
			FROM hosts WHERE id = $1 FOR UPDATE`, l.Host, l.Epoch, d.ttlSecs()).Scan(&capacity, &draining, &current)
		if errors.Is(err, pgx.ErrNoRows) || (err == nil && !current) {
			return fmt.Errorf("%w: host %s has no current lease", ErrFenced, l.Host)
		}
		if err != nil {
			return err
		}
		if draining {
			return fmt.Errorf("%w: host %s is draining", ErrFull, l.Host)
		}
		var used int
		if err := tx.QueryRow(qctx, `SELECT count(*) FROM sandboxes WHERE owner = $1 AND state = ANY($2)`,
			l.Host, vmStates).Scan(&used); err != nil {
			return err
		}
		if used >= capacity {
			return fmt.Errorf("%w: host %s holds %d of %d sandboxes", ErrFull, l.Host, used, capacity)
		}
		_, err = tx.Exec(qctx, `INSERT INTO sandboxes (id, tenant, owner, state, generation, record)
			VALUES ($1, $2, $3, $4, $5, $6)`, sb.ID, sb.Tenant, l.Host, string(state.Creating), sb.Generation, encodeRecord(sb))
		return err
	})
	if errors.Is(err, ErrFull) || errors.Is(err, ErrFenced) {
		return fmt.Errorf("admit sandbox %s: %w", sb.ID, err)
	}
	if err != nil {
		return d.fail(ctx, "admit sandbox "+sb.ID, err)
	}
	return nil
}

// Update writes sb's state, generation and record, fenced: only if l is
// current, l's host owns the sandbox and the directory's generation is
// not newer than sb's. A new hibernation (a higher generation) or any
// state but hibernated clears Remote, which then named an older one; the
// name it had is returned so its objects can be removed.
func (d *Directory) Update(ctx context.Context, l Lease, sb state.Sandbox) (oldRemote string, err error) {
	qctx, cancel := d.ctx(ctx)
	defer cancel()
	var newRemote string
	err = d.pool.QueryRow(qctx, `UPDATE sandboxes s SET state = $5, generation = $6, reason = $7, record = $8, updated_at = now(),
			remote = CASE WHEN $5 = 'hibernated' AND s.generation = $6 THEN s.remote ELSE '' END
		FROM (SELECT id, remote FROM sandboxes WHERE id = $4 FOR UPDATE) o
		WHERE s.id = o.id AND s.owner = $1 AND s.generation <= $6 AND `+leaseOK+`
		RETURNING o.remote, s.remote`,
		l.Host, l.Epoch, d.ttlSecs(), sb.ID, string(sb.State), sb.Generation, sb.Reason, encodeRecord(sb)).Scan(&oldRemote, &newRemote)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", d.refused(ctx, l, sb.ID, sb.Generation)
	}
	if err != nil {
		return "", d.fail(ctx, "update sandbox "+sb.ID, err)
	}
	if oldRemote == newRemote {
		oldRemote = ""
	}
	return oldRemote, nil
}

// refused explains why a fenced write changed nothing.
func (d *Directory) refused(ctx context.Context, l Lease, id string, gen int64) error {
	e, err := d.Get(ctx, id)
	switch {
	case errors.Is(err, ErrNotFound):
		return fmt.Errorf("sandbox %s: %w", id, ErrNotFound)
	case err != nil:
		return err
	case e.Owner != l.Host:
		return fmt.Errorf("%w: sandbox %s belongs to host %q now", ErrFenced, id, e.Owner)
	case e.Generation > gen:
		return fmt.Errorf("%w: sandbox %s is at generation %d, this write is for %d", ErrFenced, id, e.Generation, gen)
	}
	return fmt.Errorf("%w: host %s's lease (epoch %d) is not current", ErrFenced, l.Host, l.Epoch)
}

// Insert records a sandbox this host has but the directory does not
// (one made before the host joined the cluster), as owned by l's host.
// An existing entry is left alone: inserted says whether it was added.
func (d *Directory) Insert(ctx context.Context, l Lease, sb state.Sandbox) (inserted bool, err error) {
	qctx, cancel := d.ctx(ctx)
	defer cancel()
	tag, err := d.pool.Exec(qctx, `INSERT INTO sandboxes (id, tenant, owner, state, generation, reason, record)
		SELECT $4, $5, $1, $6, $7, $8, $9 WHERE `+leaseOK+` ON CONFLICT (id) DO NOTHING`,
		l.Host, l.Epoch, d.ttlSecs(), sb.ID, sb.Tenant, string(sb.State), sb.Generation, sb.Reason, encodeRecord(sb))
	if err != nil {
		return false, d.fail(ctx, "insert sandbox "+sb.ID, err)
	}
	return tag.RowsAffected() == 1, nil
}

// SetRemote records that the hibernation of sandbox id at generation gen
// is complete in S3 under name, fenced like Update.
func (d *Directory) SetRemote(ctx context.Context, l Lease, id string, gen int64, name string) error {
	qctx, cancel := d.ctx(ctx)
	defer cancel()
	tag, err := d.pool.Exec(qctx, `UPDATE sandboxes SET remote = $6, updated_at = now()
		WHERE id = $4 AND owner = $1 AND generation = $5 AND state = 'hibernated' AND `+leaseOK,
		l.Host, l.Epoch, d.ttlSecs(), id, gen, name)
	if err != nil {
		return d.fail(ctx, "record remote hibernation of "+id, err)
	}
	if tag.RowsAffected() == 0 {
		return d.refused(ctx, l, id, gen)
	}
	return nil
}

// Get returns one sandbox, with its owner's address and liveness.
func (d *Directory) Get(ctx context.Context, id string) (Entry, error) {
	qctx, cancel := d.ctx(ctx)
	defer cancel()
	var addr *string
	var live *bool
	e, err := scanEntry(d.pool.QueryRow(qctx, `SELECT `+entryColumns+`, h.address,
			h.heartbeat_at > now() - make_interval(secs => $2)
		FROM sandboxes s LEFT JOIN hosts h ON h.id = s.owner WHERE s.id = $1`, id, d.ttlSecs()), &addr, &live)
	if err != nil {
		return Entry{}, d.fail(ctx, "look up sandbox "+id, err)
	}
	if addr != nil {
		e.OwnerAddress = *addr
	}
	e.OwnerLive = live != nil && *live
	return e, nil
}

// Entries returns the sandboxes among ids that the directory has, by id.
func (d *Directory) Entries(ctx context.Context, ids []string) (map[string]Entry, error) {
	qctx, cancel := d.ctx(ctx)
	defer cancel()
	rows, err := d.pool.Query(qctx, `SELECT `+entryColumns+` FROM sandboxes s WHERE s.id = ANY($1)`, ids)
	if err != nil {
		return nil, d.fail(ctx, "look up sandboxes", err)
	}
	list, err := collectEntries(rows)
	if err != nil {
		return nil, d.fail(ctx, "look up sandboxes", err)
	}
	out := make(map[string]Entry, len(list))
	for _, e := range list {
		out[e.ID] = e
	}
	return out, nil
}

// Owned returns the sandboxes host owns, deleted ones excepted.
func (d *Directory) Owned(ctx context.Context, host string) ([]Entry, error) {
	qctx, cancel := d.ctx(ctx)
	defer cancel()
	rows, err := d.pool.Query(qctx, `SELECT `+entryColumns+` FROM sandboxes s
		WHERE s.owner = $1 AND s.state <> 'deleted' ORDER BY s.id`, host)
	if err != nil {
		return nil, d.fail(ctx, "list owned sandboxes", err)
	}
	out, err := collectEntries(rows)
	if err != nil {
		return nil, d.fail(ctx, "list owned sandboxes", err)
	}
	return out, nil
}

// List returns a tenant's sandboxes on every host, deleted ones
// excepted, oldest first.
func (d *Directory) List(ctx context.Context, tenant string) ([]Entry, error) {
	qctx, cancel := d.ctx(ctx)
	defer cancel()
	rows, err := d.pool.Query(qctx, `SELECT `+entryColumns+` FROM sandboxes s
		WHERE s.tenant = $1 AND s.state <> 'deleted' ORDER BY s.created_at, s.id`, tenant)
	if err != nil {
		return nil, d.fail(ctx, "list sandboxes", err)
	}
	out, err := collectEntries(rows)
	if err != nil {
		return nil, d.fail(ctx, "list sandboxes", err)
	}
	return out, nil
}

// Claimed is a sandbox a takeover gave this host.
type Claimed struct {
	Entry
	// From is the host that owned it ("" if it had been released).
	From string
	// OldRemote names S3 objects nobody needs any more ("" if none).
	OldRemote string
}

// orphan selects sandboxes whose owner is dead (heartbeat older than the
// TTL, $3) or that were released.
const orphan = `(s2.owner IS NULL OR h.heartbeat_at < now() - make_interval(secs => $3))`

// ClaimLost takes over, for l's host, up to limit sandboxes of dead hosts
// that cannot be resumed elsewhere: those that had a VM (its memory died
// with the host) and hibernated ones whose hibernation never reached S3.
// They become lost, with a reason saying so; deleting ones become
// deleted. Each is claimed by exactly one host (row locks, SKIP LOCKED).
func (d *Directory) ClaimLost(ctx context.Context, l Lease, limit int) ([]Claimed, error) {
	return d.claim(ctx, l, limit, `s2.state <> 'deleted' AND NOT (s2.state = 'hibernated' AND s2.remote <> '')`,
		`state = CASE WHEN s.state IN ('deleting', 'deleted') THEN 'deleted' ELSE 'lost' END,
		reason = CASE
			WHEN s.state = 'lost' THEN s.reason
			WHEN s.state IN ('deleting', 'deleted') THEN ''
			WHEN s.state = 'hibernated' THEN 'its host ' || coalesce(s.owner, '(released)') || ' stopped before its hibernation was stored in S3'
			ELSE 'its host ' || coalesce(s.owner, '(released)') || ' stopped heartbeating while the sandbox was ' || s.state || '; its memory is gone'
		END,
		remote = ''`)
}

// ClaimHibernated takes over, for l's host, up to limit hibernated
// sandboxes of dead or departed hosts whose hibernation is in S3. Each is
// claimed by exactly one host; its generation goes up, which fences the
// previous owner should it come back.
func (d *Directory) ClaimHibernated(ctx context.Context, l Lease, limit int) ([]Claimed, error) {
	return d.claim(ctx, l, limit, `s2.state = 'hibernated' AND s2.remote <> ''`, `state = s.state`)
}

func (d *Directory) claim(ctx context.Context, l Lease, limit int, which, set string) ([]Claimed, error) {
	qctx, cancel := d.ctx(ctx)
	defer cancel()
	rows, err := d.pool.Query(qctx, `UPDATE sandboxes s SET owner = $1, generation = s.generation + 1, updated_at = now(), `+set+`
		FROM (SELECT s2.id, s2.owner AS old_owner, s2.remote AS old_remote FROM sandboxes s2 LEFT JOIN hosts h ON h.id = s2.owner
			WHERE `+which+` AND `+orphan+`
			ORDER BY s2.updated_at, s2.id LIMIT $4 FOR UPDATE OF s2 SKIP LOCKED) c
		WHERE s.id = c.id AND `+leaseOK+`
		RETURNING `+entryColumns+`, coalesce(c.old_owner, ''), c.old_remote`, l.Host, l.Epoch, d.ttlSecs(), limit)
	if err != nil {
		return nil, d.fail(ctx, "take over sandboxes", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Claimed, error) {
		var c Claimed
		var err error
		c.Entry, err = scanEntry(r, &c.From, &c.OldRemote)
		if c.OldRemote == c.Remote {
			c.OldRemote = ""
		}
		return c, err
	})
	if err != nil {
		return nil, d.fail(ctx, "take over sandboxes", err)
	}
	return out, nil
}

// Prune forgets sandboxes deleted longer ago than age.
func (d *Directory) Prune(ctx context.Context, age time.Duration) (int, error) {
	qctx, cancel := d.ctx(ctx)
	defer cancel()
	tag, err := d.pool.Exec(qctx, `DELETE FROM sandboxes WHERE state = 'deleted' AND updated_at < now() - make_interval(secs => $1)`, age.Seconds())
	if err != nil {
		return 0, d.fail(ctx, "prune deleted sandboxes", err)
	}
	return int(tag.RowsAffected()), nil
}

// Secret returns the cluster's secret called name: size random bytes
// made by the first host that asks, the same for every host after. It
// keys what one host issues and another checks (E2B's access tokens).
func (d *Directory) Secret(ctx context.Context, name string, size int) ([]byte, error) {
	b := make([]byte, size)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	qctx, cancel := d.ctx(ctx)
	defer cancel()
	var v []byte
	var err error
	// A host racing this one to make the secret: our INSERT waits for its
	// commit and does nothing, but the SELECT reads the statement's
	// snapshot, taken before that commit, and finds no row. The next
	// statement's snapshot has it.
	for try := 0; try < 3; try++ {
		err = d.pool.QueryRow(qctx, `WITH ins AS (
				INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING RETURNING value)
			SELECT value FROM ins UNION ALL SELECT value FROM secrets WHERE name = $1 LIMIT 1`, name, b).Scan(&v)
		if !errors.Is(err, pgx.ErrNoRows) {
			break
		}
	}
	if err != nil {
		return nil, d.fail(ctx, "secret "+name, err)
	}
	return v, nil
}
