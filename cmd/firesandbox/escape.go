package main

import (
	"strconv"
	"strings"
	"unicode"
)

// escapeTerminal makes text that came from a guest safe to print: control
// characters (escape sequences among them) are shown quoted instead of
// reaching the terminal. Newlines and tabs pass.
func escapeTerminal(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r == '\n' || r == '\t' || (!unicode.IsControl(r) && r != unicode.ReplacementChar) {
			b.WriteRune(r)
			continue
		}
		q := strconv.QuoteRune(r)
		b.WriteString(q[1 : len(q)-1])
	}
	return b.String()
}
