package cluster

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/firesandbox/firesandbox/internal/cluster/clustertest"
	"github.com/firesandbox/firesandbox/internal/snapshot"
	"github.com/firesandbox/firesandbox/internal/state"
)

// fakeLocal is a Local with function fields; nil ones have no sandboxes.
type fakeLocal struct {
	mu   sync.Mutex
	recs map[string]state.Sandbox
}

func (f *fakeLocal) Records(context.Context) ([]state.Sandbox, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []state.Sandbox
	for _, r := range f.recs {
		out = append(out, r)
	}
	return out, nil
}

func (f *fakeLocal) Record(_ context.Context, id string) (state.Sandbox, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r, ok := f.recs[id]; ok {
		return r, nil
	}
	return state.Sandbox{}, state.ErrNotFound
}

func (f *fakeLocal) Import(context.Context, state.Sandbox, func(context.Context, snapshot.Spec, string, string) error) error {
	return errors.New("fake: no imports")
}
func (f *fakeLocal) Drop(context.Context, string) error { return nil }
func (f *fakeLocal) WithHibernation(context.Context, string, func(context.Context, state.Sandbox, snapshot.Spec, string, string) error) error {
	return errors.New("fake: no hibernations")
}

// ownerAPI stands for the owner host's API: it says what it got.
func ownerAPI(t *testing.T) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"who": "owner", "hop": r.Header.Get(HopHeader), "path": r.URL.Path,
			"body": string(b), "xff": r.Header.Get("X-Forwarded-For"), "proto": r.ProtoMajor, "host": r.Host})
	})
	mux.HandleFunc("/v1/sandboxes/{id}/ports/8080/ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		for {
			typ, msg, err := c.Read(r.Context())
			if err != nil {
				return
			}
			c.Write(r.Context(), typ, append([]byte("echo "), msg...))
		}
	})
	mux.HandleFunc("/v1/sandboxes/{id}/exec/stream", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("first\n"))
		w.(http.Flusher).Flush()
		<-r.Context().Done() // until the client has read the first line and leaves
	})
	return mux
}

// serveH2C serves h on a loopback listener, HTTP/1.1 and h2c.
func serveH2C(t *testing.T, h http.Handler) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, Protocols: new(http.Protocols)}
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String()
}

func TestSandboxIDOfHostName(t *testing.T) {
	var r Routes
	r.setDefaults()
	for host, want := range map[string]string{
		"49983-sb-0123456789abcdef.sandbox.example.com": "sb-0123456789abcdef",
		"8080-sb-0123456789abcdef.localhost:7070":       "sb-0123456789abcdef",
		"10-0-0-5.nip.io":           "",
		"api.example.com":           "",
		"49983-sb-0123.example.com": "",
	} {
		req, _ := http.NewRequest("GET", "http://x/health", nil)
		req.Host = host
		if got := r.SandboxID(req); got != want {
			t.Errorf("host %s: sandbox %q, want %q", host, got, want)
		}
	}
}

func TestRouter(t *testing.T) {
	ctx := context.Background()
	pg := clustertest.StartPostgres(t)
	url := pg.NewDatabase(t)
	d := openTestDirectory(t, url)

	ownerURL := serveH2C(t, ownerAPI(t))
	owner := register(t, d, "owner", 4)
	if _, err := d.pool.Exec(ctx, `UPDATE hosts SET address = $1 WHERE id = 'owner'`, ownerURL); err != nil {
		t.Fatal(err)
	}
	stopBeat := make(chan struct{})
	go func() { // keep the owner alive
		for {
			select {
			case <-stopBeat:
				return
			case <-time.After(200 * time.Millisecond):
				d.Heartbeat(ctx, owner, 0, 4)
			}
		}
	}()
	defer close(stopBeat)
	admitRunning(t, d, owner, "sb-remote")

	n, err := Open(ctx, Config{URL: url, HostID: "entry", Address: "http://127.0.0.1:9", Capacity: 1,
		Heartbeat: 200 * time.Millisecond, TTL: testTTL})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close(ctx)
	local := &fakeLocal{recs: map[string]state.Sandbox{}}
	if err := n.Attach(ctx, local); err != nil {
		t.Fatal(err)
	}
	var full bool
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"who": "entry", "path": r.URL.Path})
	})
	entryURL := serveH2C(t, n.Handler(next, Routes{Full: func() bool { return full }, HostPattern: regexp.MustCompile(`^[0-9]+-(sb-[a-z]+)\.sbx\.test$`)}))

	type answer struct {
		Who, Hop, Path, Body, Xff, Host, Code, Message, Error string
		Proto                                                 int
	}
	do := func(method, path, body string, hdr map[string]string) (answer, *http.Response) {
		t.Helper()
		req, _ := http.NewRequest(method, entryURL+path, strings.NewReader(body))
		for k, v := range hdr {
			if k == "Host" {
				req.Host = v
			} else {
				req.Header.Set(k, v)
			}
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var a answer
		raw, _ := io.ReadAll(resp.Body)
		var m map[string]any
		json.Unmarshal(raw, &m)
		a.Who, _ = m["who"].(string)
		a.Hop, _ = m["hop"].(string)
		a.Path, _ = m["path"].(string)
		a.Body, _ = m["body"].(string)
		a.Xff, _ = m["xff"].(string)
		a.Host, _ = m["host"].(string)
		a.Error, _ = m["error"].(string)
		a.Message, _ = m["message"].(string)
		if p, ok := m["proto"].(float64); ok {
			a.Proto = int(p)
		}
		a.Code = strings.TrimSpace(strings.Trim(strings.TrimSpace(jsonField(raw, "code")), `"`))
		return a, resp
	}

	t.Run("a sandbox's requests go to its owner, with the hop header", func(t *testing.T) {
		a, resp := do("POST", "/v1/sandboxes/sb-remote/exec", `{"cmd":["true"]}`, nil)
		if resp.StatusCode != 200 || a.Who != "owner" || a.Hop != "entry" || a.Body != `{"cmd":["true"]}` || a.Xff != "127.0.0.1" {
			t.Fatalf("%d %+v", resp.StatusCode, a)
		}
		for name, hdr := range map[string]map[string]string{
			"E2B data plane header": {"E2b-Sandbox-Id": "sb-remote"},
			"per-sandbox host name": {"Host": "49983-sb-remote.sbx.test"},
		} {
			a, resp := do("GET", "/health", "", hdr)
			if resp.StatusCode != 200 || a.Who != "owner" || a.Path != "/health" {
				t.Fatalf("%s: %d %+v", name, resp.StatusCode, a)
			}
			if name == "per-sandbox host name" && a.Host != "49983-sb-remote.sbx.test" {
				t.Fatalf("the owner got Host %q", a.Host)
			}
		}
		if a, _ := do("POST", "/sandboxes/sb-remote/timeout", "{}", nil); a.Who != "owner" {
			t.Fatalf("E2B control plane: %+v", a)
		}
	})

	t.Run("a forwarded request is answered where it arrives: no loops", func(t *testing.T) {
		a, _ := do("POST", "/v1/sandboxes/sb-remote/exec", "{}", map[string]string{HopHeader: "someone"})
		if a.Who != "entry" {
			t.Fatalf("a request carrying the hop header was forwarded again: %+v", a)
		}
	})

	t.Run("unknown sandboxes and other requests are local", func(t *testing.T) {
		for _, p := range []string{"/v1/sandboxes/sb-nowhere/exec", "/v1/languages", "/v1/sandboxes"} {
			if a, _ := do("GET", p, "", nil); a.Who != "entry" {
				t.Fatalf("%s: %+v", p, a)
			}
		}
	})

	t.Run("WebSocket upgrades pass through", func(t *testing.T) {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		c, _, err := websocket.Dial(wctx, entryURL+"/v1/sandboxes/sb-remote/ports/8080/ws", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		for _, m := range []string{"one", "two"} {
			if err := c.Write(wctx, websocket.MessageText, []byte(m)); err != nil {
				t.Fatal(err)
			}
			_, got, err := c.Read(wctx)
			if err != nil || string(got) != "echo "+m {
				t.Fatalf("read %q %v", got, err)
			}
		}
	})

	t.Run("streams flow as they are written", func(t *testing.T) {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(sctx, "POST", entryURL+"/v1/sandboxes/sb-remote/exec/stream", strings.NewReader("{}"))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		line, err := bufio.NewReader(resp.Body).ReadString('\n')
		if err != nil || line != "first\n" {
			t.Fatalf("first line %q %v: the stream was held back", line, err)
		}
	})

	t.Run("h2c requests are forwarded over h2c", func(t *testing.T) {
		tr := &http.Transport{Protocols: new(http.Protocols)}
		tr.Protocols.SetUnencryptedHTTP2(true)
		resp, err := (&http.Client{Transport: tr}).Post(entryURL+"/v1/sandboxes/sb-remote/exec", "application/json", strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		json.NewDecoder(resp.Body).Decode(&m)
		if resp.ProtoMajor != 2 || m["who"] != "owner" || m["proto"] != float64(2) {
			t.Fatalf("proto %d, owner saw %v", resp.ProtoMajor, m)
		}
	})

	t.Run("creates go to a host with room", func(t *testing.T) {
		admitRunning(t, d, Lease{Host: "entry", Epoch: n.lease.Epoch}, "sb-fills-entry") // entry's capacity is 1
		a, resp := do("POST", "/v1/sandboxes", `{"language":"python"}`, nil)
		if resp.StatusCode != 200 || a.Who != "owner" || a.Hop != "entry" || a.Body != `{"language":"python"}` {
			t.Fatalf("create with this host full: %d %+v", resp.StatusCode, a)
		}
		if _, err := d.pool.Exec(ctx, `UPDATE hosts SET capacity = 1 WHERE id = 'owner'`); err != nil {
			t.Fatal(err)
		}
		a, resp = do("POST", "/v1/sandboxes", `{}`, nil)
		if resp.StatusCode != 503 || a.Code != "cluster_full" || resp.Header.Get("Retry-After") == "" {
			t.Fatalf("create with every host full: %d %+v", resp.StatusCode, a)
		}
		d.pool.Exec(ctx, `UPDATE hosts SET capacity = 4 WHERE id = 'owner'`)
	})

	t.Run("one-shot work is refused with 503 while this host is full", func(t *testing.T) {
		full = true
		defer func() { full = false }()
		a, resp := do("POST", "/api/v2/execute", `{}`, nil)
		if resp.StatusCode != 503 || a.Message == "" {
			t.Fatalf("%d %+v", resp.StatusCode, a)
		}
		full = false
		if a, _ := do("POST", "/api/v2/execute", `{}`, nil); a.Who != "entry" {
			t.Fatalf("with room: %+v", a)
		}
	})

	t.Run("a dead owner's sandbox answers 503 until it is taken over", func(t *testing.T) {
		stopBeat <- struct{}{}
		kill(t, d, "owner")
		a, resp := do("POST", "/v1/sandboxes/sb-remote/exec", "{}", nil)
		if resp.StatusCode != 503 || a.Code != "owner_unreachable" || !strings.Contains(a.Error, "stopped heartbeating") {
			t.Fatalf("%d %+v", resp.StatusCode, a)
		}
		// A sandbox the directory gave this host and it has not pulled yet.
		local.mu.Lock()
		delete(local.recs, "sb-remote")
		local.mu.Unlock()
		if _, err := d.pool.Exec(ctx, `UPDATE sandboxes SET owner = 'entry', state = 'hibernated' WHERE id = 'sb-remote'`); err != nil {
			t.Fatal(err)
		}
		a, resp = do("GET", "/v1/sandboxes/sb-remote", "", nil)
		if resp.StatusCode != 503 || a.Code != "sandbox_moving" {
			t.Fatalf("owned but not here yet: %d %+v", resp.StatusCode, a)
		}
	})

	t.Run("a draining host fails its health check", func(t *testing.T) {
		if err := n.Drain(ctx); err != nil {
			t.Fatal(err)
		}
		if _, resp := do("GET", "/healthz", "", nil); resp.StatusCode != 503 {
			t.Fatalf("healthz while draining: %d", resp.StatusCode)
		}
	})
}

// jsonField returns the raw JSON of a top-level field.
func jsonField(raw []byte, k string) string {
	var m map[string]json.RawMessage
	json.Unmarshal(raw, &m)
	return string(m[k])
}
