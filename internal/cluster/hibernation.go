package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/firesandbox/firesandbox/internal/snapshot"
	"github.com/firesandbox/firesandbox/internal/state"
)

// diskFile is the name a hibernated sandbox's writable disk has among
// its snapshot's files in S3.
const diskFile = "disk"

// pushHibernation uploads a hibernation (its sealed snapshot directory
// and its disk) to the remote under HibernationName(id, generation), as
// one snapshot whose Spec includes the disk: files first, then the
// signature, the manifest last. The local files are linked, not copied,
// into a staging directory beside dir, so the caller must keep them
// unchanged until this returns (Sandboxes holds the sandbox's lock).
func pushHibernation(ctx context.Context, r *snapshot.Remote, sb state.Sandbox, spec snapshot.Spec, dir, disk string) (string, error) {
	name, err := snapshot.HibernationName(sb.ID, sb.Generation)
	if err != nil {
		return "", err
	}
	local := spec
	local.DiskMiB = 0 // the local hibernation was sealed without its disk
	m, err := snapshot.Check(dir, local)
	if err != nil {
		return "", fmt.Errorf("push hibernation %s: %w", name, err)
	}
	stage := filepath.Join(filepath.Dir(dir), "remote.tmp")
	if err := os.RemoveAll(stage); err != nil {
		return "", fmt.Errorf("push hibernation %s: %w", name, err)
	}
	if err := os.Mkdir(stage, 0o700); err != nil {
		return "", fmt.Errorf("push hibernation %s: %w", name, err)
	}
	defer os.RemoveAll(stage)
	for f := range m.Files {
		if f == diskFile {
			return "", fmt.Errorf("push hibernation %s: %w: the snapshot has a file named %q", name, snapshot.ErrInvalid, diskFile)
		}
		if err := os.Link(filepath.Join(dir, f), filepath.Join(stage, f)); err != nil {
			return "", fmt.Errorf("push hibernation %s: %w", name, err)
		}
	}
	if disk != "" {
		if err := os.Link(disk, filepath.Join(stage, diskFile)); err != nil {
			return "", fmt.Errorf("push hibernation %s: disk: %w", name, err)
		}
	}
	if _, err := snapshot.Seal(stage, spec); err != nil {
		return "", fmt.Errorf("push hibernation %s: %w", name, err)
	}
	if err := r.PushDir(ctx, name, stage, nil); err != nil {
		return "", err
	}
	return name, nil
}

// pullHibernation downloads the hibernation stored under name and checks
// it as any pulled snapshot (signature, spec, every file's digest), then
// moves its snapshot files into dir and its disk to disk. Nothing is
// moved unless every check passed.
func pullHibernation(ctx context.Context, r *snapshot.Remote, trust *snapshot.Trust, name string, spec snapshot.Spec, dir, disk string) error {
	stage := filepath.Join(filepath.Dir(dir), "pull.tmp")
	if err := os.RemoveAll(stage); err != nil {
		return fmt.Errorf("pull hibernation %s: %w", name, err)
	}
	defer os.RemoveAll(stage)
	if _, err := r.PullDir(ctx, name, stage, nil); err != nil {
		return err
	}
	m, err := snapshot.Check(stage, spec, snapshot.WithTrust(trust))
	if err != nil {
		return fmt.Errorf("pull hibernation %s: %w", name, err)
	}
	_, hasDisk := m.Files[diskFile]
	if hasDisk != (disk != "") {
		return fmt.Errorf("pull hibernation %s: %w: disk in the snapshot: %v, expected: %v", name, snapshot.ErrInvalid, hasDisk, disk != "")
	}
	for f := range m.Files {
		to := filepath.Join(dir, f)
		if f == diskFile {
			to = disk
		}
		if err := os.Rename(filepath.Join(stage, f), to); err != nil {
			return fmt.Errorf("pull hibernation %s: %w", name, err)
		}
	}
	return nil
}

// permanent says a pull can never succeed, so the sandbox is lost rather
// than retried: the objects are missing, forged, damaged, or made for a
// host unlike this one.
func permanent(err error) bool {
	return errors.Is(err, snapshot.ErrNotFound) || errors.Is(err, snapshot.ErrInvalid) ||
		errors.Is(err, snapshot.ErrSignature) || errors.Is(err, snapshot.ErrUnsigned) ||
		errors.Is(err, snapshot.ErrCorrupt) || errors.Is(err, snapshot.ErrIncompatible)
}
