// Package fctest is a strict fake of the Firecracker VMM for tests: its
// REST API on a unix socket, its vsock proxy, and a stand-in guest whose
// agent is the real internal/agent server running on the host.
//
// The fake enforces the contract the driver relies on, more strictly than a
// real Firecracker where that catches driver bugs early:
//
//   - pre-boot resources (machine-config, boot-source, drives, vsock,
//     logger, serial) are refused once the instance started or a snapshot
//     was loaded, with 400 {"fault_message": ...};
//   - InstanceStart needs a boot source and a machine config (a real
//     Firecracker would default the shape to 1 vCPU and 128 MiB; a driver
//     that forgot it would boot a machine of the wrong size);
//   - unknown JSON fields, missing required fields and values outside the
//     schema's ranges are refused, and so are resource ids that are not
//     alphanumeric with underscores;
//   - files named in requests must exist, relative paths resolve against
//     the process's working directory, like Firecracker's;
//   - snapshot/create only while Paused; snapshot/load only on a fresh
//     process, and a failed load ends the process, as Firecracker does;
//   - the vsock socket is bound at PUT /vsock (and again at load, at the
//     path the snapshot recorded), so a stale socket fails as it would;
//   - a network interface opens its tap (host_dev_name) when it is put,
//     in the namespace the process runs in, and holds it: a tap that is
//     missing or held by another VMM is refused, and a snapshot load
//     opens its interfaces' taps again by name;
//   - files are opened as Firecracker opens them (writable drives
//     read-write), as the user the fake runs as;
//   - jailed (started by the fake jailer), every path resolves inside the
//     jail, and one that leads out (a symlink to an outside or absolute
//     target, which would dangle in a real chroot) is refused.
//
// The fake jailer (JailerMain) checks its argv as the real one does, and
// refuses what would hide a driver bug (an --id after "--"); it builds the
// jail as the real one does (a copy of the exec file in
// <base>/<exec>/<id>/root, the root handed to --uid:--gid), and running as
// root it really joins --netns, drops to those ids and forks into a new
// PID namespace, so a file the jailed VMM cannot read or write, or a tap
// that is not in its namespace, is refused. It records what it
// did and saw (JailRecord) beside the jail's root.
//
// The guest answers vsock CONNECT requests for the port named by
// fs.channel=vsock:PORT on its kernel command line and serves the agent
// protocol there; connections are reset at snapshot creation, and
// handshakes wait while the VM is paused, as with a real guest whose vCPUs
// are stopped.
//
// A test binary becomes a fake firecracker (Main) or jailer (JailerMain)
// executable by calling them from TestMain when it is re-executed (see
// MainEnv). The package is split along its seams: server.go (instance,
// routing, path resolution), models.go (request bodies), preboot.go,
// actions.go, snapshot.go, vsock.go (the guest side), main.go (the
// process) and jailer.go.
package fctest
