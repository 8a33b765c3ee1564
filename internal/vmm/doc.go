// Package vmm defines the contract between firesandbox and a virtual machine
// monitor. Drivers live in sub-packages (vmm/qemu, vmm/firecracker) and are
// chosen from configuration in one place (vmm/drivers); vmm/vmmproc holds
// the process plumbing they share, vmm/kvm the KVM check, and vmm/vmmtest
// the conformance suite both pass.
//
// A Machine's lifecycle:
//
//	d, err := qemu.New(qemu.Config{...}) // or drivers.New(cfg).Driver(ctx, probe)
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
// Operations check the state first (RequireState): pausing a stopped
// machine is ErrInvalidState, not a hang. A request's context bounds the
// call, never the machine: cancelling ctx during Boot cleans up, cancelling
// it later does nothing to a running VM. Stop is idempotent, is not cut
// short by a cancelled context, and always frees everything the driver
// created, whatever state the machine is in. Wait reports a VMM that died
// by itself as ErrExited. DialAgent works while paused (the guest answers
// once resumed). A RunDir in use by a live VMM is ErrInUse; one a dead VMM
// left is taken over. Each VMM's pid and start time are recorded in its
// RunDir, so vmmproc.Sweep can kill exactly the VMMs a killed daemon left.
//
// A Config may carry a network device (NetDevice): a virtio-net device on
// a tap that internal/network made in the VM's own namespace. A snapshot
// records it, so a restore needs one exactly when its snapshot had one.
//
// Version and Capabilities are fixed when a driver is built and cost
// nothing to ask; Capabilities carries the accelerator (a snapshot's Spec
// records it) and a description of the VMM's confinement.
package vmm
