package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
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
	// calls counts the commands sent, the capabilities negotiation
	// included: round trips a start or restore costs.
	calls atomic.Int32
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
		return nil, context.Cause(ctx)
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
	return q.runFile(ctx, cmd, args, nil)
}

// runFile is run with f's descriptor passed along with the command (as
// SCM_RIGHTS), for getfd: QEMU then uses a file it could not open itself.
func (q *qmp) runFile(ctx context.Context, cmd string, args any, f *os.File) (json.RawMessage, error) {
	q.mu.Lock()
	if q.err != nil {
		q.mu.Unlock()
		return nil, q.err
	}
	q.next++
	q.calls.Add(1)
	id := fmt.Sprintf("c%d", q.next)
	ch := make(chan qmpReply, 1)
	q.wait[id] = ch
	q.mu.Unlock()

	msg := map[string]any{"execute": cmd, "id": id}
	if args != nil {
		msg["arguments"] = args
	}
	b, _ := json.Marshal(msg)
	var err error
	if f != nil {
		uc, ok := q.conn.(*net.UnixConn)
		if !ok {
			return nil, fmt.Errorf("qmp %s: %w: cannot pass a file over %T", cmd, ErrMonitor, q.conn)
		}
		_, _, err = uc.WriteMsgUnix(append(b, '\n'), unix.UnixRights(int(f.Fd())), nil)
	} else {
		_, err = q.conn.Write(append(b, '\n'))
	}
	if err != nil {
		q.forget(id)
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
		q.forget(id)
		return nil, fmt.Errorf("qmp %s: %w", cmd, context.Cause(ctx))
	}
}

func (q *qmp) forget(id string) {
	q.mu.Lock()
	delete(q.wait, id)
	q.mu.Unlock()
}

func (q *qmp) close() error { return q.conn.Close() }
