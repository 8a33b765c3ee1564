package sandbox

import (
	"errors"
	"fmt"

	"github.com/firesandbox/firesandbox/internal/snapshot"
	"github.com/firesandbox/firesandbox/internal/vmm"
)

// sealHibernation writes dir's manifest: what the hibernated VM was made
// from and the digest of every file, written last.
func sealHibernation(dir string, spec snapshot.Spec) error {
	if _, err := snapshot.Seal(dir, spec); err != nil {
		return fmt.Errorf("seal hibernation: %w", err)
	}
	return nil
}

// checkHibernation refuses a hibernation made for another host state,
// naming each difference, or one whose files changed since.
func checkHibernation(dir string, want snapshot.Spec) error {
	_, err := snapshot.Check(dir, want)
	if err == nil {
		return nil
	}
	var mm *snapshot.MismatchError
	if errors.As(err, &mm) {
		return fmt.Errorf("%w: %w; the sandbox stays hibernated and its data is kept: resume it on a host with the same kernel, image and VMM, or delete it",
			vmm.ErrIncompatible, err)
	}
	return err
}
