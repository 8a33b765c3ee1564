package firecracker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"
)

// vsockConnect makes one attempt at the CONNECT handshake.
func vsockConnect(ctx context.Context, sock string, port uint32) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return nil, err
	}
	// ctx bounds the handshake, not the connection.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if _, err := fmt.Fprintf(conn, "CONNECT %d\n", port); err != nil {
		conn.Close()
		return nil, fmt.Errorf("vsock connect: %w", err)
	}
	// Read the answer a byte at a time: what follows it is the agent's
	// stream, which must not be buffered away here.
	line, err := readLine(conn, 64)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("vsock connect to port %d: %w", port, err)
	}
	if !strings.HasPrefix(line, "OK ") {
		conn.Close()
		return nil, fmt.Errorf("vsock connect to port %d: answer %q", port, line)
	}
	if !stop() || ctx.Err() != nil {
		conn.Close()
		return nil, fmt.Errorf("vsock connect to port %d: %w", port, context.Cause(ctx))
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, nil
}

func readLine(c net.Conn, max int) (string, error) {
	var b [1]byte
	var line []byte
	for len(line) < max {
		if _, err := c.Read(b[:]); err != nil {
			return "", err
		}
		if b[0] == '\n' {
			return string(line), nil
		}
		line = append(line, b[0])
	}
	return "", errors.New("answer too long")
}
