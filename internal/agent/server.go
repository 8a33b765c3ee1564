package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
)

// Server answers the host's frames on one channel at a time. Its process
// table outlives channels: background processes keep running while no
// host is attached, and the next channel finds them.
type Server struct {
	cfg   Config
	log   *slog.Logger
	procs procTable

	watches chan struct{} // one token per running watch

	mu       sync.Mutex
	identity string
}

// NewServer returns a server with the given isolation and limits.
func NewServer(cfg Config, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg.prewarm = &prewarmer{}
	cfg.spares = &sparePool{}
	return &Server{cfg: cfg, log: log, watches: make(chan struct{}, agentproto.MaxWatches)}
}

func (s *Server) hello() agentproto.Hello {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := agentproto.Hello{
		Protocol:     agentproto.ProtocolVersion,
		AgentVersion: s.cfg.Version,
		Kernel:       s.cfg.Kernel,
		Identity:     s.identity,
	}
	if !s.cfg.BootTime.IsZero() {
		h.BootMillis = time.Since(s.cfg.BootTime).Milliseconds()
	}
	return h
}

// warmCodecs encodes a Hello once, so the JSON codec's per-type cache
// holds it before a template's snapshot: a restored guest's first answer
// (a Hello, to a resync, which is binary) then runs no reflection over
// the type that TCG would translate afresh.
func (s *Server) warmCodecs() {
	if b, err := json.Marshal(s.hello()); err == nil {
		_ = json.Unmarshal(b, new(agentproto.Hello))
	}
}

// Bounds of one channel.
const (
	// maxRequests bounds the requests in flight on one channel.
	maxRequests = 1024
	// maxFileOps bounds file calls running at once; more wait their turn
	// (off the read loop).
	maxFileOps = 8
	// agentWriteTimeout bounds writing one frame to the host: a host that
	// stops reading for this long has lost the channel.
	agentWriteTimeout = 60 * time.Second
)

// session is one channel's state: its writer and its requests in flight.
type session struct {
	srv *Server
	w   *agentproto.Writer
	ctx context.Context // ends when the channel does
	bye func()          // ends the channel (a write failed)

	mu   sync.Mutex
	reqs map[uint32]*request
	wg   sync.WaitGroup
	ops  chan struct{}
}

// request is a request in flight that a Cancel (or the channel's end)
// can stop, and that may receive frames of its own.
type request struct {
	ctx    context.Context
	cancel context.CancelFunc
	chunks chan chunk // upload data from the host
	acks   chan int64 // download acknowledgements from the host
}

type chunk struct {
	data []byte
	eof  bool
}

// send writes a control frame, unless the channel is gone; a failed
// write ends the channel (the stream may hold a partial frame).
func (s *session) send(t agentproto.MsgType, v any) error {
	if s.ctx.Err() != nil {
		return agentproto.ErrClosed
	}
	if err := s.w.WriteJSON(t, v); err != nil {
		s.bye()
		return err
	}
	return nil
}

func (s *session) output(id uint32, st agentproto.Stream, data []byte) error {
	if s.ctx.Err() != nil {
		return agentproto.ErrClosed
	}
	if err := s.w.WriteOutput(id, st, data); err != nil {
		s.bye()
		return err
	}
	return nil
}

// fail answers request id with an error.
func (s *session) fail(id uint32, err error) {
	s.srv.log.Debug("request failed", "id", id, "err", err)
	_ = s.send(agentproto.MsgError, agentproto.ErrorMsg{ID: id, Message: err.Error(), Code: errorCode(err)})
}

// answer replies with v as frame t, or with err.
func (s *session) answer(id uint32, t agentproto.MsgType, v any, err error) {
	if err != nil {
		s.fail(id, err)
		return
	}
	_ = s.send(t, v)
}

// register records a cancellable request.
func (s *session) register(id uint32) (*request, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if id == 0 {
		return nil, fmt.Errorf("request id 0: %w", agentproto.ErrMalformed)
	}
	if _, dup := s.reqs[id]; dup {
		return nil, fmt.Errorf("request id %d is already in use: %w", id, agentproto.ErrMalformed)
	}
	if len(s.reqs) >= maxRequests {
		return nil, fmt.Errorf("%d requests in flight: %w", len(s.reqs), errBusy)
	}
	ctx, cancel := context.WithCancel(s.ctx)
	r := &request{ctx: ctx, cancel: cancel}
	s.reqs[id] = r
	return r, nil
}

func (s *session) unregister(id uint32) {
	s.mu.Lock()
	r := s.reqs[id]
	delete(s.reqs, id)
	s.mu.Unlock()
	if r != nil {
		r.cancel()
	}
}

func (s *session) lookup(id uint32) *request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reqs[id]
}

// goReq runs fn for a registered request off the read loop.
func (s *session) goReq(id uint32, r *request, fn func(r *request)) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer s.unregister(id)
		fn(r)
	}()
}

// goOp runs a short call off the read loop, at most maxFileOps at once.
func (s *session) goOp(fn func()) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		select {
		case s.ops <- struct{}{}:
		case <-s.ctx.Done():
			return
		}
		defer func() { <-s.ops }()
		fn()
	}()
}

// Serve sends Hello and answers frames until the channel fails or ctx
// ends. The read loop only decodes and routes: everything that can take
// time runs on goroutines of its own, so pings, cancels and stdin keep
// flowing whatever else is in flight. When Serve returns, every
// foreground exec it started has been killed and reaped; background
// processes keep running.
func (srv *Server) Serve(ctx context.Context, conn io.ReadWriter) error {
	ctx, cancel := context.WithCancel(ctx)
	s := &session{srv: srv, w: agentproto.NewWriter(conn), ctx: ctx, reqs: map[uint32]*request{}, ops: make(chan struct{}, maxFileOps)}
	s.w.SetTimeout(agentWriteTimeout)
	s.bye = func() {
		cancel()
		if c, ok := conn.(io.Closer); ok {
			c.Close() // unblocks the read loop
		}
	}
	defer func() {
		cancel()
		s.wg.Wait()
	}()

	if err := s.w.WriteJSON(agentproto.MsgHello, srv.hello()); err != nil {
		return fmt.Errorf("send hello: %w", err)
	}
	for {
		f, err := agentproto.ReadFrame(conn)
		if err != nil {
			if errors.Is(err, io.EOF) || ctx.Err() != nil {
				return io.EOF
			}
			return fmt.Errorf("read frame: %w", err)
		}
		if err := srv.dispatch(s, f); err != nil {
			return err
		}
	}
}

// dispatch handles one frame from the host. An error ends the channel.
func (srv *Server) dispatch(s *session, f agentproto.Frame) error {
	switch f.Type {
	case agentproto.MsgPing:
		return s.send(agentproto.MsgHello, srv.hello())
	case agentproto.MsgResync:
		var r agentproto.ResyncRequest
		if err := r.UnmarshalBinary(f.Payload); err != nil {
			return err
		}
		if srv.cfg.Resync != nil {
			if err := srv.cfg.Resync(r); err != nil {
				return s.send(agentproto.MsgError, agentproto.ErrorMsg{Message: "resync: " + err.Error()})
			}
		}
		srv.mu.Lock()
		srv.identity = r.Identity
		srv.mu.Unlock()
		return s.send(agentproto.MsgHello, srv.hello())
	case agentproto.MsgShutdown:
		if srv.cfg.Shutdown != nil {
			s.bye()
			s.wg.Wait()
			srv.cfg.Shutdown()
		}
		return nil
	case agentproto.MsgCancel:
		var r agentproto.CancelRequest
		if err := agentproto.DecodeJSON(f, &r); err != nil {
			return err
		}
		if req := s.lookup(r.ID); req != nil {
			req.cancel()
		}
		return nil
	case agentproto.MsgChunk:
		id, flags, data, err := agentproto.DecodeChunk(f.Payload)
		if err != nil {
			return err
		}
		if r := s.lookup(id); r != nil && r.chunks != nil {
			select {
			case r.chunks <- chunk{data, flags&agentproto.ChunkEOF != 0}:
			default: // past the window: the host broke the protocol
				r.cancel()
			}
		}
		return nil
	case agentproto.MsgAck:
		var a agentproto.Ack
		if err := agentproto.DecodeJSON(f, &a); err != nil {
			return err
		}
		if r := s.lookup(a.ID); r != nil && r.acks != nil {
			select {
			case r.acks <- a.Bytes:
			default:
				r.cancel()
			}
		}
		return nil
	}
	if h, ok := handlers[f.Type]; ok {
		h(srv, s, f)
		return nil
	}
	// A newer host may send requests this agent predates: answer with the
	// request's own id, so the host's call fails rather than waits.
	var req struct {
		ID uint32 `json:"id"`
	}
	_ = json.Unmarshal(f.Payload, &req)
	return s.send(agentproto.MsgError, agentproto.ErrorMsg{ID: req.ID, Code: agentproto.CodeUnsupported,
		Message: fmt.Sprintf("unsupported %s request (agent %s)", f.Type, srv.cfg.Version)})
}

// decode decodes a request frame into v; a malformed one is answered
// with an error for its id (when it has one) and reported false.
func decode(s *session, f agentproto.Frame, v any) bool {
	if err := agentproto.DecodeJSON(f, v); err != nil {
		var req struct {
			ID uint32 `json:"id"`
		}
		_ = json.Unmarshal(f.Payload, &req)
		s.fail(req.ID, err)
		return false
	}
	return true
}

// handlers answer the requests that carry an id.
var handlers map[agentproto.MsgType]func(*Server, *session, agentproto.Frame)

func init() {
	handlers = map[agentproto.MsgType]func(*Server, *session, agentproto.Frame){
		agentproto.MsgExec:       (*Server).handleExec,
		agentproto.MsgConnect:    (*Server).handleConnect,
		agentproto.MsgStdin:      (*Server).handleStdin,
		agentproto.MsgSignal:     (*Server).handleSignal,
		agentproto.MsgResize:     (*Server).handleResize,
		agentproto.MsgListProcs:  (*Server).handleListProcs,
		agentproto.MsgWriteFiles: (*Server).handleWriteFiles,
		agentproto.MsgPrewarm:    (*Server).handlePrewarm,
		agentproto.MsgStat:       (*Server).handleFileCall,
		agentproto.MsgListDir:    (*Server).handleFileCall,
		agentproto.MsgMkdir:      (*Server).handleFileCall,
		agentproto.MsgMove:       (*Server).handleFileCall,
		agentproto.MsgRemove:     (*Server).handleFileCall,
		agentproto.MsgUpload:     (*Server).handleUpload,
		agentproto.MsgDownload:   (*Server).handleDownload,
		agentproto.MsgWatch:      (*Server).handleWatch,
		agentproto.MsgNetConfig:  (*Server).handleNetConfig,
	}
}
