// Package pool keeps ready-to-use items (restored VMs) waiting, so a
// request takes one instead of creating it.
//
//	p := pool.New(3, createVM, pool.Options{})
//	go p.Populate(ctx)              // fills to 3 and refills after each Get
//	vm, hit, err := p.Get(ctx)      // a waiting VM, or a new one on a miss
//	defer vm.Close()                // used once: items never go back
//	p.Close()                       // stops Populate, closes what waits
//
// Items are handed out at most once: the pool has no Put. That is the
// point for sandboxes: no run ever sees what an earlier run left.
package pool

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// ErrClosed is returned by Get after Close.
var ErrClosed = errors.New("pool: closed")

// Item is what a pool holds.
type Item interface{ Close() error }

// Options tunes a pool.
type Options struct {
	// Warm, if set, runs on each new item before it waits in the pool
	// (e.g. an exec that brings the interpreter into memory).
	Warm func(ctx context.Context, it Item) error
	// MaxBackoff bounds the wait after a failed create; default 10s.
	MaxBackoff time.Duration
	Log        *slog.Logger
}

// Pool holds up to size ready items.
type Pool[T Item] struct {
	size   int
	create func(context.Context) (T, error)
	opts   Options

	ready  chan T
	taken  chan struct{} // a Get took an item: refill
	filled chan struct{} // closed and replaced whenever an item is added

	mu     sync.Mutex
	closed bool
	done   chan struct{}
	wg     sync.WaitGroup

	hits, misses, created, failures atomic.Int64
}

// New returns a pool of size items made by create. It is empty until
// Populate runs.
func New[T Item](size int, create func(context.Context) (T, error), opts Options) *Pool[T] {
	if opts.MaxBackoff == 0 {
		opts.MaxBackoff = 10 * time.Second
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	return &Pool[T]{
		size: size, create: create, opts: opts,
		ready:  make(chan T, max(size, 0)),
		taken:  make(chan struct{}, 1),
		filled: make(chan struct{}),
		done:   make(chan struct{}),
	}
}

// Populate keeps the pool full until ctx ends or the pool closes. Run it
// in one goroutine.
func (p *Pool[T]) Populate(ctx context.Context) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.wg.Add(1)
	p.mu.Unlock()
	defer p.wg.Done()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-p.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		if len(p.ready) >= p.size {
			select {
			case <-p.taken:
			case <-ctx.Done():
			}
			continue
		}
		it, err := p.make(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			p.failures.Add(1)
			p.opts.Log.Warn("pool: create failed", "err", err, "retry_in", backoff)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
			}
			backoff = min(backoff*2, p.opts.MaxBackoff)
			continue
		}
		backoff = 100 * time.Millisecond
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			it.Close()
			return
		}
		select {
		case p.ready <- it:
			close(p.filled)
			p.filled = make(chan struct{})
		default: // cannot happen with one populator; never leak the item
			it.Close()
		}
		p.mu.Unlock()
	}
}

func (p *Pool[T]) make(ctx context.Context) (T, error) {
	it, err := p.create(ctx)
	if err != nil {
		return it, err
	}
	p.created.Add(1)
	if p.opts.Warm != nil {
		if err := p.opts.Warm(ctx, it); err != nil {
			it.Close()
			var zero T
			return zero, err
		}
	}
	return it, nil
}

// Get returns a waiting item (hit) or, if none waits, a new one (miss).
func (p *Pool[T]) Get(ctx context.Context) (T, bool, error) {
	var zero T
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed {
		return zero, false, ErrClosed
	}
	select {
	case it := <-p.ready:
		p.hits.Add(1)
		select {
		case p.taken <- struct{}{}:
		default:
		}
		return it, true, nil
	default:
	}
	p.misses.Add(1)
	it, err := p.create(ctx)
	return it, false, err
}

// WaitFull blocks until the pool holds its full size or ctx ends.
func (p *Pool[T]) WaitFull(ctx context.Context) error {
	for {
		p.mu.Lock()
		n, filled := len(p.ready), p.filled
		p.mu.Unlock()
		if n >= p.size {
			return nil
		}
		select {
		case <-filled:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Close stops Populate and closes every waiting item.
func (p *Pool[T]) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.done)
	p.mu.Unlock()
	p.wg.Wait()
	var errs []error
	for {
		select {
		case it := <-p.ready:
			if err := it.Close(); err != nil {
				errs = append(errs, err)
			}
		default:
			return errors.Join(errs...)
		}
	}
}

// Stats are a pool's counters.
type Stats struct {
	Size     int   `json:"size"`
	Ready    int   `json:"ready"`
	Hits     int64 `json:"hits"`
	Misses   int64 `json:"misses"`
	Created  int64 `json:"created"`
	Failures int64 `json:"failures"`
}

// Stats returns the current counters.
func (p *Pool[T]) Stats() Stats {
	return Stats{Size: p.size, Ready: len(p.ready), Hits: p.hits.Load(), Misses: p.misses.Load(),
		Created: p.created.Load(), Failures: p.failures.Load()}
}
