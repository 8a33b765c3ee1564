package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"sync"
	"syscall"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
)

// Server answers the host's frames on one channel at a time.
type Server struct {
	cfg Config
	log *slog.Logger

	mu       sync.Mutex
	identity string
}

// NewServer returns a server with the given isolation and limits.
func NewServer(cfg Config, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg.prewarm = &prewarmer{}
	return &Server{cfg: cfg, log: log}
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

// Serve sends Hello and answers frames until the channel fails or ctx ends.
// When it returns, every exec it started has been killed and reaped.
func (s *Server) Serve(ctx context.Context, conn io.ReadWriter) error {
	ctx, cancel := context.WithCancel(ctx)
	w := agentproto.NewWriter(conn)
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		running = map[uint32]context.CancelFunc{}
	)
	defer func() {
		cancel()
		wg.Wait()
	}()

	if err := w.WriteJSON(agentproto.MsgHello, s.hello()); err != nil {
		return fmt.Errorf("send hello: %w", err)
	}
	for {
		f, err := agentproto.ReadFrame(conn)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return io.EOF
			}
			return fmt.Errorf("read frame: %w", err)
		}
		switch f.Type {
		case agentproto.MsgPing:
			err = w.WriteJSON(agentproto.MsgHello, s.hello())
		case agentproto.MsgResync:
			var r agentproto.ResyncRequest
			if err = agentproto.DecodeJSON(f, &r); err == nil {
				if s.cfg.Resync != nil {
					if rerr := s.cfg.Resync(r); rerr != nil {
						err = w.WriteJSON(agentproto.MsgError, agentproto.ErrorMsg{Message: "resync: " + rerr.Error()})
						break
					}
				}
				s.mu.Lock()
				s.identity = r.Identity
				s.mu.Unlock()
				err = w.WriteJSON(agentproto.MsgHello, s.hello())
			}
		case agentproto.MsgExec:
			var req agentproto.ExecRequest
			if derr := agentproto.DecodeJSON(f, &req); derr != nil {
				err = w.WriteJSON(agentproto.MsgError, agentproto.ErrorMsg{Message: derr.Error()})
				break
			}
			mu.Lock()
			_, dup := running[req.ID]
			mu.Unlock()
			if dup || req.ID == 0 {
				err = w.WriteJSON(agentproto.MsgError, agentproto.ErrorMsg{ID: req.ID, Message: fmt.Sprintf("exec id %d is zero or already running", req.ID)})
				break
			}
			ectx, ecancel := context.WithCancel(ctx)
			mu.Lock()
			running[req.ID] = ecancel
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() {
					mu.Lock()
					delete(running, req.ID)
					mu.Unlock()
					ecancel()
				}()
				s.exec(ectx, w, &req)
			}()
		case agentproto.MsgWriteFiles:
			var r agentproto.WriteFilesRequest
			if err = agentproto.DecodeJSON(f, &r); err == nil {
				err = s.answer(w, r.ID, nil, s.cfg.writeFilesRequest(&r))
			}
		case agentproto.MsgReadFile:
			var r agentproto.ReadFileRequest
			if err = agentproto.DecodeJSON(f, &r); err == nil {
				data, rerr := s.cfg.readFile(&r)
				err = s.answer(w, r.ID, data, rerr)
			}
		case agentproto.MsgPrewarm:
			var r agentproto.PrewarmRequest
			if err = agentproto.DecodeJSON(f, &r); err == nil {
				wg.Add(1)
				go func() { // may take seconds: keep serving meanwhile
					defer wg.Done()
					_ = s.answer(w, r.ID, nil, s.cfg.startPrewarm(&r))
				}()
			}
		case agentproto.MsgNetConfig:
			err = s.handleNetConfig(w, f)
		case agentproto.MsgCancel:
			var r agentproto.CancelRequest
			if err = agentproto.DecodeJSON(f, &r); err == nil {
				mu.Lock()
				if c := running[r.ID]; c != nil {
					c()
				}
				mu.Unlock()
			}
		case agentproto.MsgShutdown:
			if s.cfg.Shutdown != nil {
				cancel()
				wg.Wait()
				s.cfg.Shutdown()
			}
		default:
			// A newer host may send requests this agent predates: answer
			// with the request's own id, so the host's call fails rather
			// than waits.
			var req struct {
				ID uint32 `json:"id"`
			}
			_ = json.Unmarshal(f.Payload, &req)
			err = w.WriteJSON(agentproto.MsgError, agentproto.ErrorMsg{ID: req.ID, Code: agentproto.CodeUnsupported,
				Message: fmt.Sprintf("unsupported %s request (agent %s)", f.Type, s.cfg.Version)})
		}
		if err != nil {
			return err
		}
	}
}

// answer replies to a file request: FileData on success, Error otherwise.
func (s *Server) answer(w *agentproto.Writer, id uint32, data []byte, err error) error {
	if err != nil {
		return w.WriteJSON(agentproto.MsgError, agentproto.ErrorMsg{ID: id, Message: err.Error(), Code: errorCode(err)})
	}
	return w.WriteJSON(agentproto.MsgFileData, agentproto.FileData{ID: id, Content: data})
}

func (s *Server) exec(ctx context.Context, w *agentproto.Writer, req *agentproto.ExecRequest) {
	log := s.log.With("exec", req.ID)
	res, err := s.cfg.run(ctx, req, func(st agentproto.Stream, data []byte) error {
		return w.WriteOutput(req.ID, st, data)
	})
	if err != nil {
		log.Info("exec refused", "err", err)
		_ = w.WriteJSON(agentproto.MsgError, agentproto.ErrorMsg{ID: req.ID, Message: err.Error()})
		return
	}
	log.Debug("exec done", "code", res.Code, "status", res.Status, "wall_ms", res.WallMillis)
	_ = w.WriteJSON(agentproto.MsgExit, res)
}

// errTooLarge marks file requests over their size bound.
var errTooLarge = errors.New("too large")

// errorCode classifies an error for the host.
func errorCode(err error) agentproto.ErrorCode {
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
		return agentproto.CodeNotFound
	case errors.Is(err, errTooLarge):
		return agentproto.CodeTooLarge
	}
	return ""
}
