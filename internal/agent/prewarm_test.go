package agent

import (
	"os"
	"strings"
	"testing"

	"github.com/firesandbox/firesandbox/internal/agentproto"
)

// forkServer is python's prewarmed runtime, from its catalog entry.
func forkServer(t *testing.T) []byte {
	t.Helper()
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		t.Skip("needs /usr/bin/python3")
	}
	b, err := os.ReadFile("../../languages/python.toml")
	if err != nil {
		t.Fatal(err)
	}
	_, code, ok := strings.Cut(string(b), "code = '''")
	code, _, ok2 := strings.Cut(code, "'''")
	if !ok || !ok2 {
		t.Fatal("no prewarm code in python.toml")
	}
	return []byte(code)
}

// Back-to-back prewarmed execs both use the runtime: an exec releases it
// before its exit goes out (else the next exec, sent at once, finds it
// busy and silently runs cold). The runtime runs confined, and so do the
// processes it forks.
func TestPrewarmedExecsBackToBack(t *testing.T) {
	code := forkServer(t)
	c := startAgent(t, Config{Confine: true})
	dir := t.TempDir()
	if err := c.Prewarm(ctx10(t), agentproto.PrewarmRequest{
		Argv: []string{"/usr/bin/python3", dir + "/forkserver.py"}, Dir: dir,
		Files: []agentproto.File{{Path: "forkserver.py", Content: code}},
	}); err != nil {
		t.Fatal(err)
	}
	prog := "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('NoNewPrivs')][0])"
	for i := range 5 {
		r := run(t, c, agentproto.ExecRequest{Argv: []string{"python3", "main.py"}, Dir: dir, Prewarmed: true,
			Files: []agentproto.File{{Path: "main.py", Content: []byte(prog)}}})
		if !r.Prewarmed || r.stdout != "1\n" {
			t.Fatalf("exec %d: prewarmed %v, stdout %q (stderr %q)", i, r.Prewarmed, r.stdout, r.stderr)
		}
	}
}
