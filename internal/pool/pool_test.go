package pool

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type item struct {
	id     int64
	closed atomic.Bool
}

func (i *item) Close() error {
	if i.closed.Swap(true) {
		return errors.New("closed twice")
	}
	return nil
}

type factory struct {
	next  atomic.Int64
	mu    sync.Mutex
	all   []*item
	fails atomic.Int64 // fail this many creates first
}

func (f *factory) create(ctx context.Context) (*item, error) {
	if f.fails.Add(-1) >= 0 {
		return nil, errors.New("boot failed")
	}
	it := &item{id: f.next.Add(1)}
	f.mu.Lock()
	f.all = append(f.all, it)
	f.mu.Unlock()
	return it, nil
}

func waitFull(t *testing.T, p *Pool[*item]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.WaitFull(ctx); err != nil {
		t.Fatalf("pool did not fill: %v (%+v)", err, p.Stats())
	}
}

func TestFillsAndRefills(t *testing.T) {
	f := &factory{}
	p := New(3, f.create, Options{})
	go p.Populate(context.Background())
	defer p.Close()
	waitFull(t, p)
	seen := map[int64]bool{}
	for range 5 {
		it, hit, err := p.Get(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if seen[it.id] {
			t.Fatalf("item %d handed out twice", it.id)
		}
		seen[it.id] = true
		_ = hit
		it.Close()
		waitFull(t, p) // refilled after each use
	}
	st := p.Stats()
	if st.Hits != 5 || st.Misses != 0 || st.Ready != 3 {
		t.Fatalf("stats %+v, want 5 hits, 0 misses, 3 ready", st)
	}
}

func TestMissCreatesDirectly(t *testing.T) {
	f := &factory{}
	p := New(2, f.create, Options{}) // never populated
	it, hit, err := p.Get(context.Background())
	if err != nil || hit || it == nil {
		t.Fatalf("Get on an empty pool: %v hit=%v", err, hit)
	}
	if p.Stats().Misses != 1 {
		t.Fatalf("stats %+v", p.Stats())
	}
}

func TestRetriesFailedCreates(t *testing.T) {
	f := &factory{}
	f.fails.Store(2)
	p := New(1, f.create, Options{MaxBackoff: 200 * time.Millisecond})
	go p.Populate(context.Background())
	defer p.Close()
	waitFull(t, p)
	if st := p.Stats(); st.Failures != 2 {
		t.Fatalf("stats %+v, want 2 failures before success", st)
	}
}

func TestWarmFailureDiscardsItem(t *testing.T) {
	f := &factory{}
	var warmed atomic.Int64
	p := New(1, f.create, Options{MaxBackoff: 50 * time.Millisecond, Warm: func(ctx context.Context, it Item) error {
		if warmed.Add(1) == 1 {
			return errors.New("warm-up failed")
		}
		return nil
	}})
	go p.Populate(context.Background())
	defer p.Close()
	waitFull(t, p)
	f.mu.Lock()
	first := f.all[0]
	f.mu.Unlock()
	if !first.closed.Load() {
		t.Fatal("an item whose warm-up failed was not closed")
	}
}

func TestCloseClosesWaitingAndStopsPopulate(t *testing.T) {
	f := &factory{}
	p := New(4, f.create, Options{})
	done := make(chan struct{})
	go func() { p.Populate(context.Background()); close(done) }()
	waitFull(t, p)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Populate did not stop on Close")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, it := range f.all {
		if !it.closed.Load() {
			t.Fatalf("item %d leaked by Close", it.id)
		}
	}
	if _, _, err := p.Get(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Get after Close: %v", err)
	}
}

// clock is a settable clock for the demand window.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func waitReady(t *testing.T, p *Pool[*item], want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for p.Stats().Ready != want {
		if time.Now().After(deadline) {
			t.Fatalf("ready %d, want %d (%+v)", p.Stats().Ready, want, p.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestFollowsDemand(t *testing.T) {
	f := &factory{}
	c := &clock{now: time.Unix(1000, 0)}
	p := NewRange(1, 5, f.create, Options{Window: 10 * time.Second, Now: c.Now})
	go p.Populate(context.Background())
	defer p.Close()
	waitReady(t, p, 1) // idle: the minimum
	// A burst of 4 takes: the pool grows to min + 4, capped at max 5.
	for range 4 {
		it, _, err := p.Get(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		it.Close()
	}
	if got := p.Target(); got != 5 {
		t.Fatalf("target after 4 takes: %d, want 5", got)
	}
	waitReady(t, p, 5)
	// The next burst is served from the pool.
	for i := range 5 {
		if _, hit, _ := p.Get(context.Background()); !hit {
			t.Fatalf("take %d of the second burst missed", i)
		}
	}
	// Demand stops: one window later the pool is back at its minimum,
	// the surplus closed, not leaked.
	waitReady(t, p, 5)
	c.add(11 * time.Second)
	waitReady(t, p, 1)
	st := p.Stats()
	if st.Shrunk != 4 || st.Size != 1 {
		t.Fatalf("after the window: %+v, want 4 shrunk and target 1", st)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	open := 0
	for _, it := range f.all {
		if !it.closed.Load() {
			open++
		}
	}
	if open != 1+5 { // one waiting, five handed out and not closed by the test
		t.Fatalf("%d items open, want 6", open)
	}
}

func TestNeverAboveMax(t *testing.T) {
	f := &factory{}
	p := NewRange(0, 3, f.create, Options{Workers: 4})
	go p.Populate(context.Background())
	defer p.Close()
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if it, _, err := p.Get(context.Background()); err == nil {
				it.Close()
			}
			if r := p.Stats().Ready; r > 3 {
				t.Errorf("%d ready, above max 3", r)
			}
		}()
	}
	wg.Wait()
	waitReady(t, p, 3)
}

// slowFactory makes items that take a while, and can fail the next one.
type slowFactory struct {
	factory
	delay     time.Duration
	started   chan struct{} // one send per create that began
	failFirst atomic.Bool   // fail the first create to begin
	begun     atomic.Int64
}

func (f *slowFactory) create(ctx context.Context) (*item, error) {
	select {
	case f.started <- struct{}{}:
	default:
	}
	first := f.begun.Add(1) == 1
	time.Sleep(f.delay)
	if first && f.failFirst.Load() {
		return nil, errors.New("boot failed")
	}
	return f.factory.create(ctx)
}

// A Get that finds the pool empty while it makes an item takes that item
// instead of making one more beside it.
func TestMissWaitsForTheItemInTheMaking(t *testing.T) {
	f := &slowFactory{delay: 300 * time.Millisecond, started: make(chan struct{}, 1)}
	p := New(1, f.create, Options{})
	go p.Populate(context.Background())
	defer p.Close()
	<-f.started // the pool's first item is being made
	it, hit, err := p.Get(context.Background())
	if err != nil || !hit {
		t.Fatalf("Get while the pool made an item: hit=%v err=%v", hit, err)
	}
	it.Close()
	if st := p.Stats(); st.Misses != 0 || st.Waited != 1 || st.Hits != 1 {
		t.Fatalf("stats %+v: want one hit that waited, no miss", st)
	}
	if n := f.next.Load(); n > 2 { // the pool's first, and its refill
		t.Fatalf("%d items made for one Get", n)
	}
}

// If the item a Get waits for fails, the Get makes its own; two Gets
// never wait for the same single item.
func TestWaitingGetsFallBack(t *testing.T) {
	f := &slowFactory{delay: 200 * time.Millisecond, started: make(chan struct{}, 1)}
	f.failFirst.Store(true)
	p := New(1, f.create, Options{MaxBackoff: time.Second})
	go p.Populate(context.Background())
	defer p.Close()
	<-f.started
	var wg sync.WaitGroup
	results := make(chan bool, 2)
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			it, hit, err := p.Get(context.Background())
			if err != nil {
				t.Error(err)
				return
			}
			it.Close()
			results <- hit
		}()
	}
	wg.Wait()
	close(results)
	misses := 0
	for hit := range results {
		if !hit {
			misses++
		}
	}
	if st := p.Stats(); misses == 0 || st.Misses != int64(misses) {
		t.Fatalf("stats %+v, %d misses seen: the failed item's waiter must make its own", st, misses)
	}
}

// A Get waiting for an item in the making returns when its context ends.
func TestWaitingGetHonoursContext(t *testing.T) {
	f := &slowFactory{delay: 2 * time.Second, started: make(chan struct{}, 1)}
	p := New(1, f.create, Options{})
	go p.Populate(context.Background())
	defer p.Close()
	<-f.started
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, _, err := p.Get(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Get = %v, want the context's deadline", err)
	}
}
