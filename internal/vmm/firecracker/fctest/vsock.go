package fctest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"

	"github.com/firesandbox/firesandbox/internal/agent"
	"github.com/firesandbox/firesandbox/internal/agentproto"
)

// channelOf returns the agent channel named on a kernel command line.
func channelOf(cmdline string) string {
	ch := ""
	for _, f := range strings.Fields(cmdline) {
		if v, ok := strings.CutPrefix(f, agentproto.ArgChannel+"="); ok {
			ch = v // the last one wins, as in the agent
		}
	}
	return ch
}

func (s *Server) agentPort() (uint32, bool) {
	if s.boot == nil || s.boot.BootArgs == nil {
		return 0, false
	}
	v, ok := strings.CutPrefix(channelOf(*s.boot.BootArgs), "vsock:")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(v, 10, 32)
	return uint32(n), err == nil
}

// bindVsock listens on the vsock device's unix socket, as Firecracker
// does when the device is created: a path in use is an error.
func (s *Server) bindVsock(uds string) error {
	if s.vsockLn != nil {
		s.vsockLn.Close()
		s.vsockLn = nil
	}
	up, err := s.path(uds)
	if err != nil {
		return badRequest("Cannot create backend for vsock device: %v", err)
	}
	ln, err := net.Listen("unix", up)
	if err != nil {
		return badRequest("Cannot create backend for vsock device: %v", err)
	}
	// Firecracker never unlinks its sockets; a stale one makes the next
	// bind fail, and the fake must not hide that.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	s.vsockLn = ln
	s.wg.Add(1)
	go s.acceptVsock(ln)
	return nil
}

func (s *Server) acceptVsock(ln net.Listener) {
	defer s.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns[c] = true
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				c.Close()
			}()
			s.serveVsockConn(c)
		}()
	}
}

// serveVsockConn plays Firecracker's host-initiated connection protocol:
// "CONNECT <port>\n" answered by "OK <host port>\n" when the guest listens
// on port, else the connection is closed.
func (s *Server) serveVsockConn(c net.Conn) {
	br := bufio.NewReader(io.LimitReader(c, 64))
	line, err := br.ReadString('\n')
	if err != nil {
		return
	}
	ps, ok := strings.CutPrefix(strings.TrimSuffix(line, "\n"), "CONNECT ")
	if !ok {
		return
	}
	port, err := strconv.ParseUint(ps, 10, 32)
	if err != nil {
		return
	}
	// The guest answers only while its vCPUs run.
	for {
		s.mu.Lock()
		resumed, paused := s.resumed, !s.started || s.paused
		want, listening := s.agentPort()
		s.mu.Unlock()
		if !paused {
			if !listening || uint32(port) != want {
				return
			}
			break
		}
		select {
		case <-resumed:
		case <-s.ctx.Done():
			return
		}
	}
	if _, err := fmt.Fprintf(c, "OK %d\n", 1<<30+port); err != nil {
		return
	}
	if br.Buffered() > 0 {
		return // the host spoke before the handshake finished
	}
	_ = agent.NewServer(s.opts.Agent, nil).Serve(s.ctx, c)
}
