package network

import (
	"encoding/json"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestParseEntry(t *testing.T) {
	for name, tc := range map[string]struct {
		in      string
		prefix  string // want a prefix
		pattern string // want a name pattern
		err     string // want an error containing this
	}{
		"ipv4":             {in: "8.8.8.8", prefix: "8.8.8.8/32"},
		"ipv6":             {in: "2001:db8::1", prefix: "2001:db8::1/128"},
		"mapped ipv4":      {in: "::ffff:1.2.3.4", prefix: "1.2.3.4/32"},
		"cidr":             {in: "10.0.0.0/8", prefix: "10.0.0.0/8"},
		"mapped cidr":      {in: "::ffff:10.0.0.0/104", prefix: "10.0.0.0/8"},
		"spaces trimmed":   {in: "  1.2.3.0/24 ", prefix: "1.2.3.0/24"},
		"domain":           {in: "Example.COM.", pattern: "example.com"},
		"wildcard":         {in: "*.example.com", pattern: "*.example.com"},
		"underscore":       {in: "_dmarc.example.com", pattern: "_dmarc.example.com"},
		"single label":     {in: "test", pattern: "test"},
		"host bits":        {in: "10.1.2.3/8", err: "host bits set: the network is 10.0.0.0/8"},
		"bad cidr":         {in: "10.0.0.0/33", err: "not a valid CIDR"},
		"cidr zone":        {in: "fe80::%eth0/64", err: "not a valid CIDR"},
		"addr zone":        {in: "fe80::1%eth0", err: "zone"},
		"empty":            {in: "  ", err: "empty entry"},
		"inner star":       {in: "a.*.example.com", err: "only allowed as the first label"},
		"bare star":        {in: "*", err: "only allowed as the first label"},
		"star no dot":      {in: "*example.com", err: "only allowed as the first label"},
		"numeric":          {in: "1.2.3.256", err: "all-numeric"},
		"leading zero ip":  {in: "01.2.3.4", err: "all-numeric"},
		"unicode":          {in: "bücher.de", err: "punycode"},
		"empty label":      {in: "a..b", err: "empty label"},
		"dash":             {in: "-a.example.com", err: "starts or ends with '-'"},
		"long label":       {in: strings.Repeat("a", 64) + ".com", err: "label longer than 63"},
		"long name":        {in: strings.Repeat("a.", 127) + "ab", err: "longer than 253"},
		"too long":         {in: strings.Repeat("a", 300), err: "too long"},
		"url":              {in: "https://example.com", err: "not a valid CIDR"},
		"port":             {in: "example.com:443", err: "not allowed in a name"},
		"bracketed v6":     {in: "[::1]", err: "not allowed in a name"},
		"space inside":     {in: "exa mple.com", err: "not allowed in a name"},
		"wildcard of bad":  {in: "*.-x.com", err: "starts or ends with '-'"},
		"wildcard nothing": {in: "*.", err: "empty name"},
	} {
		t.Run(name, func(t *testing.T) {
			e, err := parseEntry(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("parseEntry(%q) = %+v, %v; want error containing %q", tc.in, e, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseEntry(%q): %v", tc.in, err)
			}
			if tc.prefix != "" && (e.isName || e.prefix.String() != tc.prefix) {
				t.Fatalf("parseEntry(%q) = %+v, want prefix %s", tc.in, e, tc.prefix)
			}
			if tc.pattern != "" && (!e.isName || e.name.String() != tc.pattern) {
				t.Fatalf("parseEntry(%q) = %+v, want pattern %s", tc.in, e, tc.pattern)
			}
		})
	}
}

func TestValidateErrorsNameTheEntry(t *testing.T) {
	err := Policy{AllowOut: []string{"example.com", "10.0.0.1/8"}}.Validate()
	if !errors.Is(err, ErrInvalidPolicy) || !strings.Contains(err.Error(), "allow_out[1]") || !strings.Contains(err.Error(), "10.0.0.0/8") {
		t.Fatalf("Validate = %v", err)
	}
	err = Policy{AllowOut: []string{"*"}, DenyOut: []string{"x..y"}}.Validate()
	if !errors.Is(err, ErrInvalidPolicy) || !strings.Contains(err.Error(), "allow_out[0]") {
		t.Fatalf("Validate = %v", err)
	}
	many := make([]string, MaxEntries+1)
	for i := range many {
		many[i] = "example.com"
	}
	if err := (Policy{DenyOut: many}).Validate(); !errors.Is(err, ErrInvalidPolicy) || !strings.Contains(err.Error(), "at most 256") {
		t.Fatalf("Validate(long) = %v", err)
	}
	if err := (Policy{}).Validate(); err != nil {
		t.Fatalf("empty policy: %v", err)
	}
}

func TestCheckIP(t *testing.T) {
	host := netip.MustParseAddr("192.0.2.2")
	env := &Env{HostAddrs: []netip.Addr{host}, Reserved: mustPrefixes("10.0.2.0/24", "10.200.0.0/16")}
	type check struct {
		ip    string
		allow bool
	}
	for name, tc := range map[string]struct {
		p      Policy
		checks []check
	}{
		"default denies everything": {Policy{}, []check{{"8.8.8.8", false}, {"1.1.1.1", false}}},
		"internet": {Policy{AllowOut: []string{"0.0.0.0/0"}}, []check{
			{"8.8.8.8", true}, {"203.0.113.9", true},
			{"169.254.169.254", false}, {"10.1.2.3", false}, {"172.16.0.1", false}, {"192.168.1.1", false},
			{"100.100.100.200", false}, {"127.0.0.1", false}, {"0.0.0.0", false}, {"224.0.0.1", false},
			{"255.255.255.255", false}, {"192.0.2.2", false}, {"10.0.2.2", false}, {"10.200.0.1", false},
			{"::ffff:10.1.2.3", false}, {"::ffff:8.8.8.8", true},
		}},
		"deny wins": {Policy{AllowOut: []string{"0.0.0.0/0"}, DenyOut: []string{"8.8.0.0/16"}}, []check{
			{"8.8.8.8", false}, {"8.9.0.1", true},
		}},
		"deny wins over explicit": {Policy{AllowOut: []string{"8.8.8.8"}, DenyOut: []string{"8.0.0.0/8"}}, []check{
			{"8.8.8.8", false},
		}},
		"explicit private": {Policy{AllowOut: []string{"0.0.0.0/0", "10.1.0.0/16", "169.254.169.254"}}, []check{
			{"10.1.2.3", true}, {"10.2.0.1", false}, {"169.254.169.254", true}, {"169.254.1.1", false},
		}},
		"broad private does not open inner special": {Policy{AllowOut: []string{"172.0.0.0/8"}}, []check{
			{"172.1.2.3", true}, {"172.16.0.1", false},
		}},
		"private range as a whole": {Policy{AllowOut: []string{"10.0.0.0/8"}}, []check{
			{"10.9.9.9", true}, {"10.0.2.2", false}, {"10.200.3.4", false},
		}},
		"host only as /32": {Policy{AllowOut: []string{"192.0.2.0/24"}}, []check{
			{"192.0.2.1", true}, {"192.0.2.2", false},
		}},
		"host as /32": {Policy{AllowOut: []string{"0.0.0.0/0", "192.0.2.2"}}, []check{{"192.0.2.2", true}}},
		"narrow":      {Policy{AllowOut: []string{"203.0.113.10/32"}}, []check{{"203.0.113.10", true}, {"203.0.113.11", false}}},
		"ipv6":        {Policy{AllowOut: []string{"2001:db8::/32"}}, []check{{"2001:db8::1", true}, {"fe80::1", false}, {"2001:db9::1", false}}},
	} {
		t.Run(name, func(t *testing.T) {
			r, err := tc.p.Compile()
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range tc.checks {
				if v := r.CheckIP(netip.MustParseAddr(c.ip), env); v.Allowed != c.allow {
					t.Errorf("CheckIP(%s) = %+v, want allowed=%v", c.ip, v, c.allow)
				}
			}
		})
	}
}

func TestCheckNameAndResolvable(t *testing.T) {
	r, err := Policy{AllowOut: []string{"allowed.test", "*.pypi.org"}, DenyOut: []string{"bad.pypi.org", "*.evil.pypi.org"}}.Compile()
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]bool{
		"allowed.test": true, "ALLOWED.test.": true, "www.allowed.test": false, "denied.test": false,
		"files.pypi.org": true, "a.b.pypi.org": true, "pypi.org": false, "xpypi.org": false,
		"bad.pypi.org": false, "x.evil.pypi.org": false, "evil.pypi.org": true, "": false, "a..b": false,
	} {
		if v := r.CheckName(name); v.Allowed != want {
			t.Errorf("CheckName(%q) = %+v, want %v", name, v, want)
		}
		if v := r.resolvable(name); v.Allowed != want {
			t.Errorf("resolvable(%q) = %+v, want %v (no broad CIDR, so no public DNS)", name, v, want)
		}
	}
	internet, _ := Policy{AllowOut: []string{"0.0.0.0/0"}, DenyOut: []string{"denied.test"}}.Compile()
	if !internet.resolvable("anything.example").Allowed || internet.resolvable("denied.test").Allowed {
		t.Error("with 0.0.0.0/0 every name but the denied ones resolves")
	}
	narrow, _ := Policy{AllowOut: []string{"1.2.3.4"}}.Compile()
	if narrow.resolvable("leak-this-secret.attacker.example").Allowed {
		t.Error("a narrow CIDR policy must not forward queries for arbitrary names")
	}
}

func TestCanonicalPolicyRoundTrips(t *testing.T) {
	p := Policy{AllowOut: []string{"Example.com", "0.0.0.0/0", "10.1.0.0/16", "example.com.", "8.8.8.8/32"}, DenyOut: []string{"*.Bad.test"}}
	r, err := p.Compile()
	if err != nil {
		t.Fatal(err)
	}
	c := r.Policy()
	want := Policy{AllowOut: []string{"0.0.0.0/0", "8.8.8.8", "10.1.0.0/16", "example.com"}, DenyOut: []string{"*.bad.test"}}
	if !slices.Equal(c.AllowOut, want.AllowOut) || !slices.Equal(c.DenyOut, want.DenyOut) {
		t.Fatalf("canonical = %+v, want %+v", c, want)
	}
	r2, err := c.Compile()
	if err != nil {
		t.Fatal(err)
	}
	if v := r2.CheckIP(netip.MustParseAddr("10.1.0.9"), nil); !v.Allowed {
		t.Fatal("the canonical form lost the explicit private entry")
	}
}

func TestSubtract(t *testing.T) {
	got := subtract(mustPrefixes("0.0.0.0/0"), mustPrefixes("128.0.0.0/1", "0.0.0.0/2", "64.0.0.1/32"))
	var s []string
	for _, p := range got {
		s = append(s, p.String())
	}
	// 64.0.0.0/2 minus 64.0.0.1: 64.0.0.0/32 then 64.0.0.2/31, 64.0.0.4/30 ... 96.0.0.0/3.
	if len(s) != 30 || s[0] != "64.0.0.0/32" || s[1] != "64.0.0.2/31" || s[len(s)-1] != "96.0.0.0/3" {
		t.Fatalf("subtract = %v", s)
	}
	if n := len(subtract(mustPrefixes("0.0.0.0/0"), mustPrefixes("0.0.0.0/0"))); n != 0 {
		t.Fatalf("everything minus everything left %d prefixes", n)
	}
	if got := subtract(mustPrefixes("0.0.0.0/0"), nil); len(got) != 1 || got[0].String() != "0.0.0.0/0" {
		t.Fatalf("subtract nothing = %v", got)
	}
}

func TestFromE2B(t *testing.T) {
	yes, no := true, false
	env := &Env{}
	for name, tc := range map[string]struct {
		internet *bool
		nw       *E2BNetwork
		err      string
		allow    []string // addresses or names allowed
		deny     []string // addresses or names denied
	}{
		"default is internet":  {nil, nil, "", []string{"8.8.8.8", "any.example"}, []string{"10.0.0.1", "169.254.169.254"}},
		"no internet":          {&no, nil, "", nil, []string{"8.8.8.8", "any.example"}},
		"internet minus a net": {&yes, &E2BNetwork{DenyOut: []string{"8.8.8.0/24"}}, "", []string{"8.8.9.1", "1.1.1.1", "any.example"}, []string{"8.8.8.8", "10.1.1.1"}},
		"only listed (the SDK's allow-list form)": {&yes, &E2BNetwork{AllowOut: []string{"pypi.org", "1.1.1.1"}, DenyOut: []string{"0.0.0.0/0"}}, "",
			[]string{"pypi.org", "1.1.1.1"}, []string{"8.8.8.8", "github.com"}},
		"allow wins in E2B":                       {&yes, &E2BNetwork{AllowOut: []string{"8.8.8.8"}, DenyOut: []string{"8.0.0.0/8"}}, "", []string{"8.8.8.8"}, []string{"8.8.4.4"}},
		"offline with a domain":                   {&no, &E2BNetwork{AllowOut: []string{"api.example.com"}}, "", []string{"api.example.com"}, []string{"8.8.8.8"}},
		"deny minus special keeps special denied": {&yes, &E2BNetwork{DenyOut: []string{"10.0.0.1"}}, "", []string{"8.8.8.8"}, []string{"10.0.0.2", "10.0.0.1"}},
		"domain in denyOut":                       {&yes, &E2BNetwork{DenyOut: []string{"example.com"}}, "IPs and CIDRs only", nil, nil},
		"bad allowOut":                            {&yes, &E2BNetwork{AllowOut: []string{"a..b"}}, "network.allowOut[0]", nil, nil},
		"rules":                                   {&yes, &E2BNetwork{Rules: map[string]json.RawMessage{"x": json.RawMessage("[]")}}, "not supported", nil, nil},
	} {
		t.Run(name, func(t *testing.T) {
			p, err := FromE2B(tc.internet, tc.nw)
			if tc.err != "" {
				if !errors.Is(err, ErrInvalidPolicy) || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("FromE2B = %v, want error with %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			r, err := p.Compile()
			if err != nil {
				t.Fatal(err)
			}
			allowed := func(x string) bool {
				if a, err := netip.ParseAddr(x); err == nil {
					return r.CheckIP(a, env).Allowed
				}
				return r.resolvable(x).Allowed
			}
			for _, x := range tc.allow {
				if !allowed(x) {
					t.Errorf("%s should be allowed by %+v", x, p)
				}
			}
			for _, x := range tc.deny {
				if allowed(x) {
					t.Errorf("%s should be denied by %+v", x, p)
				}
			}
		})
	}
}
