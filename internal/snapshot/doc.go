// Package snapshot holds VM snapshots: manifests, their signatures, a
// local size-bounded cache of snapshot directories (Store), checks for
// snapshots kept elsewhere (Seal, Check: hibernated sandboxes), and an
// S3-compatible remote (Remote) to share them between hosts.
//
// A snapshot is a directory: the files a vmm.Driver wrote (memory,
// vmstate; a hibernated sandbox's disk image too) and manifest.json,
// written last, that says what the snapshot is for (Spec: driver and
// version, kernel, image, vCPUs, memory, disk, agent protocol) and the
// size and digest of every file. Digests skip holes, so a sparse 64 GiB
// disk costs what it holds. The key of a snapshot is a digest of its
// Spec, so a host looks up exactly the snapshot that fits it; anything
// else is a miss or a *MismatchError naming what changed, never a
// half-compatible restore. Every manifest, wherever it comes from, passes
// one rule (ParseManifest), which also bounds the files' sizes by the Spec.
//
// Templates live in the Store:
//
//	st := snapshot.NewStore("/var/lib/firesandbox/snapshots", 8<<30, snapshot.WithTrust(trust))
//	snap, err := st.Get(spec)            // verified, compatible, or an error
//	if errors.Is(err, snapshot.ErrNotFound) {
//		snap, err = st.Create(spec, func(dir string) error {
//			return machine.Snapshot(ctx, dir) // the driver writes its files
//		})
//	}
//	driver.Restore(ctx, snap.Dir, cfg)
//
// A hibernated sandbox's directory is sealed where it is, and checked on
// resume; a refusal leaves its files as they are:
//
//	machine.Snapshot(ctx, dir)            // and the disk image moved in
//	snapshot.Seal(dir, spec)              // spec.DiskMiB set
//	...
//	_, err := snapshot.Check(dir, spec, snapshot.WithTrust(trust))
//	// after a QEMU upgrade: "... (snapshot -> this host): driver version 10.0.2 -> 10.1.0"
//
// Pushed snapshots are signed (ed25519, Signer) over the manifest and the
// name they are pushed under: a key, or HibernationName(id, generation).
// A pull verifies the signature (Trust) before it downloads anything, and
// marks the directory as pulled, so Store.Get and Check verify it again on
// every use; only Config.AllowUnsigned turns this off.
//
//	cfg := snapshot.Config{SigningKey: "/etc/firesandbox/snapshot-signing.key", TrustedKeys: []string{"ed25519:..."}}
//	trust, _ := cfg.Trust()
//	signer, _ := cfg.Signer()
//	r, _ := snapshot.NewRemote("s3://bucket/prefix", snapshot.WithRemoteSigner(signer), snapshot.WithRemoteTrust(trust))
//	r.Push(ctx, snap.Dir, nil)                            // files, signature, manifest last
//	r.Pull(ctx, key, filepath.Join(tmp, key), nil)        // then st.Adopt(...)
//	name, _ := snapshot.HibernationName(id, generation)
//	r.PushDir(ctx, name, dir, nil)
//	m, err := r.PullDir(ctx, name, dest, nil)             // then Check(dest, spec, WithTrust(trust))
package snapshot
