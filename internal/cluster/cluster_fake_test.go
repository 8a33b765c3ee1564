package cluster_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/api"
	"github.com/firesandbox/firesandbox/internal/cluster"
	"github.com/firesandbox/firesandbox/internal/cluster/clustertest"
	"github.com/firesandbox/firesandbox/internal/sandbox"
	"github.com/firesandbox/firesandbox/internal/snapshot"
	"github.com/firesandbox/firesandbox/internal/state"
	"github.com/firesandbox/firesandbox/internal/testutil"
	"github.com/firesandbox/firesandbox/internal/vmm/vmmfake"
)

// Serve-level tests of a cluster of in-process hosts: each host is the
// real Manager, Sandboxes, API server and Node, over the fake VMM driver
// (no VMs), with a real PostgreSQL and a real MinIO on loopback. The
// real-VM version, with serve processes and HAProxy, is make test-cluster.

const (
	fakeHeartbeat = 200 * time.Millisecond
	fakeTTL       = 1500 * time.Millisecond
	fakeCapacity  = 3
)

type fakeCluster struct {
	t      *testing.T
	url    string
	s3     *clustertest.MinIO
	signer *snapshot.Signer
	trust  *snapshot.Trust
	hosts  map[string]*fakeHost
	dir    *cluster.Directory // the test's own view
}

type fakeHost struct {
	c       *fakeCluster
	name    string
	addr    string
	dataDir string
	runDir  string
	drv     *vmmfake.Driver
	svc     *sandbox.Service
	node    *cluster.Node
	srv     *api.Server
	served  chan error
	down    bool
}

func newFakeCluster(t *testing.T) *fakeCluster {
	pg := clustertest.StartPostgres(t)
	s3 := clustertest.StartMinIO(t)
	keyPath := filepath.Join(t.TempDir(), "signing.key")
	pub, err := snapshot.GenerateKey(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	priv, err := snapshot.LoadPrivateKey(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	c := &fakeCluster{t: t, url: pg.NewDatabase(t), s3: s3, signer: snapshot.NewSigner(priv),
		trust: snapshot.NewTrust([]ed25519.PublicKey{pub}, false), hosts: map[string]*fakeHost{}}
	c.dir, err = cluster.OpenDirectory(context.Background(), cluster.DirectoryConfig{URL: c.url, TTL: fakeTTL})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.dir.Close)
	pgHandle = pg
	return c
}

var pgHandle *clustertest.Postgres

// start starts (or restarts, on the same directories) host name.
func (c *fakeCluster) start(name string) *fakeHost {
	t := c.t
	h := c.hosts[name]
	if h == nil {
		h = &fakeHost{c: c, name: name, addr: clustertest.FreeAddr(t), dataDir: testutil.FakeDataDir(t, "python"), runDir: t.TempDir()}
		c.hosts[name] = h
		t.Cleanup(func() { h.stop(false) })
	}
	h.down = false
	log := slog.New(slog.NewTextHandler(testWriter{t, name}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	h.drv = vmmfake.New()
	mgr, err := sandbox.New(sandbox.Config{DataDir: h.dataDir, RunDir: h.runDir}, sandbox.WithDriver(h.drv), sandbox.WithLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	remote, err := snapshot.NewRemote(c.s3.URL("cluster"), snapshot.WithRemoteEnv(c.s3.Getenv), snapshot.WithRemoteSigner(c.signer),
		snapshot.WithRemoteTrust(c.trust), snapshot.WithRemoteRetry(2, 100*time.Millisecond, 200*time.Millisecond), snapshot.WithRemoteLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	h.node, err = cluster.Open(context.Background(), cluster.Config{URL: c.url, HostID: name, Address: "http://" + h.addr,
		Capacity: fakeCapacity, Heartbeat: fakeHeartbeat, TTL: fakeTTL, SyncEvery: 500 * time.Millisecond},
		cluster.WithLogger(log), cluster.WithRemote(remote, c.trust))
	if err != nil {
		t.Fatal(err)
	}
	h.svc, err = sandbox.OpenService(mgr, sandbox.ServiceConfig{MaxVMs: 8, Directory: h.node}, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.node.Attach(context.Background(), h.svc.Sandboxes); err != nil {
		t.Fatal(err)
	}
	lim := h.svc.Limiter
	secret, err := h.node.Directory().Secret(context.Background(), "e2b-access-tokens", 32)
	if err != nil {
		t.Fatal(err)
	}
	h.srv, err = api.Open(api.Config{Listen: h.addr}, h.svc, api.WithLogger(log), api.WithOuter(func(next http.Handler) http.Handler {
		return h.node.Handler(next, cluster.Routes{Full: func() bool { st := lim.Stats(); return st.InUse >= st.Max }})
	}), api.WithKeyStore(cluster.NewKeys(h.node.Directory())), api.WithE2BSecret(secret))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	h.served = make(chan error, 1)
	go func() { h.served <- h.srv.Serve(ln) }()
	return h
}

// kill ends host h as kill -9 would: no leave, VMs gone, nothing told.
func (h *fakeHost) kill() {
	h.node.Crash()
	h.srv.Shutdown(context.Background())
	for _, m := range h.drv.Live() {
		m.Crash()
	}
	// What is left settles locally as a restart's reconcile would: the
	// node is dead, so nothing reaches the directory.
	h.svc.Close(context.Background())
	h.down = true
}

// stop ends host h cleanly (SIGTERM): drain, hibernate into S3, leave.
func (h *fakeHost) stop(clean bool) {
	if h.down {
		return
	}
	h.down = true
	if clean {
		h.node.Drain(context.Background())
	}
	h.srv.Shutdown(context.Background())
	if err := h.svc.Close(context.Background()); err != nil && clean {
		h.c.t.Errorf("%s: close: %v", h.name, err)
	}
	h.node.Close(context.Background())
}

type testWriter struct {
	t    *testing.T
	name string
}

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Logf("%s: %s", w.name, bytes.TrimRight(p, "\n"))
	return len(p), nil
}

// call sends a JSON request to host h and decodes the answer into out.
func (h *fakeHost) call(method, path string, in, out any) int {
	h.c.t.Helper()
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, "http://"+h.addr+path, body)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.c.t.Fatalf("%s %s via %s: %v", method, path, h.name, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			h.c.t.Fatalf("%s %s via %s: %d %s: %v", method, path, h.name, resp.StatusCode, b, err)
		}
	}
	return resp.StatusCode
}

type sbOut struct {
	ID     string `json:"id"`
	State  string `json:"state"`
	Reason string `json:"reason"`
	Error  string `json:"error"`
	Code   string `json:"code"`
}

func (h *fakeHost) create() (sbOut, int) {
	var out sbOut
	code := h.call("POST", "/v1/sandboxes", map[string]any{"language": "python"}, &out)
	return out, code
}

func (h *fakeHost) mustCreate() string {
	h.c.t.Helper()
	out, code := h.create()
	if code != 201 {
		h.c.t.Fatalf("create via %s: %d %+v", h.name, code, out)
	}
	return out.ID
}

func (h *fakeHost) exec(id string, argv ...string) (string, int, string) {
	h.c.t.Helper()
	var out struct {
		Stdout   string `json:"stdout"`
		ExitCode int    `json:"exit_code"`
		Error    string `json:"error"`
		Code     string `json:"code"`
	}
	code := h.call("POST", "/v1/sandboxes/"+id+"/exec", map[string]any{"cmd": argv}, &out)
	if code != 200 {
		return out.Error, code, out.Code
	}
	return out.Stdout, code, ""
}

// execSettled is exec, retried while the answer is 503 (a client that
// honours Retry-After while a sandbox moves between hosts).
func (h *fakeHost) execSettled(id string, argv ...string) (string, int, string) {
	h.c.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, code, ec := h.exec(id, argv...)
		if code != 503 || time.Now().After(deadline) {
			return out, code, ec
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (h *fakeHost) write(id, path, content string) {
	h.c.t.Helper()
	if code := h.call("POST", "/v1/sandboxes/"+id+"/files", map[string]any{"files": []map[string]string{{"path": path, "content": content}}}, nil); code != 200 {
		h.c.t.Fatalf("upload to %s via %s: %d", id, h.name, code)
	}
}

// entry is the directory's view of a sandbox.
func (c *fakeCluster) entry(id string) cluster.Entry {
	c.t.Helper()
	e, err := c.dir.Get(context.Background(), id)
	if err != nil {
		c.t.Fatal(err)
	}
	return e
}

// eventually polls cond until it holds or d passes.
func (c *fakeCluster) eventually(d time.Duration, what string, cond func() bool) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			c.t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// localIDs are the sandboxes a host has records of.
func (h *fakeHost) localIDs() map[string]state.State {
	out := map[string]state.State{}
	recs, err := h.svc.Sandboxes.Records(context.Background())
	if err != nil {
		h.c.t.Fatal(err)
	}
	for _, r := range recs {
		out[r.ID] = r.State
	}
	return out
}

// other returns a live host that is not h.
func other(hosts []*fakeHost, h *fakeHost) *fakeHost {
	for _, o := range hosts {
		if o != h && !o.down {
			return o
		}
	}
	return nil
}

func TestClusterFake(t *testing.T) {
	c := newFakeCluster(t)
	h1, h2, h3 := c.start("h1"), c.start("h2"), c.start("h3")
	all := []*fakeHost{h1, h2, h3}

	t.Run("24 concurrent creates spread over the hosts and never exceed capacity", func(t *testing.T) {
		var wg sync.WaitGroup
		var mu sync.Mutex
		codes := map[int]int{}
		var ids []string
		for i := range 24 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				out, code := all[i%3].create()
				mu.Lock()
				codes[code]++
				if code == 201 {
					ids = append(ids, out.ID)
				}
				mu.Unlock()
			}()
		}
		wg.Wait()
		if codes[201] != 3*fakeCapacity || codes[503] != 24-3*fakeCapacity {
			for _, id := range ids {
				e := c.entry(id)
				t.Logf("created %s: owner %s, state %s, generation %d", id, e.Owner, e.State, e.Generation)
			}
			t.Fatalf("answers %v: want %d created and the rest 503", codes, 3*fakeCapacity)
		}
		hosts, err := c.dir.Hosts(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range hosts {
			if h.Used != fakeCapacity {
				t.Errorf("host %s holds %d sandboxes, want exactly %d", h.ID, h.Used, fakeCapacity)
			}
			if live := len(c.hosts[h.ID].drv.Live()); live > fakeCapacity {
				t.Errorf("host %s runs %d VMs, capacity %d", h.ID, live, fakeCapacity)
			}
		}
		var list struct{ Sandboxes []sbOut }
		h2.call("GET", "/v1/sandboxes", nil, &list)
		if len(list.Sandboxes) != len(ids) {
			t.Fatalf("a list on one host shows %d sandboxes, want all %d", len(list.Sandboxes), len(ids))
		}
		// Deletes through any host reach the owner.
		for i, id := range ids {
			if code := all[i%3].call("DELETE", "/v1/sandboxes/"+id, nil, nil); code != 204 {
				t.Fatalf("delete %s via %s: %d", id, all[i%3].name, code)
			}
		}
		for _, h := range all {
			if live := len(h.drv.Live()); live != 0 {
				t.Fatalf("%s still runs %d VMs after the deletes", h.name, live)
			}
		}
	})

	var x, y string
	t.Run("the same exec through each host gives the same answer", func(t *testing.T) {
		x = h1.mustCreate()
		if e := c.entry(x); e.Owner != "h1" {
			t.Fatalf("a create sent to h1 with room landed on %s", e.Owner)
		}
		h2.write(x, "notes.txt", "kept across hosts\n")
		for _, h := range all {
			out, code, _ := h.exec(x, "cat", "notes.txt")
			if code != 200 || out != "kept across hosts\n" {
				t.Fatalf("exec via %s: %d %q", h.name, code, out)
			}
		}
		// A stream comes through a forwarding host as it is produced.
		resp, err := http.Post("http://"+h3.addr+"/v1/sandboxes/"+x+"/exec/stream", "application/json",
			strings.NewReader(`{"cmd":["echo","streamed"]}`))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), "streamed") {
			t.Fatalf("stream via h3: %d %s", resp.StatusCode, b)
		}
	})

	t.Run("a hibernate leaves the objects in S3 and the row in PostgreSQL", func(t *testing.T) {
		var out sbOut
		if code := h3.call("POST", "/v1/sandboxes/"+x+"/hibernate", nil, &out); code != 200 || out.State != "hibernated" {
			t.Fatalf("hibernate via h3: %d %+v", code, out)
		}
		e := c.entry(x)
		want := fmt.Sprintf("sandboxes/%s/%d", x, e.Generation)
		if e.State != state.Hibernated || e.Owner != "h1" || e.Remote != want {
			t.Fatalf("directory: %+v; want hibernated on h1, stored as %s", e, want)
		}
		objs := strings.Join(c.s3.Objects("cluster/"+want+"/"), " ")
		for _, f := range []string{"manifest.json", "manifest.sig", "vmstate", "memory"} {
			if !strings.Contains(objs, want+"/"+f) {
				t.Fatalf("S3 holds %s; want %s among them", objs, f)
			}
		}
	})

	t.Run("kill -9 of a host: its hibernated sandbox resumes elsewhere, files intact; its running one is lost", func(t *testing.T) {
		y = h1.mustCreate()
		if e := c.entry(y); e.Owner != "h1" {
			t.Fatalf("y on %s", e.Owner)
		}
		h1.kill()
		c.eventually(10*time.Second, "x taken over", func() bool { e := c.entry(x); return e.Owner != "h1" && e.Owner != "" })
		c.eventually(10*time.Second, "y taken over", func() bool { return c.entry(y).Owner != "h1" })
		ex := c.entry(x)
		if ex.State != state.Hibernated {
			t.Fatalf("x after the takeover: %+v", ex)
		}
		for _, h := range []*fakeHost{h2, h3} {
			out, code, _ := h.execSettled(x, "cat", "notes.txt")
			if code != 200 || out != "kept across hosts\n" {
				t.Fatalf("exec x via %s after its host died: %d %q", h.name, code, out)
			}
		}
		msg, code, errCode := h3.execSettled(y, "echo", "hi")
		if code != 409 || errCode != "sandbox_lost" || !strings.Contains(msg, "host h1 stopped heartbeating") {
			t.Fatalf("exec y (running on the dead host) via h3: %d %s %q", code, errCode, msg)
		}
		// Exactly one VM runs x, on its new owner, which alone has it.
		owner := c.hosts[c.entry(x).Owner]
		n := 0
		for _, h := range []*fakeHost{h2, h3} {
			n += len(h.drv.Live())
			if _, ok := h.localIDs()[x]; ok != (h == owner) {
				t.Fatalf("%s has a record of x: %v; the owner is %s", h.name, ok, owner.name)
			}
		}
		if n != 1 {
			t.Fatalf("%d VMs run after resuming one sandbox", n)
		}
	})

	t.Run("the killed host restarts and drops what it no longer owns", func(t *testing.T) {
		h1 = c.start("h1")
		ids := h1.localIDs()
		if _, ok := ids[x]; ok {
			t.Fatalf("restarted h1 still has x: %v", ids)
		}
		if _, ok := ids[y]; ok {
			t.Fatalf("restarted h1 still has y: %v", ids)
		}
		if _, err := os.Stat(filepath.Join(h1.dataDir, "sandboxes", x)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("restarted h1 kept x's files: %v", err)
		}
		out, code, _ := h1.exec(x, "cat", "notes.txt")
		if code != 200 || out != "kept across hosts\n" {
			t.Fatalf("exec x via the restarted h1: %d %q", code, out)
		}
	})

	t.Run("a clean stop moves its sandboxes", func(t *testing.T) {
		z := h2.mustCreate()
		o := c.hosts[c.entry(z).Owner]
		o.write(z, "z.txt", "zed\n")
		o.stop(true)
		c.eventually(10*time.Second, "z adopted", func() bool { w := c.entry(z).Owner; return w != o.name && w != "" })
		out, code, _ := other(all, o).execSettled(z, "cat", "z.txt")
		if code != 200 || out != "zed\n" {
			t.Fatalf("exec z after its host stopped: %d %q", code, out)
		}
		c.start(o.name)
		c.eventually(5*time.Second, o.name+" dropped z", func() bool { _, ok := o.localIDs()[z]; return !ok })
	})

	t.Run("PostgreSQL stopped for a while: live sandboxes keep serving, creates get 503, nothing is taken over", func(t *testing.T) {
		asleep := h3.mustCreate()
		owner := c.hosts[c.entry(asleep).Owner]
		if code := owner.call("POST", "/v1/sandboxes/"+asleep+"/hibernate", nil, nil); code != 200 {
			t.Fatalf("hibernate: %d", code)
		}
		w := owner.mustCreate() // the room the hibernation freed
		if o := c.entry(w).Owner; o != owner.name {
			t.Fatalf("a create on %s with room landed on %s", owner.name, o)
		}
		pgHandle.Stop()
		time.Sleep(2 * fakeTTL)
		out, code, _ := owner.exec(w, "echo", "still here")
		if code != 200 || out != "still here\n" {
			t.Fatalf("exec on the owner while PostgreSQL is down: %d %q", code, out)
		}
		if _, code := owner.create(); code != 503 {
			t.Fatalf("create while PostgreSQL is down: %d, want 503", code)
		}
		// A hibernated sandbox stays so: another host might have taken it.
		vms := len(owner.drv.Live())
		if msg, code, ec := owner.exec(asleep, "echo"); code != 503 || ec != "cluster_unavailable" {
			t.Fatalf("resume while PostgreSQL is down: %d %s %q, want 503", code, ec, msg)
		}
		if n := len(owner.drv.Live()); n != vms {
			t.Fatalf("%d VMs on %s, %d before: the hibernated sandbox must not have resumed", n, owner.name, vms)
		}
		if err := pgHandle.Start(); err != nil {
			t.Fatal(err)
		}
		c.eventually(10*time.Second, "directory back", func() bool {
			_, code := h1.create()
			return code == 201
		})
		time.Sleep(2 * fakeTTL) // long enough for a wrong takeover to happen
		if e := c.entry(w); e.Owner != owner.name || e.State != state.Running {
			t.Fatalf("after the outage: %+v; want still running on %s", e, owner.name)
		}
		for _, h := range []*fakeHost{h1, h2, h3} {
			if out, code, _ := h.exec(w, "echo", "ok"); code != 200 || out != "ok\n" {
				t.Fatalf("exec via %s after the outage: %d %q", h.name, code, out)
			}
		}
		if out, code, _ := h1.execSettled(asleep, "echo", "awake"); code != 200 || out != "awake\n" {
			t.Fatalf("resume after the outage: %d %q", code, out)
		}
	})

	t.Run("MinIO stopped during a hibernate: no half-written snapshot is ever used", func(t *testing.T) {
		v := h1.mustCreate()
		o := c.hosts[c.entry(v).Owner]
		o.write(v, "v.txt", "vee\n")
		c.s3.Stop()
		var out sbOut
		if code := o.call("POST", "/v1/sandboxes/"+v+"/hibernate", nil, &out); code != 200 || out.State != "hibernated" {
			t.Fatalf("hibernate with S3 down: %d %+v (it must still hibernate here)", code, out)
		}
		if e := c.entry(v); e.State != state.Hibernated || e.Remote != "" {
			t.Fatalf("directory after a hibernate S3 did not take: %+v", e)
		}
		c.s3.Start()
		c.eventually(10*time.Second, "pending hibernation stored", func() bool { return c.entry(v).Remote != "" })
		// And one that never reached S3 is lost with its host, never
		// resumed from whatever got there.
		u := o.mustCreate()
		if w := c.entry(u).Owner; w != o.name {
			t.Fatalf("a create on %s with room landed on %s", o.name, w)
		}
		c.s3.Stop()
		if code := o.call("POST", "/v1/sandboxes/"+u+"/hibernate", nil, &out); code != 200 {
			t.Fatalf("hibernate u: %d", code)
		}
		o.kill()
		c.s3.Start()
		c.eventually(10*time.Second, "u settled", func() bool { return c.entry(u).Owner != o.name })
		if e := c.entry(u); e.State != state.Lost || !strings.Contains(e.Reason, "before its hibernation was stored in S3") {
			t.Fatalf("u: %+v", e)
		}
		msg, code, _ := other(all, o).execSettled(u, "echo")
		if code != 409 || !strings.Contains(msg, "S3") {
			t.Fatalf("exec u: %d %q", code, msg)
		}
		if out, code, _ := other(all, o).execSettled(v, "cat", "v.txt"); code != 200 || out != "vee\n" {
			t.Fatalf("v, stored once S3 came back, after its host died: %d %q", code, out)
		}
	})
	t.Run("E2B: a sandbox made through one host, its data plane through another, its token good after it moved", func(t *testing.T) {
		var made struct {
			SandboxID, EnvdAccessToken string
		}
		front := other(all, nil)
		if code := front.call("POST", "/sandboxes", map[string]any{"templateID": "python"}, &made); code != 201 || made.EnvdAccessToken == "" {
			t.Fatalf("E2B create via %s: %d %+v", front.name, code, made)
		}
		id := made.SandboxID
		dp := func(h *fakeHost, method string, body string) (int, string) {
			req, _ := http.NewRequest(method, "http://"+h.addr+"/files?path=e2b.txt", strings.NewReader(body))
			req.Header.Set("E2b-Sandbox-Id", id)
			req.Header.Set("E2b-Sandbox-Port", "49983")
			req.Header.Set("X-Access-Token", made.EnvdAccessToken)
			if method == "POST" {
				req.Header.Set("Content-Type", "application/octet-stream")
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, string(b)
		}
		o := c.hosts[c.entry(id).Owner]
		up := other(all, o)
		o.write(id, "e2b.txt", "through the data plane\n")
		if code, b := dp(up, "GET", ""); code != 200 || b != "through the data plane\n" {
			t.Fatalf("download via %s (owner %s): %d %s", up.name, o.name, code, b)
		}
		if code := up.call("POST", "/sandboxes/"+id+"/pause", nil, nil); code != 204 {
			t.Fatalf("E2B pause via %s: %d", up.name, code)
		}
		o.kill()
		c.eventually(10*time.Second, "the E2B sandbox taken over", func() bool { w := c.entry(id).Owner; return w != o.name && w != "" })
		var code int
		var b string
		c.eventually(10*time.Second, "the E2B sandbox answering on its new host", func() bool {
			var resumed map[string]any
			if rc := other(all, o).call("POST", "/sandboxes/"+id+"/connect", map[string]any{"timeout": 60}, &resumed); rc != 200 && rc != 201 {
				return false
			}
			code, b = dp(other(all, o), "GET", "")
			return code != 503
		})
		if code != 200 || b != "through the data plane\n" {
			t.Fatalf("download after the move, with the token the first host issued: %d %q", code, b)
		}
	})

}
