package main

import (
	"strings"
	"testing"

	"github.com/firesandbox/firesandbox/internal/sandbox"
)

func TestParsePools(t *testing.T) {
	got, err := parsePools("python=2, go=0,, bash=1..4")
	if err != nil || len(got) != 3 || got["python"] != (sandbox.PoolRange{Min: 2, Max: 2}) || got["go"] != (sandbox.PoolRange{}) ||
		got["bash"] != (sandbox.PoolRange{Min: 1, Max: 4}) {
		t.Fatalf("got %v %v", got, err)
	}
	for _, bad := range []string{"python", "python=x", "=1", "python=-1", "python=4..1", "python=1..99", "python=1..x"} {
		if _, err := parsePools(bad); err == nil || !isUsage(err) {
			t.Errorf("parsePools(%q) = %v, want a usage error", bad, err)
		}
	}
}

func TestServeRefusesPublicWithoutKey(t *testing.T) {
	t.Setenv("FIRESANDBOX_API_KEY", "")
	root := newRoot()
	root.SetArgs([]string{"serve", "--listen", "0.0.0.0:0", "--data-dir", t.TempDir()})
	err := root.Execute()
	if err == nil || !isUsage(err) || !strings.Contains(err.Error(), "API key") {
		t.Fatalf("serve on 0.0.0.0 without a key: %v", err)
	}
}
