package snapshot

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// minioServer is a real MinIO server on loopback for the S3 tests, with
// its own data directory. Stop and Start keep the port and the data, so a
// test can take the server away mid-transfer and bring it back.
type minioServer struct {
	t      testing.TB
	bin    string
	dir    string
	addr   string
	user   string
	pass   string
	bucket string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has been waited for
	log    *minioLog
}

// minioLog keeps the server's output for failure messages.
type minioLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *minioLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.buf.Len() > 1<<20 {
		l.buf.Reset() // keep the tail, roughly
	}
	return l.buf.Write(p)
}

func (l *minioLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// findMinIO returns the MinIO server binary: $FIRESANDBOX_MINIO, else
// minio in PATH, else $(go env GOPATH)/bin/minio. Without one the test
// skips, unless FIRESANDBOX_S3_TESTS=1 asks for the S3 tests: then a
// missing server is a broken setup and the test fails.
// FIRESANDBOX_S3_TESTS=0 skips them even where MinIO is installed.
func findMinIO(t testing.TB) string {
	t.Helper()
	if os.Getenv("FIRESANDBOX_S3_TESTS") == "0" {
		t.Skip("S3 tests skipped: FIRESANDBOX_S3_TESTS=0")
	}
	if p := os.Getenv("FIRESANDBOX_MINIO"); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("FIRESANDBOX_MINIO=%s: %v", p, err)
		}
		return p
	}
	if p, err := exec.LookPath("minio"); err == nil {
		return p
	}
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		for _, gopath := range filepath.SplitList(strings.TrimSpace(string(out))) {
			p := filepath.Join(gopath, "bin", "minio")
			if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
				return p
			}
		}
	}
	if os.Getenv("FIRESANDBOX_S3_TESTS") == "1" {
		t.Fatal("FIRESANDBOX_S3_TESTS=1 but no MinIO server found ($FIRESANDBOX_MINIO, minio in PATH, $(go env GOPATH)/bin/minio): `make minio` builds it")
	}
	t.Skip("S3 tests skipped: set FIRESANDBOX_S3_TESTS=1 and build MinIO with `make minio`")
	return ""
}

// startMinIO starts a MinIO server with an empty bucket and stops it when
// the test ends; see findMinIO for when it skips or fails instead.
func startMinIO(t testing.TB) *minioServer {
	t.Helper()
	s := &minioServer{
		t:      t,
		bin:    findMinIO(t),
		dir:    t.TempDir(),
		addr:   freeLoopbackAddr(t),
		user:   "firesandbox-test",
		pass:   "firesandbox-test-secret",
		bucket: "snapshots",
		log:    &minioLog{},
	}
	t.Cleanup(s.Stop)
	s.Start()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Client().MakeBucket(ctx, s.bucket, minio.MakeBucketOptions{}); err != nil {
		t.Fatalf("minio: make bucket: %v\nserver log:\n%s", err, s.log)
	}
	return s
}

// freeLoopbackAddr returns 127.0.0.1:<a port free right now>.
func freeLoopbackAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().String()
}

// Start starts the server (again) on its port and data directory and
// returns when it answers its liveness probe.
func (s *minioServer) Start() {
	s.t.Helper()
	if err := s.start(); err != nil {
		s.t.Fatal(err)
	}
}

// start is Start for goroutines other than the test's, which must not
// call t.Fatal.
func (s *minioServer) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return fmt.Errorf("minio: start while running")
	}
	cmd := exec.Command(s.bin, "server", "--quiet", "--address", s.addr,
		"--certs-dir", filepath.Join(s.dir, "certs"), filepath.Join(s.dir, "data"))
	cmd.Env = append(os.Environ(),
		"MINIO_ROOT_USER="+s.user,
		"MINIO_ROOT_PASSWORD="+s.pass,
		"MINIO_BROWSER=off",
		"MINIO_UPDATE=off",
		"HOME="+s.dir, // MinIO creates $HOME/.minio
	)
	cmd.Stdout, cmd.Stderr = s.log, s.log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("minio: start %s: %w", s.bin, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	s.cmd, s.exited = cmd, exited

	// MinIO has no readiness signal but its health endpoint: poll it,
	// watching for an early exit, up to a deadline.
	url := "http://" + s.addr + "/minio/health/live"
	deadline := time.Now().Add(60 * time.Second)
	client := &http.Client{Timeout: 2 * time.Second}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		select {
		case <-exited:
			s.cmd = nil
			return fmt.Errorf("minio: exited before it was ready: %v\nserver log:\n%s", cmd.ProcessState, s.log)
		case <-tick.C:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("minio: %s not 200 within 60s (last: %v)\nserver log:\n%s", url, err, s.log)
		}
	}
}

// Stop kills the server, abruptly, like a crash or a network cut, and
// returns once it has exited. Stopping a stopped server does nothing.
func (s *minioServer) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	select {
	case <-s.exited:
	case <-time.After(30 * time.Second):
		s.t.Errorf("minio: pid %d did not exit within 30s of SIGKILL", s.cmd.Process.Pid)
	}
	s.cmd = nil
}

// Freeze stops the server process with SIGSTOP: its connections stay
// open and silent, like a hung server or a dead link. Thaw undoes it.
func (s *minioServer) Freeze() error { return s.signal(syscall.SIGSTOP) }

// Thaw resumes a frozen server with SIGCONT.
func (s *minioServer) Thaw() error { return s.signal(syscall.SIGCONT) }

func (s *minioServer) signal(sig syscall.Signal) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return fmt.Errorf("minio: %v: not running", sig)
	}
	if err := s.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("minio: %v: %w", sig, err)
	}
	return nil
}

// Endpoint is the server's URL, as AWS_ENDPOINT_URL would have it.
func (s *minioServer) Endpoint() string { return "http://" + s.addr }

// Env is the environment a Remote needs to reach the server.
func (s *minioServer) Env() map[string]string {
	return map[string]string{
		"AWS_ENDPOINT_URL":      s.Endpoint(),
		"AWS_ACCESS_KEY_ID":     s.user,
		"AWS_SECRET_ACCESS_KEY": s.pass,
		"AWS_REGION":            "us-east-1",
	}
}

// Client is a plain minio-go client, for tests to reach behind Remote's
// back (corrupt an object, plant a manifest).
func (s *minioServer) Client() *minio.Client {
	s.t.Helper()
	c, err := minio.New(s.addr, &minio.Options{
		Creds:  credentials.NewStaticV4(s.user, s.pass, ""),
		Region: "us-east-1",
	})
	if err != nil {
		s.t.Fatalf("minio client: %v", err)
	}
	return c
}

// plant writes a snapshot's manifest (and signature, unless nil) under
// <dir>/ behind Remote's back, as whoever controls the bucket could.
func (s *minioServer) plant(t *testing.T, dir, manifest string, sig []byte) {
	t.Helper()
	ctx := context.Background()
	c := s.Client()
	if _, err := c.PutObject(ctx, s.bucket, dir+"/manifest.json", strings.NewReader(manifest), int64(len(manifest)), minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	if sig == nil {
		if err := c.RemoveObject(ctx, s.bucket, dir+"/manifest.sig", minio.RemoveObjectOptions{}); err != nil {
			t.Fatal(err)
		}
		return
	}
	if _, err := c.PutObject(ctx, s.bucket, dir+"/manifest.sig", bytes.NewReader(sig), int64(len(sig)), minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
}

// put writes an object behind Remote's back.
func (s *minioServer) put(t *testing.T, object string, data []byte) {
	t.Helper()
	if _, err := s.Client().PutObject(context.Background(), s.bucket, object, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
}

// get reads an object behind Remote's back.
func (s *minioServer) get(t *testing.T, object string) []byte {
	t.Helper()
	o, err := s.Client().GetObject(context.Background(), s.bucket, object, minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	b, err := io.ReadAll(o)
	if err != nil {
		t.Fatalf("get %s: %v", object, err)
	}
	return b
}

// Remote returns a Remote on s3://<bucket>/<prefix> of this server that
// signs with remoteTestSigner and trusts it (opts may override both).
func (s *minioServer) Remote(prefix string, opts ...RemoteOption) *Remote {
	s.t.Helper()
	env := s.Env()
	url := "s3://" + s.bucket
	if prefix != "" {
		url += "/" + prefix
	}
	opts = append([]RemoteOption{
		WithRemoteEnv(func(k string) string { return env[k] }),
		WithRemoteLogger(slog.New(slog.NewTextHandler(s.t.Output(), nil))),
		WithRemoteSigner(remoteTestSigner),
		WithRemoteTrust(remoteTestTrust),
	}, opts...)
	r, err := NewRemote(url, opts...)
	if err != nil {
		s.t.Fatalf("NewRemote(%s): %v", url, err)
	}
	return r
}

// String helps failure messages.
func (s *minioServer) String() string { return fmt.Sprintf("minio at %s", s.addr) }
