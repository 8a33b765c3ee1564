package vmmproc

import "sync"

// Ring keeps the last bytes written to it, at most max. It is an
// io.Writer that never fails and never blocks on its reader, so a VMM
// writing into it through a pipe is never stalled, however much it writes.
type Ring struct {
	mu    sync.Mutex
	max   int
	buf   []byte
	total int64
}

// NewRing returns a ring that keeps the last max bytes.
func NewRing(max int) *Ring { return &Ring{max: max} }

// Write appends p, dropping the oldest bytes beyond the bound.
func (r *Ring) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.total += int64(len(p))
	if len(p) >= r.max {
		r.buf = append(r.buf[:0], p[len(p)-r.max:]...)
		return len(p), nil
	}
	r.buf = append(r.buf, p...)
	if len(r.buf) > 2*r.max { // amortise the shift
		r.buf = append(r.buf[:0], r.buf[len(r.buf)-r.max:]...)
	}
	return len(p), nil
}

// Tail returns the last n bytes (at most the ring's bound).
func (r *Ring) Tail(n int) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	b := r.buf
	if len(b) > r.max {
		b = b[len(b)-r.max:]
	}
	if n >= 0 && len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// Total is how many bytes were ever written, kept or not.
func (r *Ring) Total() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.total
}
