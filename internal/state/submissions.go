package state

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Submission queue errors.
var (
	// ErrNoSubmission means no submission of the tenant has the token.
	ErrNoSubmission = errors.New("submission not found")
	// ErrSubmissionQueueFull means the queue already holds its maximum.
	ErrSubmissionQueueFull = errors.New("submission queue is full")
	// ErrSubmissionActive means the submission is queued or running, so
	// it cannot be deleted.
	ErrSubmissionActive = errors.New("submission is queued or running")
)

// SubmissionState is where a submission is in the queue.
type SubmissionState string

// Submission states: queued -> running -> done; running -> queued when the
// process that ran it stopped before it finished.
const (
	SubmissionQueued  SubmissionState = "queued"
	SubmissionRunning SubmissionState = "running"
	SubmissionDone    SubmissionState = "done"
)

// Submission is one queued run of a code-runner API (Judge0's
// submissions). Request and Result are the API's own encoding; the store
// only keeps them.
type Submission struct {
	Token  string
	Tenant string
	State  SubmissionState
	// Status is the API's status code (Judge0's status id).
	Status     int
	Request    []byte
	Result     []byte
	CreatedAt  time.Time
	StartedAt  time.Time // zero until it ran
	FinishedAt time.Time // zero until done
}

// SubmissionStore is the persisted submission queue in the state
// database. Workers take the oldest queued submission with Claim and
// record its outcome with Finish:
//
//	subs, _ := state.OpenSubmissions(db)
//	_, _ = subs.Requeue(ctx) // at start: what a stopped process was running runs again
//	_ = subs.Enqueue(ctx, 100, state.Submission{Token: "t1", Tenant: "acme", Status: 1, Request: req})
//	s, ok, _ := subs.Claim(ctx, 2)
//	_ = subs.Finish(ctx, s.Token, 3, result)
type SubmissionStore struct {
	d *DB
}

const submissionsSchema = `
CREATE TABLE IF NOT EXISTS submissions (
	seq          INTEGER PRIMARY KEY AUTOINCREMENT,
	token        TEXT NOT NULL UNIQUE,
	tenant       TEXT NOT NULL,
	state        TEXT NOT NULL,
	status       INTEGER NOT NULL,
	request      BLOB NOT NULL,
	result       BLOB,
	created_at   INTEGER NOT NULL,
	started_at   INTEGER NOT NULL DEFAULT 0,
	finished_at  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS submissions_state ON submissions(state, seq);
CREATE INDEX IF NOT EXISTS submissions_tenant ON submissions(tenant, seq);
CREATE INDEX IF NOT EXISTS submissions_finished ON submissions(state, finished_at);
`

// OpenSubmissions returns the submission store of d, creating its table
// if needed.
func OpenSubmissions(d *DB) (*SubmissionStore, error) {
	if _, err := d.db.ExecContext(context.Background(), submissionsSchema); err != nil {
		return nil, fmt.Errorf("open submissions: create schema: %w", err)
	}
	return &SubmissionStore{d: d}, nil
}

const submissionColumns = `token, tenant, state, status, request, result, created_at, started_at, finished_at`

func scanSubmission(r scanner) (Submission, error) {
	var s Submission
	var created, started, finished int64
	err := r.Scan(&s.Token, &s.Tenant, &s.State, &s.Status, &s.Request, &s.Result, &created, &started, &finished)
	s.CreatedAt = time.Unix(0, created)
	if started != 0 {
		s.StartedAt = time.Unix(0, started)
	}
	if finished != 0 {
		s.FinishedAt = time.Unix(0, finished)
	}
	return s, err
}

// Enqueue adds subs, all or none, as queued, unless the queue would then
// hold more than maxQueued submissions (ErrSubmissionQueueFull; zero means
// no bound).
func (s *SubmissionStore) Enqueue(ctx context.Context, maxQueued int, subs ...Submission) error {
	tx, err := s.d.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("enqueue submissions: %w", err)
	}
	defer tx.Rollback()
	if maxQueued > 0 {
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM submissions WHERE state = ?`, SubmissionQueued).Scan(&n); err != nil {
			return fmt.Errorf("enqueue submissions: %w", err)
		}
		if n+len(subs) > maxQueued {
			return fmt.Errorf("%w: %d queued, %d more would pass the limit of %d", ErrSubmissionQueueFull, n, len(subs), maxQueued)
		}
	}
	now := s.d.now()
	for _, sub := range subs {
		if sub.CreatedAt.IsZero() {
			sub.CreatedAt = now
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO submissions (token, tenant, state, status, request, created_at) VALUES (?,?,?,?,?,?)`,
			sub.Token, sub.Tenant, SubmissionQueued, sub.Status, sub.Request, sub.CreatedAt.UnixNano()); err != nil {
			return fmt.Errorf("enqueue submission %s: %w", sub.Token, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("enqueue submissions: %w", err)
	}
	return nil
}

// Get returns the tenant's submission with the token; another tenant's
// is ErrNoSubmission, as if it did not exist.
func (s *SubmissionStore) Get(ctx context.Context, tenant, token string) (Submission, error) {
	sub, err := scanSubmission(s.d.db.QueryRowContext(ctx,
		`SELECT `+submissionColumns+` FROM submissions WHERE token = ? AND tenant = ?`, token, tenant))
	if errors.Is(err, sql.ErrNoRows) {
		return Submission{}, fmt.Errorf("%w: %s", ErrNoSubmission, token)
	}
	if err != nil {
		return Submission{}, fmt.Errorf("get submission %s: %w", token, err)
	}
	return sub, nil
}

// GetMany returns those of the tenant's submissions with the tokens that
// exist, by token.
func (s *SubmissionStore) GetMany(ctx context.Context, tenant string, tokens []string) (map[string]Submission, error) {
	out := map[string]Submission{}
	if len(tokens) == 0 {
		return out, nil
	}
	args := []any{tenant}
	for _, t := range tokens {
		args = append(args, t)
	}
	rows, err := s.d.db.QueryContext(ctx, `SELECT `+submissionColumns+` FROM submissions WHERE tenant = ? AND token IN (?`+
		strings.Repeat(",?", len(tokens)-1)+`)`, args...)
	if err != nil {
		return nil, fmt.Errorf("get submissions: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		sub, err := scanSubmission(rows)
		if err != nil {
			return nil, fmt.Errorf("get submissions: %w", err)
		}
		out[sub.Token] = sub
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("get submissions: %w", err)
	}
	return out, nil
}

// List returns a page of the tenant's submissions, newest first, and how
// many the tenant has in all.
func (s *SubmissionStore) List(ctx context.Context, tenant string, offset, limit int) ([]Submission, int, error) {
	var total int
	if err := s.d.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM submissions WHERE tenant = ?`, tenant).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("list submissions: %w", err)
	}
	rows, err := s.d.db.QueryContext(ctx, `SELECT `+submissionColumns+` FROM submissions WHERE tenant = ? ORDER BY seq DESC LIMIT ? OFFSET ?`,
		tenant, limit, offset)
	if err != nil {
		return nil, 0, fmt.Errorf("list submissions: %w", err)
	}
	defer rows.Close()
	var out []Submission
	for rows.Next() {
		sub, err := scanSubmission(rows)
		if err != nil {
			return nil, 0, fmt.Errorf("list submissions: %w", err)
		}
		out = append(out, sub)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, fmt.Errorf("list submissions: %w", err)
	}
	return out, total, nil
}

// Claim marks the oldest queued submission running, with status, and
// returns it; ok is false when none is queued.
func (s *SubmissionStore) Claim(ctx context.Context, status int) (sub Submission, ok bool, err error) {
	sub, err = scanSubmission(s.d.db.QueryRowContext(ctx, `UPDATE submissions SET state = ?, status = ?, started_at = ?
		WHERE seq = (SELECT seq FROM submissions WHERE state = ? ORDER BY seq LIMIT 1)
		RETURNING `+submissionColumns, SubmissionRunning, status, s.d.now().UnixNano(), SubmissionQueued))
	if errors.Is(err, sql.ErrNoRows) {
		return Submission{}, false, nil
	}
	if err != nil {
		return Submission{}, false, fmt.Errorf("claim submission: %w", err)
	}
	return sub, true, nil
}

// Finish records a running submission's outcome and marks it done.
func (s *SubmissionStore) Finish(ctx context.Context, token string, status int, result []byte) error {
	res, err := s.d.db.ExecContext(ctx, `UPDATE submissions SET state = ?, status = ?, result = ?, finished_at = ? WHERE token = ? AND state = ?`,
		SubmissionDone, status, result, s.d.now().UnixNano(), token, SubmissionRunning)
	if err != nil {
		return fmt.Errorf("finish submission %s: %w", token, err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return fmt.Errorf("finish submission %s: %w (or not running)", token, ErrNoSubmission)
	}
	return nil
}

// Delete removes the tenant's finished submission and returns what it
// held; a queued or running one is ErrSubmissionActive.
func (s *SubmissionStore) Delete(ctx context.Context, tenant, token string) (Submission, error) {
	tx, err := s.d.db.BeginTx(ctx, nil)
	if err != nil {
		return Submission{}, fmt.Errorf("delete submission %s: %w", token, err)
	}
	defer tx.Rollback()
	sub, err := scanSubmission(tx.QueryRowContext(ctx,
		`SELECT `+submissionColumns+` FROM submissions WHERE token = ? AND tenant = ?`, token, tenant))
	if errors.Is(err, sql.ErrNoRows) {
		return Submission{}, fmt.Errorf("%w: %s", ErrNoSubmission, token)
	}
	if err != nil {
		return Submission{}, fmt.Errorf("delete submission %s: %w", token, err)
	}
	if sub.State != SubmissionDone {
		return sub, fmt.Errorf("%w: %s is %s", ErrSubmissionActive, token, sub.State)
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM submissions WHERE token = ?`, token); err != nil {
		return Submission{}, fmt.Errorf("delete submission %s: %w", token, err)
	}
	if err := tx.Commit(); err != nil {
		return Submission{}, fmt.Errorf("delete submission %s: %w", token, err)
	}
	return sub, nil
}

// Requeue puts the submissions a stopped process was running back in the
// queue, with status, so they run again; call it at start, before any
// worker runs. It returns how many it requeued.
func (s *SubmissionStore) Requeue(ctx context.Context, status int) (int, error) {
	res, err := s.d.db.ExecContext(ctx, `UPDATE submissions SET state = ?, status = ?, started_at = 0 WHERE state = ?`,
		SubmissionQueued, status, SubmissionRunning)
	if err != nil {
		return 0, fmt.Errorf("requeue submissions: %w", err)
	}
	n, _ := res.RowsAffected()
	return int(n), nil
}

// Counts returns how many submissions are queued and running.
func (s *SubmissionStore) Counts(ctx context.Context) (queued, running int, err error) {
	rows, err := s.d.db.QueryContext(ctx, `SELECT state, COUNT(*) FROM submissions WHERE state IN (?, ?) GROUP BY state`,
		SubmissionQueued, SubmissionRunning)
	if err != nil {
		return 0, 0, fmt.Errorf("count submissions: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var st SubmissionState
		var n int
		if err := rows.Scan(&st, &n); err != nil {
			return 0, 0, fmt.Errorf("count submissions: %w", err)
		}
		if st == SubmissionQueued {
			queued = n
		} else {
			running = n
		}
	}
	return queued, running, rows.Err()
}

// Prune deletes submissions that finished before t and returns how many.
func (s *SubmissionStore) Prune(ctx context.Context, before time.Time) (int, error) {
	res, err := s.d.db.ExecContext(ctx, `DELETE FROM submissions WHERE state = ? AND finished_at < ?`, SubmissionDone, before.UnixNano())
	if err != nil {
		return 0, fmt.Errorf("prune submissions: %w", err)
	}
	n, _ := res.RowsAffected()
	return int(n), nil
}
