package snapshot

import "errors"

// Sentinel errors of snapshot storage, local and remote.
var (
	// ErrNotFound: no snapshot with that key (locally or in the bucket).
	ErrNotFound = errors.New("snapshot not found")
	// ErrCorrupt: a file's size or digest does not match its manifest.
	ErrCorrupt = errors.New("snapshot corrupt")
	// ErrIncompatible: the snapshot was made for another driver, VMM
	// version, kernel, image, machine shape or agent protocol.
	ErrIncompatible = errors.New("snapshot incompatible with this host")
	// ErrInvalid: a malformed manifest, key or file name.
	ErrInvalid = errors.New("invalid snapshot")
)
