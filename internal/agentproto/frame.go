package agentproto

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// ProtocolVersion is the version written in every frame header. Bump it on
// any incompatible change; snapshots record it so an old snapshot is never
// restored under a new host.
const ProtocolVersion = 3

// MaxPayload bounds one frame's payload, so a confused or hostile peer cannot
// make the other side allocate without limit.
const MaxPayload = 4 << 20

// HeaderSize is the size of a frame header in bytes.
const HeaderSize = 8

var magic = [2]byte{0xF5, 0x5B}

// MsgType identifies a frame's payload.
type MsgType uint8

// Message types. Values are part of the wire format: never renumber.
const (
	MsgHello    MsgType = 1 // guest -> host: Hello
	MsgPing     MsgType = 2 // host -> guest: empty; answered with Hello
	MsgExec     MsgType = 3 // host -> guest: ExecRequest
	MsgOutput   MsgType = 4 // guest -> host: binary output chunk
	MsgExit     MsgType = 5 // guest -> host: ExitResult
	MsgError    MsgType = 6 // either way: ErrorMsg
	MsgCancel   MsgType = 7 // host -> guest: CancelRequest
	MsgShutdown MsgType = 8 // host -> guest: empty; the guest powers off
	MsgResync   MsgType = 9 // host -> guest: ResyncRequest, binary (resync.go); answered with Hello
	// MsgWriteFiles writes files without running anything; answered with
	// an empty FileData (or Error) of the same id.
	MsgWriteFiles MsgType = 10 // host -> guest: WriteFilesRequest
	MsgReadFile   MsgType = 11 // version 1 only; MsgDownload replaced it
	MsgFileData   MsgType = 12 // guest -> host: FileData
	MsgPrewarm    MsgType = 13 // host -> guest: PrewarmRequest; answered with FileData

	// Processes (version 2). Process calls name a process by its pid, as
	// reported in Started; only processes the agent started can be named.
	MsgStarted     MsgType = 14 // guest -> host: Started, once an exec's (or connect's) process runs
	MsgStdin       MsgType = 15 // host -> guest: StdinRequest; answered with Ack
	MsgSignal      MsgType = 16 // host -> guest: SignalRequest; answered with Ack
	MsgResize      MsgType = 17 // host -> guest: ResizeRequest; answered with Ack
	MsgConnect     MsgType = 18 // host -> guest: ConnectRequest; answered like an exec: Started, Output, Exit
	MsgListProcs   MsgType = 19 // host -> guest: ListProcsRequest; answered with ProcessList
	MsgProcessList MsgType = 20 // guest -> host: ProcessList
	MsgAck         MsgType = 21 // guest -> host: Ack

	// Files (version 2). Paths are absolute guest paths, resolved inside
	// the guest root (and inside FileRequest.Within when set).
	MsgStat        MsgType = 22 // host -> guest: FileRequest; answered with Entries
	MsgListDir     MsgType = 23 // host -> guest: FileRequest; answered with Entries
	MsgMkdir       MsgType = 24 // host -> guest: FileRequest; answered with Entries
	MsgMove        MsgType = 25 // host -> guest: FileRequest; answered with Entries
	MsgRemove      MsgType = 26 // host -> guest: FileRequest; answered with Ack
	MsgEntries     MsgType = 27 // guest -> host: Entries
	MsgUpload      MsgType = 28 // host -> guest: FileRequest; Ack, then Chunks each acked, then Entries
	MsgChunk       MsgType = 29 // either way: binary chunk of an upload or download
	MsgDownload    MsgType = 30 // host -> guest: FileRequest; answered with Entries, then Chunks
	MsgWatch       MsgType = 31 // host -> guest: FileRequest; Ack, then WatchEvents until cancelled
	MsgWatchEvents MsgType = 32 // guest -> host: WatchEvents
)

var msgNames = map[MsgType]string{
	MsgHello: "hello", MsgPing: "ping", MsgExec: "exec", MsgOutput: "output", MsgExit: "exit",
	MsgError: "error", MsgCancel: "cancel", MsgShutdown: "shutdown", MsgResync: "resync",
	MsgWriteFiles: "write-files", MsgReadFile: "read-file", MsgFileData: "file-data", MsgPrewarm: "prewarm",
	MsgStarted: "started", MsgStdin: "stdin", MsgSignal: "signal", MsgResize: "resize", MsgConnect: "connect",
	MsgListProcs: "list-processes", MsgProcessList: "process-list", MsgAck: "ack",
	MsgStat: "stat", MsgListDir: "list-dir", MsgMkdir: "mkdir", MsgMove: "move", MsgRemove: "remove",
	MsgEntries: "entries", MsgUpload: "upload", MsgChunk: "chunk", MsgDownload: "download",
	MsgWatch: "watch", MsgWatchEvents: "watch-events", MsgNetConfig: "net-config",
}

func (t MsgType) String() string {
	if n, ok := msgNames[t]; ok {
		return n
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Frame is one decoded frame.
type Frame struct {
	Type    MsgType
	Payload []byte
}

// ReadFrame reads one frame. It returns ErrBadMagic, ErrVersion or
// ErrTooLarge for malformed input; the stream is unusable after any error.
func ReadFrame(r io.Reader) (Frame, error) {
	var h [HeaderSize]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return Frame{}, err
	}
	if h[0] != magic[0] || h[1] != magic[1] {
		return Frame{}, fmt.Errorf("%w: % x", ErrBadMagic, h[:2])
	}
	if h[2] != ProtocolVersion {
		return Frame{}, fmt.Errorf("%w: peer speaks %d, we speak %d", ErrVersion, h[2], ProtocolVersion)
	}
	n := binary.BigEndian.Uint32(h[4:])
	if n > MaxPayload {
		return Frame{}, fmt.Errorf("%w: %d bytes", ErrTooLarge, n)
	}
	f := Frame{Type: MsgType(h[3]), Payload: make([]byte, n)}
	if _, err := io.ReadFull(r, f.Payload); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return Frame{}, err
	}
	return f, nil
}

// AppendFrame appends the encoding of a frame to b.
func AppendFrame(b []byte, t MsgType, payload []byte) []byte {
	b = append(b, magic[0], magic[1], ProtocolVersion, byte(t))
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	return append(b, payload...)
}

// Writer writes whole frames to a stream; it is safe for concurrent use and
// never interleaves two frames.
type Writer struct {
	mu      sync.Mutex
	w       io.Writer
	buf     []byte
	timeout time.Duration
	failed  error // a frame was cut short: the stream is unusable
}

// NewWriter returns a Writer on w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// deadliner is a stream whose writes can be bounded in time (net.Conn,
// *os.File on a pollable descriptor).
type deadliner interface{ SetWriteDeadline(time.Time) error }

// SetTimeout bounds the writing of each frame, on streams that support
// write deadlines: a peer that stops reading cannot hold a writer (and,
// through the Writer's lock, every other writer) forever. After a timed
// out frame the stream is unusable, and every later write fails.
func (w *Writer) SetTimeout(d time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.timeout = d
}

// WriteFrame writes one frame.
func (w *Writer) WriteFrame(t MsgType, payload []byte) error {
	if len(payload) > MaxPayload {
		return fmt.Errorf("%w: %d bytes", ErrTooLarge, len(payload))
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.failed != nil {
		return w.failed
	}
	w.buf = AppendFrame(w.buf[:0], t, payload)
	d, timed := w.w.(deadliner)
	if timed && w.timeout > 0 {
		timed = d.SetWriteDeadline(time.Now().Add(w.timeout)) == nil
	}
	n, err := w.w.Write(w.buf)
	if timed && w.timeout > 0 {
		_ = d.SetWriteDeadline(time.Time{})
	}
	if cap(w.buf) > 1<<20 {
		w.buf = nil // don't pin a large buffer after a big frame
	}
	if err != nil && n > 0 {
		w.failed = fmt.Errorf("%w: a %s frame was cut short: %v", ErrClosed, t, err)
	}
	return err
}

// errEncode marks a message that could not be encoded (nothing was sent).
var errEncode = errors.New("encode")

// WriteJSON writes a frame whose payload is v encoded as JSON.
func (w *Writer) WriteJSON(t MsgType, v any) error {
	var payload []byte
	if v != nil {
		var err error
		if payload, err = json.Marshal(v); err != nil {
			return fmt.Errorf("%w %s: %v", errEncode, t, err)
		}
	}
	return w.WriteFrame(t, payload)
}

// WriteOutput writes an output chunk of exec id on stream.
func (w *Writer) WriteOutput(id uint32, stream Stream, data []byte) error {
	p := make([]byte, 5+len(data))
	binary.BigEndian.PutUint32(p, id)
	p[4] = byte(stream)
	copy(p[5:], data)
	return w.WriteFrame(MsgOutput, p)
}

// DecodeOutput splits an output frame's payload.
func DecodeOutput(p []byte) (id uint32, stream Stream, data []byte, err error) {
	if len(p) < 5 {
		return 0, 0, nil, fmt.Errorf("%w: output frame of %d bytes", ErrMalformed, len(p))
	}
	stream = Stream(p[4])
	if stream != Stdout && stream != Stderr && stream != PTY {
		return 0, 0, nil, fmt.Errorf("%w: output stream %d", ErrMalformed, stream)
	}
	return binary.BigEndian.Uint32(p), stream, p[5:], nil
}

// DecodeJSON decodes a control frame's payload into v, rejecting unknown
// fields so that a peer's typo is an error rather than a silent default.
func DecodeJSON(f Frame, v any) error {
	dec := json.NewDecoder(bytesReader(f.Payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: decode %s: %v", ErrMalformed, f.Type, err)
	}
	return nil
}

// Chunk flags.
const (
	ChunkEOF uint8 = 1 // the last chunk of a transfer (its data may be empty)
)

// MaxChunk bounds one chunk's data: transfers are cut into chunks this
// size so that no one transfer holds the channel for long.
const MaxChunk = 64 << 10

// WriteChunk writes a chunk of transfer id.
func (w *Writer) WriteChunk(id uint32, flags uint8, data []byte) error {
	if len(data) > MaxChunk {
		return fmt.Errorf("%w: chunk of %d bytes", ErrTooLarge, len(data))
	}
	p := make([]byte, 5+len(data))
	binary.BigEndian.PutUint32(p, id)
	p[4] = flags
	copy(p[5:], data)
	return w.WriteFrame(MsgChunk, p)
}

// DecodeChunk splits a chunk frame's payload.
func DecodeChunk(p []byte) (id uint32, flags uint8, data []byte, err error) {
	if len(p) < 5 || len(p)-5 > MaxChunk {
		return 0, 0, nil, fmt.Errorf("%w: chunk frame of %d bytes", ErrMalformed, len(p))
	}
	if p[4]&^ChunkEOF != 0 {
		return 0, 0, nil, fmt.Errorf("%w: chunk flags %#x", ErrMalformed, p[4])
	}
	return binary.BigEndian.Uint32(p), p[4], p[5:], nil
}

// frameID returns the request id a frame concerns, 0 if none.
func frameID(f Frame) uint32 {
	switch f.Type {
	case MsgOutput, MsgChunk:
		if len(f.Payload) >= 4 {
			return binary.BigEndian.Uint32(f.Payload)
		}
		return 0
	}
	var v struct {
		ID uint32 `json:"id"`
	}
	_ = json.Unmarshal(f.Payload, &v)
	return v.ID
}
