// Package vmm defines the contract between firesandbox and a virtual machine
// monitor. Drivers live in sub-packages (vmm/qemu, vmm/firecracker) and are
// chosen from configuration in one place (vmm/drivers).
//
// A Machine's lifecycle:
//
//	d := qemu.New(qemu.Config{...})
//	m, err := d.Boot(ctx, vmm.Config{ID: "vm1", Kernel: ..., Initrd: ..., Disks: ...})
//	// m.State() == vmm.StateRunning; the guest is booting.
//	conn, err := m.DialAgent(ctx) // the agent channel (virtio-serial or vsock)
//	... agentproto.NewClient(conn).WaitHello(ctx) ...
//	err = m.Pause(ctx)            // StatePaused
//	err = m.Snapshot(ctx, dir)    // dir/memory + dir/vmstate; still paused
//	err = m.Stop(ctx)             // StateStopped; every process, socket and temp file gone
//
//	m2, err := d.Restore(ctx, dir, cfg) // StateRunning again, from the snapshot
//
// Operations check the state first: pausing a stopped machine is
// ErrInvalidState, not a hang. A request's context bounds the call, never
// the machine: cancelling ctx during Boot cleans up, cancelling it later
// does nothing to a running VM. Stop is idempotent and always frees
// everything the driver created, whatever state the machine is in.
package vmm
