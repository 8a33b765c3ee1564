// This file holds JSON answers whose big strings (a run's output) are
// streamed from where they are kept instead of being copied into the
// encoding, several times over, before the first byte goes out.

package api

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strconv"
	"unicode/utf8"
)

// textStream writes a JSON value in which some strings are references to
// text kept elsewhere. The value is marshalled as usual with a placeholder
// in each such string (a NUL, a nonce fresh for this answer, and an
// index: nothing a guest could produce without knowing the nonce), and
// each placeholder is replaced by its text, escaped as it is written.
type textStream struct {
	nonce string
	texts []func(*jsonText)
}

func newTextStream() *textStream {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return &textStream{nonce: hex.EncodeToString(b)}
}

// ref returns the placeholder of a text that write produces.
func (t *textStream) ref(write func(*jsonText)) string {
	t.texts = append(t.texts, write)
	return "\x00" + t.nonce + ":" + strconv.Itoa(len(t.texts)-1)
}

// writeJSON writes v with status, its placeholders replaced by their texts.
func (t *textStream) writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil { // a bug: every response type marshals
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": "encode response: " + err.Error(), "code": "internal"})
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	bw := bufio.NewWriterSize(w, 32<<10)
	jt := &jsonText{w: bw}
	mark := []byte(`"\u0000` + t.nonce + ":")
	for {
		i := bytes.Index(b, mark)
		if i < 0 {
			break
		}
		end := bytes.IndexByte(b[i+len(mark):], '"')
		n, err := strconv.Atoi(string(b[i+len(mark) : i+len(mark)+end]))
		if end < 0 || err != nil || n < 0 || n >= len(t.texts) {
			break // cannot happen: json.Marshal wrote what ref made
		}
		bw.Write(b[:i])
		bw.WriteByte('"')
		t.texts[n](jt)
		bw.WriteByte('"')
		b = b[i+len(mark)+end+1:]
	}
	bw.Write(b)
	bw.WriteByte('\n')
	_ = bw.Flush() // a client that left: nothing to do
}

// jsonText writes the inside of a JSON string, escaping as it goes.
type jsonText struct {
	w *bufio.Writer
}

const hexDigits = "0123456789abcdef"

// Write escapes p: quotes, backslashes, control characters, U+2028 and
// U+2029 (for JavaScript), and invalid UTF-8 as U+FFFD, as encoding/json
// does. A rune split between two calls is two invalid ones.
func (j *jsonText) Write(p []byte) (int, error) {
	w := j.w
	start := 0
	for i := 0; i < len(p); {
		c := p[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			w.Write(p[start:i])
			switch c {
			case '"', '\\':
				w.WriteByte('\\')
				w.WriteByte(c)
			case '\n':
				w.WriteString(`\n`)
			case '\r':
				w.WriteString(`\r`)
			case '\t':
				w.WriteString(`\t`)
			default:
				w.WriteString(`\u00`)
				w.WriteByte(hexDigits[c>>4])
				w.WriteByte(hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRune(p[i:])
		if r == utf8.RuneError && size == 1 {
			w.Write(p[start:i])
			w.WriteString(`\ufffd`)
			i++
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			w.Write(p[start:i])
			w.WriteString(`\u202`)
			w.WriteByte(hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	w.Write(p[start:])
	return len(p), nil
}
