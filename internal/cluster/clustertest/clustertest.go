// Package clustertest starts the real servers a cluster test needs, on
// loopback, each in its own temporary directory: PostgreSQL (initdb into
// a temp dir), MinIO and HAProxy. Each can be stopped and started again
// on the same port with the same data, so a test can take it away.
//
// A missing server skips the test with the reason, unless
// FIRESANDBOX_CLUSTER_TESTS=1 (make test-cluster) asks for the cluster
// tests: then it is a broken setup and the test fails.
//
//	pg := clustertest.StartPostgres(t)
//	url := pg.NewDatabase(t)       // a fresh database per test
//	s3 := clustertest.StartMinIO(t)
//	t.Setenv(...s3.Env())           // AWS_* for snapshot.NewRemote
//	pg.Stop(); pg.Start()           // an outage
package clustertest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Required says the cluster tests must run (FIRESANDBOX_CLUSTER_TESTS=1):
// missing servers fail the test instead of skipping it.
func Required() bool { return os.Getenv("FIRESANDBOX_CLUSTER_TESTS") == "1" }

// need skips or fails the test for a missing server.
func need(t testing.TB, what, hint string) {
	t.Helper()
	if Required() {
		t.Fatalf("FIRESANDBOX_CLUSTER_TESTS=1 but %s: %s", what, hint)
	}
	t.Skipf("cluster test skipped: %s (%s); FIRESANDBOX_CLUSTER_TESTS=1 makes this a failure", what, hint)
}

// FreeAddr returns a loopback address with a port nothing listens on.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// WaitTCP waits until addr accepts connections or d passes.
func WaitTCP(addr string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not accept connections within %s: %w", addr, d, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Log keeps a server's output (its last MiB) for failure messages.
type Log struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *Log) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.buf.Len() > 1<<20 {
		b := l.buf.Bytes()
		keep := append([]byte(nil), b[len(b)-(512<<10):]...)
		l.buf.Reset()
		l.buf.Write(keep)
	}
	return l.buf.Write(p)
}

// String returns what was kept.
func (l *Log) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// Process is a server process the test started.
type Process struct {
	Cmd    *exec.Cmd
	Log    *Log
	exited chan struct{}
}

// StartProcess starts cmd in its own process group, its output kept in a
// Log; it dies with the test process (parent-death signal).
func StartProcess(cmd *exec.Cmd) (*Process, error) {
	p := &Process{Cmd: cmd, Log: &Log{}, exited: make(chan struct{})}
	if cmd.Stdout == nil {
		cmd.Stdout = p.Log
	}
	if cmd.Stderr == nil {
		cmd.Stderr = p.Log
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		_ = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// Exited is closed once the process has been waited for.
func (p *Process) Exited() <-chan struct{} { return p.exited }

// Stop sends sig to the process and waits up to d for it to exit, then
// kills its whole process group.
func (p *Process) Stop(sig syscall.Signal, d time.Duration) {
	_ = p.Cmd.Process.Signal(sig)
	select {
	case <-p.exited:
	case <-time.After(d):
		_ = syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGKILL)
		<-p.exited
	}
}

// Kill kills the process group at once (SIGKILL) and waits.
func (p *Process) Kill() {
	_ = syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGKILL)
	<-p.exited
}

// find looks for a program: $env, then each directory in dirs (globs),
// then PATH.
func find(env, name string, dirs ...string) string {
	if p := os.Getenv(env); env != "" && p != "" {
		return p
	}
	for _, d := range dirs {
		ms, _ := filepath.Glob(filepath.Join(d, name))
		for i := len(ms) - 1; i >= 0; i-- { // the newest version sorts last
			if fi, err := os.Stat(ms[i]); err == nil && !fi.IsDir() {
				return ms[i]
			}
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	return ""
}

// goBin returns $(go env GOPATH)/bin/name if it exists.
func goBin(name string) string {
	out, err := exec.Command("go", "env", "GOPATH").Output()
	if err != nil {
		return ""
	}
	for _, gp := range filepath.SplitList(strings.TrimSpace(string(out))) {
		p := filepath.Join(gp, "bin", name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p
		}
	}
	return ""
}
