package vmmproc

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// helperEnv makes the test binary act as a stand-in VMM: it runs
// helperMain with the arguments after "--".
const helperEnv = "VMMPROC_TEST_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		os.Exit(helperMain(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// helperMain: "sleep", "ignore-term" (sleeps, ignoring SIGTERM), "exit N",
// "flood N" (writes N bytes to stdout and stderr, then exits),
// "netns" (prints its network namespace), "listen PATH DELAY" (listens on a unix socket after DELAY, then sleeps).
func helperMain(args []string) int {
	switch args[0] {
	case "sleep":
		time.Sleep(time.Minute)
	case "netns":
		ns, _ := os.Readlink("/proc/self/ns/net")
		fmt.Println(ns)
	case "ignore-term":
		signal.Ignore(syscall.SIGTERM)
		fmt.Println("ready")
		time.Sleep(time.Minute)
	case "exit":
		n, _ := strconv.Atoi(args[1])
		fmt.Fprintln(os.Stderr, "helper: exiting with", n)
		return n
	case "flood":
		n, _ := strconv.Atoi(args[1])
		chunk := make([]byte, 4096)
		for i := range chunk {
			chunk[i] = 'a' + byte(i%26)
		}
		for left := n; left > 0; left -= len(chunk) {
			os.Stdout.Write(chunk[:min(left, len(chunk))])
		}
		os.Stderr.WriteString("flood done\n")
	case "listen":
		d, _ := time.ParseDuration(args[2])
		time.Sleep(d)
		ln, err := net.Listen("unix", args[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer ln.Close()
		time.Sleep(time.Minute)
	}
	return 0
}

func helper(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	return cmd
}

func start(t *testing.T, stdout, stderr *Ring, args ...string) *Process {
	t.Helper()
	p, err := Start(helper(t, args...), stdout, stderr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop(time.Second) })
	return p
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }
