// Package firecracker is the production vmm.Driver: Firecracker microVMs
// configured over Firecracker's REST API on a unix socket, optionally
// confined by Firecracker's jailer, with the guest agent on vsock.
//
// # Lifecycle
//
//	d, err := firecracker.New(firecracker.Config{}) // jailed, own net and PID namespaces
//	m, err := d.Boot(ctx, vmm.Config{
//		ID: "vm1", Kernel: vmlinux, Initrd: initrd, VCPUs: 1, MemoryMiB: 512,
//		Disks:   []vmm.Disk{{ID: "image", Path: img, ReadOnly: true}},
//		Cmdline: []string{"fs.root=" + firecracker.DiskDevice(0)},
//		RunDir:  "/run/firesandbox/vm1",
//	})
//
// Boot starts the jailer (or, with NoJailer, `firecracker --api-sock ...`),
// its stdout (the guest's serial console) and stderr going into bounded
// rings (vmmproc), records the VMM's pid and start time in RunDir, and
// waits for the API socket while watching for the process to die; if it
// does, the error carries the end of its output. It then configures, in this order: the logger
// (vmm.log), machine-config, boot-source (the ELF vmlinux, the initramfs,
// DefaultBootArgs + the caller's Cmdline + fs.channel=vsock:PORT +
// fs.modules=<vsock modules>, and net for a network device), the drives,
// the network interface (network-interfaces/net0, host_dev_name the
// device's tap), the vsock device (guest CID 3), and sends InstanceStart. The VMM runs in its own process group; a request's
// context bounds Boot, never the VM, and one goroutine owns the wait for it.
//
// DialAgent connects to RunDir/v.sock and performs Firecracker's
// host-initiated vsock handshake ("CONNECT <port>\n", "OK <n>\n"); after
// that the connection is the agent's byte stream. Pause and Resume are
// PATCH /vm. Snapshot, only while paused, is a Full snapshot into
// dir/vmstate and dir/memory. Restore starts a fresh VMM and loads the
// snapshot with the File memory backend (the memory file is mapped
// privately, so restores of one snapshot share its clean pages) and
// resume_vm. Stop sends SIGTERM, waits a grace period, sends SIGKILL (a
// cancelled context does not cut it short), then removes RunDir, the jail
// and the jailer's cgroup; it is idempotent. Firecracker has no
// parent-death signal: if the daemon dies, vmmproc.Sweep on the RunDir
// kills the recorded VMM (checking its start time first) and removes the
// jail.
//
// # Disks and paths
//
// Firecracker has no disk serials: drives are attached in the order they are
// configured, and since none is Firecracker's "root device" (the guest boots
// from the initramfs), the guest sees vmm.Config.Disks[i] as DiskDevice(i):
// /dev/vda, /dev/vdb, ... The caller names the image disk to the agent with
// fs.root=/dev/vda. Drive ids are the disk ids with "-" mapped to "_"
// (Firecracker allows only alphanumerics and underscores).
//
// Every path the API is given is relative to the VMM's working directory:
// RunDir without the jailer, the chroot with it (the jailer makes the
// chroot the VMM's root and working directory). Disks appear there as
// drives/<id> (symlinks in RunDir; hard links in a jail), the vsock socket
// is v.sock. A snapshot records these relative paths, so each restore
// resolves them in its own directory: every clone binds its own vsock
// socket and gets the writable disk its vmm.Config names for that id, and
// snapshots taken jailed restore unjailed and the other way round.
//
// # Jailer
//
// By default (NoJailer unset) the driver builds <ChrootBase>/<exec>/<id>/root
// before starting the jailer (JailerArgs gives its argv), hard-links the
// kernel, initrd, disks and snapshot files into it (copying read-only files
// when the chroot base is on another filesystem; never a writable disk,
// whose writes must reach the caller's file), and moves snapshots out of it,
// giving them to root and group GID (0640) so that any jailed VMM can
// restore them. Keep ChrootBase on the filesystem of the disks and
// snapshots. The jailer runs in a new network namespace (NetNS "", or joins
// the one NetNS names; "host" keeps ours; a machine with a network device
// always runs in the device's namespace, whose tap the driver first gives
// to UID:GID, since an unprivileged VMM may attach only to a tap it owns;
// without the jailer the driver starts Firecracker inside that namespace),
// drops to UID:GID, and forks
// Firecracker into its own PID namespace and exits (unless HostPIDNS); the
// driver then follows Firecracker through a pidfd.
//
// Diagnose reports whether all of this can work on a host, and why not.
// Package fctest holds the strict fake Firecracker the tests run against.
package firecracker
