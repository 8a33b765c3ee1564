package agentproto

import (
	"bytes"
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"
)

// fakeGuest is the guest end of a net.Pipe: it queues every frame the host
// sends and lets the test script the answers.
type fakeGuest struct {
	t      *testing.T
	conn   net.Conn
	w      *Writer
	frames chan Frame // from the host; closed when the host end goes away
}

// newFakeGuest returns a Client connected to a scripted guest.
func newFakeGuest(t *testing.T) (*Client, *fakeGuest) {
	t.Helper()
	host, guest := net.Pipe()
	g := &fakeGuest{t: t, conn: guest, w: NewWriter(guest), frames: make(chan Frame, 64)}
	go func() {
		defer close(g.frames)
		for {
			f, err := ReadFrame(guest)
			if err != nil {
				return
			}
			g.frames <- f
		}
	}()
	c := NewClient(host)
	t.Cleanup(func() {
		guest.Close()
		c.Close()
	})
	return c, g
}

// next returns the next frame from the host, which must be of type want.
func (g *fakeGuest) next(want MsgType) Frame {
	g.t.Helper()
	select {
	case f, ok := <-g.frames:
		if !ok {
			g.t.Fatalf("host closed the channel while the guest waited for %s", want)
		}
		if f.Type != want {
			g.t.Fatalf("guest got a %s frame, want %s", f.Type, want)
		}
		return f
	case <-time.After(5 * time.Second):
		g.t.Fatalf("guest waited 5s for a %s frame", want)
	}
	return Frame{}
}

// nextExec reads an exec request and, as an agent does, reports its
// process started (pid 1000+id).
func (g *fakeGuest) nextExec() ExecRequest {
	g.t.Helper()
	var r ExecRequest
	if err := DecodeJSON(g.next(MsgExec), &r); err != nil {
		g.t.Fatalf("guest: %v", err)
	}
	g.send(MsgStarted, Started{ID: r.ID, PID: 1000 + int(r.ID)})
	return r
}

func (g *fakeGuest) send(t MsgType, v any) {
	g.t.Helper()
	if err := g.w.WriteJSON(t, v); err != nil {
		g.t.Fatalf("guest send %s: %v", t, err)
	}
}

func (g *fakeGuest) output(id uint32, s Stream, data string) {
	g.t.Helper()
	if err := g.w.WriteOutput(id, s, []byte(data)); err != nil {
		g.t.Fatalf("guest send output: %v", err)
	}
}

// execResult is what an Exec call running in a goroutine returned.
type execResult struct {
	res            *ExitResult
	err            error
	stdout, stderr *bytes.Buffer
}

func startExec(ctx context.Context, c *Client, argv ...string) <-chan execResult {
	ch := make(chan execResult, 1)
	go func() {
		var out, errOut bytes.Buffer
		res, err := c.Exec(ctx, ExecRequest{Argv: argv}, &out, &errOut)
		ch <- execResult{res, err, &out, &errOut}
	}()
	return ch
}

func wait(t *testing.T, ch <-chan execResult) execResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("Exec did not return within 5s")
	}
	return execResult{}
}

func TestWaitHelloRepingsUntilAnswered(t *testing.T) {
	c, g := newFakeGuest(t)
	type helloResult struct {
		h   Hello
		err error
	}
	done := make(chan helloResult, 1)
	go func() {
		h, err := c.WaitHello(context.Background())
		done <- helloResult{h, err}
	}()
	// The first ping is "lost": the guest was not listening yet.
	g.next(MsgPing)
	select {
	case r := <-done:
		t.Fatalf("WaitHello returned %+v, %v before any Hello was sent", r.h, r.err)
	default:
	}
	g.next(MsgPing) // so the host must ping again
	want := Hello{Protocol: ProtocolVersion, AgentVersion: "fake-1", Kernel: "6.12"}
	g.send(MsgHello, want)
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatalf("WaitHello: %v", r.err)
		}
		if r.h != want {
			t.Errorf("WaitHello = %+v, want %+v", r.h, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WaitHello did not return after the Hello")
	}
}

func TestWaitHelloRejectsOtherProtocol(t *testing.T) {
	c, g := newFakeGuest(t)
	done := make(chan error, 1)
	go func() {
		_, err := c.WaitHello(context.Background())
		done <- err
	}()
	g.next(MsgPing)
	g.send(MsgHello, Hello{Protocol: ProtocolVersion + 1, AgentVersion: "future"})
	select {
	case err := <-done:
		if !errors.Is(err, ErrVersion) {
			t.Fatalf("WaitHello = %v, want ErrVersion", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WaitHello did not return")
	}
}

func TestWaitHelloContextEnds(t *testing.T) {
	c, g := newFakeGuest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := c.WaitHello(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitHello on a silent guest = %v, want context.DeadlineExceeded", err)
	}
	g.next(MsgPing)
}

func TestResyncSendsRequestAndWaitsForHello(t *testing.T) {
	c, g := newFakeGuest(t)
	done := make(chan error, 1)
	var got Hello
	go func() {
		var err error
		got, err = c.Resync(context.Background(), ResyncRequest{UnixNanos: 42, Entropy: []byte{1, 2}, Identity: "clone-1"})
		done <- err
	}()
	var r ResyncRequest
	if err := r.UnmarshalBinary(g.next(MsgResync).Payload); err != nil {
		t.Fatal(err)
	}
	if r.UnixNanos != 42 || r.Identity != "clone-1" || !bytes.Equal(r.Entropy, []byte{1, 2}) {
		t.Errorf("guest got resync %+v", r)
	}
	g.send(MsgHello, Hello{Protocol: ProtocolVersion, Identity: r.Identity})
	if err := <-done; err != nil {
		t.Fatalf("Resync: %v", err)
	}
	if got.Identity != "clone-1" {
		t.Errorf("Resync Hello identity = %q, want clone-1", got.Identity)
	}
}

func TestExecRoutesOutputAndReturnsExit(t *testing.T) {
	c, g := newFakeGuest(t)
	ch := startExec(context.Background(), c, "python3", "main.py")
	req := g.nextExec()
	if req.ID == 0 {
		t.Fatal("Exec sent exec id 0")
	}
	if len(req.Argv) != 2 || req.Argv[0] != "python3" || req.Argv[1] != "main.py" {
		t.Errorf("guest got argv %q", req.Argv)
	}
	g.output(req.ID, Stdout, "4")
	g.output(req.ID, Stderr, "warning\n")
	g.output(req.ID, Stdout, "2\n")
	g.send(MsgExit, ExitResult{ID: req.ID, Code: 3, Status: StatusRuntimeError, WallMillis: 12})

	r := wait(t, ch)
	if r.err != nil {
		t.Fatalf("Exec: %v", r.err)
	}
	if r.res == nil || r.res.ID != req.ID || r.res.Code != 3 || r.res.Status != StatusRuntimeError || r.res.WallMillis != 12 {
		t.Errorf("Exec result = %+v, want code 3 RE of exec %d", r.res, req.ID)
	}
	if got := r.stdout.String(); got != "42\n" {
		t.Errorf("stdout = %q, want %q", got, "42\n")
	}
	if got := r.stderr.String(); got != "warning\n" {
		t.Errorf("stderr = %q, want %q", got, "warning\n")
	}
}

func TestExecNilWritersDiscardOutput(t *testing.T) {
	c, g := newFakeGuest(t)
	done := make(chan error, 1)
	go func() {
		_, err := c.Exec(context.Background(), ExecRequest{Argv: []string{"true"}}, nil, nil)
		done <- err
	}()
	req := g.nextExec()
	g.output(req.ID, Stdout, "ignored")
	g.output(req.ID, Stderr, "ignored")
	g.send(MsgExit, ExitResult{ID: req.ID})
	if err := <-done; err != nil {
		t.Fatalf("Exec with nil writers: %v", err)
	}
}

func TestConcurrentExecsGetOnlyTheirOwnOutput(t *testing.T) {
	c, g := newFakeGuest(t)
	chA := startExec(context.Background(), c, "a")
	reqs := map[string]ExecRequest{}
	r1 := g.nextExec()
	reqs[r1.Argv[0]] = r1
	chB := startExec(context.Background(), c, "b")
	r2 := g.nextExec()
	reqs[r2.Argv[0]] = r2
	a, b := reqs["a"], reqs["b"]
	if a.ID == b.ID {
		t.Fatalf("two execs share id %d", a.ID)
	}

	g.output(a.ID, Stdout, "a1 ")
	g.output(b.ID, Stdout, "b1 ")
	g.output(a.ID, Stderr, "a-err")
	g.output(b.ID, Stdout, "b2")
	g.output(a.ID, Stdout, "a2")
	g.output(b.ID, Stderr, "b-err")
	g.send(MsgExit, ExitResult{ID: b.ID, Code: 2})
	g.output(a.ID, Stdout, " a3")
	g.send(MsgExit, ExitResult{ID: a.ID, Code: 1})

	ra, rb := wait(t, chA), wait(t, chB)
	for _, e := range []struct {
		name           string
		r              execResult
		code           int
		stdout, stderr string
	}{
		{"a", ra, 1, "a1 a2 a3", "a-err"},
		{"b", rb, 2, "b1 b2", "b-err"},
	} {
		if e.r.err != nil {
			t.Errorf("exec %s: %v", e.name, e.r.err)
			continue
		}
		if e.r.res.Code != e.code {
			t.Errorf("exec %s: code %d, want %d", e.name, e.r.res.Code, e.code)
		}
		if got := e.r.stdout.String(); got != e.stdout {
			t.Errorf("exec %s: stdout %q, want %q", e.name, got, e.stdout)
		}
		if got := e.r.stderr.String(); got != e.stderr {
			t.Errorf("exec %s: stderr %q, want %q", e.name, got, e.stderr)
		}
	}
}

func TestExecAgentError(t *testing.T) {
	c, g := newFakeGuest(t)
	ch := startExec(context.Background(), c, "missing-binary")
	req := g.nextExec()
	g.send(MsgError, ErrorMsg{ID: req.ID, Message: "exec missing-binary: no such file"})
	r := wait(t, ch)
	var ae *AgentError
	if !errors.As(r.err, &ae) {
		t.Fatalf("Exec = (%+v, %v), want an *AgentError", r.res, r.err)
	}
	if ae.Message != "exec missing-binary: no such file" {
		t.Errorf("AgentError.Message = %q", ae.Message)
	}
	if r.res != nil {
		t.Errorf("Exec returned a result %+v with the error", r.res)
	}
}

func TestExecRejectsInvalidRequestWithoutSending(t *testing.T) {
	c, g := newFakeGuest(t)
	_, err := c.Exec(context.Background(), ExecRequest{Argv: []string{"cat"}, Files: []File{{Path: "../escape"}}}, nil, nil)
	if !errors.Is(err, ErrMalformed) {
		t.Fatalf("Exec of an escaping file = %v, want ErrMalformed", err)
	}
	// The next frame the guest sees is the next valid exec, not the bad one.
	ch := startExec(context.Background(), c, "ok")
	req := g.nextExec()
	if req.Argv[0] != "ok" {
		t.Fatalf("guest got exec %q, want the valid one", req.Argv)
	}
	g.send(MsgExit, ExitResult{ID: req.ID})
	if r := wait(t, ch); r.err != nil {
		t.Fatalf("Exec after a rejected request: %v", r.err)
	}
}

func TestExecCancelSendsCancel(t *testing.T) {
	c, g := newFakeGuest(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := startExec(ctx, c, "sleep", "100")
	req := g.nextExec()
	cancel()
	var cr CancelRequest
	if err := DecodeJSON(g.next(MsgCancel), &cr); err != nil {
		t.Fatal(err)
	}
	if cr.ID != req.ID {
		t.Errorf("cancel names exec %d, want %d", cr.ID, req.ID)
	}
	r := wait(t, ch)
	if !errors.Is(r.err, context.Canceled) {
		t.Fatalf("Exec = (%+v, %v), want context.Canceled", r.res, r.err)
	}

	// The agent's late answer for the cancelled exec is dropped, and the
	// channel keeps working.
	g.output(req.ID, Stdout, "late")
	g.send(MsgExit, ExitResult{ID: req.ID, Signal: "SIGKILL", Status: StatusSignal})
	ch2 := startExec(context.Background(), c, "echo")
	req2 := g.nextExec()
	if req2.ID == req.ID {
		t.Fatalf("exec id %d reused", req.ID)
	}
	g.output(req2.ID, Stdout, "fresh")
	g.send(MsgExit, ExitResult{ID: req2.ID})
	r2 := wait(t, ch2)
	if r2.err != nil || r2.res.ID != req2.ID {
		t.Fatalf("Exec after cancel = (%+v, %v)", r2.res, r2.err)
	}
	if got := r2.stdout.String(); got != "fresh" {
		t.Errorf("stdout after cancel = %q, want %q", got, "fresh")
	}
	if got := r.stdout.String(); got != "" {
		t.Errorf("cancelled exec got late output %q", got)
	}
}

func TestGuestCloseFailsPendingExecs(t *testing.T) {
	c, g := newFakeGuest(t)
	chA := startExec(context.Background(), c, "a")
	g.nextExec()
	chB := startExec(context.Background(), c, "b")
	g.nextExec()
	g.conn.Close()

	for _, ch := range []<-chan execResult{chA, chB} {
		r := wait(t, ch)
		if !errors.Is(r.err, ErrClosed) {
			t.Errorf("pending Exec = (%+v, %v), want an error wrapping ErrClosed", r.res, r.err)
		}
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done() not closed after the guest hung up")
	}
	if !errors.Is(c.Err(), ErrClosed) {
		t.Errorf("Err() = %v, want ErrClosed", c.Err())
	}
	// A new exec fails at once instead of hanging.
	r := wait(t, startExec(context.Background(), c, "c"))
	if !errors.Is(r.err, ErrClosed) {
		t.Errorf("Exec after close = %v, want ErrClosed", r.err)
	}
	if _, err := c.WaitHello(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("WaitHello after close = %v, want ErrClosed", err)
	}
}

func TestGuestProtocolViolationClosesChannel(t *testing.T) {
	c, g := newFakeGuest(t)
	ch := startExec(context.Background(), c, "a")
	req := g.nextExec()
	g.send(MsgExec, ExecRequest{ID: req.ID, Argv: []string{"x"}}) // guests never send exec
	r := wait(t, ch)
	if !errors.Is(r.err, ErrClosed) {
		t.Fatalf("Exec = %v, want ErrClosed after a bad frame", r.err)
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done() not closed")
	}
}

func TestCloseFailsPendingExecs(t *testing.T) {
	c, g := newFakeGuest(t)
	ch := startExec(context.Background(), c, "a")
	g.nextExec()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.Close()
	}()
	if r := wait(t, ch); !errors.Is(r.err, ErrClosed) {
		t.Errorf("Exec after Close = %v, want ErrClosed", r.err)
	}
	wg.Wait()
	select {
	case <-c.Done():
	default:
		t.Error("Done() open after Close returned")
	}
}
