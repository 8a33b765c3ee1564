package agentproto

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

// countingWriter counts what it is given and keeps nothing.
type countingWriter struct{ n int }

func (w *countingWriter) Write(p []byte) (int, error) { w.n += len(p); return len(p), nil }

// A hostile guest sent 64 MiB against a 1 MiB cap, and the host took it
// all. The host now cuts each stream at the cap, tells the guest to stop,
// and reports the cut.
func TestHostCutsOutputAtItsCap(t *testing.T) {
	c, g := newFakeGuest(t)
	var out, errOut countingWriter
	done := make(chan execResult, 1)
	go func() {
		res, err := c.Exec(context.Background(), ExecRequest{Argv: []string{"yes"}, Limits: Limits{OutputBytes: 1 << 20}}, &out, &errOut)
		done <- execResult{res: res, err: err}
	}()
	req := g.nextExec()
	chunk := bytes.Repeat([]byte("y\n"), 32<<10)
	sentCancel := make(chan CancelRequest, 1)
	go func() { // the host's cancel, read while the guest floods
		for f := range g.frames {
			if f.Type == MsgCancel {
				var cr CancelRequest
				DecodeJSON(f, &cr)
				sentCancel <- cr
			}
		}
	}()
	for sent := 0; sent < 64<<20; sent += len(chunk) {
		if err := g.w.WriteOutput(req.ID, Stdout, chunk); err != nil {
			t.Fatal(err)
		}
	}
	g.w.WriteOutput(req.ID, Stderr, []byte("fine"))
	g.send(MsgExit, ExitResult{ID: req.ID}) // and it claims all was well
	r := wait(t, done)
	if r.err != nil {
		t.Fatal(r.err)
	}
	if out.n != 1<<20 || errOut.n != 4 {
		t.Fatalf("host passed %d bytes of stdout and %d of stderr, want 1 MiB and 4", out.n, errOut.n)
	}
	if r.res.Status != StatusStdoutLimit || !strings.Contains(r.res.Message, "host cut") {
		t.Fatalf("result %+v, want OL with the host's message", r.res)
	}
	select {
	case cr := <-sentCancel:
		if cr.ID != req.ID {
			t.Fatalf("cancel for %d, want %d", cr.ID, req.ID)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the host did not tell the guest to stop")
	}
}

// What the guest answers is checked against what was asked.
func TestHostChecksGuestAnswers(t *testing.T) {
	t.Run("download larger than declared", func(t *testing.T) {
		c, g := newFakeGuest(t)
		done := make(chan error, 1)
		go func() { _, err := c.ReadFile(context.Background(), "/f", 100); done <- err }()
		var r FileRequest
		DecodeJSON(g.next(MsgDownload), &r)
		g.send(MsgEntries, Entries{ID: r.ID, Entries: []FileInfo{{Type: TypeFile, Size: 10}}})
		g.w.WriteChunk(r.ID, 0, bytes.Repeat([]byte("x"), 50))
		if err := <-done; !errors.Is(err, ErrMalformed) {
			t.Fatalf("ReadFile = %v, want ErrMalformed", err)
		}
	})
	t.Run("download declared over the limit", func(t *testing.T) {
		c, g := newFakeGuest(t)
		done := make(chan error, 1)
		go func() { _, err := c.ReadFile(context.Background(), "/f", 100); done <- err }()
		var r FileRequest
		DecodeJSON(g.next(MsgDownload), &r)
		g.send(MsgEntries, Entries{ID: r.ID, Entries: []FileInfo{{Type: TypeFile, Size: 1 << 40}}})
		if err := <-done; !errors.Is(err, ErrMalformed) {
			t.Fatalf("ReadFile = %v, want ErrMalformed", err)
		}
	})
	t.Run("connect to another pid", func(t *testing.T) {
		c, g := newFakeGuest(t)
		done := make(chan error, 1)
		go func() { _, err := c.Connect(context.Background(), 42, false, nil, nil); done <- err }()
		var r ConnectRequest
		DecodeJSON(g.next(MsgConnect), &r)
		g.send(MsgStarted, Started{ID: r.ID, PID: 1})
		if err := <-done; !errors.Is(err, ErrMalformed) {
			t.Fatalf("Connect = %v, want ErrMalformed", err)
		}
	})
	t.Run("wrong answer type", func(t *testing.T) {
		c, g := newFakeGuest(t)
		done := make(chan error, 1)
		go func() { _, err := c.Stat(context.Background(), "/f"); done <- err }()
		var r FileRequest
		DecodeJSON(g.next(MsgStat), &r)
		g.send(MsgProcessList, ProcessList{ID: r.ID})
		if err := <-done; !errors.Is(err, ErrMalformed) {
			t.Fatalf("Stat = %v, want ErrMalformed", err)
		}
	})
	t.Run("stat with two entries", func(t *testing.T) {
		c, g := newFakeGuest(t)
		done := make(chan error, 1)
		go func() { _, err := c.Stat(context.Background(), "/f"); done <- err }()
		var r FileRequest
		DecodeJSON(g.next(MsgStat), &r)
		g.send(MsgEntries, Entries{ID: r.ID, Entries: []FileInfo{{}, {}}})
		if err := <-done; !errors.Is(err, ErrMalformed) {
			t.Fatalf("Stat = %v, want ErrMalformed", err)
		}
	})
	t.Run("upload ack beyond what was sent", func(t *testing.T) {
		c, g := newFakeGuest(t)
		done := make(chan error, 1)
		go func() { _, err := c.Upload(context.Background(), "/f", strings.NewReader("abc"), 3, 0); done <- err }()
		var r FileRequest
		DecodeJSON(g.next(MsgUpload), &r)
		g.send(MsgAck, Ack{ID: r.ID, Bytes: 1 << 30})
		if err := <-done; !errors.Is(err, ErrMalformed) {
			t.Fatalf("Upload = %v, want ErrMalformed", err)
		}
	})
}

// Calls without a deadline of their own get the client's: a guest that
// never answers cannot hang a file call, a process call or a ping.
func TestCallsHaveDeadlines(t *testing.T) {
	host, guest := net.Pipe()
	defer guest.Close()
	go func() { // reads everything, answers nothing
		for {
			if _, err := ReadFrame(guest); err != nil {
				return
			}
		}
	}()
	c := NewClient(host, WithCallTimeout(100*time.Millisecond))
	defer c.Close()
	ctx := context.Background()
	for name, call := range map[string]func() error{
		"stat":     func() error { _, err := c.Stat(ctx, "/x"); return err },
		"list":     func() error { _, err := c.Processes(ctx); return err },
		"signal":   func() error { return c.Signal(ctx, 5, "SIGTERM") },
		"stdin":    func() error { return c.WriteStdin(ctx, 5, []byte("x")) },
		"download": func() error { _, err := c.ReadFile(ctx, "/x", 10); return err },
		"upload":   func() error { _, err := c.Upload(ctx, "/x", strings.NewReader("x"), 1, 0); return err },
		"start": func() error {
			_, err := c.Start(ctx, ExecRequest{Argv: []string{"x"}, Background: true}, nil, nil)
			return err
		},
		"ping": func() error { _, err := c.WaitHello(ctx); return err },
	} {
		start := time.Now()
		err := call()
		if err == nil || time.Since(start) > 2*time.Second {
			t.Errorf("%s on a silent guest: %v after %s", name, err, time.Since(start))
		}
	}
}

// A guest that stops reading its channel cannot hold a host's writer:
// the write fails at its deadline and the channel is closed.
func TestWritesHaveDeadlines(t *testing.T) {
	host, guest := net.Pipe() // unbuffered: nothing is read, nothing is written
	defer guest.Close()
	c := NewClient(host, WithWriteTimeout(100*time.Millisecond))
	defer c.Close()
	start := time.Now()
	err := c.WriteFiles(context.Background(), "/tmp", []File{{Path: "a", Content: []byte("x")}})
	if err == nil || time.Since(start) > 2*time.Second {
		t.Fatalf("WriteFiles to a guest that does not read: %v after %s", err, time.Since(start))
	}
	select {
	case <-c.Done():
	case <-time.After(2 * time.Second):
		t.Fatal("the channel stayed open after a failed write")
	}
}

// A request too large for one frame fails alone; the channel stays up.
func TestOversizedRequestKeepsChannel(t *testing.T) {
	c, g := newFakeGuest(t)
	big := []File{{Path: "a", Content: bytes.Repeat([]byte("x"), 2<<20)}, {Path: "b", Content: bytes.Repeat([]byte("x"), 2<<20)}}
	if _, err := c.Exec(context.Background(), ExecRequest{Argv: []string{"true"}, Files: big}, nil, nil); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Exec of 4 MiB of files = %v, want ErrTooLarge", err)
	}
	ch := startExec(context.Background(), c, "ok")
	req := g.nextExec()
	g.send(MsgExit, ExitResult{ID: req.ID})
	if r := wait(t, ch); r.err != nil {
		t.Fatalf("the next exec: %v", r.err)
	}
}
