package agentproto

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
)

// ProtocolVersion is the version written in every frame header. Bump it on
// any incompatible change; snapshots record it so an old snapshot is never
// restored under a new host.
const ProtocolVersion = 1

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
	MsgResync   MsgType = 9 // host -> guest: ResyncRequest; answered with Hello
	// MsgWriteFiles writes files without running anything; answered with
	// an empty FileData (or Error) of the same id.
	MsgWriteFiles MsgType = 10 // host -> guest: WriteFilesRequest
	MsgReadFile   MsgType = 11 // host -> guest: ReadFileRequest
	MsgFileData   MsgType = 12 // guest -> host: FileData
	MsgPrewarm    MsgType = 13 // host -> guest: PrewarmRequest; answered with FileData
)

func (t MsgType) String() string {
	switch t {
	case MsgHello:
		return "hello"
	case MsgPing:
		return "ping"
	case MsgExec:
		return "exec"
	case MsgOutput:
		return "output"
	case MsgExit:
		return "exit"
	case MsgError:
		return "error"
	case MsgCancel:
		return "cancel"
	case MsgShutdown:
		return "shutdown"
	case MsgResync:
		return "resync"
	case MsgWriteFiles:
		return "write-files"
	case MsgReadFile:
		return "read-file"
	case MsgFileData:
		return "file-data"
	case MsgPrewarm:
		return "prewarm"
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
	mu  sync.Mutex
	w   io.Writer
	buf []byte
}

// NewWriter returns a Writer on w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// WriteFrame writes one frame.
func (w *Writer) WriteFrame(t MsgType, payload []byte) error {
	if len(payload) > MaxPayload {
		return fmt.Errorf("%w: %d bytes", ErrTooLarge, len(payload))
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = AppendFrame(w.buf[:0], t, payload)
	_, err := w.w.Write(w.buf)
	if cap(w.buf) > 1<<20 {
		w.buf = nil // don't pin a large buffer after a big frame
	}
	return err
}

// WriteJSON writes a frame whose payload is v encoded as JSON.
func (w *Writer) WriteJSON(t MsgType, v any) error {
	var payload []byte
	if v != nil {
		var err error
		if payload, err = json.Marshal(v); err != nil {
			return fmt.Errorf("encode %s: %w", t, err)
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
	if stream != Stdout && stream != Stderr {
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
