package main

import (
	"context"
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
// socket: in its run directory, reachable only by its owner.
func (g *globalFlags) socketPath() string { return filepath.Join(g.runDir, "api.sock") }

// serviceLock is held by whoever manages the sandboxes of a data
// directory: a serve for its whole life, or a CLI command that runs the
// service in-process for one command. Two managers would each believe
// they own the same VMs. The run directory is locked too: it holds the
// VMs' sockets and serve's own, so two serves of different data
// directories must not share one either.
func (g *globalFlags) serviceLock(wait time.Duration) (release func(), err error) {
	data, err := lockDir(g.dataDir, "service.lock", wait)
	if err != nil {
		return nil, fmt.Errorf("%s is in use by another firesandbox (a serve, or a sandbox command still running): %w", g.dataDir, err)
	}
	run, err := lockDir(g.runDir, "serve.lock", wait)
	if err != nil {
		data()
		return nil, fmt.Errorf("run directory %s is in use by another firesandbox; give each serve its own --run-dir: %w", g.runDir, err)
	}
	return func() { run(); data() }, nil
}

// lockDir takes an exclusive lock on dir/name, waiting up to wait.
func lockDir(dir, name string, wait time.Duration) (release func(), err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	p := filepath.Join(dir, name)
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
			return nil, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// listenSocket opens serve's unix socket, owner-only, replacing a stale
// one a killed serve left (the service lock says none is alive).
func listenSocket(p string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return nil, err
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
	sock := g.socketPath()
	if c, err := net.DialTimeout("unix", sock, time.Second); err == nil {
		c.Close()
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
	svc, err := sandbox.OpenService(mgr, sandbox.ServiceConfig{}, g.logger())
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
