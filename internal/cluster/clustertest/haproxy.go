package clustertest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// HAProxy is a real HAProxy in front of a set of backends.
type HAProxy struct {
	Addr string
	Conf string
	proc *Process
}

// HAProxyConfig returns the front-end configuration the cluster tests
// use (deploy/haproxy.cfg is the documented one): HTTP, health checks on
// /healthz, and a retry on another server when one answers 503 or
// refuses the connection.
func HAProxyConfig(listen string, backends []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `global
    maxconn 2000

defaults
    mode http
    timeout connect 2s
    timeout client 5m
    timeout server 5m
    timeout tunnel 1h
    timeout http-request 30s
    option http-buffer-request
    retries 3
    retry-on conn-failure empty-response 503
    option redispatch 1

frontend firesandbox
    bind %s
    default_backend hosts

backend hosts
    balance leastconn
    option httpchk GET /healthz
    http-check expect status 200
    default-server inter 500ms fall 2 rise 1
`, listen)
	for i, be := range backends {
		fmt.Fprintf(&b, "    server h%d %s check\n", i+1, be)
	}
	return b.String()
}

// StartHAProxy checks and starts HAProxy with conf (see HAProxyConfig),
// listening on addr; it stops when the test ends.
func StartHAProxy(t testing.TB, addr, conf string) *HAProxy {
	t.Helper()
	bin := find("FIRESANDBOX_HAPROXY", "haproxy", "/usr/sbin")
	if bin == "" {
		need(t, "no HAProxy", "install Debian's haproxy")
	}
	p := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(p, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "-c", "-f", p).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c: %v\n%s\n%s", err, out, conf)
	}
	proc, err := StartProcess(exec.Command(bin, "-db", "-f", p))
	if err != nil {
		t.Fatal(err)
	}
	h := &HAProxy{Addr: addr, Conf: p, proc: proc}
	t.Cleanup(func() { proc.Stop(syscall.SIGTERM, 5*time.Second) })
	if err := WaitTCP(addr, 10*time.Second); err != nil {
		t.Fatalf("haproxy: %v\n%s", err, proc.Log)
	}
	return h
}

// Log is HAProxy's output.
func (h *HAProxy) Log() string { return h.proc.Log.String() }

func splitHostPort(addr string) (string, string, error) { return net.SplitHostPort(addr) }
