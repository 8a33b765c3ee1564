package sandbox

import (
	"context"
	"errors"
	"fmt"

	"github.com/firesandbox/firesandbox/internal/state"
)

// The life of a sandbox. Every persisted state and every move between
// them, rollbacks and losses included. The table below (moves) is the only
// place the moves are decided, and the state database the only place the
// current state is kept: a live VM in memory is a cache of "running".
//
//	(new)        ──create───────────▶ creating ──ok──▶ running
//	creating     ──fail─────────────▶ (no record: it never existed)
//	running      ──hibernate────────▶ hibernating ──ok──▶ hibernated
//	hibernating  ──fail, VM still up▶ running
//	hibernating  ──fail, VM gone────▶ lost
//	hibernated   ──resume───────────▶ resuming ──ok──▶ running
//	resuming     ──fail─────────────▶ hibernated (its snapshot is untouched)
//	running      ──fork─────────────▶ forking ──ok or fail──▶ running
//	running      ──VM died──────────▶ lost
//	creating, running, hibernating, resuming, forking
//	             ──serve restarted──▶ lost, or hibernated if a complete snapshot exists (reconcile)
//	creating, running, hibernated, lost, deleting
//	             ──delete───────────▶ deleting ──▶ deleted
//
// A lost sandbox keeps its data (its disk, a finished snapshot) until it
// is deleted, so nothing is silently thrown away.
type op string

const (
	opCreate    op = "create"
	opHibernate op = "hibernate"
	opResume    op = "resume"
	opFork      op = "fork"
	opDelete    op = "delete"
)

// move is one operation's row in the table: the states it may start from,
// the state persisted while its slow step runs, and where it ends.
type move struct {
	from     []state.State
	during   state.State
	success  state.State
	rollback state.State // "" for create: a failed create leaves no record
}

// moves is the transition table.
var moves = map[op]move{
	opCreate:    {nil, state.Creating, state.Running, ""},
	opHibernate: {[]state.State{state.Running}, state.Hibernating, state.Hibernated, state.Running},
	opResume:    {[]state.State{state.Hibernated}, state.Resuming, state.Running, state.Hibernated},
	opFork:      {[]state.State{state.Running}, state.Forking, state.Running, state.Running},
	opDelete: {[]state.State{state.Creating, state.Running, state.Hibernated, state.Lost, state.Deleting},
		state.Deleting, state.Deleted, state.Deleted},
}

// lostError marks a failed step after which the sandbox cannot go back:
// its VM is gone, so it becomes lost instead of rolling back.
type lostError struct {
	reason string
	err    error
}

func (e *lostError) Error() string { return e.err.Error() }
func (e *lostError) Unwrap() error { return e.err }

// lost wraps err so transition records the sandbox as lost, for reason.
func lost(reason string, err error) error { return &lostError{reason: reason, err: err} }

// transition moves sandbox id through op: it persists the in-between
// state, runs the slow step fn, then records success (with what fn
// returns to set alongside) or rolls back. fn runs with the caller's ctx;
// the records are written even if the caller went away, so the sandbox
// never stays in an in-between state while this process lives.
func (s *Sandboxes) transition(ctx context.Context, id string, o op, fn func(ctx context.Context) (state.Change, error)) error {
	mv := moves[o]
	if err := s.begin(ctx, id, mv.during); err != nil {
		return fmt.Errorf("%s %s: %w", o, id, err)
	}
	if err := s.db.Transition(ctx, id, state.Change{To: mv.during}, mv.from...); err != nil {
		return fmt.Errorf("%s %s: %w", o, id, err)
	}
	pctx := context.WithoutCancel(ctx)
	defer s.changed(pctx, id)
	change, err := fn(ctx)
	if err == nil {
		change.To = mv.success
		if terr := s.db.Transition(pctx, id, change, mv.during); terr != nil {
			return fmt.Errorf("%s %s: record %s: %w", o, id, mv.success, terr)
		}
		return nil
	}
	rb := state.Change{To: mv.rollback}
	var le *lostError
	if errors.As(err, &le) {
		rb = state.Change{To: state.Lost, Reason: le.reason}
	}
	s.log.Warn("sandbox operation failed", "op", string(o), "sandbox", id, "to", rb.To, "err", err)
	return errors.Join(fmt.Errorf("%s %s: %w", o, id, err), s.db.Transition(pctx, id, rb, mv.during))
}
