// Command firesandbox-agent is the guest agent. Started as PID 1 in a
// firesandbox microVM it prepares the guest and serves the host over its
// channel; started as an ordinary process it serves one socket, which is how
// its logic is exercised without a VM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/firesandbox/firesandbox/internal/agent"
	"github.com/firesandbox/firesandbox/internal/buildinfo"
	"golang.org/x/sys/unix"
)

func main() {
	if os.Getpid() == 1 {
		guestMain()
		return
	}
	os.Exit(hostMain())
}

func guestMain() {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintf(os.Stderr, "firesandbox-agent: panic: %v\n", r)
		}
		time.Sleep(100 * time.Millisecond) // let the console drain
		unix.Sync()
		_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	}()
	err := agent.Init(buildinfo.String(), log)
	fmt.Fprintf(os.Stderr, "firesandbox-agent: fatal: %v\n", err)
}

func hostMain() int {
	fs := flag.NewFlagSet("firesandbox-agent", flag.ContinueOnError)
	listen := fs.String("listen", "", "serve on a unix socket at this path (one client at a time)")
	stdio := fs.Bool("stdio", false, "serve on standard input and output")
	root := fs.String("root", "", "chroot commands into this directory")
	uid := fs.Int("uid", -1, "run commands as this uid (and gid); -1 keeps the agent's")
	cgroup := fs.String("cgroup", "", "cgroup v2 directory to create per-exec cgroups in")
	confine := fs.Bool("confine", false, "start commands under no_new_privs and the agent's seccomp filter")
	version := fs.Bool("version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: firesandbox-agent [-listen PATH | -stdio] [flags]\n\n"+
			"As PID 1 in a firesandbox VM this is the guest's init; run by hand it serves\n"+
			"the agent protocol on one socket, for tests and debugging.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	if *version {
		fmt.Println(buildinfo.String())
		return 0
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	srv := agent.NewServer(agent.Config{Root: *root, UID: *uid, GID: *uid, CgroupParent: *cgroup, Confine: *confine, Version: buildinfo.String()}, log)
	ctx := context.Background()
	switch {
	case *stdio:
		err := srv.Serve(ctx, struct {
			io.Reader
			io.Writer
		}{os.Stdin, os.Stdout})
		if err != nil && !errors.Is(err, io.EOF) {
			log.Error("serve", "err", err)
			return 1
		}
		return 0
	case *listen != "":
		path := strings.TrimPrefix(*listen, "unix:")
		_ = os.Remove(path)
		l, err := net.Listen("unix", path)
		if err != nil {
			log.Error("listen", "err", err)
			return 1
		}
		defer os.Remove(path)
		for {
			c, err := l.Accept()
			if err != nil {
				log.Error("accept", "err", err)
				return 1
			}
			if err := srv.Serve(ctx, c); err != nil && !errors.Is(err, io.EOF) {
				log.Warn("serve", "err", err)
			}
			c.Close()
		}
	}
	fs.Usage()
	return 2
}
