package agentproto

import (
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// TerminalSafe returns guest text in a form that cannot drive a terminal:
// escape sequences (ESC, CSI, OSC: cursor moves, title changes, clipboard
// writes, hyperlinks), other C0 and C1 controls, DEL and invalid UTF-8 are
// shown as visible escapes (\x1b, \u009b, \xff). Newlines and tabs pass.
// Use it for everything the CLI prints that came from a guest: messages,
// file names, and program output written to a terminal.
func TerminalSafe(s string) string {
	var b strings.Builder
	appendTerminalSafe(&b, s, true)
	return b.String()
}

func appendTerminalSafe(b *strings.Builder, s string, final bool) int {
	i := 0
	for i < len(s) {
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n <= 1 {
			if !final && !utf8.FullRuneInString(s[i:]) {
				return i // an incomplete sequence at the end: wait for the rest
			}
			fmt.Fprintf(b, `\x%02x`, s[i])
			i++
			continue
		}
		switch {
		case r == '\n' || r == '\t':
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(b, `\x%02x`, r)
		case r >= 0x80 && r < 0xa0, r == 0x2028, r == 0x2029, r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069:
			fmt.Fprintf(b, `\u%04x`, r) // C1 controls, line separators, bidi overrides
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return i
}

// TerminalWriter escapes what is written to it as TerminalSafe does, for
// streamed output: a UTF-8 sequence split across writes is kept whole.
type TerminalWriter struct {
	w    io.Writer
	tail []byte
}

// NewTerminalWriter returns a TerminalWriter writing to w.
func NewTerminalWriter(w io.Writer) *TerminalWriter { return &TerminalWriter{w: w} }

// Write escapes p and writes it; it reports len(p) on success.
func (t *TerminalWriter) Write(p []byte) (int, error) {
	s := string(append(t.tail, p...))
	var b strings.Builder
	n := appendTerminalSafe(&b, s, false)
	t.tail = append(t.tail[:0], s[n:]...)
	if _, err := io.WriteString(t.w, b.String()); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Flush writes what an unfinished UTF-8 sequence held back.
func (t *TerminalWriter) Flush() error {
	if len(t.tail) == 0 {
		return nil
	}
	s := TerminalSafe(string(t.tail))
	t.tail = t.tail[:0]
	_, err := io.WriteString(t.w, s)
	return err
}
