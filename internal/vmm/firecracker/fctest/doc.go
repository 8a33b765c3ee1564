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
//     path the snapshot recorded), so a stale socket fails as it would.
//
// The guest answers vsock CONNECT requests for the port named by
// fs.channel=vsock:PORT on its kernel command line and serves the agent
// protocol there; connections are reset at snapshot creation, and
// handshakes wait while the VM is paused, as with a real guest whose vCPUs
// are stopped.
//
// A test binary becomes a fake firecracker executable by calling Main from
// TestMain when it is re-executed (see MainEnv).
package fctest
