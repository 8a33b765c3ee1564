package clustertest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Postgres is a throwaway PostgreSQL server on loopback.
type Postgres struct {
	t    testing.TB
	bin  string // directory of initdb and postgres
	base string // removed at the end
	data string
	sock string
	addr string
	cred *syscall.Credential

	mu   sync.Mutex
	proc *Process
}

var dbSeq atomic.Int64

// findPostgres returns the directory holding initdb and postgres:
// $FIRESANDBOX_PG_BIN, Debian's /usr/lib/postgresql/<v>/bin, or PATH.
func findPostgres() string {
	if d := os.Getenv("FIRESANDBOX_PG_BIN"); d != "" {
		return d
	}
	if p := find("", "initdb", "/usr/lib/postgresql/*/bin"); p != "" {
		if _, err := os.Stat(filepath.Join(filepath.Dir(p), "postgres")); err == nil {
			return filepath.Dir(p)
		}
	}
	return ""
}

// StartPostgres initialises a database cluster in a temporary directory
// and starts a server for it on a free loopback port; it is stopped and
// removed when the test ends. As root, the server runs as the postgres
// user (or nobody): PostgreSQL refuses to run as root.
func StartPostgres(t testing.TB) *Postgres {
	t.Helper()
	bin := findPostgres()
	if bin == "" {
		need(t, "no PostgreSQL server (initdb, postgres)", "install Debian's postgresql-15, or set FIRESANDBOX_PG_BIN")
	}
	base, err := os.MkdirTemp("", "firesandbox-pg-")
	if err != nil {
		t.Fatal(err)
	}
	p := &Postgres{t: t, bin: bin, base: base, data: filepath.Join(base, "data"), sock: filepath.Join(base, "sock"), addr: FreeAddr(t)}
	t.Cleanup(func() {
		p.Stop()
		os.RemoveAll(base)
	})
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{p.data, p.sock} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if os.Geteuid() == 0 {
		p.cred = serverUser(t)
		for _, d := range []string{p.data, p.sock} {
			if err := os.Chown(d, int(p.cred.Uid), int(p.cred.Gid)); err != nil {
				t.Fatal(err)
			}
		}
	}
	cmd := exec.Command(filepath.Join(bin, "initdb"), "-D", p.data, "-U", "firesandbox", "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	cmd.Dir = base
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	p.Start()
	return p
}

// serverUser is who the server runs as when the test runs as root.
func serverUser(t testing.TB) *syscall.Credential {
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	t.Fatal("running as root, and there is neither a postgres nor a nobody user to run PostgreSQL as")
	return nil
}

// Addr is the server's host:port.
func (p *Postgres) Addr() string { return p.addr }

// URL is the connection string of database db.
func (p *Postgres) URL(db string) string {
	return fmt.Sprintf("postgres://firesandbox@%s/%s?sslmode=disable", p.addr, db)
}

// Start starts the server (again, after Stop) and waits until it answers.
func (p *Postgres) Start() {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proc != nil {
		return
	}
	host, port, _ := splitHostPort(p.addr)
	cmd := exec.Command(filepath.Join(p.bin, "postgres"), "-D", p.data, "-k", p.sock, "-h", host, "-p", port,
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		"-c", "max_connections=200", "-c", "log_min_messages=warning")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	cmd.Dir = p.base
	proc, err := StartProcess(cmd)
	if err != nil {
		p.t.Fatalf("start postgres: %v", err)
	}
	p.proc = proc
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := pgx.Connect(ctx, p.URL("postgres"))
		cancel()
		if err == nil {
			c.Close(context.Background())
			return
		}
		select {
		case <-proc.Exited():
			p.proc = nil
			p.t.Fatalf("postgres exited: %v\n%s", err, proc.Log)
		default:
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("postgres did not answer within 30s: %v\n%s", err, proc.Log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop shuts the server down (fast shutdown: open connections are cut).
func (p *Postgres) Stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proc == nil {
		return
	}
	p.proc.Stop(syscall.SIGINT, 20*time.Second)
	p.proc = nil
}

// Log is the running server's output.
func (p *Postgres) Log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proc == nil {
		return ""
	}
	return p.proc.Log.String()
}

// NewDatabase creates an empty database and returns its URL.
func (p *Postgres) NewDatabase(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("t%d_%d", os.Getpid(), dbSeq.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, p.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	return p.URL(name)
}
