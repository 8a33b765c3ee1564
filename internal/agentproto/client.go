package agentproto

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// Client is the host's end of an agent channel. One goroutine reads frames
// and routes them to the exec they belong to; any number of execs may run
// at once.
type Client struct {
	conn io.ReadWriteCloser
	w    *Writer

	hello chan Hello // latest Hello, buffered 1

	mu      sync.Mutex
	nextID  uint32
	execs   map[uint32]*pendingExec
	readErr error
	done    chan struct{} // closed when the reader stops
}

type pendingExec struct {
	stdout, stderr io.Writer
	result         chan execOutcome // buffered 1
}

type execOutcome struct {
	res  *ExitResult
	data *FileData
	err  error
}

// NewClient starts reading frames from conn. Close the client to stop.
func NewClient(conn io.ReadWriteCloser) *Client {
	c := &Client{
		conn:  conn,
		w:     NewWriter(conn),
		hello: make(chan Hello, 1),
		execs: make(map[uint32]*pendingExec),
		done:  make(chan struct{}),
	}
	go c.readLoop()
	return c
}

// Close closes the channel; pending execs fail with ErrClosed.
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

func (c *Client) readLoop() {
	var err error
	defer func() {
		if err == nil || errors.Is(err, io.EOF) {
			err = ErrClosed
		} else {
			err = fmt.Errorf("%w: %v", ErrClosed, err)
		}
		c.mu.Lock()
		c.readErr = err
		pending := c.execs
		c.execs = map[uint32]*pendingExec{}
		c.mu.Unlock()
		for _, p := range pending {
			p.result <- execOutcome{err: err}
		}
		close(c.done)
	}()
	for {
		var f Frame
		if f, err = ReadFrame(c.conn); err != nil {
			return
		}
		switch f.Type {
		case MsgHello:
			var h Hello
			if err = DecodeJSON(f, &h); err != nil {
				return
			}
			select { // keep only the newest
			case <-c.hello:
			default:
			}
			c.hello <- h
		case MsgOutput:
			var id uint32
			var s Stream
			var data []byte
			if id, s, data, err = DecodeOutput(f.Payload); err != nil {
				return
			}
			c.mu.Lock()
			p := c.execs[id]
			c.mu.Unlock()
			if p == nil {
				continue // a cancelled exec's late output
			}
			w := p.stdout
			if s == Stderr {
				w = p.stderr
			}
			if w != nil {
				_, _ = w.Write(data) // a failing sink must not stall the channel
			}
		case MsgExit:
			var r ExitResult
			if err = DecodeJSON(f, &r); err != nil {
				return
			}
			c.finish(r.ID, execOutcome{res: &r})
		case MsgFileData:
			var d FileData
			if err = DecodeJSON(f, &d); err != nil {
				return
			}
			c.finish(d.ID, execOutcome{data: &d})
		case MsgError:
			var m ErrorMsg
			if err = DecodeJSON(f, &m); err != nil {
				return
			}
			c.finish(m.ID, execOutcome{err: &AgentError{Message: m.Message, Code: m.Code}})
		default:
			err = fmt.Errorf("%w: unexpected %s frame from guest", ErrMalformed, f.Type)
			return
		}
	}
}

func (c *Client) finish(id uint32, o execOutcome) {
	c.mu.Lock()
	p := c.execs[id]
	delete(c.execs, id)
	c.mu.Unlock()
	if p != nil {
		p.result <- o
	}
}

// AgentError is an error the agent reported instead of a result.
type AgentError struct {
	Message string
	Code    ErrorCode
}

func (e *AgentError) Error() string { return "agent: " + e.Message }

// WaitHello pings the agent until it answers with a Hello or ctx ends.
func (c *Client) WaitHello(ctx context.Context) (Hello, error) {
	return c.pingFor(ctx, MsgPing, nil)
}

// Resync sends fresh time, entropy and identity to the agent and waits
// for its Hello.
func (c *Client) Resync(ctx context.Context, r ResyncRequest) (Hello, error) {
	return c.pingFor(ctx, MsgResync, r)
}

func (c *Client) pingFor(ctx context.Context, t MsgType, v any) (Hello, error) {
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
		if err := c.w.WriteJSON(t, v); err != nil {
			return Hello{}, fmt.Errorf("send %s: %w", t, err)
		}
		select {
		case h := <-c.hello:
			if h.Protocol != ProtocolVersion {
				return h, fmt.Errorf("%w: agent speaks %d, host %d", ErrVersion, h.Protocol, ProtocolVersion)
			}
			return h, nil
		case <-c.done:
			return Hello{}, c.Err()
		case <-ctx.Done():
			return Hello{}, ctx.Err()
		case <-tick.C:
		}
	}
}

// Exec runs a command in the guest, streaming its output to stdout and
// stderr (either may be nil), and returns how it ended. If ctx ends first,
// the agent is told to kill the command and Exec returns ctx's error.
func (c *Client) Exec(ctx context.Context, req ExecRequest, stdout, stderr io.Writer) (*ExitResult, error) {
	if err := req.Validate(); err != nil {
		return nil, err
	}
	p := &pendingExec{stdout: stdout, stderr: stderr}
	o, err := c.request(ctx, MsgExec, p, true /* cancel */, func(id uint32) any { req.ID = id; return req })
	return o.res, err
}

// request sends one id-carrying request and waits for its answer (output
// of an exec goes to p's writers meanwhile). If ctx ends first and cancel
// is set, the agent is told to stop the request.
func (c *Client) request(ctx context.Context, t MsgType, p *pendingExec, cancel bool, build func(id uint32) any) (execOutcome, error) {
	p.result = make(chan execOutcome, 1)
	c.mu.Lock()
	if c.readErr != nil {
		c.mu.Unlock()
		return execOutcome{}, c.readErr
	}
	c.nextID++
	if c.nextID == 0 {
		c.nextID = 1
	}
	id := c.nextID
	c.execs[id] = p
	c.mu.Unlock()
	if err := c.w.WriteJSON(t, build(id)); err != nil {
		c.finish(id, execOutcome{})
		return execOutcome{}, fmt.Errorf("send %s: %w", t, err)
	}
	select {
	case o := <-p.result:
		return o, o.err
	case <-ctx.Done():
		if cancel {
			_ = c.w.WriteJSON(MsgCancel, CancelRequest{ID: id})
		}
		c.finish(id, execOutcome{})
		return execOutcome{}, ctx.Err()
	}
}

// WriteFiles writes files into dir in the guest, creating dir if needed.
func (c *Client) WriteFiles(ctx context.Context, dir string, files []File) error {
	req := WriteFilesRequest{Dir: dir, Files: files}
	if err := req.Validate(); err != nil {
		return err
	}
	_, err := c.request(ctx, MsgWriteFiles, &pendingExec{}, false, func(id uint32) any { req.ID = id; return req })
	return err
}

// ReadFile reads a regular file of at most maxBytes from the guest.
func (c *Client) ReadFile(ctx context.Context, path string, maxBytes int64) ([]byte, error) {
	req := ReadFileRequest{Path: path, MaxBytes: maxBytes}
	if err := req.Validate(); err != nil {
		return nil, err
	}
	o, err := c.request(ctx, MsgReadFile, &pendingExec{}, false, func(id uint32) any { req.ID = id; return req })
	if err != nil {
		return nil, err
	}
	if o.data == nil {
		return nil, fmt.Errorf("%w: read %s: no data", ErrMalformed, path)
	}
	return o.data.Content, nil
}

// Prewarm starts the guest's prewarmed runtime and waits until it is ready.
func (c *Client) Prewarm(ctx context.Context, req PrewarmRequest) error {
	if err := req.Validate(); err != nil {
		return err
	}
	_, err := c.request(ctx, MsgPrewarm, &pendingExec{}, false, func(id uint32) any { req.ID = id; return req })
	return err
}

// Shutdown asks the guest to power off. The channel closes when it does.
func (c *Client) Shutdown() error {
	return c.w.WriteJSON(MsgShutdown, nil)
}
