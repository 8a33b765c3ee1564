package vmmproc

import "sync"

// Cleanup is a stack of undo steps: Clean runs them newest first, unless
// Release came first. A Boot adds a step for each thing it creates and
// releases the stack once the machine is handed out, so every early
// return undoes exactly what was done (gVisor's pkg/cleanup).
type Cleanup struct {
	mu  sync.Mutex
	fns []func()
}

// Add pushes an undo step.
func (c *Cleanup) Add(f func()) {
	c.mu.Lock()
	c.fns = append(c.fns, f)
	c.mu.Unlock()
}

// Clean runs the steps, newest first, and empties the stack.
func (c *Cleanup) Clean() {
	c.mu.Lock()
	fns := c.fns
	c.fns = nil
	c.mu.Unlock()
	for i := len(fns) - 1; i >= 0; i-- {
		fns[i]()
	}
}

// Release empties the stack without running it.
func (c *Cleanup) Release() {
	c.mu.Lock()
	c.fns = nil
	c.mu.Unlock()
}
