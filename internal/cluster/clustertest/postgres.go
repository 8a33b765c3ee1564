package clustertest

import (
	"context"
	"errors"
	"fmt"
	"net"
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

// ErrNoPostgres means no PostgreSQL server binaries were found.
var ErrNoPostgres = errors.New("no PostgreSQL server (initdb, postgres): install Debian's postgresql-15, or set FIRESANDBOX_PG_BIN")

// Postgres is a throwaway PostgreSQL server on loopback.
type Postgres struct {
	bin  string // directory of initdb and postgres
	base string // removed by Close
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

// StartPostgres starts a throwaway server (see NewPostgres) that is
// stopped and removed when the test ends.
func StartPostgres(t testing.TB) *Postgres {
	t.Helper()
	p, err := NewPostgres()
	if errors.Is(err, ErrNoPostgres) {
		need(t, "no PostgreSQL server (initdb, postgres)", "install Debian's postgresql-15, or set FIRESANDBOX_PG_BIN")
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// NewPostgres initialises a database cluster in a temporary directory and
// starts a server for it on a free loopback port, with fsync off (the
// data is thrown away). As root, the server runs as the postgres user
// (or nobody): PostgreSQL refuses to run as root. Close removes it all.
func NewPostgres() (*Postgres, error) {
	bin := findPostgres()
	if bin == "" {
		return nil, ErrNoPostgres
	}
	base, err := os.MkdirTemp("", "firesandbox-pg-")
	if err != nil {
		return nil, err
	}
	addr, err := freeAddr()
	if err != nil {
		os.RemoveAll(base)
		return nil, err
	}
	p := &Postgres{bin: bin, base: base, data: filepath.Join(base, "data"), sock: filepath.Join(base, "sock"), addr: addr}
	if err := p.init(); err != nil {
		p.Close()
		return nil, err
	}
	if err := p.Start(); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

func (p *Postgres) init() error {
	if err := os.Chmod(p.base, 0o755); err != nil {
		return err
	}
	for _, d := range []string{p.data, p.sock} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return err
		}
	}
	if os.Geteuid() == 0 {
		cred, err := serverUser()
		if err != nil {
			return err
		}
		p.cred = cred
		for _, d := range []string{p.data, p.sock} {
			if err := os.Chown(d, int(cred.Uid), int(cred.Gid)); err != nil {
				return err
			}
		}
	}
	cmd := exec.Command(filepath.Join(p.bin, "initdb"), "-D", p.data, "-U", "firesandbox", "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	cmd.Dir = p.base
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("initdb: %v\n%s", err, out)
	}
	return nil
}

// serverUser is who the server runs as when the caller is root.
func serverUser() (*syscall.Credential, error) {
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
	}
	return nil, errors.New("running as root, and there is neither a postgres nor a nobody user to run PostgreSQL as")
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// Addr is the server's host:port.
func (p *Postgres) Addr() string { return p.addr }

// URL is the connection string of database db.
func (p *Postgres) URL(db string) string {
	return fmt.Sprintf("postgres://firesandbox@%s/%s?sslmode=disable", p.addr, db)
}

// Start starts the server (again, after Stop) and waits until it answers.
func (p *Postgres) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proc != nil {
		return nil
	}
	host, port, _ := net.SplitHostPort(p.addr)
	cmd := exec.Command(filepath.Join(p.bin, "postgres"), "-D", p.data, "-k", p.sock, "-h", host, "-p", port,
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		"-c", "max_connections=200", "-c", "log_min_messages=warning")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	cmd.Dir = p.base
	proc, err := StartProcess(cmd)
	if err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := pgx.Connect(ctx, p.URL("postgres"))
		cancel()
		if err == nil {
			c.Close(context.Background())
			p.proc = proc
			return nil
		}
		select {
		case <-proc.Exited():
			return fmt.Errorf("postgres exited: %v\n%s", err, proc.Log)
		default:
		}
		if time.Now().After(deadline) {
			proc.Kill()
			return fmt.Errorf("postgres did not answer within 30s: %v\n%s", err, proc.Log)
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

// Close stops the server and removes its files.
func (p *Postgres) Close() {
	p.Stop()
	os.RemoveAll(p.base)
}

// CreateDatabase creates an empty database and returns its URL.
func (p *Postgres) CreateDatabase(ctx context.Context) (string, error) {
	name := fmt.Sprintf("t%d_%d", os.Getpid(), dbSeq.Add(1))
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, p.URL("postgres"))
	if err != nil {
		return "", err
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", err
	}
	return p.URL(name), nil
}

// NewDatabase is CreateDatabase for a test.
func (p *Postgres) NewDatabase(t testing.TB) string {
	t.Helper()
	u, err := p.CreateDatabase(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return u
}
