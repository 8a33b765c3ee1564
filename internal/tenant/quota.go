package tenant

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Quota is what one tenant may use at once. Zero fields are unlimited.
type Quota struct {
	// VMs caps VMs working for the tenant at once: one-shot runs and
	// running sandboxes.
	VMs int `json:"vms,omitempty" toml:"vms"`
	// Sandboxes caps the tenant's sandboxes in any state but deleted.
	Sandboxes int `json:"sandboxes,omitempty" toml:"sandboxes"`
	// Hibernated caps its hibernated sandboxes (their memory is on disk).
	Hibernated int `json:"hibernated,omitempty" toml:"hibernated"`
	// DiskMiB caps the sum of its sandboxes' disks.
	DiskMiB int `json:"disk_mib,omitempty" toml:"disk_mib"`
	// MemoryMiB caps the sum of the memory of its VMs at work.
	MemoryMiB int `json:"memory_mib,omitempty" toml:"memory_mib"`
	// Rate is the requests per second it may send, sustained; Burst how
	// many at once above that (default max(1, 2*Rate)).
	Rate  float64 `json:"rate,omitempty" toml:"rate"`
	Burst int     `json:"burst,omitempty" toml:"burst"`
}

// Validate checks a Quota.
func (q Quota) Validate() error {
	if q.VMs < 0 || q.Sandboxes < 0 || q.Hibernated < 0 || q.DiskMiB < 0 || q.MemoryMiB < 0 || q.Rate < 0 || q.Burst < 0 {
		return fmt.Errorf("%w: quotas must not be negative", ErrQuota)
	}
	return nil
}

// Override is one tenant's departures from the default Quota: each set
// field replaces the default's (0 meaning unlimited).
type Override struct {
	VMs        *int     `json:"vms,omitempty"`
	Sandboxes  *int     `json:"sandboxes,omitempty"`
	Hibernated *int     `json:"hibernated,omitempty"`
	DiskMiB    *int     `json:"disk_mib,omitempty"`
	MemoryMiB  *int     `json:"memory_mib,omitempty"`
	Rate       *float64 `json:"rate,omitempty"`
	Burst      *int     `json:"burst,omitempty"`
}

// Validate checks an Override.
func (o Override) Validate() error { return Quota{}.With(o).Validate() }

// With returns q with o's fields in place of its own.
func (q Quota) With(o Override) Quota {
	set := func(dst *int, v *int) {
		if v != nil {
			*dst = *v
		}
	}
	set(&q.VMs, o.VMs)
	set(&q.Sandboxes, o.Sandboxes)
	set(&q.Hibernated, o.Hibernated)
	set(&q.DiskMiB, o.DiskMiB)
	set(&q.MemoryMiB, o.MemoryMiB)
	set(&q.Burst, o.Burst)
	if o.Rate != nil {
		q.Rate = *o.Rate
	}
	return q
}

func (q Quota) burst() int {
	if q.Burst > 0 {
		return q.Burst
	}
	return max(1, int(2*q.Rate))
}

// Item is one of a tenant's sandboxes as quotas see it.
type Item struct {
	ID string
	// Hibernated says its memory is on disk; Live that a VM works for it
	// (creating, running, resuming, hibernating or forking).
	Hibernated, Live   bool
	MemoryMiB, DiskMiB int
}

// UsageFunc lists a tenant's sandboxes (all but deleted ones).
type UsageFunc func(ctx context.Context, t string) ([]Item, error)

// Op is an operation Admit is asked about.
type Op string

// Operations on sandboxes that need admission.
const (
	OpCreate    Op = "create"
	OpResume    Op = "resume"
	OpHibernate Op = "hibernate"
)

// Request is one operation on one sandbox, for Admit.
type Request struct {
	Op Op
	// ID is the sandbox's; MemoryMiB and DiskMiB its shape.
	ID                 string
	MemoryMiB, DiskMiB int
}

// Gate bounds VMs (sandbox.Gate has the same method).
type Gate interface {
	Acquire(ctx context.Context) (release func(), err error)
}

// Quotas enforces each tenant's Quota: the default, with the Store's
// overrides. Its counts of VMs and of operations in flight are this
// process's; sandboxes are counted from the UsageFunc.
type Quotas struct {
	def   Quota
	store KeyStore // nil: the default for everyone
	usage UsageFunc
	now   func() time.Time

	seq     atomic.Int64
	mu      sync.Mutex
	tenants map[string]*tenantState
}

// tenantState is one tenant's counters in this process.
type tenantState struct {
	admit sync.Mutex // serialises Admit's check-and-reserve

	// under Quotas.mu:
	vms     int
	runMem  int                // MiB of one-shot runs at work
	pending map[string]Request // admitted operations still in flight, by sandbox
	limiter *rate.Limiter
	lrate   float64
	lburst  int
	quota   Quota
	quotaAt time.Time
}

// quotaTTL is how long a tenant's effective quota is cached: a change
// made with `key quota` applies within it.
const quotaTTL = 2 * time.Second

// NewQuotas enforces def for every tenant, overridden per tenant by store
// (nil: none); usage (nil: none) counts a tenant's sandboxes.
func NewQuotas(def Quota, store KeyStore, usage UsageFunc) *Quotas {
	return &Quotas{def: def, store: store, usage: usage, now: time.Now, tenants: map[string]*tenantState{}}
}

func (q *Quotas) state(t string) *tenantState {
	q.mu.Lock()
	defer q.mu.Unlock()
	st := q.tenants[t]
	if st == nil {
		st = &tenantState{pending: map[string]Request{}}
		q.tenants[t] = st
	}
	return st
}

// Of returns tenant t's effective quota.
func (q *Quotas) Of(ctx context.Context, t string) (Quota, error) {
	st := q.state(t)
	now := q.now()
	q.mu.Lock()
	if !st.quotaAt.IsZero() && now.Sub(st.quotaAt) < quotaTTL {
		defer q.mu.Unlock()
		return st.quota, nil
	}
	q.mu.Unlock()
	eff := q.def
	if q.store != nil {
		o, err := q.store.Quota(ctx, t)
		if err != nil {
			return Quota{}, err
		}
		eff = eff.With(o)
	}
	q.mu.Lock()
	st.quota, st.quotaAt = eff, now
	q.mu.Unlock()
	return eff, nil
}

func quotaErr(t, what string, have, limit int, hint string) error {
	return fmt.Errorf("%w: tenant %s has %d %s and may have at most %d; %s", ErrQuota, Display(t), have, what, limit, hint)
}

// Allow takes one request from tenant t's rate, or refuses it with
// ErrQuota saying when to retry.
func (q *Quotas) Allow(ctx context.Context, t string) error {
	eff, err := q.Of(ctx, t)
	if err != nil {
		return err
	}
	if eff.Rate <= 0 {
		return nil
	}
	st := q.state(t)
	q.mu.Lock()
	if st.limiter == nil || st.lrate != eff.Rate || st.lburst != eff.burst() {
		st.limiter = rate.NewLimiter(rate.Limit(eff.Rate), eff.burst())
		st.lrate, st.lburst = eff.Rate, eff.burst()
	}
	l := st.limiter
	q.mu.Unlock()
	if !l.AllowN(q.now(), 1) {
		return fmt.Errorf("%w: tenant %s sends more than %g requests per second (burst %d); slow down", ErrQuota, Display(t), eff.Rate, eff.burst())
	}
	return nil
}

// Gate returns a gate that takes one of tenant's VMs (the tenant ctx acts
// for: see WithTenant) and then a slot of global. Requests without a
// tenant only take global's.
func (q *Quotas) Gate(global Gate) Gate { return vmGate{q: q, global: global} }

// RunGate is Gate for one-shot runs of memMiB each, which also count
// against the tenant's memory.
func (q *Quotas) RunGate(global Gate, memMiB int) Gate {
	return vmGate{q: q, global: global, memMiB: memMiB}
}

type vmGate struct {
	q      *Quotas
	global Gate
	memMiB int
}

func (g vmGate) Acquire(ctx context.Context) (func(), error) {
	t, ok := FromContext(ctx)
	if !ok {
		return g.global.Acquire(ctx)
	}
	q := g.q
	eff, err := q.Of(ctx, t)
	if err != nil {
		return nil, err
	}
	st := q.state(t)
	st.admit.Lock()
	if g.memMiB > 0 && eff.MemoryMiB > 0 {
		used, err := q.memoryInUse(ctx, t, st)
		if err != nil {
			st.admit.Unlock()
			return nil, err
		}
		if used+g.memMiB > eff.MemoryMiB {
			st.admit.Unlock()
			return nil, quotaErr(t, "MiB of memory at work", used, eff.MemoryMiB, "wait for a run to finish or hibernate a sandbox")
		}
	}
	q.mu.Lock()
	if eff.VMs > 0 && st.vms >= eff.VMs {
		n := st.vms
		q.mu.Unlock()
		st.admit.Unlock()
		return nil, quotaErr(t, "VMs at work", n, eff.VMs, "wait for a run to finish or hibernate a sandbox")
	}
	st.vms++
	st.runMem += g.memMiB
	q.mu.Unlock()
	st.admit.Unlock()
	undo := func() {
		q.mu.Lock()
		st.vms--
		st.runMem -= g.memMiB
		q.mu.Unlock()
	}
	rel, err := g.global.Acquire(ctx)
	if err != nil {
		undo()
		return nil, err
	}
	var once sync.Once
	return func() { once.Do(func() { rel(); undo() }) }, nil
}

// memoryInUse is the memory of t's live sandboxes, runs and admitted
// operations; st.admit must be held.
func (q *Quotas) memoryInUse(ctx context.Context, t string, st *tenantState) (int, error) {
	items, err := q.items(ctx, t)
	if err != nil {
		return 0, err
	}
	return q.memoryOf(st, items), nil
}

// memoryOf is memoryInUse over items already listed.
func (q *Quotas) memoryOf(st *tenantState, items []Item) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	used := st.runMem
	for _, it := range items {
		if _, busy := st.pending[it.ID]; it.Live && !busy {
			used += it.MemoryMiB
		}
	}
	for _, p := range st.pending {
		if p.Op != OpHibernate {
			used += p.MemoryMiB
		}
	}
	return used
}

func (q *Quotas) items(ctx context.Context, t string) ([]Item, error) {
	if q.usage == nil {
		return nil, nil
	}
	items, err := q.usage(ctx, t)
	if err != nil {
		return nil, fmt.Errorf("count sandboxes of %s: %w", Display(t), err)
	}
	return items, nil
}

// Admit checks that tenant t may do r within its quotas and reserves what
// r will use until release is called (when the operation has ended and
// the sandbox's record says what it holds).
func (q *Quotas) Admit(ctx context.Context, t string, r Request) (release func(), err error) {
	eff, err := q.Of(ctx, t)
	if err != nil {
		return nil, err
	}
	st := q.state(t)
	st.admit.Lock()
	defer st.admit.Unlock()
	items, err := q.items(ctx, t)
	if err != nil {
		return nil, err
	}
	q.mu.Lock()
	var count, hibernated, disk int
	for _, it := range items {
		if _, busy := st.pending[it.ID]; busy {
			continue // counted below, as what it is becoming
		}
		count++
		disk += it.DiskMiB
		if it.Hibernated {
			hibernated++
		}
	}
	for _, p := range st.pending {
		switch p.Op {
		case OpCreate:
			count++
			disk += p.DiskMiB
		case OpHibernate:
			count++
			hibernated++
			disk += p.DiskMiB
		case OpResume:
			count++
			disk += p.DiskMiB
		}
	}
	q.mu.Unlock()
	switch r.Op {
	case OpCreate:
		if eff.Sandboxes > 0 && count+1 > eff.Sandboxes {
			return nil, quotaErr(t, "sandboxes", count, eff.Sandboxes, "delete one first")
		}
		if eff.DiskMiB > 0 && disk+r.DiskMiB > eff.DiskMiB {
			return nil, quotaErr(t, "MiB of sandbox disks", disk, eff.DiskMiB, fmt.Sprintf("this one asks for %d MiB: delete a sandbox or ask for less", r.DiskMiB))
		}
	case OpHibernate:
		if eff.Hibernated > 0 && hibernated+1 > eff.Hibernated {
			return nil, quotaErr(t, "hibernated sandboxes", hibernated, eff.Hibernated, "resume or delete one first")
		}
	}
	if r.Op != OpHibernate && eff.MemoryMiB > 0 {
		if used := q.memoryOf(st, items); used+r.MemoryMiB > eff.MemoryMiB {
			return nil, quotaErr(t, "MiB of memory at work", used, eff.MemoryMiB, fmt.Sprintf("this one needs %d MiB: hibernate or delete a sandbox first", r.MemoryMiB))
		}
	}
	key := r.ID
	if key == "" {
		key = fmt.Sprintf("op-%d", q.seq.Add(1)) // no sandbox yet: its own entry
	}
	q.mu.Lock()
	st.pending[key] = r
	q.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			q.mu.Lock()
			delete(st.pending, key)
			q.mu.Unlock()
		})
	}, nil
}
