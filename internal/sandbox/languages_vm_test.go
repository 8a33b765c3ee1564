package sandbox

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
)

// RepresentativeLanguages are the languages whose images `make test`
// builds and whose test programs it runs in real VMs: an interpreter with
// a prewarmed runtime, a shell, a compiled language, a JIT runtime.
// `make test-languages` covers the whole catalog.
var RepresentativeLanguages = []string{"python", "bash", "c", "nodejs"}

func TestRepresentativeLanguages(t *testing.T) {
	m, _ := newTestManager(t)
	defer noLeftovers(t, m)
	for _, name := range RepresentativeLanguages {
		t.Run(name, func(t *testing.T) {
			e, err := m.catalog.Lookup(name, "")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := m.images.ForEntry(e, m.cfg.ImageFormat); err != nil {
				t.Fatalf("%v (make test builds it: make test-images)", err)
			}
			var out, errb, cout bytes.Buffer
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			res, err := m.Run(ctx, RunRequest{Language: name, Cold: true, Args: e.Test.Args, Stdin: []byte(e.Test.Stdin),
				Files: []agentproto.File{{Content: []byte(e.Test.Code)}}},
				Streams{Stdout: &out, Stderr: &errb, CompileStdout: &cout, CompileStderr: &cout})
			if err != nil {
				t.Fatal(err)
			}
			if res.Run == nil {
				t.Fatalf("compilation failed: %+v\n%s", res.Compile, cout.String())
			}
			if out.String() != e.Test.Stdout || res.Run.Status != agentproto.StatusOK {
				t.Fatalf("stdout %q, want %q; status %q; stderr %q", out.String(), e.Test.Stdout, res.Run.Status, errb.String())
			}
		})
	}
}
