package sandbox

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestLimiter(t *testing.T) {
	ctx := context.Background()
	l := NewLimiter(1, 1, time.Hour)
	rel, err := l.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	waiting := make(chan struct{})
	go func() {
		close(waiting)
		r, err := l.Acquire(ctx)
		if err == nil {
			r()
		}
		got <- err
	}()
	<-waiting
	// The waiter is queued once the queue is full for others.
	deadline := time.Now().Add(5 * time.Second)
	for l.Stats().Waiting != 1 {
		if time.Now().After(deadline) {
			t.Fatal("waiter never queued")
		}
		runtime.Gosched()
	}
	if _, err := l.Acquire(ctx); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("third acquire: %v, want ErrQueueFull", err)
	}
	rel()
	rel() // twice is harmless
	if err := <-got; err != nil {
		t.Fatalf("waiter: %v", err)
	}

	l = NewLimiter(1, 4, 20*time.Millisecond)
	rel, _ = l.Acquire(ctx)
	defer rel()
	if _, err := l.Acquire(ctx); !errors.Is(err, ErrQueueTimeout) || !strings.Contains(err.Error(), "retry later") {
		t.Fatalf("timed-out acquire: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := l.Acquire(cctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled acquire: %v", err)
	}
	if st := l.Stats(); st.RefusedTimeout != 1 || st.InUse != 1 {
		t.Fatalf("stats %+v", st)
	}
}
