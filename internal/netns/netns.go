// Package netns enters and creates network namespaces bound at files
// (the layout `ip netns add` uses under /run/netns). Both the VM network
// host (internal/network) and the VMM plumbing (internal/vmm/vmmproc) use
// it, and so do tests that make hosts of their own.
package netns

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// Do runs fn on an OS thread that has joined the network namespace ns,
// so the sockets and taps fn opens belong to it, and so does a process fn
// starts (Go forks from the calling thread). The thread returns to its
// own namespace afterwards (see inNamespace).
func Do(ns *os.File, fn func() error) error {
	enter := func() error {
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("enter network namespace %s: %w", ns.Name(), err)
		}
		return nil
	}
	return inNamespace(enter, "network namespace "+ns.Name(), fn)
}

// Create makes a new network namespace and binds it at path, which must
// not exist. On failure nothing is left at path.
func Create(path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	f.Close()
	enter := func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("unshare: %w", err)
		}
		return nil
	}
	bind := func() error { return unix.Mount("/proc/thread-self/ns/net", path, "none", unix.MS_BIND, "") }
	if err := inNamespace(enter, "new namespace", bind); err != nil {
		os.Remove(path)
		return fmt.Errorf("create network namespace %s: %w", path, err)
	}
	return nil
}

// inNamespace runs fn on a locked OS thread that enter has moved into
// another network namespace, then moves the thread back to its own
// (what names the other, for errors). If moving back fails the thread
// stays locked and the runtime discards it with its goroutine, so no
// other goroutine ever runs in the wrong namespace.
func inNamespace(enter func() error, what string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		own, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open own network namespace: %w", err)
			return
		}
		defer own.Close()
		if err := enter(); err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		ferr := fn()
		if err := unix.Setns(int(own.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("leave %s: %w", what, err))
			return // locked: the thread ends with this goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Delete unbinds and removes a namespace made by Create. The namespace
// itself goes away with its last user.
func Delete(path string) error {
	err := unix.Unmount(path, unix.MNT_DETACH)
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}
