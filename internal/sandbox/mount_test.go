package sandbox

import (
	"errors"
	"testing"
)

// A guest path with a carriage return split the kernel command line and
// injected an argument of its own; every control character, blank and
// separator is refused now, before a VM is taken.
func TestParseMountRefusesInjection(t *testing.T) {
	host := t.TempDir()
	for _, guest := range []string{"/data\rfs.uid=1", "/data\nx", "/data\vx", "/data\fx", "/data\x1b", "/a b", "/a,b", "/dätä", "relative", "/proc/x", "/tmp/x"} {
		if _, err := ParseMount(host + ":" + guest); !errors.Is(err, ErrBadRequest) {
			t.Errorf("guest path %q: %v, want ErrBadRequest", guest, err)
		}
	}
	if m, err := ParseMount(host + ":/opt/data-1.2"); err != nil || m.GuestDir != "/opt/data-1.2" {
		t.Fatalf("a good mount: %+v, %v", m, err)
	}
}
