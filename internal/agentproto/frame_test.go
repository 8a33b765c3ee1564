package agentproto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"reflect"
	"runtime"
	"sync"
	"testing"
)

// TestFrameRoundTrip writes one frame of every message type and reads them
// back, checking both the raw payload and the decoded message.
func TestFrameRoundTrip(t *testing.T) {
	type jsonCase struct {
		typ  MsgType
		msg  any
		into func() any // fresh value to decode into
	}
	jsonCases := []jsonCase{
		{MsgHello, &Hello{Protocol: ProtocolVersion, AgentVersion: "v1.2", Kernel: "6.12", BootMillis: 830, Identity: "vm-7"}, func() any { return &Hello{} }},
		{MsgExec, &ExecRequest{ID: 9, Argv: []string{"python3", "main.py"}, Env: []string{"A=b"}, Dir: "/work",
			Stdin: []byte("in\x00put"), Files: []File{{Path: "main.py", Content: []byte("print(1)\n"), Mode: 0o644}},
			Limits: Limits{WallMillis: 1500, OutputBytes: 1 << 20, Procs: 64, MemoryBytes: 256 << 20}}, func() any { return &ExecRequest{} }},
		{MsgExit, &ExitResult{ID: 9, Code: 3, Signal: "SIGKILL", Status: StatusTimeout, Message: "killed", WallMillis: 2000, CPUMillis: 1999, MemoryBytes: 4096}, func() any { return &ExitResult{} }},
		{MsgError, &ErrorMsg{ID: 4, Message: "cannot start"}, func() any { return &ErrorMsg{} }},
		{MsgCancel, &CancelRequest{ID: 12}, func() any { return &CancelRequest{} }},
		{MsgResync, &ResyncRequest{UnixNanos: 1700000000123456789, Entropy: []byte{0, 1, 2, 255}, Identity: "clone-2"}, func() any { return &ResyncRequest{} }},
	}

	var buf bytes.Buffer
	w := NewWriter(&buf)
	for _, c := range jsonCases {
		if err := w.WriteJSON(c.typ, c.msg); err != nil {
			t.Fatalf("WriteJSON(%s): %v", c.typ, err)
		}
	}
	for _, typ := range []MsgType{MsgPing, MsgShutdown} {
		if err := w.WriteJSON(typ, nil); err != nil {
			t.Fatalf("WriteJSON(%s, nil): %v", typ, err)
		}
	}
	out := []byte("raw \x00\xff bytes, never re-encoded")
	if err := w.WriteOutput(0xDEADBEEF, Stderr, out); err != nil {
		t.Fatalf("WriteOutput: %v", err)
	}

	r := bytes.NewReader(buf.Bytes())
	for _, c := range jsonCases {
		f, err := ReadFrame(r)
		if err != nil {
			t.Fatalf("ReadFrame for %s: %v", c.typ, err)
		}
		if f.Type != c.typ {
			t.Fatalf("frame type = %s, want %s", f.Type, c.typ)
		}
		got := c.into()
		if err := DecodeJSON(f, got); err != nil {
			t.Fatalf("DecodeJSON(%s): %v", c.typ, err)
		}
		if !reflect.DeepEqual(got, c.msg) {
			t.Errorf("%s round trip:\n got %+v\nwant %+v", c.typ, got, c.msg)
		}
	}
	for _, typ := range []MsgType{MsgPing, MsgShutdown} {
		f, err := ReadFrame(r)
		if err != nil {
			t.Fatalf("ReadFrame for %s: %v", typ, err)
		}
		if f.Type != typ || len(f.Payload) != 0 {
			t.Errorf("got %s frame with %d payload bytes, want empty %s", f.Type, len(f.Payload), typ)
		}
	}
	f, err := ReadFrame(r)
	if err != nil {
		t.Fatalf("ReadFrame for output: %v", err)
	}
	if f.Type != MsgOutput {
		t.Fatalf("frame type = %s, want output", f.Type)
	}
	id, stream, data, err := DecodeOutput(f.Payload)
	if err != nil {
		t.Fatalf("DecodeOutput: %v", err)
	}
	if id != 0xDEADBEEF || stream != Stderr || !bytes.Equal(data, out) {
		t.Errorf("DecodeOutput = (%#x, %s, %q), want (0xdeadbeef, stderr, %q)", id, stream, data, out)
	}

	// A clean end of stream between frames is io.EOF, not an error about
	// a broken frame.
	if _, err := ReadFrame(r); err != io.EOF {
		t.Errorf("ReadFrame at end of stream = %v, want io.EOF", err)
	}
}

func header(m0, m1, version byte, typ MsgType, n uint32) []byte {
	h := []byte{m0, m1, version, byte(typ), 0, 0, 0, 0}
	binary.BigEndian.PutUint32(h[4:], n)
	return h
}

func TestReadFrameRejectsMalformed(t *testing.T) {
	good := AppendFrame(nil, MsgExit, []byte(`{"id":1}`))
	tests := map[string]struct {
		in   []byte
		want error
	}{
		"bad magic":         {header(0x7f, 'E', ProtocolVersion, MsgHello, 0), ErrBadMagic},
		"other version":     {header(0xF5, 0x5B, ProtocolVersion+1, MsgHello, 0), ErrVersion},
		"version zero":      {header(0xF5, 0x5B, 0, MsgHello, 0), ErrVersion},
		"length over max":   {header(0xF5, 0x5B, ProtocolVersion, MsgOutput, MaxPayload+1), ErrTooLarge},
		"length 4 GiB":      {header(0xF5, 0x5B, ProtocolVersion, MsgOutput, 0xFFFFFFFF), ErrTooLarge},
		"truncated payload": {good[:len(good)-3], io.ErrUnexpectedEOF},
		"header only":       {good[:HeaderSize], io.ErrUnexpectedEOF},
		"truncated header":  {good[:5], io.ErrUnexpectedEOF},
		"payload missing":   {header(0xF5, 0x5B, ProtocolVersion, MsgOutput, 10), io.ErrUnexpectedEOF},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			f, err := ReadFrame(bytes.NewReader(tc.in))
			if !errors.Is(err, tc.want) {
				t.Fatalf("ReadFrame = (%v, %v), want error %v", f, err, tc.want)
			}
		})
	}
}

// headerOnly serves a header and fails the test if anything reads past it.
type headerOnly struct {
	t   *testing.T
	h   []byte
	off int
}

func (r *headerOnly) Read(p []byte) (int, error) {
	if r.off >= len(r.h) {
		r.t.Errorf("ReadFrame read the payload of an oversized frame")
		return 0, io.EOF
	}
	n := copy(p, r.h[r.off:])
	r.off += n
	return n, nil
}

func TestReadFrameTooLargeDoesNotAllocate(t *testing.T) {
	r := &headerOnly{t: t, h: header(0xF5, 0x5B, ProtocolVersion, MsgOutput, MaxPayload+1)}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := ReadFrame(r)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("ReadFrame = %v, want ErrTooLarge", err)
	}
	if d := after.TotalAlloc - before.TotalAlloc; d > 64<<10 {
		t.Errorf("ReadFrame allocated %d bytes rejecting an oversized frame", d)
	}
}

func TestWriteFrameRejectsOversizedPayload(t *testing.T) {
	var buf bytes.Buffer
	err := NewWriter(&buf).WriteFrame(MsgOutput, make([]byte, MaxPayload+1))
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("WriteFrame of MaxPayload+1 bytes = %v, want ErrTooLarge", err)
	}
	if buf.Len() != 0 {
		t.Errorf("a rejected frame wrote %d bytes", buf.Len())
	}
	// MaxPayload itself is allowed, and readable.
	if err := NewWriter(&buf).WriteFrame(MsgOutput, make([]byte, MaxPayload)); err != nil {
		t.Fatalf("WriteFrame of MaxPayload bytes: %v", err)
	}
	f, err := ReadFrame(&buf)
	if err != nil || len(f.Payload) != MaxPayload {
		t.Fatalf("ReadFrame = (%d bytes, %v), want %d bytes", len(f.Payload), err, MaxPayload)
	}
}

// tricklingWriter stores each Write one byte at a time, yielding between
// bytes, so two unserialised Writes would interleave.
type tricklingWriter struct {
	mu  sync.Mutex
	buf []byte
}

func (w *tricklingWriter) Write(p []byte) (int, error) {
	for i, b := range p {
		w.mu.Lock()
		w.buf = append(w.buf, b)
		w.mu.Unlock()
		if i%7 == 0 {
			runtime.Gosched()
		}
	}
	return len(p), nil
}

func TestWriterNeverInterleavesFrames(t *testing.T) {
	const writers, perWriter = 12, 40
	tw := &tricklingWriter{}
	w := NewWriter(tw)
	var wg sync.WaitGroup
	for g := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWriter {
				// Each payload names its writer and sequence number and is
				// filled with a byte pattern that a torn frame would break.
				body := bytes.Repeat([]byte{byte('a' + g)}, 1+(g*31+i*17)%300)
				var err error
				if i%2 == 0 {
					err = w.WriteOutput(uint32(g), Stdout, append([]byte(fmt.Sprintf("%d:%d:", g, i)), body...))
				} else {
					err = w.WriteJSON(MsgError, ErrorMsg{ID: uint32(g), Message: fmt.Sprintf("%d:%d:%s", g, i, body)})
				}
				if err != nil {
					t.Errorf("writer %d: %v", g, err)
					return
				}
			}
		}()
	}
	wg.Wait()

	next := make([]int, writers) // next sequence number expected per writer
	r := bytes.NewReader(tw.buf)
	for {
		f, err := ReadFrame(r)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("frame %d: %v", sum(next), err)
		}
		var id uint32
		var text string
		switch f.Type {
		case MsgOutput:
			var s Stream
			var data []byte
			if id, s, data, err = DecodeOutput(f.Payload); err != nil || s != Stdout {
				t.Fatalf("bad output frame (stream %s): %v", s, err)
			}
			text = string(data)
		case MsgError:
			var m ErrorMsg
			if err := DecodeJSON(f, &m); err != nil {
				t.Fatalf("bad error frame: %v", err)
			}
			id, text = m.ID, m.Message
		default:
			t.Fatalf("unexpected %s frame", f.Type)
		}
		var g, i int
		var body string
		if _, err := fmt.Sscanf(text, "%d:%d:%s", &g, &i, &body); err != nil {
			t.Fatalf("payload %q: %v", text, err)
		}
		if g < 0 || g >= writers || uint32(g) != id {
			t.Fatalf("frame of writer %d carries id %d", g, id)
		}
		want := string(bytes.Repeat([]byte{byte('a' + g)}, 1+(g*31+i*17)%300))
		if body != want {
			t.Fatalf("writer %d frame %d is torn: body %q", g, i, body)
		}
		if i != next[g] {
			t.Fatalf("writer %d: frame %d arrived when %d was expected", g, i, next[g])
		}
		next[g]++
	}
	for g, n := range next {
		if n != perWriter {
			t.Errorf("writer %d: decoded %d frames, want %d", g, n, perWriter)
		}
	}
}

func sum(xs []int) int {
	n := 0
	for _, x := range xs {
		n += x
	}
	return n
}

func TestDecodeOutputRejects(t *testing.T) {
	tests := map[string][]byte{
		"empty":        nil,
		"4 bytes":      {0, 0, 0, 1},
		"stream 0":     {0, 0, 0, 1, 0, 'x'},
		"stream 4":     {0, 0, 0, 1, 4, 'x'},
		"stream 0xff":  {0, 0, 0, 1, 0xff},
		"stream stdin": {0, 0, 0, 1, 0},
	}
	for name, p := range tests {
		t.Run(name, func(t *testing.T) {
			if _, _, _, err := DecodeOutput(p); !errors.Is(err, ErrMalformed) {
				t.Fatalf("DecodeOutput(% x) = %v, want ErrMalformed", p, err)
			}
		})
	}
}

func TestDecodeOutputEmptyChunk(t *testing.T) {
	id, s, data, err := DecodeOutput([]byte{0, 0, 1, 2, byte(Stdout)})
	if err != nil || id != 258 || s != Stdout || len(data) != 0 {
		t.Fatalf("DecodeOutput = (%d, %s, %q, %v), want (258, stdout, \"\", nil)", id, s, data, err)
	}
}

func TestDecodeJSONRejects(t *testing.T) {
	tests := map[string]string{
		"unknown field":       `{"id":1,"code":0,"exit_code":3}`,
		"misspelt field":      `{"id":1,"cod":3}`,
		"wrong type":          `{"id":"one"}`,
		"not json":            `exit 1`,
		"empty payload":       ``,
		"truncated object":    `{"id":1,`,
		"negative unsigned":   `{"id":-1}`,
		"number out of range": `{"id":4294967296}`,
	}
	for name, payload := range tests {
		t.Run(name, func(t *testing.T) {
			var r ExitResult
			err := DecodeJSON(Frame{Type: MsgExit, Payload: []byte(payload)}, &r)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("DecodeJSON(%q) = %v, want ErrMalformed", payload, err)
			}
		})
	}
	var r ExitResult
	if err := DecodeJSON(Frame{Type: MsgExit, Payload: []byte(`{"id":1,"code":3,"status":"RE"}`)}, &r); err != nil {
		t.Fatalf("DecodeJSON of a valid exit: %v", err)
	}
	if r.ID != 1 || r.Code != 3 || r.Status != StatusRuntimeError {
		t.Errorf("decoded %+v", r)
	}
}

func TestMsgTypeString(t *testing.T) {
	seen := map[string]MsgType{}
	for typ := MsgHello; typ <= MsgWatchEvents; typ++ {
		if _, named := msgNames[typ]; !named {
			t.Errorf("message type %d has no name", typ)
		}
		s := typ.String()
		if other, dup := seen[s]; dup {
			t.Errorf("%d and %d both print as %q", other, typ, s)
		}
		seen[s] = typ
	}
	if s := MsgType(200).String(); s != "type(200)" {
		t.Errorf("MsgType(200) = %q, want type(200)", s)
	}
}
