// Package agent is the guest side of firesandbox: the init that prepares the
// guest (modules, root filesystem, cgroups, channel) and the server that
// runs the host's requests: execs under limits, a table of processes
// (background, stdin, signals, terminals), and file calls.
//
// The same Server runs in two places:
//
//   - in the guest, as PID 1 (cmd/firesandbox-agent), with a chroot into the
//     overlay root (mounted nosuid,nodev), an unprivileged uid, a cgroup per
//     exec under the users' cgroup (the agent's own is protected), and
//     no_new_privs plus a seccomp filter for every user process;
//   - on the host, as an ordinary process or in a test, over a socket pair,
//     with whatever isolation the Config asks for (none, in most unit
//     tests). Wall time, output caps, status reporting, processes and file
//     calls work the same in both.
//
// A Server serves one channel at a time: Serve(conn) sends Hello, then
// routes frames until the channel fails. Its read loop never does work that
// can block: execs, file calls, transfers and stdin writes run on
// goroutines of their own, so pings and cancels always pass. Foreground
// execs end with their channel; background processes do not.
//
// Files: config.go (Config), run.go (launching and supervising a process),
// proctable.go (the process table), output.go, pty.go, seccomp*.go,
// users.go (guest users, per-thread file identity), fileops.go (file calls
// resolved with openat2), watch.go (inotify), paths.go and files.go (the
// exec's working directory and its files), handlers_*.go (requests),
// server.go (the channel), cgroup.go, prewarm.go (a fork server) and
// spare.go (spares, for runtimes that cannot fork): prewarmed runtimes,
// init_linux.go (PID 1).
package agent
