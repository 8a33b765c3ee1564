package snapshot

import (
	"errors"
	"strings"
)

// Sentinel errors of snapshot storage, local and remote.
var (
	// ErrNotFound: no snapshot with that key (locally or in the bucket).
	ErrNotFound = errors.New("snapshot not found")
	// ErrCorrupt: a file's size or digest does not match its manifest.
	ErrCorrupt = errors.New("snapshot corrupt")
	// ErrIncompatible: the snapshot was made for another driver, VMM
	// version, kernel, image, machine shape or agent protocol. The error
	// is a *MismatchError that lists what changed.
	ErrIncompatible = errors.New("snapshot incompatible with this host")
	// ErrInvalid: a malformed manifest, key, name or file name, or files
	// larger than the snapshot's Spec allows.
	ErrInvalid = errors.New("invalid snapshot")
	// ErrUnsigned: a pulled snapshot has no signature, and the trust
	// policy requires one.
	ErrUnsigned = errors.New("snapshot not signed")
	// ErrSignature: a pulled snapshot's signature is invalid, made by a
	// key that is not trusted, or made for another snapshot.
	ErrSignature = errors.New("snapshot signature not accepted")
)

// MismatchError says why a snapshot cannot be restored on this host: the
// fields of its Spec that differ from the host's. It matches
// ErrIncompatible with errors.Is. Nothing is removed when it is returned:
// the snapshot (a hibernated sandbox's memory and disk) stays as it was.
type MismatchError struct {
	// What names the snapshot: its key or directory.
	What string
	// Changes lists the differences, snapshot value -> host value.
	Changes []Change
}

func (e *MismatchError) Error() string {
	var b strings.Builder
	b.WriteString(ErrIncompatible.Error())
	if e.What != "" {
		b.WriteString(": " + e.What)
	}
	b.WriteString(" was made for another setup (snapshot -> this host): ")
	for i, c := range e.Changes {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(c.String())
	}
	return b.String()
}

// Is makes errors.Is(err, ErrIncompatible) true.
func (e *MismatchError) Is(target error) bool { return target == ErrIncompatible }
