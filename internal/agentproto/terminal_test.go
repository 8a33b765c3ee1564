package agentproto

import (
	"strings"
	"testing"
)

func TestTerminalSafe(t *testing.T) {
	for name, tc := range map[string]struct{ in, want string }{
		"plain":          {"hello, wörld\n\tok", "hello, wörld\n\tok"},
		"clear screen":   {"\x1b[2J\x1b[H", `\x1b[2J\x1b[H`},
		"title (OSC)":    {"\x1b]0;pwned\x07", `\x1b]0;pwned\x07`},
		"clipboard OSC":  {"\x1b]52;c;ZXZpbA==\x1b\\", `\x1b]52;c;ZXZpbA==\x1b\`},
		"C1 CSI":         {"\u009b31m", `\u009b31m`},
		"carriage ret":   {"fake\rreal", `fake\x0dreal`},
		"backspace, DEL": {"a\b\x7f", `a\x08\x7f`},
		"invalid UTF-8":  {"a\xffb", `a\xffb`},
		"bidi override":  {"abc\u202edef", `abc\u202edef`},
	} {
		t.Run(name, func(t *testing.T) {
			got := TerminalSafe(tc.in)
			if got != tc.want {
				t.Fatalf("TerminalSafe(%q) = %q, want %q", tc.in, got, tc.want)
			}
			if strings.ContainsAny(got, "\x1b\x07\r\x9b") {
				t.Fatalf("TerminalSafe(%q) = %q still holds a control character", tc.in, got)
			}
		})
	}
}

func TestTerminalWriterKeepsSplitRunes(t *testing.T) {
	var b strings.Builder
	w := NewTerminalWriter(&b)
	in := "ö\x1b[1m€"
	for i := 0; i < len(in); i++ { // one byte per write
		if _, err := w.Write([]byte{in[i]}); err != nil {
			t.Fatal(err)
		}
	}
	w.Write([]byte{0xe2}) // a sequence that never completes
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if want := `ö\x1b[1m€\xe2`; b.String() != want {
		t.Fatalf("got %q, want %q", b.String(), want)
	}
}
