package vmmproc

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/vmm"
)

func TestRingKeepsTheTail(t *testing.T) {
	r := NewRing(8)
	r.Write([]byte("hello "))
	r.Write([]byte("world"))
	if got := r.Tail(100); got != "lo world" {
		t.Fatalf("Tail = %q", got)
	}
	if got := r.Tail(3); got != "rld" {
		t.Fatalf("Tail(3) = %q", got)
	}
	r.Write([]byte(strings.Repeat("x", 100) + "END"))
	if got := r.Tail(100); got != "xxxxxEND" || r.Total() != 114 {
		t.Fatalf("after a long write: %q, total %d", got, r.Total())
	}
}

// A VMM that floods its console must cost a bounded ring, whatever it
// writes, and must not be blocked by it.
func TestOutputIsBounded(t *testing.T) {
	out, errs := NewRing(64<<10), NewRing(1<<10)
	p := start(t, out, errs, "flood", "20000000")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Wait(ctx); err != nil {
		t.Fatalf("flooding helper: %v", err)
	}
	p.Drained(5 * time.Second)
	if out.Total() != 20000000 || len(out.Tail(-1)) != 64<<10 {
		t.Fatalf("console ring: total %d, kept %d", out.Total(), len(out.Tail(-1)))
	}
	if got := errs.Tail(100); got != "flood done\n" {
		t.Fatalf("log ring: %q", got)
	}
}

func TestWaitSaysHowItEnded(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := start(t, nil, nil, "exit", "0").Wait(ctx); err != nil {
		t.Errorf("clean exit: %v", err)
	}
	log := NewRing(100)
	p := start(t, nil, log, "exit", "3")
	if err := p.Wait(ctx); !errors.Is(err, vmm.ErrExited) || !strings.Contains(err.Error(), "exit status 3") {
		t.Errorf("exit 3: %v, want ErrExited with the status", err)
	}
	p.Drained(time.Second)
	if !strings.Contains(log.Tail(100), "exiting with 3") {
		t.Errorf("log tail %q lacks the helper's last words", log.Tail(100))
	}
	s := start(t, nil, nil, "sleep")
	s.Stop(time.Second)
	if err := s.Wait(ctx); err != nil {
		t.Errorf("after Stop: %v, want nil", err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer wcancel()
	if err := start(t, nil, nil, "sleep").Wait(wctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait on a running process: %v", err)
	}
}

func TestStopEscalatesAndIsShared(t *testing.T) {
	out := NewRing(100)
	p := start(t, out, nil, "ignore-term")
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.Tail(100), "ready") && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond) // the helper must install its handler first
	}
	begin := time.Now()
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() { defer wg.Done(); p.Stop(300 * time.Millisecond) }()
	}
	wg.Wait()
	if took := time.Since(begin); took < 300*time.Millisecond {
		t.Errorf("Stop took %s: no grace before SIGKILL", took)
	}
	if alive(p.PID()) {
		t.Fatal("process survived Stop")
	}
	if !p.Stopped() || p.ExitError() != nil {
		t.Errorf("Stopped %v, ExitError %v", p.Stopped(), p.ExitError())
	}
}

func TestBoundEndsWithTheProcess(t *testing.T) {
	p := start(t, nil, nil, "sleep")
	ctx, cancel := p.Bound(context.Background())
	defer cancel()
	go p.Stop(time.Second)
	select {
	case <-ctx.Done():
		if !errors.Is(context.Cause(ctx), vmm.ErrExited) {
			t.Fatalf("cause %v", context.Cause(ctx))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("bound context outlived the process")
	}
}

func TestFollow(t *testing.T) {
	p := start(t, nil, nil, "sleep")
	f, err := Follow(p.PID())
	if err != nil {
		t.Fatal(err)
	}
	f.Stop(time.Second)
	if !f.Done() {
		t.Fatal("Stop of a followed process returned before it exited")
	}
	select {
	case <-p.Exited(): // its parent (us) sees the exit too
	case <-time.After(5 * time.Second):
		t.Fatal("followed process survived Stop")
	}
}

func TestWaitSocket(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sock := filepath.Join(dir, "api.sock")
	p := start(t, nil, nil, "listen", sock, "200ms")
	if err := WaitSocket(ctx, sock, p); err != nil {
		t.Fatalf("WaitSocket: %v", err)
	}
	dead := start(t, nil, nil, "exit", "1")
	if err := WaitSocket(ctx, filepath.Join(dir, "never.sock"), dead); !errors.Is(err, vmm.ErrExited) {
		t.Fatalf("WaitSocket on a process that exits: %v, want ErrExited", err)
	}
	sctx, scancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer scancel()
	if err := WaitSocket(sctx, filepath.Join(dir, "late.sock"), start(t, nil, nil, "sleep")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitSocket past its deadline: %v", err)
	}
}

func TestCleanupOrder(t *testing.T) {
	var got []int
	var c Cleanup
	c.Add(func() { got = append(got, 1) })
	c.Add(func() { got = append(got, 2) })
	c.Clean()
	c.Clean()
	if len(got) != 2 || got[0] != 2 || got[1] != 1 {
		t.Fatalf("Clean ran %v, want [2 1] once", got)
	}
	c.Add(func() { t.Fatal("released step ran") })
	c.Release()
	c.Clean()
}
