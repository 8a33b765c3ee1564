package api

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/network"
	"github.com/firesandbox/firesandbox/internal/network/nettest"
	"github.com/firesandbox/firesandbox/internal/sandbox"
	"github.com/firesandbox/firesandbox/internal/state"
	"github.com/firesandbox/firesandbox/internal/testutil"
)

// wsEcho is a WebSocket echo server for the guest, on the standard
// library alone (the image has no WebSocket package): it answers one text
// frame with "echo: " and the frame's text.
const wsEcho = `
import base64, hashlib, socket, threading
def recvn(c, n):
    b = b""
    while len(b) < n:
        d = c.recv(n - len(b))
        if not d:
            raise EOFError
        b += d
    return b
def serve(c):
    req = b""
    while b"\r\n\r\n" not in req:
        req += c.recv(4096)
    key = [l.split(b":", 1)[1].strip() for l in req.split(b"\r\n") if l.lower().startswith(b"sec-websocket-key:")][0]
    acc = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + acc + b"\r\n\r\n")
    while True:
        h = recvn(c, 2)
        op, n = h[0] & 15, h[1] & 127
        if n == 126:
            n = int.from_bytes(recvn(c, 2), "big")
        mask = recvn(c, 4)
        p = bytes(b ^ mask[i % 4] for i, b in enumerate(recvn(c, n)))
        if op == 8:
            c.sendall(b"\x88\x00")
            return
        msg = b"echo: " + p
        c.sendall(bytes([0x81, len(msg)]) + msg)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8001))
s.listen(8)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
`

// TestPortsInRealVM: servers started in a real guest are reached through
// /v1/sandboxes/{id}/ports/{port}/ (HTTP and WebSocket) and E2B's
// E2b-Sandbox-Port, by the sandbox's tenant only.
func TestPortsInRealVM(t *testing.T) {
	fx := testutil.RequireVMs(t)
	testutil.RequireQEMU(t)
	w := nettest.New(t)
	runDir, err := os.MkdirTemp("/tmp", "fsports-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(runDir) })
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	mgr, err := sandbox.New(sandbox.Config{DataDir: fx.DataDir, RunDir: runDir, Driver: "qemu", Accel: fx.Accel}, sandbox.WithLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := sandbox.OpenService(mgr, sandbox.ServiceConfig{StateDir: t.TempDir(), MaxVMs: 4, Network: &sandbox.NetworkConfig{Mode: sandbox.NetworkOn,
		Config: network.Config{RunDir: t.TempDir(), Prefix: "fsp", UplinkNetns: w.Uplink(), DNSUpstreams: []string{w.DNS()}}}}, log)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := Open(Config{RequireKey: true, MaxTimeout: 30 * time.Second}, svc, WithLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	defer func() {
		srv.Shutdown(context.Background())
		<-done
		svc.Close(context.Background())
		if n := testutil.VMMProcesses(); n > 0 {
			t.Errorf("%d VMM processes left", n)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	keyA, _, err := srv.keys.CreateKey(ctx, "acme", "")
	if err != nil {
		t.Fatal(err)
	}
	keyB, _, err := srv.keys.CreateKey(ctx, "beta", "")
	if err != nil {
		t.Fatal(err)
	}

	// Made through E2B's control plane, so it has E2B's tokens too.
	a := call(t, url, "POST", "/sandboxes", `{"templateID":"python"}`, bearer(keyA)...)
	if a.status != 201 {
		t.Fatalf("E2B create: %d %s", a.status, a.raw)
	}
	id, token := a.body["sandboxID"].(string), a.body["envdAccessToken"].(string)
	defer call(t, url, "DELETE", "/v1/sandboxes/"+id, "", bearer(keyA)...)
	err = svc.Sandboxes.WithAgent(ctx, "acme", id, func(ctx context.Context, _ state.Sandbox, c *agentproto.Client) error {
		for _, argv := range [][]string{{"python3", "-m", "http.server", "8000"}, {"python3", "ws.py"}} {
			if _, err := c.Start(ctx, agentproto.ExecRequest{Argv: argv, Dir: sandbox.WorkDir, Background: true, Files: []agentproto.File{
				{Path: "hello.txt", Content: []byte("served from the guest\n")}, {Path: "ws.py", Content: []byte(wsEcho)}}}, io.Discard, io.Discard); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	port := "/v1/sandboxes/" + id + "/ports/8000"
	var got answer
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		if got = call(t, url, "GET", port+"/hello.txt", "", bearer(keyA)...); got.status == 200 {
			break
		}
	}
	if got.status != 200 || got.raw != "served from the guest\n" {
		t.Fatalf("GET through the port proxy: %d %q", got.status, got.raw)
	}
	if r := call(t, url, "GET", port+"/", "", bearer(keyA)...); r.status != 200 || !strings.Contains(r.raw, "hello.txt") {
		t.Fatalf("the directory listing: %d %s", r.status, r.raw)
	}
	if r := call(t, url, "GET", port+"/hello.txt", "", bearer(keyB)...); r.status != 404 {
		t.Fatalf("another tenant's key: %d %s", r.status, r.raw)
	}
	if r := call(t, url, "GET", port+"/hello.txt", ""); r.status != 401 {
		t.Fatalf("no key: %d %s", r.status, r.raw)
	}
	if r := call(t, url, "GET", "/v1/sandboxes/"+id+"/ports/8999/", "", bearer(keyA)...); r.status != 502 || !strings.Contains(r.raw, "nothing listens on port 8999") {
		t.Fatalf("a port nothing listens on: %d %s", r.status, r.raw)
	}

	// A WebSocket, through the same proxy.
	ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(url, "http")+"/v1/sandboxes/"+id+"/ports/8001/", &websocket.DialOptions{
		HTTPHeader: http.Header{"Authorization": {"Bearer " + keyA}}})
	if err != nil {
		t.Fatalf("WebSocket through the port proxy: %v", err)
	}
	if err := ws.Write(ctx, websocket.MessageText, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if _, msg, err := ws.Read(ctx); err != nil || string(msg) != "echo: hi" {
		t.Fatalf("WebSocket echo: %q %v", msg, err)
	}
	ws.Close(websocket.StatusNormalClosure, "")

	// E2B's way to the same port: the sandbox's header, its token.
	r := call(t, url, "GET", "/hello.txt", "", "E2b-Sandbox-Id", id, "E2b-Sandbox-Port", "8000", "X-Access-Token", token)
	if r.status != 200 || r.raw != "served from the guest\n" {
		t.Fatalf("E2b-Sandbox-Port: %d %s", r.status, r.raw)
	}
}
