package api

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/sandbox"
)

// TestBrowserGuard: without a key, requests a web page could make through
// the user's browser are refused; other clients, Piston's included, pass.
func TestBrowserGuard(t *testing.T) {
	fs := newFakeServer(t, Config{AllowedOrigins: []string{"http://localhost:3000"}}, sandbox.ServiceConfig{})
	port := fs.url[strings.LastIndex(fs.url, ":")+1:]
	run := `{"language":"python","code":"print 1"}`
	piston := `{"language":"python","version":"*","files":[{"content":"print 1"}]}`
	for name, c := range map[string]struct {
		method, path, body string
		hdr                []string
		want               int
	}{
		"rebinding GET":         {"GET", "/v1/sandboxes", "", []string{"Host", "evil.example:" + port}, 403},
		"rebinding POST":        {"POST", "/v1/run", run, []string{"Host", "evil.example"}, 403},
		"cross-origin page":     {"POST", "/v1/run", run, []string{"Origin", "http://evil.example"}, 403},
		"opaque origin":         {"POST", "/v1/run", run, []string{"Origin", "null"}, 403},
		"other port":            {"POST", "/v1/run", run, []string{"Origin", "http://127.0.0.1:1"}, 403},
		"websocket from a page": {"GET", "/api/v2/connect", "", []string{"Origin", "https://evil.example", "Upgrade", "websocket"}, 403},
		"cross-site, no origin": {"POST", "/v1/run", run, []string{"Sec-Fetch-Site", "cross-site"}, 403},
		"text/plain CSRF":       {"POST", "/api/v2/execute", piston, []string{"Content-Type", "text/plain", "Origin", fs.url, "Sec-Fetch-Mode", "no-cors"}, 415},
		"form CSRF":             {"POST", "/v1/sandboxes", `{"language":"python"}`, []string{"Content-Type", "application/x-www-form-urlencoded", "Sec-Fetch-Site", "same-origin"}, 415},
		"own page, JSON":        {"POST", "/v1/run", run, []string{"Origin", fs.url, "Sec-Fetch-Site", "same-origin"}, 200},
		"allowed origin":        {"POST", "/v1/run", run, []string{"Origin", "http://localhost:3000"}, 200},
		"piston-client":         {"POST", "/api/v2/execute", piston, []string{"Content-Type", "text/plain;charset=UTF-8", "User-Agent", "node-fetch"}, 200},
		"curl":                  {"POST", "/v1/run", run, nil, 200},
		"localhost by name":     {"GET", "/v1/languages", "", []string{"Host", "localhost:" + port}, 200},
		"IPv6 loopback":         {"GET", "/v1/languages", "", []string{"Host", "[::1]:" + port}, 200},
	} {
		t.Run(name, func(t *testing.T) {
			req, _ := http.NewRequest(c.method, fs.url+c.path, strings.NewReader(c.body))
			if c.body != "" {
				req.Header.Set("Content-Type", "application/json")
			}
			for i := 0; i+1 < len(c.hdr); i += 2 {
				if c.hdr[i] == "Host" {
					req.Host = c.hdr[i+1]
				} else {
					req.Header.Set(c.hdr[i], c.hdr[i+1])
				}
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != c.want {
				t.Fatalf("%d %s, want %d", resp.StatusCode, b, c.want)
			}
		})
	}
	if n := fs.drv.Restores.Load(); n != 4 {
		t.Errorf("%d VMs restored for the 4 runs that passed", n)
	}
}

// TestGuardSkipsKeyedRequests: a request with a valid key needs no
// browser guard (a page cannot send the key); the unix socket neither.
func TestGuardSkipsKeyedRequests(t *testing.T) {
	fs := newFakeServer(t, Config{APIKey: "k"}, sandbox.ServiceConfig{})
	a := call(t, fs.url, "GET", "/v1/languages", "", "Authorization", "Bearer k", "Origin", "https://app.example")
	if a.status != 200 {
		t.Fatalf("keyed request from a page: %d %s", a.status, a.raw)
	}
}

// TestRequestsCheckedBeforeAVM: too large, too many files or arguments,
// and a program that cannot fit one agent request are refused before a
// VM is taken.
func TestRequestsCheckedBeforeAVM(t *testing.T) {
	fs := newFakeServer(t, Config{MaxBody: 8 << 20}, sandbox.ServiceConfig{})
	big := strings.Repeat("x", 3584<<10) // 3.5 MiB
	files := make([]string, 70)
	for i := range files {
		files[i] = fmt.Sprintf(`{"path":"f%d","content":"1"}`, i)
	}
	args := strings.Repeat(`"a",`, 5000)
	for name, c := range map[string]struct {
		path, body string
		want       int
	}{
		"3.5 MiB program":          {"/v1/run", `{"language":"python","code":"` + big + `"}`, 413},
		"3.5 MiB piston program":   {"/api/v2/execute", `{"language":"python","version":"*","files":[{"content":"` + big + `"}]}`, 413},
		"3.5 MiB stdin":            {"/v1/run", `{"language":"python","code":"print 1","stdin":"` + big + `"}`, 413},
		"70 files":                 {"/v1/run", `{"language":"python","files":[` + strings.Join(files, ",") + `]}`, 400},
		"5000 arguments":           {"/v1/run", `{"language":"python","code":"print 1","args":[` + args + `"a"]}`, 400},
		"over max body":            {"/v1/run", `{"language":"python","code":"` + strings.Repeat("x", 9<<20) + `"}`, 413},
		"3.5 MiB exec stdin":       {"/v1/sandboxes/sb-x/exec", `{"cmd":["print"],"stdin":"` + big + `"}`, 413},
		"5000 exec arguments":      {"/v1/sandboxes/sb-x/exec", `{"cmd":[` + args + `"a"]}`, 400},
		"3 MiB program still fits": {"/v1/run", `{"language":"python","code":"print ` + big[:3<<20-4096] + `"}`, 200},
	} {
		t.Run(name, func(t *testing.T) {
			before := fs.drv.Boots.Load() + fs.drv.Restores.Load()
			a := call(t, fs.url, "POST", c.path, c.body)
			if a.status != c.want {
				t.Fatalf("%d %.300s, want %d", a.status, a.raw, c.want)
			}
			if started := fs.drv.Boots.Load() + fs.drv.Restores.Load() - before; c.want != 200 && started != 0 {
				t.Fatalf("%d VMs started for a refused request", started)
			}
		})
	}
}

// TestDeclaredBodyTooLargeIsNotRead: a Content-Length past the limit is
// refused at once, before the body is sent.
func TestDeclaredBodyTooLargeIsNotRead(t *testing.T) {
	fs := newFakeServer(t, Config{MaxBody: 1 << 20}, sandbox.ServiceConfig{})
	c, err := net.Dial("tcp", strings.TrimPrefix(fs.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST /v1/run HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", 1<<30)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer before the body: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 413 || !strings.Contains(string(b), "at most 1048576") {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
}

// TestBodyMemoryBudget: bodies held at once are bounded, all requests
// together.
func TestBodyMemoryBudget(t *testing.T) {
	fs := newFakeServer(t, Config{MaxBody: 1 << 20, MaxBodyMemory: 1 << 20, BodyTimeout: 3 * time.Second}, sandbox.ServiceConfig{})
	addr := strings.TrimPrefix(fs.url, "http://")
	// One request announces 900 KB and sends half: its body holds the budget.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST /v1/run HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 900000\r\n\r\n%s", strings.Repeat("x", 450000))
	deadline := time.Now().Add(5 * time.Second)
	for fs.srv.bodyMemory.Load() < 900000 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	a := call(t, fs.url, "POST", "/v1/run", `{"language":"python","code":"`+strings.Repeat("y", 200000)+`"}`)
	if a.status != 503 || a.body["code"] != "server_busy" {
		t.Fatalf("second body over the budget: %d %.200s", a.status, a.raw)
	}
	c.Close()
	for fs.srv.bodyMemory.Load() != 0 && time.Now().Before(deadline.Add(5*time.Second)) {
		time.Sleep(10 * time.Millisecond)
	}
	if a := call(t, fs.url, "POST", "/v1/run", `{"language":"python","code":"print 1"}`); a.status != 200 {
		t.Fatalf("after the first left: %d %s", a.status, a.raw)
	}
}

// TestSlowBodiesAreCut: connections that announce a body and send none,
// or trickle it, are closed at BodyTimeout, and /healthz keeps answering
// meanwhile. (The suite in internal/adversarial does this with 500
// connections against a real serve.)
func TestSlowBodiesAreCut(t *testing.T) {
	fs := newFakeServer(t, Config{BodyTimeout: time.Second}, sandbox.ServiceConfig{})
	addr := strings.TrimPrefix(fs.url, "http://")
	const n = 50
	start := time.Now()
	var wg sync.WaitGroup
	closed := make(chan time.Duration, n)
	for i := range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "POST /v1/run HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n")
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i%2 == 1 { // trickle: a byte every 200 ms
				go func() {
					for j := 0; j < 50; j++ {
						if _, err := c.Write([]byte("x")); err != nil {
							return
						}
						time.Sleep(200 * time.Millisecond)
					}
				}()
			}
			c.SetReadDeadline(time.Now().Add(20 * time.Second))
			io.Copy(io.Discard, c) // until the server closes
			closed <- time.Since(start)
		}()
	}
	if a := call(t, fs.url, "GET", "/healthz", ""); a.status != 200 {
		t.Fatalf("healthz during the attack: %d", a.status)
	}
	wg.Wait()
	close(closed)
	for d := range closed {
		if d > 5*time.Second {
			t.Fatalf("a slow body's connection stayed open %s", d)
		}
	}
}

// TestConnectionCap: connections past MaxConns are answered 503 at once,
// not left waiting; when one closes, a new one is served.
func TestConnectionCap(t *testing.T) {
	fs := newFakeServer(t, Config{MaxConns: 4}, sandbox.ServiceConfig{})
	addr := strings.TrimPrefix(fs.url, "http://")
	var held []net.Conn
	for range 4 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	waitFor(t, func() bool { return fs.srv.conns.open.Load() == 4 })
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != 503 {
		t.Fatalf("fifth connection: %v %v", resp, err)
	}
	for _, c := range held {
		c.Close()
	}
	waitFor(t, func() bool { return fs.srv.conns.open.Load() == 0 })
	if a := call(t, fs.url, "GET", "/healthz", ""); a.status != 200 {
		t.Fatalf("after the others closed: %d", a.status)
	}
}

func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSlowReaderDoesNotHoldAVM: a client that stops reading a stream does
// not keep its run's VM: the slot is free once the program ends (here at
// its wall-clock limit), while the client is still connected.
func TestSlowReaderDoesNotHoldAVM(t *testing.T) {
	fs := newFakeServer(t, Config{}, sandbox.ServiceConfig{})
	c, err := net.Dial("tcp", strings.TrimPrefix(fs.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.(*net.TCPConn).SetReadBuffer(4096)
	body := `{"language":"python","code":"yes","limits":{"timeout_ms":1000}}`
	fmt.Fprintf(c, "POST /v1/run/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	waitFor(t, func() bool { return fs.svc.Limiter.Stats().InUse == 1 })
	start := time.Now()
	// Nothing is read; the program ends at 1 s; the VM must go with it.
	waitFor(t, func() bool { return fs.svc.Limiter.Stats().InUse == 0 && len(fs.drv.Live()) == 0 })
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the VM outlived its program by %s", d)
	}
}

// TestLateOutputNeverReachesAFinishedHandler deletes a sandbox while
// `yes` streams from it, 2,000 times, with other streams running beside:
// no panic, no race (run with -race), and no client ever sees another
// client's output.
func TestLateOutputNeverReachesAFinishedHandler(t *testing.T) {
	if testing.Short() {
		t.Skip("2,000 rounds")
	}
	fs := newFakeServer(t, Config{}, sandbox.ServiceConfig{MaxVMs: 16})
	const rounds, parallel = 2000, 4
	tr := &http.Transport{MaxIdleConnsPerHost: parallel * 2}
	client := &http.Client{Transport: tr}
	defer tr.CloseIdleConnections()
	var wg sync.WaitGroup
	errs := make(chan error, parallel)
	for w := range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < rounds; i += parallel {
				if err := deleteWhileStreaming(fs.url, client, i); err != nil {
					errs <- fmt.Errorf("round %d: %w", i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func deleteWhileStreaming(url string, client *http.Client, round int) error {
	post := func(path, body string) (*http.Response, error) {
		return client.Post(url+path, "application/json", strings.NewReader(body))
	}
	resp, err := post("/v1/sandboxes", `{"language":"python"}`)
	if err != nil {
		return err
	}
	var sb SandboxOut
	json.NewDecoder(resp.Body).Decode(&sb)
	resp.Body.Close()
	if resp.StatusCode != 201 {
		return fmt.Errorf("create: %d", resp.StatusCode)
	}
	// Each round prints its own text, so a line from another round in
	// this response would be another client's output.
	mine := fmt.Sprintf("r%d", round)
	resp, err = post("/v1/sandboxes/"+sb.ID+"/exec/stream", `{"cmd":["yes"],"env":{"ROUND":"`+mine+`"}}`)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	lines := 0
	deleted := make(chan error, 1)
	for sc.Scan() {
		var ev Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return fmt.Errorf("line %d is not an event: %.80q", lines, sc.Text())
		}
		if ev.Type == "output" && strings.Trim(ev.Data, "y\n") != "" {
			return fmt.Errorf("foreign output in the stream: %.80q", ev.Data)
		}
		if lines++; lines == 1+round%5 {
			go func() {
				req, _ := http.NewRequest("DELETE", url+"/v1/sandboxes/"+sb.ID, nil)
				r, err := client.Do(req)
				if err == nil {
					r.Body.Close()
					if r.StatusCode != 204 {
						err = fmt.Errorf("delete: %d", r.StatusCode)
					}
				}
				deleted <- err
			}()
		}
	}
	if lines == 0 {
		return fmt.Errorf("empty stream")
	}
	return <-deleted
}
