// Package agent is the guest side of firesandbox: the init that prepares the
// guest (modules, root filesystem, channel) and the server that runs the
// host's exec requests under limits.
//
// The same Server runs in two places:
//
//   - in the guest, as PID 1 (cmd/firesandbox-agent), with a chroot into the
//     overlay root, an unprivileged uid, and a cgroup per exec for memory and
//     process limits;
//   - on the host, as an ordinary process or in a test, over a socket pair,
//     with whatever isolation the Config asks for (none, in unit tests). Wall
//     time, output caps and status reporting work the same in both.
//
// A Server serves one channel at a time: Serve(conn) sends Hello, then
// answers frames until the channel fails.
package agent
