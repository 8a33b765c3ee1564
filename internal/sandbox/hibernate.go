package sandbox

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/firesandbox/firesandbox/internal/snapshot"
	"github.com/firesandbox/firesandbox/internal/vmm"
)

// sealHibernation records in dir what the hibernated VM was made from.
func sealHibernation(dir string, spec snapshot.Spec) error {
	b, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return err
	}
	p := filepath.Join(dir, hibernationSpec)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		return fmt.Errorf("seal hibernation: %w", err)
	}
	return nil
}

// checkHibernation refuses a hibernation made for another host state,
// naming each difference.
func checkHibernation(dir string, want snapshot.Spec) error {
	b, err := os.ReadFile(filepath.Join(dir, hibernationSpec))
	if err != nil {
		return fmt.Errorf("%w: hibernation has no spec: %v", vmm.ErrIncompatible, err)
	}
	var got snapshot.Spec
	if err := json.Unmarshal(b, &got); err != nil {
		return fmt.Errorf("%w: hibernation spec: %v", vmm.ErrIncompatible, err)
	}
	if d := got.Diff(want); d != "" {
		return fmt.Errorf("%w: the sandbox was hibernated with %s; it stays hibernated and its data is kept: resume it on a host with the same kernel, image and VMM, or delete it",
			vmm.ErrIncompatible, d)
	}
	return nil
}
