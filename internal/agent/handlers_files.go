package agent

import (
	"errors"
	"fmt"
	"io"

	"github.com/firesandbox/firesandbox/internal/agentproto"
)

func (srv *Server) handleWriteFiles(s *session, f agentproto.Frame) {
	var req agentproto.WriteFilesRequest
	if !decode(s, f, &req) {
		return
	}
	s.goOp(func() {
		s.answer(req.ID, agentproto.MsgFileData, agentproto.FileData{ID: req.ID}, srv.cfg.writeFilesRequest(&req))
	})
}

// fileCall runs fn with req's user and view.
func (srv *Server) fileCall(req *agentproto.FileRequest, fn func(v *fsView) error) error {
	u, err := srv.cfg.user(req.User)
	if err != nil {
		return err
	}
	rfd, err := srv.cfg.openRoot()
	if err != nil {
		return err
	}
	return asUser(u, func() error {
		v, err := srv.cfg.view(rfd, req.Within)
		if err != nil {
			return err
		}
		defer v.close()
		return fn(v)
	})
}

// handleFileCall answers Stat, ListDir, Mkdir, Move and Remove.
func (srv *Server) handleFileCall(s *session, f agentproto.Frame) {
	var req agentproto.FileRequest
	if !decode(s, f, &req) {
		return
	}
	if err := req.Validate(f.Type); err != nil {
		s.fail(req.ID, err)
		return
	}
	s.goOp(func() {
		var out []agentproto.FileInfo
		ids := srv.cfg.idNames() // read as the agent: the names are public
		err := srv.fileCall(&req, func(v *fsView) error {
			var err error
			var fi agentproto.FileInfo
			switch f.Type {
			case agentproto.MsgStat:
				fi, err = v.stat(req.Path, &ids)
				out = append(out, fi)
			case agentproto.MsgListDir:
				out, err = v.list(req.Path, req.Depth, &ids)
			case agentproto.MsgMkdir:
				if err = v.mkdir(req.Path, req.Parents); err == nil {
					fi, err = v.stat(req.Path, &ids)
					out = append(out, fi)
				}
			case agentproto.MsgMove:
				if err = v.move(req.Path, req.To); err == nil {
					fi, err = v.stat(req.To, &ids)
					out = append(out, fi)
				}
			case agentproto.MsgRemove:
				err = v.remove(req.Path, req.Recursive)
			}
			return err
		})
		if f.Type == agentproto.MsgRemove {
			s.answer(req.ID, agentproto.MsgAck, agentproto.Ack{ID: req.ID}, err)
			return
		}
		if out == nil {
			out = []agentproto.FileInfo{}
		}
		s.answer(req.ID, agentproto.MsgEntries, agentproto.Entries{ID: req.ID, Entries: out}, err)
	})
}

// handleUpload receives a file in chunks: Ack once the file is open, an
// Ack per chunk written, then Entries once it is in place.
func (srv *Server) handleUpload(s *session, f agentproto.Frame) {
	var req agentproto.FileRequest
	if !decode(s, f, &req) {
		return
	}
	if err := req.Validate(agentproto.MsgUpload); err != nil {
		s.fail(req.ID, err)
		return
	}
	r, err := s.register(req.ID)
	if err != nil {
		s.fail(req.ID, err)
		return
	}
	r.chunks = make(chan chunk, agentproto.Window+1)
	s.goReq(req.ID, r, func(r *request) {
		fi, err := srv.upload(s, r, &req)
		s.answer(req.ID, agentproto.MsgEntries, agentproto.Entries{ID: req.ID, Entries: []agentproto.FileInfo{fi}}, err)
	})
}

func (srv *Server) upload(s *session, r *request, req *agentproto.FileRequest) (agentproto.FileInfo, error) {
	var up *upload
	err := srv.fileCall(req, func(v *fsView) error {
		var err error
		up, err = v.createUpload(req.Path, req.Mode)
		return err
	})
	if err != nil {
		return agentproto.FileInfo{}, err
	}
	committed := false
	defer func() {
		if !committed {
			up.abort()
		}
	}()
	if err := s.send(agentproto.MsgAck, agentproto.Ack{ID: req.ID}); err != nil {
		return agentproto.FileInfo{}, err
	}
	limit := req.Size
	if limit < 0 {
		limit = agentproto.MaxTransfer
	}
	for {
		var ch chunk
		select {
		case ch = <-r.chunks:
		case <-r.ctx.Done():
			return agentproto.FileInfo{}, fmt.Errorf("upload %s: cancelled", req.Path)
		}
		if up.written+int64(len(ch.data)) > limit {
			return agentproto.FileInfo{}, fmt.Errorf("upload %s: more than the %d bytes declared: %w", req.Path, limit, errTooLarge)
		}
		if err := up.write(ch.data); err != nil {
			return agentproto.FileInfo{}, fmt.Errorf("upload %s: %w", req.Path, err)
		}
		if ch.eof {
			break
		}
		if err := s.send(agentproto.MsgAck, agentproto.Ack{ID: req.ID, Bytes: up.written}); err != nil {
			return agentproto.FileInfo{}, err
		}
	}
	if req.Size >= 0 && up.written != req.Size {
		return agentproto.FileInfo{}, fmt.Errorf("upload %s: %d bytes, %d declared: %w", req.Path, up.written, req.Size, errInvalid)
	}
	var fi agentproto.FileInfo
	ids := srv.cfg.idNames()
	err = srv.fileCall(req, func(v *fsView) error {
		committed = true
		if err := up.commit(); err != nil {
			return err
		}
		var err error
		fi, err = v.stat(req.Path, &ids)
		return err
	})
	return fi, err
}

// handleDownload sends a regular file: Entries describing it, then
// chunks, at most Window ahead of the host's acknowledgements.
func (srv *Server) handleDownload(s *session, f agentproto.Frame) {
	var req agentproto.FileRequest
	if !decode(s, f, &req) {
		return
	}
	if err := req.Validate(agentproto.MsgDownload); err != nil {
		s.fail(req.ID, err)
		return
	}
	r, err := s.register(req.ID)
	if err != nil {
		s.fail(req.ID, err)
		return
	}
	r.acks = make(chan int64, agentproto.Window+1)
	s.goReq(req.ID, r, func(r *request) {
		if err := srv.download(s, r, &req); err != nil {
			s.fail(req.ID, err)
		}
	})
}

func (srv *Server) download(s *session, r *request, req *agentproto.FileRequest) error {
	var file interface {
		io.Reader
		Close() error
	}
	var fi agentproto.FileInfo
	err := srv.fileCall(req, func(v *fsView) error {
		f, info, err := v.openRegular(req.Path, req.MaxBytes)
		if err == nil {
			file, fi = f, info
		}
		return err
	})
	if err != nil {
		return err
	}
	defer file.Close()
	if err := s.send(agentproto.MsgEntries, agentproto.Entries{ID: req.ID, Entries: []agentproto.FileInfo{fi}}); err != nil {
		return nil
	}
	buf := make([]byte, agentproto.MaxChunk)
	var sent int64
	inflight := 0
	for {
		for inflight >= agentproto.Window {
			select {
			case <-r.acks:
				inflight--
			case <-r.ctx.Done():
				return nil // cancelled: the host has gone on
			}
		}
		// Read what was declared and no more: a file that grows meanwhile
		// is cut at its declared size, one that shrinks fails.
		n, err := io.ReadFull(file, buf[:min(int64(len(buf)), fi.Size-sent)])
		if err != nil && !(errors.Is(err, io.EOF) && fi.Size == sent) {
			return fmt.Errorf("read %s: %w (it changed while being read)", req.Path, err)
		}
		sent += int64(n)
		eof := sent == fi.Size
		flags := uint8(0)
		if eof {
			flags = agentproto.ChunkEOF
		}
		if s.ctx.Err() != nil {
			return nil
		}
		if err := s.w.WriteChunk(req.ID, flags, buf[:n]); err != nil {
			s.bye()
			return nil
		}
		if eof {
			return nil
		}
		if n > 0 {
			inflight++
		}
	}
}

func (srv *Server) handleWatch(s *session, f agentproto.Frame) {
	var req agentproto.FileRequest
	if !decode(s, f, &req) {
		return
	}
	if err := req.Validate(agentproto.MsgWatch); err != nil {
		s.fail(req.ID, err)
		return
	}
	r, err := s.register(req.ID)
	if err != nil {
		s.fail(req.ID, err)
		return
	}
	s.goReq(req.ID, r, func(r *request) {
		select {
		case srv.watches <- struct{}{}:
			defer func() { <-srv.watches }()
		default:
			s.fail(req.ID, fmt.Errorf("%d watches are running: %w", agentproto.MaxWatches, errBusy))
			return
		}
		if err := srv.watch(s, r, &req); err != nil {
			s.fail(req.ID, err)
		}
	})
}
