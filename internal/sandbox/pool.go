package sandbox

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/pool"
)

// pools are the warm pools, by language version (Entry.Key); guarded by
// poolsMu.
type pools struct {
	poolsMu sync.Mutex
	byLang  map[string]*pool.Pool[*VM]
}

// PoolRange is how many VMs a pool keeps waiting: Min when idle, up to
// Max while runs come in (see pool.Options.Window). Written "N" or "N..M".
type PoolRange struct{ Min, Max int }

// ParsePoolRange parses "2" (a fixed size) or "1..8".
func ParsePoolRange(s string) (PoolRange, error) {
	lo, hi, ranged := strings.Cut(strings.TrimSpace(s), "..")
	a, err1 := strconv.Atoi(lo)
	b, err2 := a, error(nil)
	if ranged {
		b, err2 = strconv.Atoi(hi)
	}
	r := PoolRange{a, b}
	if err1 != nil || err2 != nil {
		return r, fmt.Errorf("%w: pool size %q: want N or MIN..MAX", ErrBadRequest, s)
	}
	return r, r.Validate()
}

// Validate checks a range.
func (r PoolRange) Validate() error {
	if r.Min < 0 || r.Max < r.Min || r.Max > 64 {
		return fmt.Errorf("%w: pool size %d..%d: want 0 <= MIN <= MAX <= 64", ErrBadRequest, r.Min, r.Max)
	}
	return nil
}

// UnmarshalText reads a range from a config file.
func (r *PoolRange) UnmarshalText(b []byte) error {
	v, err := ParsePoolRange(string(b))
	*r = v
	return err
}

// String writes a range as ParsePoolRange reads it.
func (r PoolRange) String() string {
	if r.Min == r.Max {
		return strconv.Itoa(r.Min)
	}
	return fmt.Sprintf("%d..%d", r.Min, r.Max)
}

// StartPool keeps restored VMs of a language waiting, as many as size
// says (Min when idle, more while runs come in), refilled in the
// background until Close. warm runs the language's test program once in
// each VM before it waits (not in the user's directory), so the first
// real run does not pay for the interpreter's first start.
func (m *Manager) StartPool(ctx context.Context, language string, size PoolRange, warm bool) error {
	e, err := m.catalog.Lookup(language, "")
	if err != nil {
		return err
	}
	if err := size.Validate(); err != nil {
		return err
	}
	m.poolsMu.Lock()
	defer m.poolsMu.Unlock()
	if m.byLang == nil {
		m.byLang = map[string]*pool.Pool[*VM]{}
	}
	if old := m.byLang[e.Key()]; old != nil {
		old.Close()
		delete(m.byLang, e.Key())
	}
	if size.Max == 0 {
		return nil
	}
	opts := pool.Options{Log: m.log.With("pool", e.Key())}
	if warm {
		opts.Warm = func(ctx context.Context, it pool.Item) error { return m.warm(ctx, it.(*VM), e) }
	}
	p := pool.NewRange(size.Min, size.Max, func(ctx context.Context) (*VM, error) { return m.Acquire(ctx, e, false) }, opts)
	m.byLang[e.Key()] = p
	go p.Populate(context.WithoutCancel(ctx))
	return nil
}

// Pool returns a language's pool, or nil.
func (m *Manager) Pool(language string) *pool.Pool[*VM] {
	e, err := m.catalog.Lookup(language, "")
	if err != nil {
		return nil
	}
	return m.poolOf(e)
}

// poolOf returns the pool of one version of a language, or nil: a run of
// python 3.13 never gets a 3.11 VM.
func (m *Manager) poolOf(e *image.Entry) *pool.Pool[*VM] {
	m.poolsMu.Lock()
	defer m.poolsMu.Unlock()
	return m.byLang[e.Key()]
}

// PoolStats reports every pool.
func (m *Manager) PoolStats() map[string]pool.Stats {
	m.poolsMu.Lock()
	defer m.poolsMu.Unlock()
	out := map[string]pool.Stats{}
	for k, p := range m.byLang {
		out[k] = p.Stats()
	}
	return out
}

// Close stops the pools and destroys the VMs waiting in them.
func (m *Manager) Close() error {
	m.poolsMu.Lock()
	defer m.poolsMu.Unlock()
	for k, p := range m.byLang {
		p.Close()
		delete(m.byLang, k)
	}
	return m.drivers.Close() // after the pools: their VMs are stopped
}

// take returns a VM for one run: from the pool when one waits, else a
// fresh restore (or boot).
func (m *Manager) take(ctx context.Context, e *image.Entry, cold bool, mounts []Mount) (*VM, bool, error) {
	if p := m.poolOf(e); p != nil && !cold && len(mounts) == 0 {
		return p.Get(ctx)
	}
	t, err := m.Template(ctx, e, Shape{})
	if err != nil {
		return nil, false, err
	}
	vm, err := m.Start(ctx, t, StartOptions{Cold: cold, Mounts: mounts})
	return vm, false, err
}

func (m *Manager) warm(ctx context.Context, vm *VM, e *image.Entry) error {
	const dir = "/tmp/.warm"
	res, err := m.execProgram(ctx, vm, e, dir, []agentproto.File{{Path: e.File, Content: []byte(e.Test.Code)}},
		e.Test.Args, []byte(e.Test.Stdin), agentproto.Limits{}, agentproto.Limits{}, Streams{})
	if err != nil {
		return err
	}
	if r := res.Run; r == nil || r.Status != agentproto.StatusOK {
		return fmt.Errorf("warm-up of %s failed: %+v", e.Name, res)
	}
	_, err = execBounded(ctx, vm, agentproto.ExecRequest{Argv: []string{"rm", "-rf", dir}}, nil, nil)
	return err
}
