package adversarial

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestServeAttacks runs the attacks on the HTTP API against one serve.
// VM boots are few: each subtest that needs a VM restores one from the
// language's snapshot.
func TestServeAttacks(t *testing.T) {
	h := newHome(t)
	ctx := context.Background()
	key := func(tenant string) string {
		out, errOut, code := h.cli(ctx, "key", "create", "--tenant", tenant)
		if code != 0 {
			t.Fatalf("key create: %d %s", code, errOut)
		}
		return strings.TrimSpace(out)
	}
	acme, beta := key("acme"), key("beta")
	s := h.start("--max-timeout", "30s")

	t.Run("slowloris", func(t *testing.T) {
		// 500 connections send headers announcing a body, and no body.
		const n = 500
		start := time.Now()
		var wg sync.WaitGroup
		var open atomic.Int64
		longest := make(chan time.Duration, n)
		for range n {
			c, err := net.Dial("tcp", s.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := fmt.Fprintf(c, "POST /v1/run HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			open.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.SetReadDeadline(time.Now().Add(2 * time.Minute))
				io.Copy(io.Discard, c) // the answer, then EOF when serve closes
				open.Add(-1)
				longest <- time.Since(start)
			}()
		}
		// /healthz keeps answering, promptly, all along.
		hc := &http.Client{Timeout: 2 * time.Second}
		for open.Load() > 0 && time.Since(start) < 70*time.Second {
			resp, err := hc.Get(s.url + "/healthz")
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("healthz with %d slow connections open: %v %v", open.Load(), resp, err)
			}
			resp.Body.Close()
			time.Sleep(500 * time.Millisecond)
		}
		wg.Wait()
		close(longest)
		var worst time.Duration
		for d := range longest {
			worst = max(worst, d)
		}
		if worst > time.Minute {
			t.Fatalf("a connection without its body stayed open %s", worst)
		}
		t.Logf("all %d connections closed within %s", n, worst.Round(time.Millisecond))
	})

	// noVM fails the test if a VM starts while fn runs: every VM has a
	// run directory of its own, named by a fresh id.
	noVM := func(t *testing.T, fn func()) {
		t.Helper()
		before := h.vmIDs()
		stop := make(chan struct{})
		var started atomic.Value
		go func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				for id := range h.vmIDs() {
					if !before[id] {
						started.Store(id)
					}
				}
				time.Sleep(5 * time.Millisecond)
			}
		}()
		fn()
		close(stop)
		for id := range h.vmIDs() {
			if !before[id] {
				started.Store(id)
			}
		}
		if id := started.Load(); id != nil {
			t.Fatalf("VM %s was started for a request that is refused", id)
		}
	}

	t.Run("oversized program", func(t *testing.T) {
		code := strings.Repeat("#", 3584<<10) // 3.5 MiB
		noVM(t, func() {
			for path, body := range map[string]string{
				"/v1/run":         `{"language":"python","code":"` + code + `"}`,
				"/api/v2/execute": `{"language":"python","version":"*","files":[{"content":"` + code + `"}]}`,
			} {
				if r := s.do("POST", path, body); r.status != 413 && r.status != 400 {
					t.Errorf("%s with a 3.5 MiB program: %d %.200s", path, r.status, r.raw)
				}
			}
		})
	})

	t.Run("browsers", func(t *testing.T) {
		run := `{"language":"python","code":"print(1)"}`
		noVM(t, func() {
			for name, c := range map[string]struct {
				hdr  []string
				want int
			}{
				"DNS rebinding":   {[]string{"Host", "attacker.example"}, 403},
				"cross-origin":    {[]string{"Origin", "http://attacker.example"}, 403},
				"text/plain CSRF": {[]string{"Content-Type", "text/plain", "Origin", s.url, "Sec-Fetch-Mode", "no-cors"}, 415},
				"cross-site":      {[]string{"Sec-Fetch-Site", "cross-site"}, 403},
			} {
				if r := s.do("POST", "/v1/run", run, c.hdr...); r.status != c.want {
					t.Errorf("%s: %d %s, want %d", name, r.status, r.raw, c.want)
				}
			}
		})
	})

	t.Run("shapes", func(t *testing.T) {
		noVM(t, func() {
			for _, body := range []string{`{"language":"python","vcpus":3,"memory_mib":777}`, `{"language":"python","memory_mib":60000}`} {
				if r := s.do("POST", "/v1/sandboxes", body, bearer(acme)...); r.status != 400 || r.body["code"] != "shape_not_allowed" {
					t.Errorf("%s: %d %s", body, r.status, r.raw)
				}
			}
		})
	})

	t.Run("piston client as it is", func(t *testing.T) {
		// piston-client posts JSON as text/plain, without an Origin.
		r := s.do("POST", "/api/v2/execute", `{"language":"python","version":"*","files":[{"content":"print(6*7)"}]}`,
			"Content-Type", "text/plain;charset=UTF-8")
		if r.status != 200 || !strings.Contains(r.raw, `"stdout":"42\n"`) {
			t.Fatalf("%d %s", r.status, r.raw)
		}
	})

	t.Run("output past the cap", func(t *testing.T) {
		r := s.do("POST", "/v1/run", `{"language":"python","code":"import sys\nsys.stdout.write('x'*(64<<20))","limits":{"output_bytes":1048576}}`)
		out, _ := r.body["stdout"].(string)
		if r.status != 200 || len(out) > 1<<20 || r.body["status"] != "OL" {
			t.Fatalf("%d, %d bytes of stdout, status %v", r.status, len(out), r.body["status"])
		}
	})

	t.Run("slow reader holds no VM", func(t *testing.T) {
		c, err := net.Dial("tcp", s.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.(*net.TCPConn).SetReadBuffer(4096)
		// 100 KB/s: it runs to its 3 s limit without reaching the output cap.
		body := `{"language":"python","code":"import time\nwhile True:\n    print('y'*1000, flush=True)\n    time.sleep(0.01)","limits":{"timeout_ms":3000}}`
		fmt.Fprintf(c, "POST /v1/run/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		// Read until the program's output flows (its VM is up), then stop.
		c.SetReadDeadline(time.Now().Add(2 * time.Minute))
		br := bufio.NewReader(c)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("no output came: %v", err)
			}
			if strings.Contains(line, `"type":"output"`) {
				break
			}
		}
		start := time.Now()
		// Never read: the program ends at its 3 s limit, and its VM with it.
		h.waitQemus(0, 3*time.Second+20*time.Second)
		if d := time.Since(start); d < 2*time.Second {
			t.Fatalf("the VM went after %s: the program did not run to its limit", d)
		}
		t.Logf("VM gone %s after it started, the client still connected and not reading", time.Since(start).Round(time.Millisecond))
	})

	var sbID string
	t.Run("tenants", func(t *testing.T) {
		r := s.do("POST", "/v1/sandboxes", `{"language":"python"}`, bearer(acme)...)
		if r.status != 201 {
			t.Fatalf("create: %d %s", r.status, r.raw)
		}
		sbID = r.body["id"].(string)
		if r := s.do("POST", "/v1/sandboxes/"+sbID+"/files", `{"files":[{"path":"secret.txt","content":"acme's"}]}`, "X-API-KEY", acme); r.status != 200 {
			t.Fatalf("upload: %d %s", r.status, r.raw)
		}
		for _, who := range [][]string{bearer(beta), {"X-Auth-Token", beta}, nil} { // another tenant, and no key (the default tenant)
			for _, c := range []struct{ method, path, body string }{
				{"GET", "/v1/sandboxes/" + sbID, ""},
				{"GET", "/v1/sandboxes/" + sbID + "/files?path=secret.txt", ""},
				{"POST", "/v1/sandboxes/" + sbID + "/exec", `{"cmd":["cat","secret.txt"]}`},
				{"POST", "/v1/sandboxes/" + sbID + "/hibernate", ""},
				{"DELETE", "/v1/sandboxes/" + sbID, ""},
			} {
				if r := s.do(c.method, c.path, c.body, who...); r.status != 404 || strings.Contains(r.raw, "acme's") {
					t.Errorf("%v: %s %s = %d %s, want 404", who, c.method, c.path, r.status, r.raw)
				}
			}
			if r := s.do("GET", "/v1/sandboxes", "", who...); strings.Contains(r.raw, sbID) {
				t.Errorf("%v lists acme's sandbox: %s", who, r.raw)
			}
		}
		if r := s.do("GET", "/v1/sandboxes/"+sbID+"/files?path=secret.txt", "", bearer(acme)...); r.raw != "acme's" {
			t.Fatalf("the owner reads %d %q", r.status, r.raw)
		}
		// Quotas, set with the CLI while serve runs: one sandbox for acme,
		// one request a second for beta.
		if _, e, code := h.cli(ctx, "key", "quota", "--tenant", "acme", "--sandboxes", "1"); code != 0 {
			t.Fatal(e)
		}
		if _, e, code := h.cli(ctx, "key", "quota", "--tenant", "beta", "--rate", "1", "--burst", "1"); code != 0 {
			t.Fatal(e)
		}
		time.Sleep(2500 * time.Millisecond) // a running serve applies quotas within 2 s
		noVM(t, func() {
			if r := s.do("POST", "/v1/sandboxes", `{"language":"python"}`, bearer(acme)...); r.status != 429 || !strings.Contains(r.raw, "1 sandboxes") {
				t.Errorf("acme's second sandbox: %d %s", r.status, r.raw)
			}
		})
		s.do("GET", "/v1/sandboxes", "", bearer(beta)...)
		if r := s.do("GET", "/v1/sandboxes", "", bearer(beta)...); r.status != 429 {
			t.Errorf("beta past its rate: %d %s", r.status, r.raw)
		}
		// A removed key stops working at once.
		if _, e, code := h.cli(ctx, "key", "rm", beta); code != 0 {
			t.Fatal(e)
		}
		if r := s.do("GET", "/v1/sandboxes", "", bearer(beta)...); r.status != 401 {
			t.Errorf("removed key: %d %s", r.status, r.raw)
		}
	})

	t.Run("delete while yes streams", func(t *testing.T) {
		if sbID == "" {
			t.Skip("no sandbox")
		}
		req, _ := http.NewRequest("POST", s.url+"/v1/sandboxes/"+sbID+"/exec/stream", strings.NewReader(`{"command":"yes"}`))
		req.Header.Set("Authorization", "Bearer "+acme)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		lines, last := 0, Event{}
		for sc.Scan() {
			var ev Event
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				t.Fatalf("line %d is not an event: %.100q", lines, sc.Text())
			}
			if lines++; lines == 20 {
				go s.do("DELETE", "/v1/sandboxes/"+sbID, "", bearer(acme)...)
			}
			last = ev
		}
		if lines < 20 || last.Type != "error" {
			t.Fatalf("%d lines, the last %+v: want the stream to end with an error event", lines, last)
		}
		if r := s.do("GET", "/healthz", ""); r.status != 200 {
			t.Fatalf("healthz after: %d", r.status)
		}
		h.waitQemus(0, 30*time.Second)
	})
}

// Event is a line of a streamed answer.
type Event struct {
	Type  string `json:"type"`
	Data  string `json:"data"`
	Error string `json:"error"`
}

// TestMountAttacks: `run --mount` with hostile names and files.
func TestMountAttacks(t *testing.T) {
	h := newHome(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	dash := filepath.Join(dir, "-e") // mksquashfs would take "-e" for an option
	sec := filepath.Join(dir, "sec")
	for _, d := range []string{dash, sec} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(p, s string, mode os.FileMode, uid int) {
		if err := os.WriteFile(p, []byte(s), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		if uid >= 0 {
			if err := os.Chown(p, uid, uid); err != nil {
				t.Skipf("needs root to chown: %v", err)
			}
		}
	}
	write(filepath.Join(dash, "hello"), "from a dash dir\n", 0o644, -1)
	// Only their owners may read these on the host: uid 1000 (the guest's
	// user has that uid) and root.
	write(filepath.Join(sec, "users-own"), "users secret\n", 0o600, 1000)
	write(filepath.Join(sec, "roots-own"), "root secret\n", 0o600, 0)

	t.Run("carriage return in the guest path", func(t *testing.T) {
		out, errOut, code := h.cli(ctx, "run", "--mount", dash+":/mnt/x\rfs.uid=0", "bash", "-c", "id -u")
		if code != 2 || out != "" || !strings.Contains(errOut, "printable ASCII") {
			t.Fatalf("exit %d, stdout %q, stderr %q: want a usage error and no run", code, out, errOut)
		}
		if h.qemus() != 0 {
			t.Fatal("a VM runs")
		}
	})

	t.Run("dash dir and owner-only files", func(t *testing.T) {
		cmd := `cat /mnt/dash/hello; id -u; cat /mnt/sec/users-own 2>/dev/null || echo denied; cat /mnt/sec/roots-own 2>/dev/null || echo denied`
		// Relative, so the host path itself starts with "-".
		t.Chdir(dir)
		out, errOut, code := h.cli(ctx, "run", "--mount", "-e:/mnt/dash", "--mount", sec+":/mnt/sec", "bash", "-c", cmd)
		if code != 0 || out != "from a dash dir\n1000\ndenied\ndenied\n" {
			t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
		}
	})
}
