package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
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

// Limiter caps how much work runs at once: one-shot runs and execs in
// sandboxes each hold a slot while they run (an idle sandbox holds none;
// live sandboxes are admitted by MemoryBudget). A request that finds
// every slot taken waits in a bounded queue for at most Wait; when the
// queue is full it is refused at once.
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
		return nil, fmt.Errorf("%w: all %d work slots (runs and execs) are in use and %d requests are already waiting; retry later",
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
		return nil, fmt.Errorf("%w: waited %s for one of %d work slots (runs and execs); retry later", ErrQueueTimeout, l.wait, cap(l.slots))
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

// ErrMemoryBudget means a live VM would not fit the host's memory budget:
// more sandboxes must be paused or deleted first. Mapped to 503, so a
// balancer in front of several hosts tries another.
var ErrMemoryBudget = errors.New("memory budget exhausted")

// vmOverheadMiB is what a VM costs beyond its guest memory: the VMM's own
// memory (QEMU keeps ~60 MiB per TCG VM, see MEASURED.md), page tables.
const vmOverheadMiB = 64

// MemoryBudget admits live VMs by the memory they may use: a sandbox's
// guest memory plus the VMM's overhead stays reserved while its VM lives,
// whether or not it runs anything. Refusals are immediate: a long-lived
// sandbox rarely goes away within a request's wait.
type MemoryBudget struct {
	mu      sync.Mutex
	total   int64 // MiB
	used    int64
	live    int
	refused int64
}

// NewMemoryBudget returns a budget of totalMiB.
func NewMemoryBudget(totalMiB int64) *MemoryBudget { return &MemoryBudget{total: totalMiB} }

// vmCost is what a VM of memMiB guest memory takes from the budget.
func vmCost(memMiB int) int64 { return int64(memMiB) + vmOverheadMiB }

// Reserve takes what a VM of memMiB guest memory needs; release gives it
// back (calling it twice is harmless).
func (b *MemoryBudget) Reserve(memMiB int) (release func(), err error) {
	cost := vmCost(memMiB)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used+cost > b.total {
		b.refused++
		return nil, fmt.Errorf("%w: %d live sandboxes hold %d of %d MiB and one of %d MiB (+%d MiB VMM) does not fit; pause or delete sandboxes, or raise memory_budget_mib",
			ErrMemoryBudget, b.live, b.used, b.total, memMiB, vmOverheadMiB)
	}
	b.used += cost
	b.live++
	var once sync.Once
	return func() {
		once.Do(func() {
			b.mu.Lock()
			b.used -= cost
			b.live--
			b.mu.Unlock()
		})
	}, nil
}

// MemoryStats are a budget's gauges and counters, in MiB.
type MemoryStats struct {
	TotalMiB, UsedMiB int64
	Live              int
	Refused           int64
}

// Stats returns the current numbers.
func (b *MemoryBudget) Stats() MemoryStats {
	b.mu.Lock()
	defer b.mu.Unlock()
	return MemoryStats{TotalMiB: b.total, UsedMiB: b.used, Live: b.live, Refused: b.refused}
}

// hostMemoryMiB is the host's RAM (MemTotal), 0 if unknown.
func hostMemoryMiB() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			kib, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err == nil {
				return kib >> 10
			}
		}
	}
	return 0
}

// defaultMemoryBudget is what live sandboxes may take of a host with
// hostMiB of RAM: all of it but what the host itself keeps (an eighth, at
// least 1 GiB) and what the work slots' VMs (one-shot runs, each on a VM
// of vmMiB) and the warm pools' VMs may take, so runs always have room
// beside the sandboxes.
func defaultMemoryBudget(hostMiB int64, slots, pooled, vmMiB int) int64 {
	keep := max(hostMiB/8, 1024)
	return max(hostMiB-keep-int64(slots+pooled)*vmCost(vmMiB), 0)
}
