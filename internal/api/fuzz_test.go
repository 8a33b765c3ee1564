package api

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"path"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/sandbox"
)

// The fuzz targets below run for a bounded time with `make fuzz`; their
// seed corpora are in testdata/fuzz.

// FuzzRunRequest decodes /v1/run bodies: never a panic, and whatever is
// accepted is within every bound a VM would otherwise meet.
func FuzzRunRequest(f *testing.F) {
	fs := newFakeServer(f, Config{}, sandbox.ServiceConfig{})
	for _, s := range []string{
		`{"language":"python","code":"print(1)"}`,
		`{"language":"python","files":[{"path":"a/b.py","content":"eA==","encoding":"base64"}],"args":["1"],"stdin":"x"}`,
		`{"language":"python","code":"1","limits":{"timeout_ms":1000,"memory_bytes":1048576,"output_bytes":10,"procs":3}}`,
		`{"language":"py","version":"*","files":[{"path":"","content":""}]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r := httptest.NewRequest("POST", "/v1/run", nil)
		r.Body = &heldBody{Reader: bytes.NewReader(body), b: body}
		req, e, _, err := fs.srv.parseRun(r)
		if err != nil {
			if st, _ := statusOf(err); st >= 500 {
				t.Fatalf("a request body made a %d: %v", st, err)
			}
			return
		}
		if e == nil || len(req.Files) == 0 || len(req.Files) > sandbox.MaxRunFiles+1 {
			t.Fatalf("accepted %d files (entry %v)", len(req.Files), e)
		}
		for i, f := range req.Files {
			if i > 0 || f.Path != "" {
				if err := agentproto.ValidateRelPath(f.Path); err != nil {
					t.Fatalf("accepted file path %q: %v", f.Path, err)
				}
			}
		}
		if err := runFits(req, e); err != nil {
			t.Fatalf("accepted a request that does not fit: %v", err)
		}
		if req.RunLimits.WallMillis > fs.srv.cfg.MaxTimeout.Milliseconds() || req.RunLimits.OutputBytes > fs.srv.cfg.MaxOutput {
			t.Fatalf("limits past the server's: %+v", req.RunLimits)
		}
	})
}

// FuzzPistonExecute decodes Piston bodies the way /api/v2/execute does.
func FuzzPistonExecute(f *testing.F) {
	fs := newFakeServer(f, Config{}, sandbox.ServiceConfig{})
	for _, s := range []string{
		`{"language":"python","version":"*","files":[{"content":"print(1)"}]}`,
		`{"language":"python","version":"3.x","files":[{"name":"m.py","content":"1"},{"content":"eA==","encoding":"base64"}],"args":[1,"a",true],"stdin":"x","run_timeout":100,"run_memory_limit":-1}`,
		`{"language":"python","version":"*","files":[{"content":"1"}],"compile_timeout":"x"}`,
		`null`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r := httptest.NewRequest("POST", "/api/v2/execute", nil)
		r.Body = &heldBody{Reader: bytes.NewReader(body), b: body}
		var m map[string]json.RawMessage
		if err := decodeJSON(r, &m, false); err != nil {
			return
		}
		if m == nil {
			m = map[string]json.RawMessage{}
		}
		req, e, err := fs.srv.parseExecute(m)
		if err != nil {
			if st, _ := statusOf(err); st >= 500 {
				t.Fatalf("a request body made a %d: %v", st, err)
			}
			return
		}
		for i, f := range req.Files {
			if i > 0 || f.Path != "" {
				if err := agentproto.ValidateRelPath(f.Path); err != nil {
					t.Fatalf("accepted file path %q: %v", f.Path, err)
				}
			}
		}
		if err := runFits(req, e); err != nil {
			t.Fatalf("accepted a request that does not fit: %v", err)
		}
	})
}

// FuzzPaths: a file path that is accepted stays below its directory, and
// a mount's guest path that is accepted is one word on a kernel command
// line (so it cannot add arguments) and one entry of fs.mounts.
func FuzzPaths(f *testing.F) {
	for _, s := range []string{"a/b", "../x", "/etc/passwd", "a/./b", "/mnt/x\rfs.uid=0", "/data", "/mnt/a\u00a0fs.uid=0", "/a,b@c", "/tmp/x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		if agentproto.ValidateRelPath(p) == nil {
			if path.IsAbs(p) || path.Clean(p) != p || strings.IndexByte(p, 0) >= 0 || !strings.HasPrefix(path.Join("/base", p), "/base/") {
				t.Fatalf("file path %q accepted, and it leaves its directory", p)
			}
		}
		if agentproto.ValidateMountDir(p) == nil && !strings.HasPrefix(p+"/", "/tmp/") {
			arg := "fs.mounts=vdb@" + p
			if f := strings.Fields(arg); len(f) != 1 || f[0] != arg || strings.ContainsAny(p, ",\"") || !utf8.ValidString(p) {
				t.Fatalf("guest path %q accepted, and it splits the command line into %q", p, f)
			}
			// And the agent reads back exactly this one mount.
			b, err := agentproto.ParseBoot("fs.channel=vsock:1 fs.root=r " + arg)
			if err != nil || len(b.Mounts) != 1 || b.Mounts[0].Disk != "vdb" || b.Mounts[0].Dir != p {
				t.Fatalf("guest path %q accepted, and the agent reads %+v (%v)", p, b.Mounts, err)
			}
			for _, sys := range []string{"/proc", "/sys", "/dev"} {
				if p == sys || strings.HasPrefix(p, sys+"/") {
					t.Fatalf("reserved guest path %q accepted", p)
				}
			}
		}
	})
}

// FuzzJSONText: output streamed into a JSON answer decodes to what
// encoding/json would have made of it.
func FuzzJSONText(f *testing.F) {
	for _, s := range []string{"plain", "a\"b\\c\n\r\t", "\x00\x1f\x7f", "é€😀", "\xff\xfe", "\u2028\u2029", "<>&", "\xe2\x82"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var out bytes.Buffer
		bw := bufio.NewWriter(&out)
		bw.WriteByte('"')
		(&jsonText{w: bw}).Write(b)
		bw.WriteByte('"')
		bw.Flush()
		var got string
		if err := json.Unmarshal(out.Bytes(), &got); err != nil {
			t.Fatalf("%q encoded as invalid JSON %q: %v", b, out.Bytes(), err)
		}
		want, _ := json.Marshal(string(b))
		var w string
		json.Unmarshal(want, &w)
		if got != w {
			t.Fatalf("%q decoded as %q, encoding/json gives %q", b, got, w)
		}
	})
}

// FuzzBrowserGuard: whatever the Host and Origin, the guard does not
// panic, and what it lets through names a loopback server and, if it has
// an Origin, one of its own pages.
func FuzzBrowserGuard(f *testing.F) {
	s := &Server{cfg: Config{Listen: DefaultListen}}
	for _, c := range [][2]string{{"127.0.0.1:7070", ""}, {"evil.example", "http://evil.example"}, {"[::1]:1", "http://[::1]:1"},
		{"localhost.:7070", "http://LOCALHOST.:7070"}, {"127.0.0.1:7070", "null"}, {"127.1", "http://127.1"}} {
		f.Add(c[0], c[1])
	}
	f.Fuzz(func(t *testing.T, host, origin string) {
		r := httptest.NewRequest("GET", "/v1/languages", nil)
		r.Host = host
		if origin != "" {
			r.Header.Set("Origin", origin)
		}
		if s.guardBrowser(r) != nil {
			return
		}
		if h := hostOnly(host); !IsLoopback(h) && h != "127.0.0.1" {
			t.Fatalf("Host %q passed", host)
		}
		if origin != "" {
			o, err := parseOrigin(origin)
			if err != nil || !IsLoopback(hostOnly(o.Host)) {
				t.Fatalf("Origin %q passed for Host %q", origin, host)
			}
		}
	})
}
