package agentproto

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// FileOption qualifies a file call.
type FileOption func(*FileRequest)

// Within confines a file call to guest directory dir: its paths must lie
// in dir, and no symlink may lead out of dir (see FileRequest).
func Within(dir string) FileOption { return func(r *FileRequest) { r.Within = dir } }

// AsUser runs a file call with the permissions of guest user name
// ("root", or a name in the guest's /etc/passwd).
func AsUser(name string) FileOption { return func(r *FileRequest) { r.User = name } }

func fileRequest(p string, opts []FileOption) FileRequest {
	r := FileRequest{Path: p}
	for _, o := range opts {
		o(&r)
	}
	return r
}

// entriesCall sends a file request answered by Entries and checks that the
// guest sent between min and max of them.
func (c *Client) entriesCall(ctx context.Context, t MsgType, req FileRequest, minN, maxN int) ([]FileInfo, error) {
	if err := req.Validate(t); err != nil {
		return nil, err
	}
	var e Entries
	if err := c.roundTrip(ctx, t, MsgEntries, &e, func(id uint32) any { req.ID = id; return req }); err != nil {
		return nil, err
	}
	if len(e.Entries) < minN || len(e.Entries) > maxN {
		return nil, fmt.Errorf("%w: %s of %s answered with %d entries", ErrMalformed, t, req.Path, len(e.Entries))
	}
	return e.Entries, nil
}

// Stat describes the file at p (a symlink itself, not its target).
func (c *Client) Stat(ctx context.Context, p string, opts ...FileOption) (FileInfo, error) {
	e, err := c.entriesCall(ctx, MsgStat, fileRequest(p, opts), 1, 1)
	if err != nil {
		return FileInfo{}, err
	}
	return e[0], nil
}

// ListDir lists directory p, depth levels deep (1: its own entries),
// directories before their contents. At most MaxListEntries come back.
func (c *Client) ListDir(ctx context.Context, p string, depth int, opts ...FileOption) ([]FileInfo, error) {
	r := fileRequest(p, opts)
	r.Depth = depth
	return c.entriesCall(ctx, MsgListDir, r, 0, MaxListEntries)
}

// MakeDir creates directory p, owned by the call's user. With parents,
// missing parents are created too and an existing directory is no
// error; without, an existing p fails with fs.ErrExist.
func (c *Client) MakeDir(ctx context.Context, p string, parents bool, opts ...FileOption) (FileInfo, error) {
	r := fileRequest(p, opts)
	r.Parents = parents
	e, err := c.entriesCall(ctx, MsgMkdir, r, 1, 1)
	if err != nil {
		return FileInfo{}, err
	}
	return e[0], nil
}

// Move renames from to to (replacing a file there) and describes it.
func (c *Client) Move(ctx context.Context, from, to string, opts ...FileOption) (FileInfo, error) {
	r := fileRequest(from, opts)
	r.To = to
	e, err := c.entriesCall(ctx, MsgMove, r, 1, 1)
	if err != nil {
		return FileInfo{}, err
	}
	return e[0], nil
}

// Remove removes the file or empty directory p; with recursive, a
// directory with everything in it.
func (c *Client) Remove(ctx context.Context, p string, recursive bool, opts ...FileOption) error {
	r := fileRequest(p, opts)
	r.Recursive = recursive
	if err := r.Validate(MsgRemove); err != nil {
		return err
	}
	return c.roundTrip(ctx, MsgRemove, MsgAck, nil, func(id uint32) any { r.ID = id; return r })
}

// ReadFile reads the regular file p, of at most maxBytes.
func (c *Client) ReadFile(ctx context.Context, p string, maxBytes int64, opts ...FileOption) ([]byte, error) {
	var buf bytes.Buffer
	if _, err := c.Download(ctx, p, &buf, maxBytes, opts...); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// progress is a deadline that moves with each sign of life of a
// transfer or stream: it fails only when nothing happened for d.
type progress struct {
	t    *time.Timer
	d    time.Duration
	dead chan struct{}
}

func newProgress(d time.Duration) *progress {
	p := &progress{d: d, dead: make(chan struct{})}
	p.t = time.AfterFunc(d, func() { close(p.dead) })
	return p
}

func (p *progress) tick() { p.t.Reset(p.d) }
func (p *progress) stop() { p.t.Stop() }

// errStalled: a transfer saw no progress for the call timeout.
var errStalled = errors.New("no progress")

// Download copies the regular file p into w, refusing one larger than
// maxBytes, and describes it. The guest sends it in chunks, at most
// Window ahead of what w has taken, so a slow w holds back only this
// transfer. The guest's declared size is checked against what it sends.
func (c *Client) Download(ctx context.Context, p string, w io.Writer, maxBytes int64, opts ...FileOption) (FileInfo, error) {
	req := fileRequest(p, opts)
	req.MaxBytes = maxBytes
	if err := req.Validate(MsgDownload); err != nil {
		return FileInfo{}, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type chunk struct {
		data []byte
		eof  bool
	}
	var (
		info     FileInfo
		gotInfo  bool
		received int64
		chunks   = make(chan chunk, Window+1)
		infoCh   = make(chan FileInfo, 1)
	)
	pc := &call{handle: func(_ uint32, f Frame) (bool, error) {
		switch f.Type {
		case MsgEntries:
			var e Entries
			if err := DecodeJSON(f, &e); err != nil {
				return true, err
			}
			if gotInfo || len(e.Entries) != 1 || e.Entries[0].Type != TypeFile || e.Entries[0].Size < 0 || e.Entries[0].Size > maxBytes {
				return true, fmt.Errorf("%w: download of %s: bad description %+v", ErrMalformed, p, e.Entries)
			}
			gotInfo, info = true, e.Entries[0]
			infoCh <- info
			return false, nil
		case MsgChunk:
			_, flags, data, err := DecodeChunk(f.Payload)
			if err != nil {
				return true, err
			}
			if !gotInfo {
				return true, fmt.Errorf("%w: download of %s: data before its description", ErrMalformed, p)
			}
			if received += int64(len(data)); received > info.Size {
				return true, fmt.Errorf("%w: download of %s: the guest sent more than the %d bytes it declared", ErrMalformed, p, info.Size)
			}
			select {
			case chunks <- chunk{data, flags&ChunkEOF != 0}:
			default:
				return true, fmt.Errorf("%w: download of %s: the guest sent past its window", ErrMalformed, p)
			}
			return flags&ChunkEOF != 0, nil
		}
		return true, fmt.Errorf("%w: download answered with %s", ErrMalformed, f.Type)
	}}
	id, err := c.start(MsgDownload, pc, func(id uint32) any { req.ID = id; return req })
	if err != nil {
		return FileInfo{}, err
	}
	fail := func(err error) (FileInfo, error) {
		if c.finish(id, nil) {
			c.sendCancel(id)
		}
		return FileInfo{}, err
	}
	prog := newProgress(c.callTimeout)
	defer prog.stop()
	var written int64
	completed := false
	for {
		select {
		case <-infoCh:
			prog.tick()
		case ch := <-chunks:
			prog.tick()
			if len(ch.data) > 0 {
				if _, err := w.Write(ch.data); err != nil {
					return fail(fmt.Errorf("download %s: %w", p, err))
				}
				written += int64(len(ch.data))
				if err := c.write(MsgAck, Ack{ID: id, Bytes: written}); err != nil {
					return fail(err)
				}
			}
			if ch.eof {
				if written != info.Size {
					return fail(fmt.Errorf("%w: download of %s: %d bytes, the guest declared %d", ErrMalformed, p, written, info.Size))
				}
				if !completed {
					if err := <-pc.result; err != nil {
						return FileInfo{}, err
					}
				}
				return info, nil
			}
		case err := <-pc.result:
			if err != nil {
				return FileInfo{}, err
			}
			completed = true // the EOF chunk is queued
			pc.result = nil  // so this case blocks from now on
		case <-prog.dead:
			return fail(fmt.Errorf("download %s: %w for %s", p, errStalled, c.callTimeout))
		case <-ctx.Done():
			return fail(ctx.Err())
		}
	}
}

// Upload writes r's content to p, created (with missing parents) by the
// call's user, mode 0644 if mode is zero, replacing what was there once
// complete. size is the content's length, or -1 if unknown; either way
// at most MaxTransfer. Chunks go at most Window ahead of the agent's
// acknowledgements, so pings and other calls keep flowing meanwhile.
func (c *Client) Upload(ctx context.Context, p string, r io.Reader, size int64, mode uint32, opts ...FileOption) (FileInfo, error) {
	req := fileRequest(p, opts)
	req.Size, req.Mode = size, mode
	if err := req.Validate(MsgUpload); err != nil {
		return FileInfo{}, err
	}
	var (
		mu    sync.Mutex
		acked int64 = -1 // -1: the agent has not yet opened the file
		sent  int64
		final *FileInfo
		ackCh = make(chan struct{}, 1)
	)
	signal := func() {
		select {
		case ackCh <- struct{}{}:
		default:
		}
	}
	pc := &call{handle: func(_ uint32, f Frame) (bool, error) {
		mu.Lock()
		defer mu.Unlock()
		switch f.Type {
		case MsgAck:
			var a Ack
			if err := DecodeJSON(f, &a); err != nil {
				return true, err
			}
			if a.Bytes < max(acked, 0) || a.Bytes > sent {
				return true, fmt.Errorf("%w: upload of %s: acknowledged %d bytes of %d sent", ErrMalformed, p, a.Bytes, sent)
			}
			acked = a.Bytes
			signal()
			return false, nil
		case MsgEntries:
			var e Entries
			if err := DecodeJSON(f, &e); err != nil {
				return true, err
			}
			if len(e.Entries) != 1 {
				return true, fmt.Errorf("%w: upload of %s: %d entries", ErrMalformed, p, len(e.Entries))
			}
			final = &e.Entries[0]
			return true, nil
		}
		return true, fmt.Errorf("%w: upload answered with %s", ErrMalformed, f.Type)
	}}
	id, err := c.start(MsgUpload, pc, func(id uint32) any { req.ID = id; return req })
	if err != nil {
		return FileInfo{}, err
	}
	fail := func(err error) (FileInfo, error) {
		if c.finish(id, nil) {
			c.sendCancel(id)
		}
		return FileInfo{}, err
	}
	prog := newProgress(c.callTimeout)
	defer prog.stop()
	// wait until the agent is at most window chunks behind, or done
	wait := func(window int64) error {
		for {
			mu.Lock()
			ok := acked >= 0 && sent-acked <= window*MaxChunk
			mu.Unlock()
			if ok {
				return nil
			}
			select {
			case <-ackCh:
				prog.tick()
			case err := <-pc.result:
				if err == nil {
					err = fmt.Errorf("%w: upload of %s ended early", ErrMalformed, p)
				}
				return err
			case <-prog.dead:
				return fmt.Errorf("upload %s: %w for %s", p, errStalled, c.callTimeout)
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	buf := make([]byte, MaxChunk)
	for eof := false; !eof; {
		if err := wait(Window - 1); err != nil {
			return fail(err)
		}
		n, rerr := io.ReadFull(r, buf)
		switch {
		case rerr == io.EOF || rerr == io.ErrUnexpectedEOF:
			eof = true
		case rerr != nil:
			return fail(fmt.Errorf("upload %s: read: %w", p, rerr))
		}
		mu.Lock()
		sent += int64(n)
		total := sent
		mu.Unlock()
		if (size >= 0 && total > size) || total > MaxTransfer {
			return fail(fmt.Errorf("%w: upload of %s: more than the %d bytes declared", ErrTooLarge, p, max(size, MaxTransfer)))
		}
		if eof && size >= 0 && total != size {
			return fail(fmt.Errorf("upload %s: %d bytes, declared %d", p, total, size))
		}
		flags := uint8(0)
		if eof {
			flags = ChunkEOF
		}
		if err := c.w.WriteChunk(id, flags, buf[:n]); err != nil {
			c.conn.Close()
			return fail(fmt.Errorf("send chunk: %w", err))
		}
	}
	select {
	case err := <-pc.result:
		if err != nil {
			return FileInfo{}, err
		}
	case <-prog.dead:
		return fail(fmt.Errorf("upload %s: %w for %s", p, errStalled, c.callTimeout))
	case <-ctx.Done():
		return fail(ctx.Err())
	}
	mu.Lock()
	defer mu.Unlock()
	if final == nil {
		return FileInfo{}, fmt.Errorf("%w: upload of %s: no description", ErrMalformed, p)
	}
	return *final, nil
}

// Watch reports changes in directory p (and below it, if recursive) to
// fn, called on the client's read loop (it must not block), until ctx
// ends or the Watch is closed. It returns once the agent watches.
func (c *Client) Watch(ctx context.Context, p string, recursive bool, fn func(WatchEvents), opts ...FileOption) (*Watch, error) {
	req := fileRequest(p, opts)
	req.Recursive = recursive
	if err := req.Validate(MsgWatch); err != nil {
		return nil, err
	}
	ready := make(chan struct{}, 1)
	started := false
	pc := &call{handle: func(_ uint32, f Frame) (bool, error) {
		switch f.Type {
		case MsgAck:
			if started {
				return true, fmt.Errorf("%w: watch acknowledged twice", ErrMalformed)
			}
			started = true
			ready <- struct{}{}
			return false, nil
		case MsgWatchEvents:
			var e WatchEvents
			if err := DecodeJSON(f, &e); err != nil {
				return true, err
			}
			if !started || len(e.Events) > MaxWatchBatch {
				return true, fmt.Errorf("%w: watch events (%d) out of order or too many", ErrMalformed, len(e.Events))
			}
			for _, ev := range e.Events {
				if ValidateRelPath(ev.Name) != nil && ev.Name != "" {
					return true, fmt.Errorf("%w: watch event names %q", ErrMalformed, truncate(ev.Name, 80))
				}
			}
			fn(e)
			return false, nil
		}
		return true, fmt.Errorf("%w: watch answered with %s", ErrMalformed, f.Type)
	}}
	id, err := c.start(MsgWatch, pc, func(id uint32) any { req.ID = id; return req })
	if err != nil {
		return nil, err
	}
	wctx, cancel := c.bound(ctx)
	defer cancel()
	select {
	case <-ready:
	case err := <-pc.result:
		if err == nil {
			err = fmt.Errorf("%w: watch ended before it started", ErrMalformed)
		}
		return nil, err
	case <-wctx.Done():
		if c.finish(id, nil) {
			c.sendCancel(id)
		}
		return nil, wctx.Err()
	}
	w := &Watch{c: c, id: id, call: pc, done: make(chan struct{})}
	go func() {
		select {
		case w.err = <-pc.result:
		case <-ctx.Done():
			w.Close()
			w.err = ctx.Err()
		}
		close(w.done)
	}()
	return w, nil
}

// Watch is a running directory watch.
type Watch struct {
	c    *Client
	id   uint32
	call *call
	done chan struct{}
	err  error
}

// Close stops the watch.
func (w *Watch) Close() {
	if w.c.finish(w.id, ErrDetached) {
		w.c.sendCancel(w.id)
	}
}

// Done is closed when the watch has ended; Err then says why.
func (w *Watch) Done() <-chan struct{} { return w.done }

// Err is why the watch ended (ErrDetached after Close), once Done is closed.
func (w *Watch) Err() error { <-w.done; return w.err }
