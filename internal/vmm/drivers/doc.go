// Package drivers is the one place that chooses and configures a VMM
// driver. One Config (TOML or flags) maps onto a configured vmm.Driver and
// onto a Diagnosis that `firesandbox doctor` prints:
//
//	cfg := drivers.Default()            // driver = "auto", accel = "auto"
//	toml.Decode(file, &cfg)             // [qemu] and [firecracker] sections
//	ch, err := drivers.New(cfg, drivers.WithLogger(log), drivers.WithAccelCache(dataDir))
//	d, err := ch.Driver(ctx, drivers.Probe{Key: kernel.ID(), Boot: bootAndWaitForHello})
//	dg := ch.Diagnose(ctx)              // every problem of every driver, at once
//
// Driver decides once per Chooser, and is safe for concurrent use:
// callers that arrive while it decides wait for the same answer, so a
// pool filling up at start boots one probe VM, not one per slot.
//
// "auto" means Firecracker, the production VMM, where it can run (its
// Diagnose finds nothing wrong), and QEMU everywhere else. For QEMU,
// accel "auto" means KVM if it really runs our guest here: /dev/kvm
// opening is not enough (a nested or paravirtualised KVM may hang ordinary
// guests), so the first time a guest is booted under KVM through the
// caller's Probe (only the caller knows how to boot one), and the answer
// is cached in accel.json per host kernel, QEMU version, confinement and
// the probe's key.
package drivers
