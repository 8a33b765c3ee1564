// Package pool keeps ready-to-use items (restored VMs) waiting, so a
// request takes one instead of creating it.
//
//	p := pool.NewRange(1, 8, createVM, pool.Options{})
//	go p.Populate(ctx)              // keeps 1 ready, more while takes come in
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
	// Window is how far back the pool looks at demand: it keeps Min items
	// plus one for every take (hit or miss) in the last Window, up to Max,
	// so a burst finds the next one ready and an idle pool shrinks back to
	// Min one Window after the takes stop. Default 10s.
	Window time.Duration
	// Workers make items in parallel; default 1 for a fixed size, else 2.
	Workers int
	Log     *slog.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// Pool holds between Min and Max ready items, following demand.
type Pool[T Item] struct {
	min, max int
	create   func(context.Context) (T, error)
	opts     Options

	ready  chan T
	wake   chan struct{} // a take, or the target moved: look again
	filled chan struct{} // closed and replaced whenever an item is added

	mu      sync.Mutex
	closed  bool
	done    chan struct{}
	wg      sync.WaitGroup
	takes   []time.Time // takes in the last Window, oldest first
	making  int         // creations in flight
	waiting int         // Gets waiting for one of them

	hits, misses, created, failures, shrunk, waited atomic.Int64
}

// New returns a pool that keeps size items ready. It is empty until
// Populate runs.
func New[T Item](size int, create func(context.Context) (T, error), opts Options) *Pool[T] {
	return NewRange(size, size, create, opts)
}

// NewRange returns a pool that keeps between min and max items ready, as
// demand asks (see Options.Window).
func NewRange[T Item](min, max int, create func(context.Context) (T, error), opts Options) *Pool[T] {
	min, max = maxInt(min, 0), maxInt(max, min)
	if opts.MaxBackoff == 0 {
		opts.MaxBackoff = 10 * time.Second
	}
	if opts.Window <= 0 {
		opts.Window = 10 * time.Second
	}
	if opts.Workers <= 0 {
		opts.Workers = 1
		if max > min {
			opts.Workers = 2
		}
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Pool[T]{
		min: min, max: max, create: create, opts: opts,
		ready:  make(chan T, max),
		wake:   make(chan struct{}, opts.Workers+1),
		filled: make(chan struct{}),
		done:   make(chan struct{}),
	}
}

func maxInt(a, b int) int {
	if a > b {
		return a
	}
	return b
}

// Target is how many items the pool aims to hold now.
func (p *Pool[T]) Target() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.targetLocked()
}

func (p *Pool[T]) targetLocked() int {
	cutoff := p.opts.Now().Add(-p.opts.Window)
	i := 0
	for i < len(p.takes) && p.takes[i].Before(cutoff) {
		i++
	}
	p.takes = p.takes[i:]
	return min(p.min+len(p.takes), p.max)
}

func (p *Pool[T]) noteTake() {
	p.mu.Lock()
	if len(p.takes) < 4*p.max+16 { // enough to hit Max; bounded memory
		p.takes = append(p.takes, p.opts.Now())
	}
	p.mu.Unlock()
	p.signal()
}

func (p *Pool[T]) signal() {
	for i := 0; i < p.opts.Workers+1; i++ {
		select {
		case p.wake <- struct{}{}:
		default:
			return
		}
	}
}

// Populate keeps the pool at its target until ctx ends or the pool
// closes: it makes items with Options.Workers workers and closes the
// surplus when demand falls. Run it in one goroutine; it returns when its
// workers have stopped.
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
	var wg sync.WaitGroup
	for range p.opts.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.work(ctx)
		}()
	}
	p.shrinkLoop(ctx)
	wg.Wait()
}

// work is one worker: it makes items while the pool is below its target.
func (p *Pool[T]) work(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		p.mu.Lock()
		need := p.targetLocked() - len(p.ready) - p.making
		if need <= 0 {
			p.mu.Unlock()
			select {
			case <-p.wake:
			case <-ctx.Done():
			}
			continue
		}
		p.making++
		p.mu.Unlock()
		it, err := p.make(ctx)
		p.mu.Lock()
		p.making--
		if err != nil {
			p.changedLocked() // a Get waiting for this one makes its own
		}
		p.mu.Unlock()
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
			p.changedLocked()
		default: // over Max: cannot happen while making counts; never leak
			it.Close()
		}
		p.mu.Unlock()
	}
}

// shrinkLoop closes items above the target once demand has fallen.
func (p *Pool[T]) shrinkLoop(ctx context.Context) {
	if p.max == p.min {
		<-ctx.Done()
		return
	}
	t := time.NewTicker(max(p.opts.Window/4, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for {
			p.mu.Lock()
			surplus := len(p.ready) - p.targetLocked()
			var it T
			ok := false
			if surplus > 0 {
				select {
				case it = <-p.ready:
					ok = true
				default:
				}
			}
			p.mu.Unlock()
			if !ok {
				break
			}
			p.shrunk.Add(1)
			it.Close()
		}
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

// changedLocked wakes whoever waits on filled: an item was added, or a
// creation in flight ended without one.
func (p *Pool[T]) changedLocked() {
	close(p.filled)
	p.filled = make(chan struct{})
}

// Get returns a waiting item (hit) or, if none waits, a new one (miss).
// Either way it counts as demand. When none waits but the pool is making
// more than other Gets already wait for, Get waits for one of those
// rather than making another beside it: on a busy host a second creation
// would only slow both down, and the pool's item has been warmed. It is a
// hit then too (Stats.Waited counts them). If that creation fails, Get
// makes its own.
func (p *Pool[T]) Get(ctx context.Context) (T, bool, error) {
	var zero T
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed {
		return zero, false, ErrClosed
	}
	p.noteTake()
	for waited := false; ; {
		p.mu.Lock()
		select {
		case it := <-p.ready:
			p.mu.Unlock()
			p.hits.Add(1)
			if waited {
				p.waited.Add(1)
			}
			return it, true, nil
		default:
		}
		if p.closed {
			p.mu.Unlock()
			return zero, false, ErrClosed
		}
		if p.making <= p.waiting {
			p.mu.Unlock()
			break
		}
		p.waiting++
		filled := p.filled
		p.mu.Unlock()
		waited = true
		select {
		case <-filled:
		case <-p.done:
		case <-ctx.Done():
		}
		p.mu.Lock()
		p.waiting--
		p.mu.Unlock()
		if err := ctx.Err(); err != nil {
			return zero, false, err
		}
	}
	p.misses.Add(1)
	it, err := p.create(ctx)
	return it, false, err
}

// WaitFull blocks until the pool holds its current target or ctx ends.
func (p *Pool[T]) WaitFull(ctx context.Context) error {
	for {
		p.mu.Lock()
		n, filled, target := len(p.ready), p.filled, p.targetLocked()
		p.mu.Unlock()
		if n >= target {
			return nil
		}
		select {
		case <-filled:
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond): // the target may have fallen
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
	Size     int   `json:"size"` // the current target
	Min      int   `json:"min"`
	Max      int   `json:"max"`
	Ready    int   `json:"ready"`
	Hits     int64 `json:"hits"`
	Misses   int64 `json:"misses"`
	Created  int64 `json:"created"`
	Failures int64 `json:"failures"`
	Shrunk   int64 `json:"shrunk"`
	// Waited counts the hits that waited for an item in the making.
	Waited int64 `json:"waited"`
}

// Stats returns the current counters.
func (p *Pool[T]) Stats() Stats {
	return Stats{Size: p.Target(), Min: p.min, Max: p.max, Ready: len(p.ready), Hits: p.hits.Load(), Misses: p.misses.Load(),
		Created: p.created.Load(), Failures: p.failures.Load(), Shrunk: p.shrunk.Load(), Waited: p.waited.Load()}
}
