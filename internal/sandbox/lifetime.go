package sandbox

import (
	"context"
	"fmt"
	"time"

	"github.com/firesandbox/firesandbox/internal/state"
)

// SetTimeout gives a sandbox a new end of life, d from now (1 s up to the
// configured maximum). At that end it is killed, or paused if its
// on_timeout says so.
func (s *Sandboxes) SetTimeout(ctx context.Context, tenant, id string, d time.Duration) (state.Sandbox, error) {
	if d < time.Second || d > s.cfg.MaxTimeout {
		return state.Sandbox{}, fmt.Errorf("%w: timeout %s: want 1s up to %s", ErrBadRequest, d, s.cfg.MaxTimeout)
	}
	sb, err := s.Get(ctx, tenant, id)
	if err != nil {
		return sb, err
	}
	if err := usable(sb); err != nil {
		return sb, err
	}
	if err := s.db.SetExpiry(ctx, id, s.now().Add(d)); err != nil {
		return sb, err
	}
	return s.db.Get(ctx, id)
}

// lifetimeLoop hibernates sandboxes left unused for their idle timeout
// and ends those whose lifetime is over. Idle hibernation is transparent:
// the lifetime runs on, and the next call resumes the sandbox.
func (s *Sandboxes) lifetimeLoop() {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.IdleCheck)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.endLifetimes(s.now())
		}
	}
}

// endLifetimes applies every sandbox's timeouts at now: expired ones are
// deleted or hibernated (on_timeout), idle running ones hibernated.
func (s *Sandboxes) endLifetimes(now time.Time) {
	ctx := context.Background()
	all, err := s.db.List(ctx, state.Running, state.Hibernated)
	if err != nil {
		s.log.Warn("lifetimes: list sandboxes", "err", err)
		return
	}
	for _, sb := range all {
		expired := !sb.ExpiresAt.IsZero() && !now.Before(sb.ExpiresAt)
		stale := sb.State == state.Hibernated && s.cfg.HibernatedTTL > 0 && now.Sub(sb.UpdatedAt) >= s.cfg.HibernatedTTL
		if !expired && !stale && sb.State != state.Running {
			continue
		}
		b, err := s.boxFor(sb.ID)
		if err != nil {
			return // closing
		}
		if !b.mu.TryLock() { // in use: look again next time
			continue
		}
		switch {
		case expired && sb.OnTimeout == OnTimeoutPause:
			if sb.State == state.Running {
				s.settle(sb.ID, "timeout: paused", s.hibernateLocked(ctx, sb.ID, b))
			}
			_ = s.db.SetExpiry(ctx, sb.ID, time.Time{}) // paused for good: no further end
		case expired:
			b.stopOps()
			s.settle(sb.ID, "timeout: deleted", s.deleteLocked(ctx, sb.ID, b))
		case stale:
			s.settle(sb.ID, "hibernated too long: deleted", s.deleteLocked(ctx, sb.ID, b))
		case sb.IdleTimeout > 0 && b.vm != nil:
			if idle := now.Sub(time.Unix(0, b.lastUsed.Load())); idle >= sb.IdleTimeout {
				s.settle(sb.ID, "idle sandbox hibernated", s.hibernateLocked(ctx, sb.ID, b))
			}
		}
		b.mu.Unlock()
	}
}

func (s *Sandboxes) settle(id, what string, err error) {
	if err != nil {
		s.log.Warn(what+" failed", "op", "lifetime", "sandbox", id, "err", err)
		return
	}
	s.log.Info(what, "op", "lifetime", "sandbox", id)
}
