package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/firesandbox/firesandbox/internal/api"
	"github.com/firesandbox/firesandbox/internal/api/client"
	"github.com/firesandbox/firesandbox/internal/sandbox"
	"golang.org/x/sys/unix"
)

// socketPath is where a serve of this data directory answers on a unix
// socket: in its run directory, reachable only by its owner. The name
// says which data directory it serves, so serves of several data
// directories can share a run directory and a command finds its own.
func (g *globalFlags) socketPath() string {
	abs, err := filepath.Abs(g.dataDir)
	if err != nil || abs == sandbox.DefaultDataDir {
		return filepath.Join(g.runDir, "api.sock")
	}
	h := sha256.Sum256([]byte(abs))
	return filepath.Join(g.runDir, "api-"+hex.EncodeToString(h[:4])+".sock")
}

// serviceLock is held by whoever manages the sandboxes of a data
// directory: a serve for its whole life, or a CLI command that runs the
// service in-process for one command. Two managers would each believe
// they own the same VMs.
func (g *globalFlags) serviceLock(wait time.Duration) (release func(), err error) {
	if err := os.MkdirAll(g.dataDir, 0o700); err != nil {
		return nil, err
	}
	p := filepath.Join(g.dataDir, "service.lock")
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", p, err)
	}
	deadline := time.Now().Add(wait)
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) || time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("%s is in use by another firesandbox (a serve, or a sandbox command still running): %w", g.dataDir, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// listenSocket opens serve's unix socket, owner-only, replacing a stale
// one a killed serve left. A socket something still answers on belongs to
// another serve (of another data directory): that is an error, not ours
// to take.
func listenSocket(p string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return nil, err
	}
	if c, err := net.DialTimeout("unix", p, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("%s is served by another firesandbox: give each serve its own --run-dir", p)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	old := unix.Umask(0o177)
	ln, err := net.Listen("unix", p)
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", p, err)
	}
	return ln, nil
}

// liveSocket returns the socket of this data directory's serve if one
// answers on it, else "": none was started, or the one that was is gone
// and left its socket behind (a connection to it is refused at once).
func (g *globalFlags) liveSocket() string {
	sock := g.socketPath()
	c, err := net.DialTimeout("unix", sock, time.Second)
	if err != nil {
		return ""
	}
	c.Close()
	return sock
}

// apiConn is a client of the native API: a running serve's, or one this
// command serves itself until done.
type apiConn struct {
	*client.Client
	close func() error
}

// connectAPI returns a client of this data directory's serve if one runs,
// else starts the service in-process (serving the same API on a private
// socket) for the length of the command. Either way the command speaks
// the same API and prints the same.
func (g *globalFlags) connectAPI(ctx context.Context) (*apiConn, error) {
	if sock := g.liveSocket(); sock != "" {
		return &apiConn{Client: client.New("unix://"+sock, ""), close: func() error { return nil }}, nil
	}
	release, err := g.serviceLock(30 * time.Second)
	if err != nil {
		return nil, err
	}
	mgr, err := g.manager()
	if err != nil {
		release()
		return nil, err
	}
	// Sandboxes made from the command line without a serve live as long as
	// any may (unless their own --timeout says less): they are hibernated
	// between commands and would otherwise expire between two of them.
	netc := g.networkConfig("")
	netc.Quiet = true
	svc, err := sandbox.OpenService(mgr, sandbox.ServiceConfig{SandboxTimeout: sandbox.DefaultMaxTimeout, Network: netc}, g.logger())
	if err != nil {
		release()
		return nil, err
	}
	srv, err := api.Open(api.Config{}, svc, api.WithLogger(g.logger()))
	if err != nil {
		release()
		return nil, errors.Join(err, svc.Close(context.Background()))
	}
	dir, err := os.MkdirTemp("", "firesandbox-cli")
	if err != nil {
		release()
		return nil, errors.Join(err, svc.Close(context.Background()))
	}
	priv := filepath.Join(dir, "api.sock")
	ln, err := listenSocket(priv)
	if err != nil {
		os.RemoveAll(dir)
		release()
		return nil, errors.Join(err, svc.Close(context.Background()))
	}
	go srv.Serve(ln)
	return &apiConn{Client: client.New("unix://"+priv, ""), close: func() error {
		// Running sandboxes are hibernated: the next command resumes them.
		err := errors.Join(srv.Shutdown(context.Background()), svc.Close(context.Background()))
		os.RemoveAll(dir)
		release()
		return err
	}}, nil
}
