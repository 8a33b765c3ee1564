package agentproto

import (
	"fmt"
	"path"
	"strings"
	"time"
)

// Stream numbers an output stream.
type Stream uint8

// Output streams.
const (
	Stdout Stream = 1
	Stderr Stream = 2
	PTY    Stream = 3 // a terminal's output: stdout and stderr as the terminal shows them
)

func (s Stream) String() string {
	switch s {
	case Stdout:
		return "stdout"
	case Stderr:
		return "stderr"
	case PTY:
		return "pty"
	}
	return fmt.Sprintf("stream(%d)", uint8(s))
}

// Hello is the guest's greeting, sent when the channel opens and in answer
// to every Ping and Resync.
type Hello struct {
	Protocol     int    `json:"protocol"`
	AgentVersion string `json:"agent_version"`
	Kernel       string `json:"kernel,omitempty"`
	// BootMillis is the guest's uptime when the agent became ready.
	BootMillis int64 `json:"boot_ms,omitempty"`
	// Identity is the VM identity last set by Resync, empty before.
	Identity string `json:"identity,omitempty"`
}

// File is a file written before the command starts. Path is relative to the
// exec's working directory.
type File struct {
	Path    string `json:"path"`
	Content []byte `json:"content"`
	Mode    uint32 `json:"mode,omitempty"`
}

// ExecRequest asks the agent to run a command.
type ExecRequest struct {
	ID   uint32   `json:"id"`
	Argv []string `json:"argv"`
	Env  []string `json:"env,omitempty"`
	// Dir is the working directory inside the guest root. Empty means a
	// fresh private directory under /tmp.
	Dir    string `json:"dir,omitempty"`
	Stdin  []byte `json:"stdin,omitempty"`
	Files  []File `json:"files,omitempty"`
	Limits Limits `json:"limits"`
	// Prewarmed asks to run through the VM's prewarmed runtime (see
	// PrewarmRequest) if one is running and idle; otherwise, or if it
	// cannot take Argv, the command runs the ordinary way.
	Prewarmed bool `json:"prewarmed,omitempty"`

	// Background detaches the process from this request: cancelling the
	// request, or losing the channel, stops its output here but not the
	// process. Its wall-clock limit applies only when set, and its output
	// has no cap (nobody may be reading; see ConnectRequest).
	Background bool `json:"background,omitempty"`
	// OpenStdin keeps stdin open after Stdin was written, for
	// StdinRequests, until one closes it.
	OpenStdin bool `json:"open_stdin,omitempty"`
	// PTY runs the process on a new terminal of this size: stdin, stdout
	// and stderr are the terminal, output comes as stream PTY, and stdin
	// stays open.
	PTY *PTYSize `json:"pty,omitempty"`
	// Tag is a caller's name for the process, reported by ListProcs.
	Tag string `json:"tag,omitempty"`
	// User runs the process as this guest user ("root", or a name in the
	// guest's /etc/passwd) instead of the default sandbox user.
	User string `json:"user,omitempty"`
}

// PrewarmRequest starts a language runtime that waits, loaded, to fork a
// fresh process for each prewarmed exec. It is answered with an empty
// FileData once the runtime reports ready.
type PrewarmRequest struct {
	ID    uint32   `json:"id"`
	Argv  []string `json:"argv"`
	Env   []string `json:"env,omitempty"`
	Dir   string   `json:"dir"`
	Files []File   `json:"files,omitempty"`
	// ReadyMillis bounds the wait for the runtime's ready message.
	ReadyMillis int64 `json:"ready_ms,omitempty"`
	// Spares, when above 0, starts that many copies of the runtime instead
	// of one fork server. Each copy loads, says "ready" on its fd 3 and
	// waits; a prewarmed exec takes one ready copy, which becomes the
	// program (its own process, already loaded), and the agent starts a
	// replacement at idle priority. For runtimes that cannot fork. The
	// copy's protocol, one SOCK_SEQPACKET message each:
	//
	//	spare -> agent  "ready"                         once, when loaded
	//	agent -> spare  "run\0" cwd "\0" argc "\0" argv... env...  (NUL-separated)
	//	spare -> agent  "ok", or "no <reason>" and it waits again
	//	agent           moves the spare into the exec's cgroup
	//	agent -> spare  "go"; the spare closes fd 3 and runs the program
	//
	// Its stdin, stdout and stderr are pipes the agent made for it, which
	// become the exec's; the agent is its parent and collects its exit.
	Spares int `json:"spares,omitempty"`
	// Accept, for spares, lists prefixes of the argv they run; an exec
	// that matches none runs the ordinary way at once. Empty: any.
	Accept [][]string `json:"accept,omitempty"`
}

// MaxSpares bounds PrewarmRequest.Spares.
const MaxSpares = 4

// Validate checks a PrewarmRequest.
func (r *PrewarmRequest) Validate() error {
	e := ExecRequest{Argv: r.Argv, Env: r.Env, Dir: r.Dir, Files: r.Files}
	if r.Dir == "" {
		return fmt.Errorf("%w: prewarm needs a directory", ErrMalformed)
	}
	if r.Spares < 0 || r.Spares > MaxSpares {
		return fmt.Errorf("%w: %d spares, at most %d", ErrMalformed, r.Spares, MaxSpares)
	}
	if len(r.Accept) > MaxSpares*4 {
		return fmt.Errorf("%w: %d accepted command lines, at most %d", ErrMalformed, len(r.Accept), MaxSpares*4)
	}
	for _, a := range r.Accept {
		if len(a) == 0 || len(a) > 64 {
			return fmt.Errorf("%w: an accepted command line has %d words, want 1 to 64", ErrMalformed, len(a))
		}
	}
	return e.Validate()
}

// Maximum sizes of an ExecRequest's parts; the payload bound also applies.
const (
	MaxArgs      = 4096
	MaxArgBytes  = 256 << 10
	MaxFiles     = 256
	MaxPathBytes = 4096
)

// Validate checks a request for things the agent must never act on.
func (r *ExecRequest) Validate() error {
	if len(r.Argv) == 0 || r.Argv[0] == "" {
		return fmt.Errorf("%w: empty argv", ErrMalformed)
	}
	if len(r.Argv)+len(r.Env) > MaxArgs {
		return fmt.Errorf("%w: %d arguments and environment entries, at most %d", ErrMalformed, len(r.Argv)+len(r.Env), MaxArgs)
	}
	n := 0
	for _, a := range r.Argv {
		n += len(a)
		if strings.IndexByte(a, 0) >= 0 {
			return fmt.Errorf("%w: NUL byte in argument", ErrMalformed)
		}
	}
	for _, e := range r.Env {
		n += len(e)
		if strings.IndexByte(e, 0) >= 0 || !strings.Contains(e, "=") {
			return fmt.Errorf("%w: environment entry %q is not KEY=VALUE", ErrMalformed, truncate(e, 40))
		}
	}
	if n > MaxArgBytes {
		return fmt.Errorf("%w: arguments and environment total %d bytes, at most %d", ErrMalformed, n, MaxArgBytes)
	}
	if r.Dir != "" && (!path.IsAbs(r.Dir) || strings.IndexByte(r.Dir, 0) >= 0) {
		return fmt.Errorf("%w: working directory %q is not an absolute path", ErrMalformed, truncate(r.Dir, 80))
	}
	if len(r.Files) > MaxFiles {
		return fmt.Errorf("%w: %d files, at most %d", ErrMalformed, len(r.Files), MaxFiles)
	}
	for _, f := range r.Files {
		if err := ValidateRelPath(f.Path); err != nil {
			return err
		}
	}
	if r.Limits.WallMillis < 0 || r.Limits.OutputBytes < 0 || r.Limits.Procs < 0 || r.Limits.MemoryBytes < 0 {
		return fmt.Errorf("%w: negative limit", ErrMalformed)
	}
	if r.PTY != nil {
		if err := r.PTY.Validate(); err != nil {
			return err
		}
		if r.Prewarmed {
			return fmt.Errorf("%w: a prewarmed runtime cannot run on a terminal", ErrMalformed)
		}
	}
	if len(r.Tag) > MaxTagBytes || !isPrintable(r.Tag) {
		return fmt.Errorf("%w: tag: at most %d printable bytes", ErrMalformed, MaxTagBytes)
	}
	return ValidateUser(r.User)
}

// OutputCap is the most bytes of each stream the agent forwards for r,
// and the host accepts: 0 means no cap (a background process).
func (r *ExecRequest) OutputCap() int64 {
	if r.Background && r.Limits.OutputBytes == 0 {
		return 0
	}
	return r.Limits.Effective(DefaultLimits, MaxLimits).OutputBytes
}

// MaxTagBytes bounds ExecRequest.Tag; MaxUserBytes a user name.
const (
	MaxTagBytes  = 256
	MaxUserBytes = 32
)

// ValidateUser accepts "" (the default user), or a name of the kind
// useradd accepts: [a-z_][a-z0-9_-]*, at most MaxUserBytes.
func ValidateUser(u string) error {
	if u == "" {
		return nil
	}
	if len(u) > MaxUserBytes {
		return fmt.Errorf("%w: user name of %d bytes", ErrMalformed, len(u))
	}
	for i := 0; i < len(u); i++ {
		c := u[i]
		if !('a' <= c && c <= 'z' || c == '_' || i > 0 && ('0' <= c && c <= '9' || c == '-')) {
			return fmt.Errorf("%w: user name %q", ErrMalformed, truncate(u, 40))
		}
	}
	return nil
}

// isPrintable reports whether s holds no control characters.
func isPrintable(s string) bool {
	for _, r := range s {
		if r < ' ' || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return false
		}
	}
	return true
}

// ValidateRelPath accepts a relative, clean path that stays below its base
// directory: no "..", no absolute path, no NUL, not empty.
func ValidateRelPath(p string) error {
	switch {
	case p == "":
		return fmt.Errorf("%w: empty file name", ErrMalformed)
	case len(p) > MaxPathBytes:
		return fmt.Errorf("%w: file name of %d bytes", ErrMalformed, len(p))
	case strings.IndexByte(p, 0) >= 0:
		return fmt.Errorf("%w: NUL byte in file name", ErrMalformed)
	case path.IsAbs(p):
		return fmt.Errorf("%w: file name %q is absolute", ErrMalformed, truncate(p, 80))
	}
	for _, part := range strings.Split(p, "/") {
		if part == ".." {
			return fmt.Errorf("%w: file name %q leaves its directory", ErrMalformed, truncate(p, 80))
		}
	}
	if c := path.Clean(p); c == "." || c != p {
		return fmt.Errorf("%w: file name %q is not clean (want %q)", ErrMalformed, truncate(p, 80), c)
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// Status says why a program ended, in Piston's vocabulary.
type Status string

// Statuses. StatusOK is the empty string: the program exited by itself with
// code 0.
const (
	StatusOK           Status = ""
	StatusRuntimeError Status = "RE" // exited with a non-zero code
	StatusSignal       Status = "SG" // killed by a signal (its own or an OOM kill)
	StatusTimeout      Status = "TO" // killed at the wall-clock limit
	StatusStdoutLimit  Status = "OL" // killed when stdout passed its cap
	StatusStderrLimit  Status = "EL" // killed when stderr passed its cap
	StatusInternal     Status = "XX" // the agent could not run it
)

// ExitResult reports how an exec ended.
type ExitResult struct {
	ID     uint32 `json:"id"`
	PID    int    `json:"pid,omitempty"`
	Code   int    `json:"code"`
	Signal string `json:"signal,omitempty"`
	Status Status `json:"status,omitempty"`
	// Message explains a non-OK status in words.
	Message    string `json:"message,omitempty"`
	WallMillis int64  `json:"wall_ms"`
	CPUMillis  int64  `json:"cpu_ms"`
	// MemoryBytes is the peak memory of the process tree.
	MemoryBytes int64 `json:"memory_bytes"`
	// Prewarmed says the program ran as a fork of the prewarmed runtime.
	Prewarmed bool `json:"prewarmed,omitempty"`
}

// Wall returns the wall time as a duration.
func (r *ExitResult) Wall() time.Duration { return time.Duration(r.WallMillis) * time.Millisecond }

// ErrorMsg reports a failure that is not a program's result: a request the
// agent refused or could not start. ID is the exec it concerns, 0 if none.
type ErrorMsg struct {
	ID      uint32 `json:"id,omitempty"`
	Message string `json:"message"`
	// Code classifies the error for programs; empty when unclassified.
	Code ErrorCode `json:"code,omitempty"`
}

// ErrorCode classifies an agent error.
type ErrorCode string

// Error codes.
const (
	CodeNotFound    ErrorCode = "not_found"   // no such file, directory or process
	CodeExists      ErrorCode = "exists"      // the file or directory already exists
	CodePermission  ErrorCode = "permission"  // the user may not do this
	CodeInvalid     ErrorCode = "invalid"     // e.g. not a regular file, not a directory
	CodeTooLarge    ErrorCode = "too_large"   // over a size bound
	CodeBusy        ErrorCode = "busy"        // a bounded resource is in use (processes, watches)
	CodeUnsupported ErrorCode = "unsupported" // a request type the agent predates
)

// CancelRequest ends a request: it kills a running exec (a background
// one only stops reporting to this request), ends a connect or a watch,
// and aborts a transfer. An exec still answers with an Exit.
type CancelRequest struct {
	ID uint32 `json:"id"`
}

// ResyncRequest is sent after a snapshot restore so clones do not share
// the snapshot's clock, randomness or identity. It travels binary, not as
// JSON (resync.go).
type ResyncRequest struct {
	UnixNanos int64
	Entropy   []byte // at most MaxResyncEntropy bytes
	Identity  string // at most MaxResyncIdentity bytes
}

// MaxFileTransfer bounds one file read or one WriteFiles request: the
// content travels base64-encoded inside one frame.
const MaxFileTransfer = 2 << 20

// WriteFilesRequest writes files into Dir (created if missing, owned by
// the user commands run as).
type WriteFilesRequest struct {
	ID    uint32 `json:"id"`
	Dir   string `json:"dir"`
	Files []File `json:"files"`
}

// FileData answers WriteFiles and Prewarm (empty).
type FileData struct {
	ID      uint32 `json:"id"`
	Content []byte `json:"content,omitempty"`
}

// Validate checks a WriteFilesRequest.
func (r *WriteFilesRequest) Validate() error {
	if !path.IsAbs(r.Dir) || strings.IndexByte(r.Dir, 0) >= 0 {
		return fmt.Errorf("%w: directory %q is not an absolute path", ErrMalformed, truncate(r.Dir, 80))
	}
	if len(r.Files) == 0 || len(r.Files) > MaxFiles {
		return fmt.Errorf("%w: %d files, want 1-%d", ErrMalformed, len(r.Files), MaxFiles)
	}
	n := 0
	for _, f := range r.Files {
		if err := ValidateRelPath(f.Path); err != nil {
			return err
		}
		n += len(f.Content)
	}
	if n > MaxFileTransfer {
		return fmt.Errorf("%w: %d bytes of files in one request, at most %d", ErrMalformed, n, MaxFileTransfer)
	}
	return nil
}
