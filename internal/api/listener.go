package api

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// connStats counts connections for /metrics.
type connStats struct {
	open, refused atomic.Int64
}

// limitListener admits at most n connections at once. One more is not
// left waiting in the kernel's backlog (which would stall every client,
// /healthz included, behind the ones holding the slots): it gets a 503
// and is closed.
type limitListener struct {
	net.Listener
	slots chan struct{}
	stats *connStats
}

func newLimitListener(ln net.Listener, n int, stats *connStats) net.Listener {
	return &limitListener{Listener: ln, slots: make(chan struct{}, n), stats: stats}
}

// busyResponse is written to connections over the cap.
const busyResponse = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: 78\r\n\r\n" +
	`{"error":"server busy: too many open connections; retry","code":"server_busy"}`

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.slots <- struct{}{}:
			l.stats.open.Add(1)
			return &limitConn{Conn: c, l: l}, nil
		default:
			l.stats.refused.Add(1)
			go func() { // never block Accept on a client
				_ = c.SetWriteDeadline(time.Now().Add(time.Second))
				_, _ = c.Write([]byte(busyResponse))
				c.Close()
			}()
		}
	}
}

type limitConn struct {
	net.Conn
	l    *limitListener
	once sync.Once
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.stats.open.Add(-1)
		<-c.l.slots
	})
	return err
}
