package agent

import (
	"fmt"

	"github.com/firesandbox/firesandbox/internal/agentproto"
)

func (srv *Server) handleExec(s *session, f agentproto.Frame) {
	var req agentproto.ExecRequest
	if !decode(s, f, &req) {
		return
	}
	r, err := s.register(req.ID)
	if err != nil {
		s.fail(req.ID, err)
		return
	}
	s.goReq(req.ID, r, func(r *request) {
		p, err := srv.launch(s, req.ID, &req)
		if err != nil {
			srv.log.Info("exec refused", "exec", req.ID, "err", err)
			s.fail(req.ID, err)
			return
		}
		select {
		case <-p.done:
		case <-r.ctx.Done():
			if p.background {
				p.unsubscribe(s, req.ID)
				return
			}
			p.kill(agentproto.StatusSignal, "cancelled by the host")
			<-p.done
		}
	})
}

func (srv *Server) handleConnect(s *session, f agentproto.Frame) {
	var req agentproto.ConnectRequest
	if !decode(s, f, &req) {
		return
	}
	r, err := s.register(req.ID)
	if err != nil {
		s.fail(req.ID, err)
		return
	}
	s.goReq(req.ID, r, func(r *request) {
		p := srv.procs.get(req.PID)
		if p == nil || !p.subscribe(s, req.ID, req.Replay) {
			s.fail(req.ID, fmt.Errorf("pid %d: %w", req.PID, errNoProcess))
			return
		}
		select {
		case <-p.done:
		case <-r.ctx.Done():
			p.unsubscribe(s, req.ID)
		}
	})
}

// process finds a process call's target.
func (srv *Server) process(pid int) (*proc, error) {
	if p := srv.procs.get(pid); p != nil {
		return p, nil
	}
	return nil, fmt.Errorf("pid %d: %w", pid, errNoProcess)
}

func (srv *Server) handleStdin(s *session, f agentproto.Frame) {
	var req agentproto.StdinRequest
	if !decode(s, f, &req) {
		return
	}
	if err := req.Validate(); err != nil {
		s.fail(req.ID, err)
		return
	}
	p, err := srv.process(req.PID)
	if err == nil {
		// Queued, never written here: a full pipe must not hold the loop.
		err = p.queueStdin(stdinOp{data: req.Data, close: req.Close, reply: func(err error) {
			if err != nil {
				err = fmt.Errorf("stdin of pid %d: %w", req.PID, err)
			}
			s.answer(req.ID, agentproto.MsgAck, agentproto.Ack{ID: req.ID}, err)
		}})
	}
	if err != nil {
		s.fail(req.ID, err)
	}
}

func (srv *Server) handleSignal(s *session, f agentproto.Frame) {
	var req agentproto.SignalRequest
	if !decode(s, f, &req) {
		return
	}
	err := req.Validate()
	if err == nil {
		var p *proc
		if p, err = srv.process(req.PID); err == nil {
			err = p.signal(req.Signal)
		}
	}
	s.answer(req.ID, agentproto.MsgAck, agentproto.Ack{ID: req.ID}, err)
}

func (srv *Server) handleResize(s *session, f agentproto.Frame) {
	var req agentproto.ResizeRequest
	if !decode(s, f, &req) {
		return
	}
	err := req.Size.Validate()
	if err == nil {
		var p *proc
		if p, err = srv.process(req.PID); err == nil {
			if p.pty == nil {
				err = fmt.Errorf("pid %d has no terminal: %w", req.PID, errInvalid)
			} else {
				err = resize(p.pty, req.Size)
			}
		}
	}
	s.answer(req.ID, agentproto.MsgAck, agentproto.Ack{ID: req.ID}, err)
}

func (srv *Server) handleListProcs(s *session, f agentproto.Frame) {
	var req agentproto.ListProcsRequest
	if !decode(s, f, &req) {
		return
	}
	_ = s.send(agentproto.MsgProcessList, agentproto.ProcessList{ID: req.ID, Processes: srv.procs.list()})
}

func (srv *Server) handlePrewarm(s *session, f agentproto.Frame) {
	var req agentproto.PrewarmRequest
	if !decode(s, f, &req) {
		return
	}
	s.wg.Add(1)
	go func() { // may take seconds: keep serving meanwhile
		defer s.wg.Done()
		s.answer(req.ID, agentproto.MsgFileData, agentproto.FileData{ID: req.ID}, srv.cfg.startPrewarm(&req))
	}()
}
