package network

import (
	"net/netip"
	"strings"
	"testing"
)

// FuzzPolicy feeds arbitrary entries to the parser: it must never panic,
// every accepted policy must compile to the same thing again from its
// canonical form, and no accepted policy may open the metadata address
// unless an entry names a range inside link-local.
func FuzzPolicy(f *testing.F) {
	for _, s := range []string{
		"8.8.8.8", "10.0.0.0/8", "*.example.com", "example.com.", "::ffff:1.2.3.4", "fe80::1%eth0",
		"0.0.0.0/0", "169.254.169.254", "a..b", "*", "1.2.3.256", "bücher.de", "::ffff:10.0.0.0/104", "",
	} {
		f.Add(s, "0.0.0.0/0")
	}
	meta := netip.MustParseAddr("169.254.169.254")
	f.Fuzz(func(t *testing.T, a, b string) {
		p := Policy{AllowOut: strings.Split(a, ","), DenyOut: strings.Split(b, ",")}
		r, err := p.Compile()
		if err != nil {
			return
		}
		again, err := r.Policy().Compile()
		if err != nil {
			t.Fatalf("canonical form %+v of %+v does not compile: %v", r.Policy(), p, err)
		}
		c1, c2 := r.Policy(), again.Policy()
		if strings.Join(c1.AllowOut, ",") != strings.Join(c2.AllowOut, ",") || strings.Join(c1.DenyOut, ",") != strings.Join(c2.DenyOut, ",") {
			t.Fatalf("canonical form is not stable: %+v then %+v", c1, c2)
		}
		if r.CheckIP(meta, nil).Allowed {
			opened := false
			for _, s := range c1.AllowOut {
				if e, err := parseEntry(s); err == nil && !e.isName && inside(e.prefix, netip.MustParsePrefix("169.254.0.0/16")) {
					opened = true
				}
			}
			if !opened {
				t.Fatalf("%+v opens the metadata address without naming it", p)
			}
		}
		for _, n := range []string{"example.com", "x.example.com", "169.254.169.254"} {
			_ = r.CheckName(n)
			_ = r.resolvable(n)
		}
	})
}

// FuzzParseFirst feeds arbitrary first bytes of a connection to the
// SNI/Host parser: it must never panic, and it must finish (done) once it
// has maxPeek bytes, so a client cannot hold the filter forever.
func FuzzParseFirst(f *testing.F) {
	f.Add([]byte("GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n"))
	f.Add([]byte("\x16\x03\x01\x00\x05hello"))
	f.Add([]byte("POS"))
	f.Add([]byte("SSH-2.0-x\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) == 0 {
			return
		}
		_, _ = parseFirst(b)
	})
}
