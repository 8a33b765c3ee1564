// Package vmmproc is the process plumbing every VMM driver shares:
//
//   - Process: a started (or followed) VMM, with one goroutine owning its
//     wait and closing an exit channel; Stop is SIGTERM, a grace period,
//     then SIGKILL, and no caller's context can cut it short.
//   - Ring: the bounded tail of a VMM's console or log, fed from a pipe,
//     so a guest that floods its serial port costs no disk and no memory.
//   - WaitSocket: wait for a unix socket while watching for early exit.
//   - Cleanup: a stack of undo steps for a Boot that fails halfway.
//   - Claim, Record and Sweep: a machine's RunDir is locked while it is
//     in use and records its VMM's pid and start time, so that after the
//     daemon was killed a sweep can kill exactly that process (and not
//     whatever reused its pid) and remove the files it held.
//   - PrivateDir and IDs: directories only this user can enter, and
//     numeric ids (uids for VMM processes) leased across processes.
//
// A driver's Boot looks like this:
//
//	claim, err := vmmproc.ClaimRunDir(cfg.RunDir) // ErrInUse if a live VMM has it
//	cu := &vmmproc.Cleanup{}
//	defer cu.Clean()
//	cu.Add(func() { claim.Remove() })
//	console, log := vmmproc.NewRing(64<<10), vmmproc.NewRing(16<<10)
//	p, err := vmmproc.Start(cmd, console, log)
//	cu.Add(func() { p.Stop(grace) })
//	vmmproc.WriteRecord(cfg.RunDir, p.Record(ramFile))
//	... configure the VM; on error return (cu undoes it all) ...
//	cu.Release()
package vmmproc
