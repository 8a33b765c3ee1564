package clustertest

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// MinIO is a real S3 server on loopback with one empty bucket.
type MinIO struct {
	t      testing.TB
	bin    string
	dir    string
	Addr   string
	User   string
	Pass   string
	Bucket string

	mu   sync.Mutex
	proc *Process
}

// StartMinIO starts MinIO ($FIRESANDBOX_MINIO, minio in PATH, or
// $(go env GOPATH)/bin/minio: `make minio`) with bucket "firesandbox".
func StartMinIO(t testing.TB) *MinIO {
	t.Helper()
	bin := find("FIRESANDBOX_MINIO", "minio")
	if bin == "" {
		bin = goBin("minio")
	}
	if bin == "" {
		need(t, "no MinIO server", "`make minio` builds it")
	}
	m := &MinIO{t: t, bin: bin, dir: t.TempDir(), Addr: FreeAddr(t), User: "firesandbox-test", Pass: "firesandbox-test-secret", Bucket: "firesandbox"}
	t.Cleanup(m.Stop)
	m.Start()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := m.Client().MakeBucket(ctx, m.Bucket, minio.MakeBucketOptions{}); err != nil {
		t.Fatalf("minio: make bucket: %v\n%s", err, m.proc.Log)
	}
	return m
}

// Start starts the server (again) and waits until it is live.
func (m *MinIO) Start() {
	m.t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.proc != nil {
		return
	}
	cmd := exec.Command(m.bin, "server", m.dir, "--address", m.Addr, "--quiet")
	cmd.Env = append(os.Environ(), "MINIO_ROOT_USER="+m.User, "MINIO_ROOT_PASSWORD="+m.Pass,
		"MINIO_BROWSER=off", "MINIO_UPDATE=off", "CI=true")
	proc, err := StartProcess(cmd)
	if err != nil {
		m.t.Fatalf("start minio: %v", err)
	}
	m.proc = proc
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get("http://" + m.Addr + "/minio/health/live")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		select {
		case <-proc.Exited():
			m.proc = nil
			m.t.Fatalf("minio exited\n%s", proc.Log)
		default:
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("minio not live within 60s\n%s", proc.Log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Stop stops the server; its data stays for Start.
func (m *MinIO) Stop() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.proc == nil {
		return
	}
	m.proc.Stop(syscall.SIGTERM, 10*time.Second)
	m.proc = nil
}

// Client is an S3 client of the server.
func (m *MinIO) Client() *minio.Client {
	c, err := minio.New(m.Addr, &minio.Options{Creds: credentials.NewStaticV4(m.User, m.Pass, "")})
	if err != nil {
		m.t.Fatal(err)
	}
	return c
}

// URL is the remote URL of the bucket under prefix.
func (m *MinIO) URL(prefix string) string { return "s3://" + m.Bucket + "/" + prefix }

// Env is what snapshot.NewRemote reads to reach the server.
func (m *MinIO) Env() []string {
	return []string{"AWS_ENDPOINT_URL_S3=http://" + m.Addr, "AWS_ACCESS_KEY_ID=" + m.User,
		"AWS_SECRET_ACCESS_KEY=" + m.Pass, "AWS_REGION=us-east-1"}
}

// Getenv reads Env, for snapshot.WithRemoteEnv.
func (m *MinIO) Getenv(k string) string {
	for _, kv := range m.Env() {
		if len(kv) > len(k) && kv[:len(k)] == k && kv[len(k)] == '=' {
			return kv[len(k)+1:]
		}
	}
	return ""
}

// Objects lists the object names under prefix.
func (m *MinIO) Objects(prefix string) []string {
	var out []string
	for o := range m.Client().ListObjects(context.Background(), m.Bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if o.Err == nil {
			out = append(out, o.Key)
		}
	}
	return out
}
