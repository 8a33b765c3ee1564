package judge0

import (
	"testing"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/sandbox"
)

var sandboxRunOK = sandbox.RunResult{Run: &agentproto.ExitResult{WallMillis: 1}}

// TestJudgeCompare checks Judge0's comparison of stdout with
// expected_output: trailing white space of each line and of the whole
// is ignored, nothing else is.
func TestJudgeCompare(t *testing.T) {
	for _, tc := range []struct {
		name           string
		stdout, expect []byte
		same           bool
	}{
		{"equal", []byte("42\n"), []byte("42\n"), true},
		{"trailing newline", []byte("42\n"), []byte("42"), true},
		{"trailing blank lines", []byte("42\n\n\n"), []byte("42"), true},
		{"trailing spaces per line", []byte("a  \nb\t\n"), []byte("a\nb"), true},
		{"CRLF", []byte("a\r\nb\r\n"), []byte("a\nb"), true},
		{"NUL at the end", []byte("a\x00"), []byte("a"), true},
		{"leading space", []byte(" 42"), []byte("42"), false},
		{"inner blank line", []byte("a\n\nb"), []byte("a\nb"), false},
		{"different", []byte("41"), []byte("42"), false},
		{"no output, empty expected", nil, []byte(""), false},
		{"no output, blank expected", nil, []byte("\n"), false},
		{"blank output, empty expected", []byte(" \n"), []byte(""), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &capture{}
			c.stdout.Write(tc.stdout)
			res := &sandboxRunOK
			st, _ := outcome(res, c, &input{ExpectedOutput: tc.expect})
			if got := st == StatusAccepted; got != tc.same {
				t.Fatalf("status %d (%s), want same=%v", st, statusName(st), tc.same)
			}
		})
	}
}
