package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/cluster"
	"github.com/firesandbox/firesandbox/internal/cluster/clustertest"
	"github.com/firesandbox/firesandbox/internal/snapshot"
	"github.com/firesandbox/firesandbox/internal/state"
	"github.com/firesandbox/firesandbox/internal/testutil"
)

// make test-cluster: three real serve processes with real VMs, each with
// its own data and run directory and port, a throwaway PostgreSQL, MinIO
// and HAProxy in front, all on loopback.

// hostDataDir is a host's own data directory: the fixtures' kernels and
// images (read only, linked), its own copy of seed's snapshots (hard
// links: snapshot files never change) and the accelerator choice.
func hostDataDir(t *testing.T, fx *testutil.VMFixtures, seed string) string {
	t.Helper()
	dir := t.TempDir()
	for _, sub := range []string{"kernels", "images"} {
		if err := os.Symlink(filepath.Join(fx.DataDir, sub), filepath.Join(dir, sub)); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("cp", "-al", filepath.Join(seed, "snapshots"), filepath.Join(dir, "snapshots")).CombinedOutput(); err != nil {
		t.Fatalf("link snapshots: %v\n%s", err, out)
	}
	if b, err := os.ReadFile(filepath.Join(fx.DataDir, "accel.json")); err == nil {
		os.WriteFile(filepath.Join(dir, "accel.json"), b, 0o644)
	}
	return dir
}

// serveProc is one serve process of the cluster.
type serveProc struct {
	t    *testing.T
	bin  string
	name string
	data string
	run  string
	addr string
	args []string
	env  []string
	proc *clustertest.Process
	logs []*clustertest.Log // every start's output, for failures
}

func (s *serveProc) url() string { return "http://" + s.addr }

func (s *serveProc) start() {
	s.t.Helper()
	cmd := exec.Command(s.bin, append([]string{"--data-dir", s.data, "--run-dir", s.run, "-v", "serve", "--listen", s.addr}, s.args...)...)
	cmd.Env = append(os.Environ(), s.env...)
	p, err := clustertest.StartProcess(cmd)
	if err != nil {
		s.t.Fatal(err)
	}
	s.proc = p
	s.logs = append(s.logs, p.Log)
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(s.url() + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		select {
		case <-p.Exited():
			s.t.Fatalf("%s exited at start:\n%s", s.name, p.Log)
		default:
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("%s not healthy within 60s:\n%s", s.name, p.Log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// kill is kill -9 of the serve (its QEMUs die with it).
func (s *serveProc) kill() { s.proc.Kill() }

// stop is a clean stop (SIGTERM).
func (s *serveProc) stop() {
	s.t.Helper()
	s.proc.Stop(syscall.SIGTERM, 2*time.Minute)
	if code := s.proc.Cmd.ProcessState.ExitCode(); code != 0 {
		s.t.Errorf("%s exited %d after SIGTERM:\n%s", s.name, code, s.proc.Log)
	}
}

func (s *serveProc) alive() bool {
	select {
	case <-s.proc.Exited():
		return false
	default:
		return true
	}
}

// vms counts the QEMU processes of this serve (by its run directory),
// but for those started ahead that hold no VM yet.
func (s *serveProc) vms() int {
	n := 0
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if !bytes.HasPrefix(b, []byte("qemu-system")) {
			continue
		}
		// A confined QEMU runs in its VM's directory under the run dir.
		cwd, _ := os.Readlink(filepath.Join("/proc", e.Name(), "cwd"))
		pid, _ := strconv.Atoi(e.Name())
		if (strings.HasPrefix(cwd, s.run+"/") || bytes.Contains(b, []byte(s.run+"/"))) && !testutil.SpareVMM(pid) {
			n++
		}
	}
	return n
}

var httpClient = &http.Client{Timeout: 3 * time.Minute}

// call sends a JSON request and decodes a JSON answer into out.
func call(t *testing.T, method, url string, in, out any) int {
	t.Helper()
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, url, body)
	req.Header.Set("Content-Type", "application/json")
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && len(bytes.TrimSpace(b)) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %d %s: %v", method, url, resp.StatusCode, b, err)
		}
	}
	return resp.StatusCode
}

type apiAnswer struct {
	ID       string `json:"id"`
	State    string `json:"state"`
	Stdout   string `json:"stdout"`
	ExitCode int    `json:"exit_code"`
	Error    string `json:"error"`
	Code     string `json:"code"`
}

// execIn runs a shell command in a sandbox through base, retrying while
// the answer is 503 (the sandbox is moving, as Retry-After says).
func execIn(t *testing.T, base, id, command string) (apiAnswer, int) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		var a apiAnswer
		code := call(t, "POST", base+"/v1/sandboxes/"+id+"/exec", map[string]any{"command": command}, &a)
		if code != 503 || time.Now().After(deadline) {
			return a, code
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func mustExec(t *testing.T, base, id, command, want string) {
	t.Helper()
	a, code := execIn(t, base, id, command)
	if code != 200 || a.Stdout != want || a.ExitCode != 0 {
		t.Fatalf("exec %q in %s via %s: %d %+v; want %q", command, id, base, code, a, want)
	}
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func TestClusterVMs(t *testing.T) {
	if !clustertest.Required() {
		t.Skip("cluster VM test skipped: make test-cluster runs it (FIRESANDBOX_CLUSTER_TESTS=1)")
	}
	fx := testutil.RequireVMs(t)
	testutil.RequireQEMU(t)
	ctx := context.Background()
	bin := buildCLI(t)
	pg := clustertest.StartPostgres(t)
	s3 := clustertest.StartMinIO(t)
	url := pg.NewDatabase(t)
	dir, err := cluster.OpenDirectory(ctx, cluster.DirectoryConfig{URL: url, TTL: 4 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()

	// One signing key for the cluster; every host trusts it.
	key := filepath.Join(t.TempDir(), "signing.key")
	pub, err := snapshot.GenerateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	env := append(s3.Env(), "FIRESANDBOX_ACCEL="+fx.Accel, "FIRESANDBOX_TRUSTED_KEYS="+snapshot.FormatPublicKey(pub))

	// The template snapshots, made (or found) once and shared by links.
	seed := t.TempDir()
	for _, sub := range []string{"kernels", "images"} {
		os.Symlink(filepath.Join(fx.DataDir, sub), filepath.Join(seed, sub))
	}
	if out, err := exec.Command("cp", "-al", filepath.Join(fx.DataDir, "snapshots"), filepath.Join(seed, "snapshots")).CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if b, err := os.ReadFile(filepath.Join(fx.DataDir, "accel.json")); err == nil {
		os.WriteFile(filepath.Join(seed, "accel.json"), b, 0o644)
	}
	for _, lang := range [][]string{{"python", "-c", "print(1)"}, {"bash", "-c", "echo 1"}} {
		cmd := exec.Command(bin, append([]string{"--data-dir", seed, "--run-dir", t.TempDir(), "run"}, lang...)...)
		cmd.Env = append(os.Environ(), env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("warm %s: %v\n%s", lang[0], err, out)
		}
	}

	const capacity = 2
	var hosts []*serveProc
	var backends []string
	for i := 1; i <= 3; i++ {
		s := &serveProc{t: t, bin: bin, name: fmt.Sprintf("h%d", i), data: hostDataDir(t, fx, seed), run: t.TempDir(),
			addr: clustertest.FreeAddr(t), env: env}
		s.args = []string{"--pool", "", "--max-vms", "3", "--queue-wait", "2m", "--idle-hibernate", "0",
			"--cluster", url, "--host-id", s.name, "--capacity", fmt.Sprint(capacity),
			"--remote", s3.URL("cluster"), "--signing-key", key, "--heartbeat", "500ms", "--cluster-ttl", "4s"}
		hosts = append(hosts, s)
		backends = append(backends, s.addr)
	}
	t.Cleanup(func() {
		for _, s := range hosts {
			if s.proc != nil && s.alive() {
				s.proc.Stop(syscall.SIGTERM, time.Minute)
			}
			if t.Failed() {
				for i, l := range s.logs {
					t.Logf("%s (start %d) log:\n%s", s.name, i+1, l)
				}
			}
		}
	})
	for _, s := range hosts {
		s.start()
	}
	byName := map[string]*serveProc{}
	for _, s := range hosts {
		byName[s.name] = s
	}
	frontAddr := clustertest.FreeAddr(t)
	front := "http://" + frontAddr
	hap := clustertest.StartHAProxy(t, frontAddr, clustertest.HAProxyConfig(frontAddr, backends))
	defer func() {
		if t.Failed() {
			t.Logf("haproxy log:\n%s", hap.Log())
		}
	}()
	owner := func(id string) string {
		e, err := dir.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return e.Owner
	}
	entry := func(id string) cluster.Entry {
		e, err := dir.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}

	// kept: one sandbox per host, named by host.
	kept := map[string]string{}
	var extra []string
	t.Run("24 concurrent creates through the front spread, and no host is ever over capacity", func(t *testing.T) {
		stop := make(chan struct{})
		overs := make(chan string, 100)
		var watch sync.WaitGroup
		watch.Add(1)
		go func() { // sample the directory and the QEMU processes while the creates run
			defer watch.Done()
			for {
				select {
				case <-stop:
					return
				case <-time.After(100 * time.Millisecond):
				}
				hs, err := dir.Hosts(ctx)
				if err != nil {
					continue
				}
				for _, h := range hs {
					if h.Used > capacity {
						overs <- fmt.Sprintf("directory: %s holds %d", h.ID, h.Used)
					}
				}
				for _, s := range hosts {
					if n := s.vms(); n > capacity {
						overs <- fmt.Sprintf("%s runs %d QEMUs", s.name, n)
					}
				}
			}
		}()
		var wg sync.WaitGroup
		var mu sync.Mutex
		codes := map[int]int{}
		var ids []string
		for range 24 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var a apiAnswer
				code := call(t, "POST", front+"/v1/sandboxes", map[string]any{"language": "python"}, &a)
				mu.Lock()
				defer mu.Unlock()
				codes[code]++
				if code == 201 {
					ids = append(ids, a.ID)
				} else if code != 503 {
					t.Errorf("create: %d %+v", code, a)
				}
			}()
		}
		wg.Wait()
		close(stop)
		watch.Wait()
		close(overs)
		for o := range overs {
			t.Errorf("over capacity: %s", o)
		}
		if codes[201] != 3*capacity {
			t.Fatalf("answers %v: want %d sandboxes created, the rest refused with 503", codes, 3*capacity)
		}
		per := map[string][]string{}
		for _, id := range ids {
			per[owner(id)] = append(per[owner(id)], id)
		}
		for _, s := range hosts {
			if len(per[s.name]) != capacity {
				t.Fatalf("spread %v: want %d on each host", per, capacity)
			}
			kept[s.name] = per[s.name][0]
			extra = append(extra, per[s.name][1])
		}
		// h1 keeps its second one running, for the kill; the rest go.
		for _, id := range extra[1:] {
			if code := call(t, "DELETE", front+"/v1/sandboxes/"+id, nil, nil); code != 204 {
				t.Fatalf("delete %s: %d", id, code)
			}
		}
		extra = extra[:1]
	})
	if len(kept) != 3 {
		t.FailNow()
	}

	t.Run("the same exec sent to each of the three hosts gives the same answer", func(t *testing.T) {
		id := kept["h2"]
		call(t, "POST", front+"/v1/sandboxes/"+id+"/files", map[string]any{"files": []map[string]string{{"path": "notes.txt", "content": "on h2\n"}}}, nil)
		for _, s := range hosts {
			mustExec(t, s.url(), id, "cat notes.txt; echo $((6*7))", "on h2\n42\n")
		}
	})

	t.Run("an API key made for the cluster works on every host", func(t *testing.T) {
		cmd := exec.Command(bin, "key", "create", "--cluster", url, "--tenant", "acme")
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("key create --cluster: %v", err)
		}
		key := strings.TrimSpace(string(out))
		for _, s := range hosts {
			for _, c := range []struct {
				key  string
				want int
			}{{key, 200}, {"e2b_" + strings.Repeat("0", 40), 401}} {
				req, _ := http.NewRequest("GET", s.url()+"/v1/sandboxes", nil)
				req.Header.Set("Authorization", "Bearer "+c.key)
				resp, err := httpClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				var list struct{ Sandboxes []apiAnswer }
				json.NewDecoder(resp.Body).Decode(&list)
				resp.Body.Close()
				if resp.StatusCode != c.want || (c.want == 200 && len(list.Sandboxes) != 0) {
					t.Fatalf("%s with key %.8s…: %d %+v; want %d (acme has no sandboxes)", s.name, c.key, resp.StatusCode, list, c.want)
				}
			}
		}
	})

	t.Run("30 one-shot runs through the front all succeed", func(t *testing.T) {
		var wg sync.WaitGroup
		sem := make(chan struct{}, 6)
		errs := make(chan string, 30)
		for i := range 30 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				var a apiAnswer
				code := call(t, "POST", front+"/v1/run", map[string]any{"language": "bash", "code": fmt.Sprintf("echo run-%d", i)}, &a)
				if code != 200 || a.Stdout != fmt.Sprintf("run-%d\n", i) {
					errs <- fmt.Sprintf("run %d: %d %+v", i, code, a)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for e := range errs {
			t.Error(e)
		}
	})

	hib := kept["h1"]
	t.Run("a hibernate leaves the objects in S3 and the row in PostgreSQL", func(t *testing.T) {
		call(t, "POST", front+"/v1/sandboxes/"+hib+"/files", map[string]any{"files": []map[string]string{{"path": "keep.txt", "content": "survives h1\n"}}}, nil)
		var a apiAnswer
		if code := call(t, "POST", front+"/v1/sandboxes/"+hib+"/hibernate", nil, &a); code != 200 || a.State != "hibernated" {
			t.Fatalf("hibernate: %d %+v", code, a)
		}
		e := entry(hib)
		name := fmt.Sprintf("sandboxes/%s/%d", hib, e.Generation)
		if e.Owner != "h1" || e.State != state.Hibernated || e.Remote != name {
			t.Fatalf("directory row: %+v; want hibernated on h1 and stored as %s", e, name)
		}
		objs := strings.Join(s3.Objects("cluster/"+name+"/"), " ")
		for _, f := range []string{"manifest.json", "manifest.sig", "vmstate"} {
			if !strings.Contains(objs, name+"/"+f) {
				t.Fatalf("S3 objects %q lack %s", objs, f)
			}
		}
	})

	running := extra[0] // on h1, running
	t.Run("kill -9 of a host: its hibernated sandbox resumes elsewhere with its files, its running one is lost", func(t *testing.T) {
		if owner(running) != "h1" {
			t.Fatalf("the running sandbox is on %s", owner(running))
		}
		before := hosts[1].vms() + hosts[2].vms()
		hosts[0].kill()
		waitFor(t, 30*time.Second, "takeover of h1's sandboxes", func() bool {
			return owner(hib) != "h1" && owner(hib) != "" && owner(running) != "h1"
		})
		mustExec(t, front, hib, "cat keep.txt", "survives h1\n")
		a, code := execIn(t, front, running, "true")
		if code != 409 || a.Code != "sandbox_lost" || !strings.Contains(a.Error, "host h1 stopped heartbeating") {
			t.Fatalf("the dead host's running sandbox: %d %+v", code, a)
		}
		// Two live hosts raced for the orphan: exactly one runs it.
		if after := hosts[1].vms() + hosts[2].vms(); after != before+1 {
			t.Fatalf("QEMUs on h2 and h3: %d before, %d after resuming one sandbox", before, after)
		}
		n := 0
		for _, s := range hosts[1:] {
			if _, err := os.Stat(filepath.Join(s.data, "sandboxes", hib)); err == nil {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("%d hosts hold the orphan's files", n)
		}
	})

	t.Run("the killed host restarts and drops what it no longer owns", func(t *testing.T) {
		hosts[0].start()
		for _, id := range []string{hib, running} {
			if _, err := os.Stat(filepath.Join(hosts[0].data, "sandboxes", id)); !os.IsNotExist(err) {
				t.Fatalf("restarted h1 still has %s: %v", id, err)
			}
		}
		if owned, _ := dir.Owned(ctx, "h1"); len(owned) != 0 {
			t.Fatalf("h1 owns %d sandboxes after its restart", len(owned))
		}
		mustExec(t, hosts[0].url(), hib, "cat keep.txt", "survives h1\n")
	})

	t.Run("a clean stop moves its sandboxes", func(t *testing.T) {
		moved := kept["h2"]
		if owner(moved) != "h2" {
			t.Fatalf("h2's sandbox is on %s", owner(moved))
		}
		hosts[1].stop()
		e := entry(moved)
		if e.Owner == "h2" {
			t.Fatalf("after a clean stop h2 still owns its sandbox: %+v", e)
		}
		mustExec(t, front, moved, "cat notes.txt", "on h2\n")
		if o := owner(moved); o == "h2" || o == "" {
			t.Fatalf("moved sandbox owner %q", o)
		}
		hosts[1].start()
	})

	t.Run("PostgreSQL stopped for 10 s and started again", func(t *testing.T) {
		id := kept["h3"]
		h3 := byName[owner(id)]
		pg.Stop()
		start := time.Now()
		mustExec(t, h3.url(), id, "echo serving", "serving\n")
		var a apiAnswer
		if code := call(t, "POST", h3.url()+"/v1/sandboxes", map[string]any{"language": "python"}, &a); code != 503 {
			t.Fatalf("create while PostgreSQL is down: %d %+v, want 503", code, a)
		}
		time.Sleep(10*time.Second - time.Since(start))
		mustExec(t, h3.url(), id, "echo still", "still\n")
		if err := pg.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(6 * time.Second) // past a TTL after the hosts are back: no wrong takeover
		if e := entry(id); e.Owner != h3.name || e.State != state.Running {
			t.Fatalf("after the outage: %+v; want still running on %s", e, h3.name)
		}
		for _, s := range hosts {
			mustExec(t, s.url(), id, "echo back", "back\n")
		}
	})

	t.Run("MinIO stopped during a hibernate: no half-written snapshot is ever used", func(t *testing.T) {
		id := kept["h3"]
		h := byName[owner(id)]
		call(t, "POST", front+"/v1/sandboxes/"+id+"/files", map[string]any{"files": []map[string]string{{"path": "late.txt", "content": "stored late\n"}}}, nil)
		s3.Stop()
		var a apiAnswer
		if code := call(t, "POST", front+"/v1/sandboxes/"+id+"/hibernate", nil, &a); code != 200 || a.State != "hibernated" {
			t.Fatalf("hibernate with S3 down: %d %+v", code, a)
		}
		e := entry(id)
		if e.State != state.Hibernated || e.Remote != "" {
			t.Fatalf("row after a hibernate S3 did not take: %+v", e)
		}
		name := fmt.Sprintf("sandboxes/%s/%d", id, e.Generation)
		s3.Start()
		for _, o := range s3.Objects("cluster/" + name + "/") {
			if strings.HasSuffix(o, "manifest.json") {
				t.Fatalf("a manifest (%s) is in S3 although the row says the hibernation is not stored", o)
			}
		}
		waitFor(t, 60*time.Second, "the pending hibernation stored", func() bool { return entry(id).Remote == name })
		h.kill()
		waitFor(t, 30*time.Second, "takeover", func() bool { o := owner(id); return o != h.name && o != "" })
		mustExec(t, front, id, "cat late.txt", "stored late\n")
	})
}
