package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
)

// qmp is a minimal QMP client: one connection, commands matched to their
// replies by id, events dropped (we poll state instead of reacting to them).
type qmp struct {
	conn net.Conn
	mu   sync.Mutex
	next int
	wait map[string]chan qmpReply
	done chan struct{}
	err  error
}

type qmpReply struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	ID    string          `json:"id"`
	Event string          `json:"event"`
	QMP   json.RawMessage `json:"QMP"`
}

// QMPError is an error QEMU answered a command with.
type QMPError struct{ Command, Class, Desc string }

func (e *QMPError) Error() string { return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc) }

func dialQMP(ctx context.Context, path string) (*qmp, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	q := &qmp{conn: conn, wait: map[string]chan qmpReply{}, done: make(chan struct{})}
	greeting := make(chan error, 1)
	go q.readLoop(greeting)
	select {
	case err := <-greeting:
		if err != nil {
			conn.Close()
			return nil, err
		}
	case <-ctx.Done():
		conn.Close()
		return nil, ctx.Err()
	}
	if _, err := q.run(ctx, "qmp_capabilities", nil); err != nil {
		conn.Close()
		return nil, err
	}
	return q, nil
}

func (q *qmp) readLoop(greeting chan<- error) {
	sc := bufio.NewScanner(q.conn)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	first := true
	for sc.Scan() {
		var r qmpReply
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			continue
		}
		if first {
			first = false
			if r.QMP == nil {
				greeting <- fmt.Errorf("qmp: no greeting, got %q", sc.Text())
				break
			}
			greeting <- nil
			continue
		}
		if r.ID == "" {
			continue // an event
		}
		q.mu.Lock()
		ch := q.wait[r.ID]
		delete(q.wait, r.ID)
		q.mu.Unlock()
		if ch != nil {
			ch <- r
		}
	}
	err := sc.Err()
	if err == nil {
		err = errors.New("qmp: connection closed")
	}
	if first {
		greeting <- err
	}
	q.mu.Lock()
	q.err = err
	q.mu.Unlock()
	close(q.done)
}

// run executes one command and returns its "return" value.
func (q *qmp) run(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
	q.mu.Lock()
	if q.err != nil {
		q.mu.Unlock()
		return nil, q.err
	}
	q.next++
	id := fmt.Sprintf("c%d", q.next)
	ch := make(chan qmpReply, 1)
	q.wait[id] = ch
	q.mu.Unlock()

	msg := map[string]any{"execute": cmd, "id": id}
	if args != nil {
		msg["arguments"] = args
	}
	b, _ := json.Marshal(msg)
	if _, err := q.conn.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	select {
	case r := <-ch:
		if r.Error != nil {
			return nil, &QMPError{Command: cmd, Class: r.Error.Class, Desc: r.Error.Desc}
		}
		return r.Return, nil
	case <-q.done:
		return nil, fmt.Errorf("qmp %s: %w", cmd, q.err)
	case <-ctx.Done():
		q.mu.Lock()
		delete(q.wait, id)
		q.mu.Unlock()
		return nil, fmt.Errorf("qmp %s: %w", cmd, ctx.Err())
	}
}

func (q *qmp) close() error { return q.conn.Close() }
