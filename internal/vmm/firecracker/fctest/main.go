package fctest

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/firesandbox/firesandbox/internal/agent"
)

// Environment variables read by Main.
const (
	// MainEnv, set to "1", tells a test binary's TestMain to run Main.
	MainEnv = "FCTEST_FAKE_FIRECRACKER"
	// RootEnv, set by the fake jailer, is the jail's root: the process's
	// working directory, standing in for its chroot (Options.Jailed).
	RootEnv = "FCTEST_ROOT"
	// DropEnv, "uid:gid", set by a fake jailer running as root, makes the
	// fake drop to those ids before it serves anything, as the real
	// jailer does before it execs Firecracker.
	DropEnv = "FCTEST_DROP"
)

// Flags only the fake understands, for tests of the driver's handling of
// a misbehaving VMM. They reach the fake through the driver's ExtraArgs.
const (
	// FlagCrash makes the fake print an error and exit 1 before it
	// creates its API socket.
	FlagCrash = "--fctest-crash"
	// FlagIgnoreTerm makes the fake ignore SIGTERM, so only SIGKILL ends it.
	FlagIgnoreTerm = "--fctest-ignore-term"
	// FlagFlood=N makes the guest write N bytes to its serial console
	// (the fake's stdout) once the API is up: a guest flooding its console.
	FlagFlood = "--fctest-flood"
)

// Main runs a fake firecracker process with the given arguments (without
// the program name) and returns its exit code. It understands
// --api-sock, --id, --version, refuses them twice, and ignores the other
// real flags.
func Main(args []string) int {
	var (
		sock       = "/run/firecracker.socket"
		id         string
		ignoreTerm bool
		flood      int
		seen       = map[string]bool{}
	)
	for i := 0; i < len(args); i++ {
		a := args[i]
		name, val, hasVal := strings.Cut(a, "=")
		next := func() string {
			if hasVal {
				return val
			}
			if i+1 < len(args) {
				i++
				return args[i]
			}
			return ""
		}
		if seen[name] {
			fmt.Fprintf(os.Stderr, "Arguments parsing error: The argument '%s' was provided more than once.\n", name)
			return 153
		}
		seen[name] = true
		switch name {
		case "--version", "-V":
			fmt.Printf("Firecracker v%s\n\nSupported snapshot data format versions: v1.0.0\n", DefaultVersion)
			return 0
		case "--api-sock":
			sock = next()
		case "--id":
			id = next()
		case "--start-time-us", "--start-time-cpu-us", "--parent-cpu-time-us", "--level", "--log-path", "--seccomp-filter":
			next()
		case "--no-seccomp", "--show-level", "--show-log-origin", "--boot-timer", "--no-api":
		case FlagCrash:
			fmt.Fprintln(os.Stderr, "Error creating the vmm: fctest: simulated crash (KVM_CREATE_VM: Permission denied)")
			return 1
		case FlagIgnoreTerm:
			ignoreTerm = true
		case FlagFlood:
			flood, _ = strconv.Atoi(next())
		default:
			fmt.Fprintf(os.Stderr, "fctest: unknown argument %q\n", a)
			return 153 // Firecracker's exit code for bad arguments
		}
	}
	jailed := os.Getenv(RootEnv) != ""
	if jailed {
		if err := enterJail(os.Getenv(RootEnv), os.Getenv(DropEnv)); err != nil {
			fmt.Fprintf(os.Stderr, "fctest: %v\n", err)
			return 1
		}
	}
	return runMain(sock, id, jailed, ignoreTerm, flood)
}

// enterJail checks that the working directory is the jail root and drops
// to the ids in drop ("uid:gid", or "" to keep them).
func enterJail(root, drop string) error {
	wd, err := os.Getwd()
	if err != nil || wd != root {
		return fmt.Errorf("working directory %q is not the jail root %q", wd, root)
	}
	if drop == "" {
		return nil
	}
	var uid, gid int
	if _, err := fmt.Sscanf(drop, "%d:%d", &uid, &gid); err != nil {
		return fmt.Errorf("%s=%q: %v", DropEnv, drop, err)
	}
	if err := syscall.Setgroups(nil); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	if err := syscall.Setgid(gid); err != nil {
		return fmt.Errorf("setgid %d: %w", gid, err)
	}
	if err := syscall.Setuid(uid); err != nil {
		return fmt.Errorf("setuid %d: %w", uid, err)
	}
	return nil
}

func runMain(sock, id string, jailed, ignoreTerm bool, flood int) int {
	srv := New(Options{ID: id, Jailed: jailed, Console: os.Stdout, Flood: flood, Agent: agent.Config{UID: -1, GID: -1}})
	sp, err := srv.path(sock)
	if err != nil {
		fmt.Fprintf(os.Stderr, "Failed to open the API socket at %s: %v\n", sock, err)
		return 1
	}
	ln, err := net.Listen("unix", sp)
	if err != nil {
		fmt.Fprintf(os.Stderr, "Failed to open the API socket at %s: %v\n", sock, err)
		return 1
	}
	// Like Firecracker, leave the sockets behind on exit: whoever started
	// the process cleans up.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = hs.Serve(ln) }()
	sigs := waitSignals(ignoreTerm)
	code := 0
	select {
	case code = <-srv.Exited():
		// Let the request that ended the VMM get its answer first.
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = hs.Shutdown(ctx)
		cancel()
	case <-sigs:
		fmt.Fprintln(os.Stderr, "fctest: terminated by signal")
	}
	hs.Close()
	srv.Close()
	return code
}

func waitSignals(ignoreTerm bool) <-chan os.Signal {
	ch := make(chan os.Signal, 1)
	if ignoreTerm {
		signal.Ignore(syscall.SIGTERM)
		signal.Notify(ch, syscall.SIGINT)
	} else {
		signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	}
	return ch
}
