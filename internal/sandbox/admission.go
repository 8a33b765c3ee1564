package sandbox

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Errors of the VM gate; errors.go-style sentinels, mapped to 429 and 503.
var (
	// ErrQueueFull means every VM slot is taken and the wait queue is
	// full: the client should back off.
	ErrQueueFull = errors.New("server busy")
	// ErrQueueTimeout means a request waited its full time for a slot.
	ErrQueueTimeout = errors.New("no VM available")
)

// Limiter caps how many VMs run at once. A request that finds every slot
// taken waits in a bounded queue for at most Wait; when the queue is full
// it is refused at once.
type Limiter struct {
	slots chan struct{}
	queue int
	wait  time.Duration

	mu      sync.Mutex
	waiting int
	full    int64 // refusals because the queue was full
	timeout int64 // refusals because the wait ran out
}

// NewLimiter returns a limiter of maxVMs slots with a queue of queue
// waiters, each waiting at most wait.
func NewLimiter(maxVMs, queue int, wait time.Duration) *Limiter {
	return &Limiter{slots: make(chan struct{}, max(maxVMs, 1)), queue: max(queue, 0), wait: wait}
}

// Acquire takes a slot; release gives it back (calling it twice is
// harmless).
func (l *Limiter) Acquire(ctx context.Context) (release func(), err error) {
	select {
	case l.slots <- struct{}{}:
		return l.releaser(), nil
	default:
	}
	l.mu.Lock()
	if l.waiting >= l.queue {
		l.full++
		l.mu.Unlock()
		return nil, fmt.Errorf("%w: all %d VM slots are in use and %d requests are already waiting; retry later",
			ErrQueueFull, cap(l.slots), l.queue)
	}
	l.waiting++
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		l.waiting--
		l.mu.Unlock()
	}()
	t := time.NewTimer(l.wait)
	defer t.Stop()
	select {
	case l.slots <- struct{}{}:
		return l.releaser(), nil
	case <-t.C:
		l.mu.Lock()
		l.timeout++
		l.mu.Unlock()
		return nil, fmt.Errorf("%w: waited %s for one of %d VM slots; retry later", ErrQueueTimeout, l.wait, cap(l.slots))
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (l *Limiter) releaser() func() {
	var once sync.Once
	return func() { once.Do(func() { <-l.slots }) }
}

// LimiterStats are a limiter's gauges and counters.
type LimiterStats struct {
	Max, InUse, Waiting, QueueMax int
	RefusedFull, RefusedTimeout   int64
}

// Stats returns the current numbers.
func (l *Limiter) Stats() LimiterStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	return LimiterStats{Max: cap(l.slots), InUse: len(l.slots), Waiting: l.waiting, QueueMax: l.queue,
		RefusedFull: l.full, RefusedTimeout: l.timeout}
}
