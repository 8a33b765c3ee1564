// Package snapshot stores VM snapshots: a local, size-bounded cache of
// snapshot directories, and an S3-compatible remote (Remote) to share them
// between hosts.
//
// A snapshot is a directory: the files a vmm.Driver wrote (memory,
// vmstate) and manifest.json, written last, that says what the snapshot is
// for (Spec: driver and version, kernel, image, vCPUs, memory, agent
// protocol) and the size and sha256 of every file. The key of a snapshot
// is a digest of its Spec, so a host looks up exactly the snapshot that
// fits it; anything else is a miss, never a half-compatible restore.
//
//	st := snapshot.NewStore("/var/lib/firesandbox/snapshots", 8<<30)
//	snap, err := st.Get(spec)            // verified, compatible, or an error
//	if errors.Is(err, snapshot.ErrNotFound) {
//		snap, err = st.Create(spec, func(dir string) error {
//			return machine.Snapshot(ctx, dir) // the driver writes its files
//		})
//	}
//	driver.Restore(ctx, snap.Dir, cfg)
package snapshot
