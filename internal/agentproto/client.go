package agentproto

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"sync"
	"sync/atomic"
	"time"
)

// Default bounds of a Client's calls.
const (
	// DefaultCallTimeout bounds a call whose context has no deadline; for
	// transfers and streams it bounds the wait for the next sign of
	// progress instead.
	DefaultCallTimeout = 30 * time.Second
	// DefaultWriteTimeout bounds writing one frame: a guest that stops
	// reading its channel for this long is treated as gone.
	DefaultWriteTimeout = 10 * time.Second
	// ExecGrace is how long past its wall-clock limit an Exec waits for
	// the agent's answer when its context has no deadline.
	ExecGrace = 30 * time.Second
	// Window is how many chunks of one transfer may be in flight.
	Window = 4
)

// Client is the host's end of an agent channel. One goroutine reads frames
// and routes them to the call they answer; any number of calls may run
// at once. The guest is not trusted: every answer is checked against what
// was asked (its type, sizes, ids), output is capped on the host as well,
// and every call has a deadline.
type Client struct {
	conn        io.ReadWriteCloser
	w           *Writer
	callTimeout time.Duration

	hello chan Hello // latest Hello, buffered 1
	// firstHello is when the first Hello arrived (unix nanoseconds; 0:
	// none yet): after a restore, when the guest was back.
	firstHello atomic.Int64

	mu      sync.Mutex
	nextID  uint32
	calls   map[uint32]*call
	readErr error
	done    chan struct{} // closed when the reader stops

	stdin keyedMutex // one stdin writer per process at a time
}

// ClientOption configures a Client.
type ClientOption func(*Client)

// WithCallTimeout sets the deadline of calls whose context has none
// (DefaultCallTimeout by default).
func WithCallTimeout(d time.Duration) ClientOption { return func(c *Client) { c.callTimeout = d } }

// WithWriteTimeout bounds writing one frame (DefaultWriteTimeout by
// default) on connections that support write deadlines.
func WithWriteTimeout(d time.Duration) ClientOption { return func(c *Client) { c.w.SetTimeout(d) } }

// call is one request in flight. handle runs on the read loop for every
// frame that names the call's id (except Error, which ends it): it must
// not block, and says whether the call is complete.
type call struct {
	t      MsgType
	handle func(id uint32, f Frame) (done bool, err error)
	result chan error // buffered 1; receives exactly once
}

// NewClient starts reading frames from conn. Close the client to stop.
func NewClient(conn io.ReadWriteCloser, opts ...ClientOption) *Client {
	c := &Client{
		conn:        conn,
		w:           NewWriter(conn),
		callTimeout: DefaultCallTimeout,
		hello:       make(chan Hello, 1),
		calls:       make(map[uint32]*call),
		done:        make(chan struct{}),
	}
	c.w.SetTimeout(DefaultWriteTimeout)
	for _, o := range opts {
		o(c)
	}
	go c.readLoop()
	return c
}

// Close closes the channel; pending calls fail with ErrClosed.
func (c *Client) Close() error {
	err := c.conn.Close()
	<-c.done
	return err
}

// Done is closed when the channel is gone.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err is why the channel is gone, once Done is closed.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.readErr
}

// fromGuest lists the frame types a guest may send.
var fromGuest = map[MsgType]bool{
	MsgHello: true, MsgOutput: true, MsgExit: true, MsgError: true, MsgFileData: true,
	MsgStarted: true, MsgProcessList: true, MsgAck: true, MsgEntries: true, MsgChunk: true, MsgWatchEvents: true,
}

func (c *Client) readLoop() {
	var err error
	defer func() {
		if err == nil || errors.Is(err, io.EOF) {
			err = ErrClosed
		} else if !errors.Is(err, ErrClosed) {
			err = fmt.Errorf("%w: %v", ErrClosed, err)
		}
		c.mu.Lock()
		c.readErr = err
		pending := c.calls
		c.calls = map[uint32]*call{}
		c.mu.Unlock()
		for _, p := range pending {
			p.result <- err
		}
		close(c.done)
	}()
	for {
		var f Frame
		if f, err = ReadFrame(c.conn); err != nil {
			return
		}
		if !fromGuest[f.Type] {
			err = fmt.Errorf("%w: unexpected %s frame from guest", ErrMalformed, f.Type)
			return
		}
		if f.Type == MsgHello {
			var h Hello
			if err = DecodeJSON(f, &h); err != nil {
				return
			}
			c.firstHello.CompareAndSwap(0, time.Now().UnixNano())
			select { // keep only the newest
			case <-c.hello:
			default:
			}
			c.hello <- h
			continue
		}
		id := frameID(f)
		c.mu.Lock()
		p := c.calls[id]
		c.mu.Unlock()
		if p == nil {
			continue // a finished or cancelled call's late answer
		}
		if f.Type == MsgError {
			var m ErrorMsg
			if err = DecodeJSON(f, &m); err != nil {
				return
			}
			c.finish(id, &AgentError{Message: m.Message, Code: m.Code})
			continue
		}
		done, herr := p.handle(id, f)
		switch {
		case herr != nil:
			c.finish(id, herr)
			c.sendCancel(id) // the guest may still be sending: tell it to stop
		case done:
			c.finish(id, nil)
		}
	}
}

// finish completes call id with err (nil: success). It reports whether
// the call was still pending.
func (c *Client) finish(id uint32, err error) bool {
	c.mu.Lock()
	p := c.calls[id]
	delete(c.calls, id)
	c.mu.Unlock()
	if p != nil {
		p.result <- err
	}
	return p != nil
}

// sendCancel tells the agent to end request id, without blocking the
// caller (the read loop must never wait on a write).
func (c *Client) sendCancel(id uint32) {
	go func() { _ = c.write(MsgCancel, CancelRequest{ID: id}) }()
}

// write sends one control frame. A write that fails leaves the channel
// unusable (a frame may be cut short, or the guest stopped reading), so
// the channel is closed and every call fails at once.
func (c *Client) write(t MsgType, v any) error {
	return c.sent(t, c.w.WriteJSON(t, v))
}

// writeFrame sends a frame whose payload is already encoded.
func (c *Client) writeFrame(t MsgType, payload []byte) error {
	return c.sent(t, c.w.WriteFrame(t, payload))
}

// sent closes the channel after a failed write, which may have left
// half a frame in it.
func (c *Client) sent(t MsgType, err error) error {
	if err == nil {
		return nil
	}
	if !errors.Is(err, ErrTooLarge) && !errors.Is(err, errEncode) { // nothing was written: the channel is fine
		c.conn.Close()
	}
	return fmt.Errorf("send %s: %w", t, err)
}

// AgentError is an error the agent reported instead of a result.
type AgentError struct {
	Message string
	Code    ErrorCode
}

func (e *AgentError) Error() string { return "agent: " + e.Message }

// Is lets callers test agent errors against the io/fs sentinels
// (errors.Is(err, fs.ErrNotExist) holds for CodeNotFound), and by code
// against an AgentError without a message:
// errors.Is(err, &AgentError{Code: CodeTooLarge}).
func (e *AgentError) Is(target error) bool {
	if t, ok := target.(*AgentError); ok && t.Message == "" {
		return t.Code == e.Code
	}
	switch e.Code {
	case CodeNotFound:
		return target == fs.ErrNotExist
	case CodeExists:
		return target == fs.ErrExist
	case CodePermission:
		return target == fs.ErrPermission
	}
	return false
}

// WaitHello pings the agent until it answers with a Hello or ctx ends.
func (c *Client) WaitHello(ctx context.Context) (Hello, error) {
	return c.pingFor(ctx, func() error { return c.write(MsgPing, nil) }, nil)
}

// FirstHello is when the client received its first Hello (zero if none
// yet): the agent's greeting, or its first answer.
func (c *Client) FirstHello() time.Time {
	if n := c.firstHello.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// Resync sends fresh time, entropy and identity to the agent and waits
// for its Hello. With a new identity it waits for the Hello that carries
// it, so it may be the first request on a new channel: the agent's
// greeting, which carries the old one, does not count as the answer.
// Resync then stands in for WaitHello, one round trip fewer.
func (c *Client) Resync(ctx context.Context, r ResyncRequest) (Hello, error) {
	var want func(Hello) bool
	if r.Identity != "" {
		want = func(h Hello) bool { return h.Identity == r.Identity }
	}
	payload, err := r.MarshalBinary()
	if err != nil {
		return Hello{}, fmt.Errorf("send %s: %w", MsgResync, err)
	}
	return c.pingFor(ctx, func() error { return c.writeFrame(MsgResync, payload) }, want)
}

// pingFor sends a frame (with send) until a Hello answers it; with want
// set, only a Hello that want accepts.
func (c *Client) pingFor(ctx context.Context, send func() error, want func(Hello) bool) (Hello, error) {
	ctx, cancel := c.bound(ctx)
	defer cancel()
	select { // drop a stale greeting so the answer is to this request
	case <-c.hello:
	default:
	}
	// Re-send now and then: a frame written before the guest opened its
	// end can sit unread in a buffer the guest never sees.
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		select { // a gone channel says why, not "write on closed pipe"
		case <-c.done:
			return Hello{}, c.Err()
		default:
		}
		if err := send(); err != nil {
			return Hello{}, err
		}
		if h, ok, err := c.awaitHello(ctx, tick.C, want); ok || err != nil {
			return h, err
		}
	}
}

// awaitHello waits for a Hello that want accepts (any, with want nil)
// until tick fires: ok false then, with no error, means send again.
func (c *Client) awaitHello(ctx context.Context, tick <-chan time.Time, want func(Hello) bool) (Hello, bool, error) {
	for {
		select {
		case h := <-c.hello:
			if h.Protocol != ProtocolVersion {
				return h, true, fmt.Errorf("%w: agent speaks %d, host %d", ErrVersion, h.Protocol, ProtocolVersion)
			}
			if want == nil || want(h) {
				return h, true, nil
			}
			// A greeting, or the answer to an earlier request: wait on.
		case <-c.done:
			return Hello{}, true, c.Err()
		case <-ctx.Done():
			return Hello{}, true, ctx.Err()
		case <-tick:
			return Hello{}, false, nil
		}
	}
}

// bound gives ctx the client's call timeout if it has no deadline.
func (c *Client) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok || c.callTimeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, c.callTimeout)
}

// start registers a call and sends its request, built with the call's
// id. The caller waits on the returned call's result.
func (c *Client) start(t MsgType, p *call, build func(id uint32) any) (uint32, error) {
	p.t = t
	p.result = make(chan error, 1)
	c.mu.Lock()
	if c.readErr != nil {
		c.mu.Unlock()
		return 0, c.readErr
	}
	for { // skip 0 and ids still in use after a wrap
		c.nextID++
		if _, busy := c.calls[c.nextID]; c.nextID != 0 && !busy {
			break
		}
	}
	id := c.nextID
	c.calls[id] = p
	c.mu.Unlock()
	if err := c.write(t, build(id)); err != nil {
		c.finish(id, nil)
		return 0, err
	}
	return id, nil
}

// await waits for call id's result. If ctx ends first, the agent is told
// to cancel the request and ctx's error is returned.
func (c *Client) await(ctx context.Context, id uint32, p *call) error {
	select {
	case err := <-p.result:
		return err
	case <-ctx.Done():
		if c.finish(id, nil) {
			c.sendCancel(id)
		} else {
			<-p.result // finished meanwhile; drain
		}
		return ctx.Err()
	}
}

// roundTrip sends a request whose answer is one frame of type want
// (decoded into out, which may be nil), under the call timeout.
func (c *Client) roundTrip(ctx context.Context, t MsgType, want MsgType, out any, build func(id uint32) any) error {
	ctx, cancel := c.bound(ctx)
	defer cancel()
	p := &call{handle: func(_ uint32, f Frame) (bool, error) {
		if f.Type != want {
			return true, fmt.Errorf("%w: %s answered with %s, want %s", ErrMalformed, t, f.Type, want)
		}
		if out != nil {
			if err := DecodeJSON(f, out); err != nil {
				return true, err
			}
		}
		return true, nil
	}}
	id, err := c.start(t, p, build)
	if err != nil {
		return err
	}
	return c.await(ctx, id, p)
}

// WriteFiles writes files into dir in the guest, creating dir if needed.
// Files travel in requests of at most MaxBatch bytes, so that no one
// request holds the channel for long.
func (c *Client) WriteFiles(ctx context.Context, dir string, files []File) error {
	req := WriteFilesRequest{Dir: dir, Files: files}
	if err := req.Validate(); err != nil {
		return err
	}
	var small []File
	for _, f := range files {
		if len(f.Content) <= MaxBatch {
			small = append(small, f)
			continue
		}
		// Chunked, and confined to dir as the batch is.
		if _, err := c.Upload(ctx, path.Join(dir, f.Path), bytes.NewReader(f.Content), int64(len(f.Content)), f.Mode, Within(dir)); err != nil {
			return fmt.Errorf("write %s: %w", f.Path, err)
		}
	}
	for files = small; len(files) > 0; {
		n, size := 0, 0
		for n < len(files) && size+len(files[n].Content) <= MaxBatch {
			size += len(files[n].Content)
			n++
		}
		batch := WriteFilesRequest{Dir: dir, Files: files[:n]}
		if err := c.roundTrip(ctx, MsgWriteFiles, MsgFileData, nil, func(id uint32) any { batch.ID = id; return batch }); err != nil {
			return err
		}
		files = files[n:]
	}
	return nil
}

// MaxBatch is the most content WriteFiles sends in one request; a larger
// file is uploaded in chunks.
const MaxBatch = 256 << 10

// Prewarm starts the guest's prewarmed runtime and waits until it is
// ready (bounded by req.ReadyMillis plus the call timeout).
func (c *Client) Prewarm(ctx context.Context, req PrewarmRequest) error {
	if err := req.Validate(); err != nil {
		return err
	}
	if _, ok := ctx.Deadline(); !ok {
		ready := time.Duration(req.ReadyMillis) * time.Millisecond
		if ready <= 0 {
			ready = 60 * time.Second
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, ready+c.callTimeout)
		defer cancel()
	}
	return c.roundTrip(ctx, MsgPrewarm, MsgFileData, nil, func(id uint32) any { req.ID = id; return req })
}

// Shutdown asks the guest to power off. The channel closes when it does.
func (c *Client) Shutdown() error {
	return c.write(MsgShutdown, nil)
}

// keyedMutex serialises callers per key; entries go when unused.
type keyedMutex struct {
	mu sync.Mutex
	m  map[int]*keyedEntry
}

type keyedEntry struct {
	ch   chan struct{} // buffered 1: the lock
	refs int
}

func (k *keyedMutex) lock(ctx context.Context, key int) (unlock func(), err error) {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[int]*keyedEntry{}
	}
	e := k.m[key]
	if e == nil {
		e = &keyedEntry{ch: make(chan struct{}, 1)}
		k.m[key] = e
	}
	e.refs++
	k.mu.Unlock()
	release := func() {
		k.mu.Lock()
		if e.refs--; e.refs == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
	select {
	case e.ch <- struct{}{}:
		return func() { <-e.ch; release() }, nil
	case <-ctx.Done():
		release()
		return nil, ctx.Err()
	}
}
