// This file holds asyncSink: output from a guest handed to a slow client
// without holding up the agent channel.

package api

import (
	"fmt"
	"io"
	"sync"
)

// maxPending bounds what one slow client may leave waiting: a guest that
// prints faster than its client reads ends the session past this.
const maxPending = 8 << 20

// asyncSink takes writes without blocking (the agent client calls them on
// its read loop, which every call on the channel shares) and sends them,
// in order, from its own goroutine. A client too slow to keep up within
// maxPending bytes, or one whose send fails, ends it: fail is called once
// and later writes are dropped.
type asyncSink struct {
	mu      sync.Mutex
	cond    *sync.Cond
	items   []sinkItem
	pending int
	closed  bool
	failed  bool
	send    func(tag string, b []byte) error
	fail    func(error)
	done    chan struct{}
}

type sinkItem struct {
	tag string
	b   []byte
}

func newAsyncSink(send func(tag string, b []byte) error, fail func(error)) *asyncSink {
	a := &asyncSink{send: send, fail: fail, done: make(chan struct{})}
	a.cond = sync.NewCond(&a.mu)
	go a.run()
	return a
}

func (a *asyncSink) run() {
	defer close(a.done)
	for {
		a.mu.Lock()
		for len(a.items) == 0 && !a.closed {
			a.cond.Wait()
		}
		if len(a.items) == 0 {
			a.mu.Unlock()
			return
		}
		it := a.items[0]
		a.items = a.items[1:]
		failed := a.failed
		a.mu.Unlock()
		if failed {
			continue
		}
		err := a.send(it.tag, it.b)
		a.mu.Lock()
		a.pending -= len(it.b)
		a.mu.Unlock()
		if err != nil {
			a.giveUp(err)
		}
	}
}

func (a *asyncSink) giveUp(err error) {
	a.mu.Lock()
	first := !a.failed
	a.failed = true
	a.items = nil
	a.mu.Unlock()
	if first && a.fail != nil {
		a.fail(err)
	}
}

// writer returns a writer whose bytes go out tagged with tag.
func (a *asyncSink) writer(tag string) io.Writer { return sinkWriter{a, tag} }

type sinkWriter struct {
	a   *asyncSink
	tag string
}

func (w sinkWriter) Write(b []byte) (int, error) {
	a := w.a
	a.mu.Lock()
	if a.failed || a.closed {
		a.mu.Unlock()
		return len(b), nil
	}
	if a.pending+len(b) > maxPending {
		a.mu.Unlock()
		a.giveUp(fmt.Errorf("the client reads more slowly than the process writes (%d bytes waiting)", maxPending))
		return len(b), nil
	}
	a.items = append(a.items, sinkItem{w.tag, append([]byte(nil), b...)})
	a.pending += len(b)
	a.cond.Signal()
	a.mu.Unlock()
	return len(b), nil
}

// close sends what is waiting and stops; later writes are dropped.
func (a *asyncSink) close() {
	a.mu.Lock()
	a.closed = true
	a.cond.Signal()
	a.mu.Unlock()
	<-a.done
}
