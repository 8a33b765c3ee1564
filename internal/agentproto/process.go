package agentproto

import (
	"fmt"
	"slices"
)

// PTYSize is a terminal's size in character cells.
type PTYSize struct {
	Cols uint16 `json:"cols"`
	Rows uint16 `json:"rows"`
}

// MaxPTYCells bounds each side of a terminal.
const MaxPTYCells = 4096

// Validate checks a terminal size.
func (s PTYSize) Validate() error {
	if s.Cols == 0 || s.Rows == 0 || s.Cols > MaxPTYCells || s.Rows > MaxPTYCells {
		return fmt.Errorf("%w: terminal of %dx%d cells, want 1-%d each", ErrMalformed, s.Cols, s.Rows, MaxPTYCells)
	}
	return nil
}

// Started reports that the process of exec (or connect) ID runs.
type Started struct {
	ID  uint32 `json:"id"`
	PID int    `json:"pid"`
}

// MaxStdinChunk bounds the data of one StdinRequest.
const MaxStdinChunk = 64 << 10

// StdinRequest writes to a process's stdin (its terminal, for a PTY
// process), then closes stdin if Close is set. It is acknowledged once
// the data is written, so a host that waits for each Ack never has more
// than one chunk queued per process.
type StdinRequest struct {
	ID    uint32 `json:"id"`
	PID   int    `json:"pid"`
	Data  []byte `json:"data,omitempty"`
	Close bool   `json:"close,omitempty"`
}

// Validate checks a StdinRequest.
func (r *StdinRequest) Validate() error {
	if r.PID <= 0 {
		return fmt.Errorf("%w: pid %d", ErrMalformed, r.PID)
	}
	if len(r.Data) > MaxStdinChunk {
		return fmt.Errorf("%w: stdin chunk of %d bytes, at most %d", ErrMalformed, len(r.Data), MaxStdinChunk)
	}
	return nil
}

// Signal names a signal the host may send to a process.
type Signal string

// Signals a process may be sent.
var Signals = []Signal{"SIGHUP", "SIGINT", "SIGQUIT", "SIGKILL", "SIGUSR1", "SIGUSR2", "SIGTERM", "SIGCONT", "SIGSTOP", "SIGTSTP", "SIGWINCH"}

// SignalRequest sends a signal to a process's process group (a SIGKILL
// also kills whatever left the group, through its cgroup).
type SignalRequest struct {
	ID     uint32 `json:"id"`
	PID    int    `json:"pid"`
	Signal Signal `json:"signal"`
}

// Validate checks a SignalRequest.
func (r *SignalRequest) Validate() error {
	if r.PID <= 0 {
		return fmt.Errorf("%w: pid %d", ErrMalformed, r.PID)
	}
	if !slices.Contains(Signals, r.Signal) {
		return fmt.Errorf("%w: signal %q, want one of %v", ErrMalformed, truncate(string(r.Signal), 20), Signals)
	}
	return nil
}

// ResizeRequest changes a PTY process's terminal size.
type ResizeRequest struct {
	ID   uint32  `json:"id"`
	PID  int     `json:"pid"`
	Size PTYSize `json:"size"`
}

// ConnectRequest streams a running process's output to this request, as
// if it were its exec: Started, Output, then Exit when it ends. Replay
// first sends what the process wrote recently (up to ReplayBytes per
// stream), for a caller that was not listening.
type ConnectRequest struct {
	ID     uint32 `json:"id"`
	PID    int    `json:"pid"`
	Replay bool   `json:"replay,omitempty"`
}

// ReplayBytes is how much recent output per stream the agent keeps for a
// ConnectRequest with Replay.
const ReplayBytes = 64 << 10

// ListProcsRequest asks for the processes the agent runs.
type ListProcsRequest struct {
	ID uint32 `json:"id"`
}

// ProcessInfo describes a running process.
type ProcessInfo struct {
	PID        int      `json:"pid"`
	Tag        string   `json:"tag,omitempty"`
	Argv       []string `json:"argv"`
	Env        []string `json:"env,omitempty"`
	Dir        string   `json:"dir"`
	User       string   `json:"user,omitempty"`
	PTY        bool     `json:"pty,omitempty"`
	Background bool     `json:"background,omitempty"`
	// StartedUnixMillis is when it started, by the guest's clock.
	StartedUnixMillis int64 `json:"started_ms"`
}

// MaxProcesses bounds the processes an agent runs for the host at once.
const MaxProcesses = 256

// ProcessList answers ListProcsRequest.
type ProcessList struct {
	ID        uint32        `json:"id"`
	Processes []ProcessInfo `json:"processes"`
}

// Ack answers a request that returns nothing but success. Bytes is, for
// an upload, how many bytes the agent has written so far.
type Ack struct {
	ID    uint32 `json:"id"`
	Bytes int64  `json:"bytes,omitempty"`
}
