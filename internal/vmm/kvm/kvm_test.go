package kvm

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestOpenRefusesWhatIsNotKVM(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "kvm")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct{ path, want string }{
		"missing":      {filepath.Join(dir, "nope"), "no such file"},
		"regular file": {file, "not a character device"},
		"other device": {"/dev/null", "KVM_GET_API_VERSION"},
	} {
		t.Run(name, func(t *testing.T) {
			err := open(tc.path)
			if !errors.Is(err, ErrUnusable) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("open(%s) = %v; want ErrUnusable mentioning %q", tc.path, err, tc.want)
			}
		})
	}
}
