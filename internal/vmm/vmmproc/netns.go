package vmmproc

import (
	"fmt"
	"os"

	"github.com/firesandbox/firesandbox/internal/netns"
)

// InNetns runs fn on an OS thread that has joined the network namespace
// at path (a file such as /run/netns/NAME), so the sockets and taps fn
// opens belong to it, and so does a process fn starts: Go forks from the
// calling thread, and a child keeps its parent thread's namespaces. An
// empty path runs fn as it is. The thread returns to its own namespace
// afterwards; if that fails it stays locked and the runtime discards it
// with its goroutine, so no other goroutine ever runs in the wrong one.
func InNetns(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	ns, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open network namespace: %w", err)
	}
	defer ns.Close()
	return netns.Do(ns, fn)
}
