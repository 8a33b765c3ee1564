package snapshot

import (
	"os"
	"path/filepath"
	"time"
)

// Touch records a use of snap at t for the LRU, as Get does, for callers
// that keep a verified snapshot and restore from it without calling Get.
func (s *Store) Touch(snap *Snapshot, t time.Time) {
	_ = os.Chtimes(filepath.Join(snap.Dir, usedFile), t, t)
}

// Diff says how a snapshot made for s differs from a host that wants
// want, field by field ("driver version 10.0.2 (this host: 10.1.0)"); ""
// if they are equal.
func (s Spec) Diff(want Spec) string { return s.diff(want) }
