package sandbox

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/network"
	"github.com/firesandbox/firesandbox/internal/network/nettest"
	"github.com/firesandbox/firesandbox/internal/state"
	"github.com/firesandbox/firesandbox/internal/testutil"
)

// probe is a program run in the guest: for each target it fetches
// http://HOST/ (or connects, for "tcp:" ones) and prints one JSON object
// of target -> "ok:<body>" or "err:<why>". Names are resolved by the
// guest (through its resolv.conf: our resolver); "ip@name" connects to ip
// with name as the Host header, as a guest that hard-codes an address.
const probe = `
import json, sys, http.client
out = {}
for t in sys.argv[1:]:
    try:
        ip, _, name = t.partition("@")
        host, _, port = ip.partition(":")
        c = http.client.HTTPConnection(host, int(port or 80), timeout=8)
        c.request("GET", "/", headers={"Host": name or ip})
        out[t] = "ok:" + c.getresponse().read().decode()
    except Exception as e:
        out[t] = "err:%s %s" % (type(e).__name__, e)
print(json.dumps(out))
`

// probeIn runs probe in a sandbox and returns its verdicts.
func probeIn(t *testing.T, s *Sandboxes, id string, targets ...string) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out, errb lockedBuffer
	res, err := s.Exec(ctx, "net", id, agentproto.ExecRequest{
		Argv: append([]string{"python3", "probe.py"}, targets...), Dir: "/tmp",
		Files:  []agentproto.File{{Path: "probe.py", Content: []byte(probe)}},
		Limits: agentproto.Limits{WallMillis: 150_000},
	}, &out, &errb)
	if err != nil || res.Code != 0 {
		t.Fatalf("probe in %s: %v %+v, stderr %s", id, err, res, errb.String())
	}
	got := map[string]string{}
	if err := json.Unmarshal([]byte(out.String()), &got); err != nil {
		t.Fatalf("probe output %q: %v", out.String(), err)
	}
	return got
}

func wantReach(t *testing.T, got map[string]string, target, body string) {
	t.Helper()
	if v := got[target]; !strings.HasPrefix(v, "ok:"+body) {
		t.Errorf("%s: %q, want it reached (%q)", target, v, body)
	}
}

// wantRefused: the target's server never answered. The guest sees an
// error, or (plain HTTP) the filter's own refusal.
func wantRefused(t *testing.T, got map[string]string, target string) {
	t.Helper()
	v, ok := got[target]
	if !ok || strings.Contains(v, "hello from") || !(strings.HasPrefix(v, "err:") || strings.Contains(v, "denied by the sandbox's network policy")) {
		t.Errorf("%s: %q, want it refused", target, v)
	}
}

// TestNetworkInRealVMs: real guests (QEMU) behind real namespaces, taps
// and rules, against a nettest world. Few VMs: a run without network, one
// sandbox for the policy and its change, two clones at once (one of them
// serves a port), and nothing left at the end.
func TestNetworkInRealVMs(t *testing.T) {
	fx := testutil.RequireVMs(t)
	testutil.RequireQEMU(t)
	w := nettest.New(t)
	run, err := os.MkdirTemp("/tmp", "fsnet-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(run) })
	m, err := New(Config{DataDir: fx.DataDir, RunDir: run, Driver: "qemu", Accel: fx.Accel})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := OpenService(m, netServiceConfig(w, t.TempDir()), nil)
	if err != nil {
		t.Fatal(err)
	}
	owner := svc.Network.Owner()
	closed := false
	defer func() {
		if !closed {
			svc.Close(context.Background())
		}
	}()
	s := svc.Sandboxes
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	t.Run("a run has no network by default", func(t *testing.T) {
		var out lockedBuffer
		res, err := m.Run(ctx, RunRequest{Language: "python", Files: []agentproto.File{{Content: []byte(
			"import os, socket\nprint(sorted(os.listdir('/sys/class/net')))\n" +
				"try:\n    socket.create_connection(('" + nettest.AllowedIP + "', 80), timeout=3)\n    print('connected')\n" +
				"except OSError as e:\n    print('errno', e.errno)\n")}}}, Streams{Stdout: &out})
		if err != nil || res.Run == nil || res.Run.Code != 0 {
			t.Fatalf("run: %v %+v", err, res)
		}
		if got := out.String(); got != "['lo']\nerrno 101\n" { // ENETUNREACH: no interface, no route
			t.Fatalf("a run without network: %q, want only lo and no route", got)
		}
	})

	t.Run("a run that asks for network", func(t *testing.T) {
		var out lockedBuffer
		res, err := m.Run(ctx, RunRequest{Language: "python", Args: []string{"allowed.test", nettest.OtherIP},
			Files: []agentproto.File{{Content: []byte(probe)}}, RunLimits: agentproto.Limits{WallMillis: 60_000},
			Network: &network.Policy{AllowOut: []string{"allowed.test"}}}, Streams{Stdout: &out})
		if err != nil || res.Run == nil || res.Run.Code != 0 {
			t.Fatalf("run: %v %+v", err, res)
		}
		got := map[string]string{}
		if err := json.Unmarshal([]byte(out.String()), &got); err != nil {
			t.Fatalf("probe output %q: %v", out.String(), err)
		}
		wantReach(t, got, "allowed.test", "hello from "+nettest.AllowedIP)
		wantRefused(t, got, nettest.OtherIP)
	})

	var a state.Sandbox
	t.Run("policy", func(t *testing.T) {
		a, err = s.Create(ctx, CreateRequest{Tenant: "net", Language: "python", Network: &network.Policy{
			AllowOut: []string{"allowed.test", nettest.OtherIP + "/32"}, DenyOut: []string{"denied.test"}}})
		if err != nil {
			t.Fatal(err)
		}
		got := probeIn(t, s, a.ID, "allowed.test", nettest.OtherIP, "denied.test",
			nettest.DeniedIP+"@denied.test", nettest.DeniedIP+"@allowed.test", nettest.DeniedIP,
			nettest.MetadataIP, nettest.PrivateIP, nettest.HostIP+":8080", "10.0.2.2:8080")
		wantReach(t, got, "allowed.test", "hello from "+nettest.AllowedIP+" host=allowed.test") // an allowed domain
		wantReach(t, got, nettest.OtherIP, "hello from "+nettest.OtherIP)                       // an allowed CIDR
		wantRefused(t, got, "denied.test")                                                      // not resolved
		wantRefused(t, got, nettest.DeniedIP+"@denied.test")                                    // dialled by IP
		wantRefused(t, got, nettest.DeniedIP+"@allowed.test")                                   // an allowed name on a denied IP
		wantRefused(t, got, nettest.DeniedIP)
		wantRefused(t, got, nettest.MetadataIP)     // link-local: the cloud's metadata
		wantRefused(t, got, nettest.PrivateIP)      // private
		wantRefused(t, got, nettest.HostIP+":8080") // the host's own address
		wantRefused(t, got, "10.0.2.2:8080")        // the gateway is no way into the host
	})
	if a.ID == "" {
		t.FailNow()
	}

	t.Run("policy change while running", func(t *testing.T) {
		if _, err := s.SetNetwork(ctx, "net", a.ID, network.Policy{AllowOut: []string{"denied.test"}}); err != nil {
			t.Fatal(err)
		}
		got := probeIn(t, s, a.ID, "denied.test", "allowed.test", nettest.OtherIP)
		wantReach(t, got, "denied.test", "hello from "+nettest.DeniedIP)
		wantRefused(t, got, "allowed.test")
		wantRefused(t, got, nettest.OtherIP)
	})
	if err := s.Delete(ctx, "net", a.ID); err != nil {
		t.Fatal(err)
	}

	t.Run("two clones at once, and a port", func(t *testing.T) {
		p := &network.Policy{AllowOut: []string{"allowed.test"}}
		var ids [2]string
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i := range ids {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sb, err := s.Create(ctx, CreateRequest{Tenant: "net", Language: "python", Network: p})
				ids[i], errs[i] = sb.ID, err
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		defer func() {
			for _, id := range ids {
				s.Delete(context.Background(), "net", id)
			}
		}()
		// Both guests have the snapshot's address and MAC, and fetch at the
		// same time, each through its own namespace.
		results := make([]map[string]string, 2)
		for i, id := range ids {
			wg.Add(1)
			go func() { defer wg.Done(); results[i] = probeIn(t, s, id, "allowed.test") }()
		}
		wg.Wait()
		for i := range results {
			wantReach(t, results[i], "allowed.test", "hello from "+nettest.AllowedIP)
		}

		// A web server in the first clone, reached through the port
		// dialer (what the API's port proxy uses), only by its tenant.
		err := s.WithAgent(ctx, "net", ids[0], func(ctx context.Context, _ state.Sandbox, c *agentproto.Client) error {
			_, err := c.Start(ctx, agentproto.ExecRequest{Argv: []string{"python3", "-m", "http.server", "8000"}, Dir: WorkDir,
				Files: []agentproto.File{{Path: "hello.txt", Content: []byte("served from the guest\n")}}, Background: true}, io.Discard, io.Discard)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		proxy := network.PortProxy(s.PortDialer("net", ids[0]), 8000, network.PortProxyConfig{})
		var body string
		for deadline := time.Now().Add(time.Minute); ; {
			body, err = proxyGet(proxy, "/hello.txt")
			if err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(500 * time.Millisecond) // the server is starting (a first python3 under TCG)
		}
		if err != nil || body != "served from the guest\n" {
			t.Fatalf("GET /hello.txt through the port proxy: %q %v", body, err)
		}
		if _, err := s.PortDialer("other", ids[0]).DialGuest(ctx, 8000); err == nil || !strings.Contains(err.Error(), "no such sandbox") {
			t.Fatalf("another tenant's dial: %v", err)
		}
	})

	if err := svc.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	closed = true
	if got := netLeftovers(t, w, owner); len(got) != 0 {
		t.Fatalf("after the VMs stopped: %v", got)
	}
	noLeftovers(t, m)
}

// proxyGet serves one GET through h, in process.
func proxyGet(h http.Handler, path string) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()
	c := http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{Proxy: nil}}
	resp, err := c.Get("http://" + ln.Addr().String() + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	return string(b), err
}
